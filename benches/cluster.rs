//! Cluster benchmark: the release binary as gateways and indexers on three NATS servers
//! (JetStream clustered, `sync_interval: always` where the server has it) and one etcd, all on
//! this machine. Pre-encoded OTLP exports of 512 records from concurrent exporters; it reports
//! ingest rate, acknowledgement latency, visibility, and the CPU time each role spent, from which
//! `docs/SCALING.md` builds its capacity model.
//!
//!     cargo bench --bench cluster -- [--records 300000] [--exporters 8] [--gateways 1]
//!         [--indexers 2] [--shards 8] [--runs 3]
//!
//! `NATS_SERVER_BINARY=/path/to/nats-server` runs another NATS release than the one on the PATH.

#[path = "harness/mod.rs"]
mod harness;

use std::time::Duration;

use harness::engines::{Etcd, Nats, nats_server, nats_version};
use harness::{BenchKeys, RequestEncoder, SEED, Server, Transport, ingest, median};

const BIN: &str = env!("CARGO_BIN_EXE_logbridge");

struct Args {
    records: usize,
    exporters: usize,
    gateways: usize,
    indexers: usize,
    shards: u32,
    runs: usize,
}

fn args() -> Args {
    let mut args = Args {
        records: 300_000,
        exporters: 8,
        gateways: 1,
        indexers: 2,
        shards: 8,
        runs: 3,
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
        "{}, {} gateway(s), {} indexer(s) (2 replicas per shard), {} shards, {} records, {} exporters",
        nats_version(&program),
        args.gateways,
        args.indexers,
        args.shards,
        args.records,
        args.exporters
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
                 nats_urls = [{}]\netcd_endpoints = [\"{}\"]\n",
                args.shards,
                urls.join(", "),
                etcd.url
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
        let report = ingest(&gateways[0], requests, args.exporters, Transport::Grpc).await;
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
}

/// Polls an indexer's `/readyz` until it answers 200: its replicas caught up.
async fn wait_ready(api: &str) {
    let client = harness::plain_http().build().expect("an HTTP client");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !client
        .get(format!("{api}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(std::time::Instant::now() < deadline, "{api} never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
