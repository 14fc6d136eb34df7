//! Ingest benchmark: pre-encoded OTLP exports of 512 records from several concurrent exporters,
//! full durability on, against the release binary.
//!
//!     cargo bench --bench ingest -- [--records 2000000] [--exporters 4] [--runs 3] [--transport grpc|http|both]

#[path = "harness/mod.rs"]
mod harness;

use std::time::Instant;

use harness::{BATCH, IngestReport, RequestEncoder, SEED, Server, Transport, ingest, median};

struct Args {
    records: usize,
    exporters: usize,
    runs: usize,
    transports: Vec<Transport>,
}

fn args() -> Args {
    let mut args = Args {
        records: 2_000_000,
        exporters: 4,
        runs: 3,
        transports: vec![Transport::Grpc, Transport::HttpProtobuf],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--records" => args.records = value().parse().expect("--records N"),
            "--exporters" => args.exporters = value().parse().expect("--exporters N"),
            "--runs" => args.runs = value().parse().expect("--runs N"),
            "--transport" => {
                args.transports = match value().as_str() {
                    "grpc" => vec![Transport::Grpc],
                    "http" => vec![Transport::HttpProtobuf],
                    _ => vec![Transport::Grpc, Transport::HttpProtobuf],
                }
            }
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

#[tokio::main]
async fn main() {
    let args = args();
    let started = Instant::now();
    let requests = RequestEncoder::new(SEED).encode(args.records);
    let encode_seconds = started.elapsed().as_secs_f64();
    let bytes: usize = requests.iter().map(|r| r.len()).sum();
    println!(
        "workload: {} records in {} requests of {BATCH}, {:.0} bytes/record encoded; \
         generator ceiling {:.0} records/s",
        args.records,
        requests.len(),
        bytes as f64 / args.records as f64,
        args.records as f64 / encode_seconds
    );
    println!(
        "\n| transport | exporters | records/s | MB/s | export p50 | export p99 | ack→visible p50 | ack→visible p99 | peak RSS | refused |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for transport in &args.transports {
        let mut runs: Vec<(IngestReport, u64)> = Vec::new();
        for _ in 0..args.runs {
            let dir = tempfile::tempdir().expect("temp dir");
            let server = Server::start(env!("CARGO_BIN_EXE_logbridge"), dir.path(), 1000).await;
            let report = ingest(&server, requests.clone(), args.exporters, *transport).await;
            let rss = server.peak_rss_bytes();
            server.stop();
            eprintln!(
                "run: {:?} {:.0} records/s, export p99 {:?}, visible p99 {:?}, peak RSS {} MiB",
                transport,
                report.records_per_second(),
                report.export_p99,
                report.visible_p99,
                rss >> 20
            );
            runs.push((report, rss));
        }
        let med = |f: &dyn Fn(&(IngestReport, u64)) -> f64| median(runs.iter().map(f).collect());
        println!(
            "| {:?} | {} | {:.0} | {:.1} | {:.1} ms | {:.1} ms | {:.0} ms | {:.0} ms | {:.0} MiB | {:.0} |",
            transport,
            args.exporters,
            med(&|(r, _)| r.records_per_second()),
            med(&|(r, _)| r.mb_per_second()),
            med(&|(r, _)| r.export_p50.as_secs_f64() * 1e3),
            med(&|(r, _)| r.export_p99.as_secs_f64() * 1e3),
            med(&|(r, _)| r.visible_p50.as_secs_f64() * 1e3),
            med(&|(r, _)| r.visible_p99.as_secs_f64() * 1e3),
            med(&|(_, rss)| *rss as f64 / (1 << 20) as f64),
            med(&|(r, _)| r.refused as f64),
        );
    }
}
