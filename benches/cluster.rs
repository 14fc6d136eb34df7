//! Cluster benchmark: the release binary as gateways and indexers on three NATS servers
//! (JetStream clustered, `sync_interval: always` where the server has it) and one etcd, all on
//! this machine. Pre-encoded OTLP exports of 512 records from concurrent exporters; it reports
//! ingest rate, acknowledgement latency, visibility, and the CPU time each role spent, from which
//! `docs/SCALING.md` builds its capacity model.
//!
//!     cargo bench --bench cluster -- [--records 300000] [--exporters 8] [--gateways 1]
//!         [--indexers 2] [--shards 8] [--runs 3] [--overload 0] [--indexer-cpu 0]
//!         [--max-lag-ms 3000]
//!
//! `--overload N` runs N busy processes beside the cluster for the whole run: the machine is
//! overloaded, as at a traffic peak. `--indexer-cpu P` holds the indexers together to P% of one
//! core (a cgroup's CPU quota, as a container's limit does; needs root and the cgroup v1 `cpu`
//! controller): they index more slowly than the gateway acknowledges. The gateway's `logbridge_cluster_shard_lag_seconds` is
//! sampled every 200 ms: how long its oldest acknowledged export has not been visible, the worst
//! shard; the run also times the last acknowledgement to everything visible.
//!
//! `NATS_SERVER_BINARY=/path/to/nats-server` runs another NATS release than the one on the PATH.

#[path = "harness/mod.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harness::engines::{Etcd, Nats, nats_server, nats_version};
use harness::{
    BenchKeys, RequestEncoder, SEED, Server, Transport, ingest, median, percentile, wait_ready,
};

const BIN: &str = env!("CARGO_BIN_EXE_logbridge");

struct Args {
    records: usize,
    exporters: usize,
    gateways: usize,
    indexers: usize,
    shards: u32,
    runs: usize,
    overload: usize,
    indexer_cpu: u32,
    max_lag_ms: u64,
}

fn args() -> Args {
    let mut args = Args {
        records: 300_000,
        exporters: 8,
        gateways: 1,
        indexers: 2,
        shards: 8,
        runs: 3,
        overload: 0,
        indexer_cpu: 0,
        max_lag_ms: 3000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--records" => args.records = value().parse().expect("--records N"),
            "--exporters" => args.exporters = value().parse().expect("--exporters N"),
            "--gateways" => args.gateways = value().parse().expect("--gateways N"),
            "--indexers" => args.indexers = value().parse().expect("--indexers N"),
            "--shards" => args.shards = value().parse().expect("--shards N"),
            "--runs" => args.runs = value().parse().expect("--runs N"),
            "--overload" => args.overload = value().parse().expect("--overload N"),
            "--max-lag-ms" => args.max_lag_ms = value().parse().expect("--max-lag-ms N"),
            "--indexer-cpu" => args.indexer_cpu = value().parse().expect("--indexer-cpu PERCENT"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// CPU seconds (user and system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command name, which is in parentheses and may hold spaces
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name
    (ticks(11) + ticks(12)) / 100.0
}

fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

#[tokio::main]
async fn main() {
    let args = args();
    // the HTTP clients take the process's rustls provider
    logbridge::server::install_provider();
    let program = nats_server();
    println!(
        "{}, {} gateway(s), {} indexer(s) (2 replicas per shard), {} shards, {} records, {} exporters, \
         {} busy processes beside, indexers held to {}% of a core (0: not held), max_lag_ms {}",
        nats_version(&program),
        args.gateways,
        args.indexers,
        args.shards,
        args.records,
        args.exporters,
        args.overload,
        args.indexer_cpu,
        args.max_lag_ms,
    );
    let mut rows = Vec::new();
    for run in 0..args.runs {
        let dir = tempfile::tempdir().unwrap();
        let nats = Nats::start(dir.path(), None).await;
        let etcd = Etcd::start(dir.path(), None).await;
        let keys = BenchKeys::generate();
        let cluster = |role: &str, id: String| {
            let urls: Vec<String> = nats.urls().iter().map(|u| format!("\"{u}\"")).collect();
            format!(
                "[cluster]\nrole = \"{role}\"\nnode_id = \"{id}\"\nshards = {}\n\
                 nats_urls = [{}]\netcd_endpoints = [\"{}\"]\nmax_lag_ms = {}\n",
                args.shards,
                urls.join(", "),
                etcd.url,
                args.max_lag_ms
            )
        };
        let mut indexers = Vec::new();
        for n in 0..args.indexers {
            let id = format!("indexer-{n}");
            let folder = dir.path().join(&id);
            indexers.push(
                Server::start_with(
                    BIN,
                    &folder,
                    "commit_interval_ms = 1000",
                    &keys,
                    &cluster("indexer", id),
                )
                .await,
            );
        }
        let mut gateways = Vec::new();
        for n in 0..args.gateways {
            let id = format!("gateway-{n}");
            let folder = dir.path().join(&id);
            gateways.push(
                Server::start_with(
                    BIN,
                    &folder,
                    "commit_interval_ms = 1000",
                    &keys,
                    &cluster("gateway", id),
                )
                .await,
            );
        }
        // every shard served before the clock starts
        for indexer in &indexers {
            wait_ready(&indexer.api).await;
        }
        let requests = RequestEncoder::new(SEED + run as u64).encode(args.records);
        let bytes: usize = requests.iter().map(|r| r.len()).sum();
        let gateway_pids: Vec<u32> = gateways.iter().map(Server::pid).collect();
        let indexer_pids: Vec<u32> = indexers.iter().map(Server::pid).collect();
        let nats_pids = nats.pids();
        let before = (
            total_cpu(&gateway_pids),
            total_cpu(&indexer_pids),
            total_cpu(&nats_pids),
        );
        let busy = Busy::start(args.overload);
        let _quota =
            (args.indexer_cpu > 0).then(|| CpuQuota::hold(&indexer_pids, args.indexer_cpu));
        let stop_sampling = Arc::new(AtomicBool::new(false));
        let sampler = (
            stop_sampling.clone(),
            sample_lag(gateways[0].api.clone(), stop_sampling),
        );
        let report = ingest(&gateways[0], requests, args.exporters, Transport::Grpc).await;
        let acked = std::time::Instant::now();
        let (mut lags, drained) = sampler_until_visible(sampler, &gateways[0].api).await;
        let drain = drained.duration_since(acked);
        if std::env::var("LAG_SAMPLES").is_ok() {
            let text: Vec<String> = lags
                .iter()
                .map(|l| format!("{:.1}", l.as_secs_f64()))
                .collect();
            println!("lag samples: {}", text.join(" "));
        }
        drop(busy);
        let after = (
            total_cpu(&gateway_pids),
            total_cpu(&indexer_pids),
            total_cpu(&nats_pids),
        );
        let (gateway_cpu, indexer_cpu, nats_cpu) =
            (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        let records = report.records as f64;
        let row = Row {
            records_per_second: report.records_per_second(),
            ack_p50_ms: report.export_p50.as_secs_f64() * 1e3,
            ack_p99_ms: report.export_p99.as_secs_f64() * 1e3,
            visible_p50_ms: report.visible_p50.as_secs_f64() * 1e3,
            visible_p99_ms: report.visible_p99.as_secs_f64() * 1e3,
            gateway_records_per_cpu_second: records / gateway_cpu,
            // each record is indexed by two replicas
            indexer_records_per_cpu_second: 2.0 * records / indexer_cpu,
            nats_cpu_seconds_per_mb: nats_cpu / (bytes as f64 / 1e6),
            refused: report.refused,
            lag_p99_s: percentile(&mut lags, 99.0).as_secs_f64(),
            lag_max_s: lags.iter().max().copied().unwrap_or_default().as_secs_f64(),
            drain_s: drain.as_secs_f64(),
        };
        println!("run {}: {row:?}", run + 1);
        rows.push(row);
        for server in gateways.into_iter().chain(indexers) {
            server.stop();
        }
        drop((nats, etcd));
    }
    let column = |f: fn(&Row) -> f64| median(rows.iter().map(f).collect());
    println!("\nmedians of {} runs:", rows.len());
    println!(
        "  ingest                      {:>10.0} records/s",
        column(|r| r.records_per_second)
    );
    println!(
        "  acknowledgement p50 / p99   {:>7.1} / {:.1} ms",
        column(|r| r.ack_p50_ms),
        column(|r| r.ack_p99_ms)
    );
    println!(
        "  visible p50 / p99           {:>7.1} / {:.1} ms",
        column(|r| r.visible_p50_ms),
        column(|r| r.visible_p99_ms)
    );
    println!(
        "  gateway                     {:>10.0} records per CPU second",
        column(|r| r.gateway_records_per_cpu_second)
    );
    println!(
        "  indexer (per replica)       {:>10.0} records per CPU second",
        column(|r| r.indexer_records_per_cpu_second)
    );
    println!(
        "  exports refused, then sent again: {}",
        rows.iter().map(|r| r.refused).sum::<usize>()
    );
    println!(
        "  NATS (3 servers, R=3)       {:>10.3} CPU seconds per MB of OTLP exports",
        column(|r| r.nats_cpu_seconds_per_mb)
    );
    println!(
        "  ack → visible, worst shard: p99 {:.2} s, max {:.2} s; last ack → all visible {:.2} s",
        column(|r| r.lag_p99_s),
        column(|r| r.lag_max_s),
        column(|r| r.drain_s)
    );
}

/// A cgroup (v1 `cpu` controller) holding processes to a share of one core; removed, the
/// processes back in the root group, when dropped.
struct CpuQuota(std::path::PathBuf);

impl CpuQuota {
    fn hold(pids: &[u32], percent: u32) -> Self {
        let group = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/cpu/logbridge-bench-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&group).unwrap_or_else(|e| {
            panic!(
                "--indexer-cpu needs root and the cgroup v1 cpu controller: {}: {e}",
                group.display()
            )
        });
        std::fs::write(group.join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(group.join("cpu.cfs_quota_us"), (percent * 1000).to_string()).unwrap();
        for pid in pids {
            std::fs::write(group.join("cgroup.procs"), pid.to_string()).unwrap();
        }
        Self(group)
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write("/sys/fs/cgroup/cpu/cgroup.procs", pid);
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Busy processes, as many as asked, killed when dropped.
struct Busy(Vec<std::process::Child>);

impl Busy {
    fn start(count: usize) -> Self {
        Self(
            (0..count)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("a busy shell")
                })
                .collect(),
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The gateway's worst `logbridge_cluster_shard_lag_seconds` now.
async fn worst_lag(client: &reqwest::Client, api: &str) -> Option<Duration> {
    let text = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let worst = text
        .lines()
        .filter(|line| line.starts_with("logbridge_cluster_shard_lag_seconds{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    Some(Duration::from_secs_f64(worst))
}

/// Samples the gateway's worst shard lag every 200 ms until `stop`.
fn sample_lag(api: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let client = harness::plain_http()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            samples.extend(worst_lag(&client, &api).await);
        }
        samples
    })
}

/// Waits until every shard shows what the gateway acknowledged (its worst lag is 0): when; then
/// stops `sampler` and takes its samples.
async fn sampler_until_visible(
    sampler: (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<Duration>>),
    api: &str,
) -> (Vec<Duration>, std::time::Instant) {
    let client = harness::plain_http()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while worst_lag(&client, api).await != Some(Duration::ZERO) {
        assert!(
            std::time::Instant::now() < deadline,
            "the acknowledged exports never all became visible"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = std::time::Instant::now();
    let (stop, task) = sampler;
    stop.store(true, Ordering::Relaxed);
    (task.await.expect("the lag sampler"), drained)
}

#[derive(Debug)]
struct Row {
    records_per_second: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    visible_p50_ms: f64,
    visible_p99_ms: f64,
    gateway_records_per_cpu_second: f64,
    indexer_records_per_cpu_second: f64,
    nats_cpu_seconds_per_mb: f64,
    refused: usize,
    lag_p99_s: f64,
    lag_max_s: f64,
    drain_s: f64,
}
