//! A large user spread over several shards against one on a single shard, in one cluster: the
//! release binary as a gateway and two indexers on three NATS servers and one etcd, all on this
//! machine. The large user's records all stay on its home shard (stamped in the past); the
//! small user is spread over `--width` shards from a cut-over two minutes ahead and gets as many
//! records, stamped past it. Then it times, for each, `/logs/stats` (gathered from every shard
//! for the spread user), a whole NDJSON `/logs/export` (merged), the first page of `/logs` and
//! a deep page. Each user's rooms go to one of `--assistants` assistants (300 by default, as in
//! the other benchmarks); with thousands, no shard lists them all and the gateway's busiest
//! assistants take more rounds (`docs/SCALING.md`).
//!
//!     cargo bench --bench spread -- [--records 1000000] [--width 4] [--shards 8] [--runs 7]
//!                                   [--assistants 300]

#[path = "harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::engines::{Etcd, Nats};
use harness::{
    BenchKeys, LARGE_USER, RequestEncoder, SEED, SMALL_USER, Server, Transport, ingest, median,
    wait_ready,
};

const BIN: &str = env!("CARGO_BIN_EXE_logbridge");

struct Args {
    records: usize,
    width: u32,
    shards: u32,
    runs: usize,
    assistants: usize,
}

fn args() -> Args {
    let mut args = Args {
        records: 1_000_000,
        width: 4,
        shards: 8,
        runs: 7,
        assistants: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--records" => args.records = value().parse().expect("--records N"),
            "--width" => args.width = value().parse().expect("--width N"),
            "--shards" => args.shards = value().parse().expect("--shards N"),
            "--runs" => args.runs = value().parse().expect("--runs N"),
            "--assistants" => args.assistants = value().parse().expect("--assistants N"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

#[tokio::main]
async fn main() {
    let args = args();
    logbridge::server::install_provider();
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), None).await;
    let etcd = Etcd::start(dir.path(), None).await;
    let keys = BenchKeys::generate();
    let cluster = |role: &str, id: &str| {
        let urls: Vec<String> = nats.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            "[cluster]\nrole = \"{role}\"\nnode_id = \"{id}\"\nshards = {}\n\
             nats_urls = [{}]\netcd_endpoints = [\"{}\"]\n",
            args.shards,
            urls.join(", "),
            etcd.url,
        )
    };
    let mut nodes = Vec::new();
    for id in ["indexer-0", "indexer-1"] {
        let folder = dir.path().join(id);
        let node = Server::start_with(
            BIN,
            &folder,
            "commit_interval_ms = 1000",
            &keys,
            &cluster("indexer", id),
        )
        .await;
        wait_ready(&node.api).await;
        nodes.push(node);
    }
    let gateway = Server::start_with(
        BIN,
        &dir.path().join("gateway-0"),
        "commit_interval_ms = 1000",
        &keys,
        &cluster("gateway", "gateway-0"),
    )
    .await;

    // the small user spread from two minutes ahead (whole seconds)
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let from = (now + 120) * 1_000_000_000;
    let from_text = chrono::DateTime::from_timestamp_nanos(from as i64).to_rfc3339();
    let spread = std::process::Command::new(BIN)
        .args(["cluster", "spread", "--config"])
        .arg(gateway.dir.join("logbridge.toml"))
        .args(["--user", SMALL_USER, "--shards", &args.width.to_string()])
        .args(["--from", &from_text])
        .output()
        .expect("logbridge cluster spread");
    assert!(
        spread.status.success(),
        "{}",
        String::from_utf8_lossy(&spread.stderr)
    );
    let client = harness::plain_http()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let metric = |name: &'static str| {
        let (client, api) = (client.clone(), gateway.api.clone());
        async move {
            let text = client
                .get(format!("{api}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{name} "))?.parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    while metric("logbridge_cluster_spread_users").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut requests =
        RequestEncoder::of_user(SEED, LARGE_USER, args.assistants, harness::BASE_NANOS)
            .encode(args.records);
    requests.extend(
        RequestEncoder::of_user(SEED + 1, SMALL_USER, args.assistants, from).encode(args.records),
    );
    let report = ingest(&gateway, requests, 8, Transport::Grpc).await;
    println!(
        "{} records of each user ingested at {:.0} records/s",
        args.records,
        report.records_per_second()
    );
    let readers = [
        ("one shard", gateway.large_reader.clone()),
        ("spread", gateway.small_reader.clone()),
    ];
    for (_, key) in &readers {
        loop {
            let body: serde_json::Value = client
                .get(format!("{}/logs?limit=1", gateway.api))
                .header("authorization", key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if body["data"]["total"] == args.records {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "\n| {} logs of one user | stats | stats, status=error, 1h buckets | export (NDJSON, whole) | /logs first page | /logs page=1000 (offset 99,900) |",
        args.records
    );
    println!("|---|---|---|---|---|---|");
    for (name, key) in &readers {
        let time = |path: String, runs: usize| {
            let (client, key) = (client.clone(), key.clone());
            async move {
                let mut times = Vec::new();
                let mut bytes = 0;
                for _ in 0..runs {
                    let started = Instant::now();
                    let response = client
                        .get(&path)
                        .header("authorization", &key)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200, "{path}");
                    bytes = response.bytes().await.unwrap().len();
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                }
                (median(times), bytes)
            }
        };
        let api = &gateway.api;
        let (stats, _) = time(format!("{api}/logs/stats"), args.runs).await;
        let (errors, _) = time(
            format!("{api}/logs/stats?status=error&interval=1h"),
            args.runs,
        )
        .await;
        let (export, bytes) = time(format!("{api}/logs/export"), 3).await;
        let (first, _) = time(format!("{api}/logs?limit=50"), args.runs).await;
        let (deep, _) = time(format!("{api}/logs?limit=100&page=1000"), args.runs).await;
        println!(
            "| {name} | {stats:.1} ms | {errors:.1} ms | {:.2} s ({:.0} MB/s) | {first:.1} ms | {deep:.1} ms |",
            export / 1e3,
            bytes as f64 / 1e6 / (export / 1e3),
        );
    }
    println!("\nmedians of {} runs (3 for the export)", args.runs);
    gateway.stop();
    for node in nodes {
        node.stop();
    }
    drop((nats, etcd));
}
