//! Ingest benchmark: pre-encoded OTLP exports of 512 records from several concurrent exporters,
//! full durability on, against the release binary.
//!
//!     cargo bench --bench ingest -- [--records 2000000] [--exporters 4] [--runs 3] [--transport grpc|http|both] [--dedup on|off|both]
//!
//! `--dedup both` runs each transport with the dedup window off and on in turn (off, on, off,
//! on, ...), so that a change of the machine's speed weighs on both alike. Before each run,
//! tantivy alone indexes the same documents in process, for the ratio of the two.

#[path = "harness/mod.rs"]
mod harness;

use std::time::Instant;

use logbridge::mapping::{Admission, MappingConfig, map_request};
use logbridge::store::{BareIndex, StoreOptions};

use harness::{
    BATCH, BenchKeys, IngestReport, RequestEncoder, SEED, Server, Transport, ingest, median,
};

/// The default dedup window, in milliseconds.
const DEDUP_ON: u64 = 600_000;

/// A run's figures: its report, the server's peak RSS and the bytes its dedup window held.
type Run = (IngestReport, u64, f64);

/// The documents logbridge's writer gives tantivy for `requests` (decoded and mapped as the
/// server does for an ingest key without a user), in order.
fn documents(index: &BareIndex, requests: &[bytes::Bytes]) -> Vec<tantivy::TantivyDocument> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use prost::Message;

    let config = MappingConfig::default();
    let mut seq = 0u64;
    let mut documents = Vec::new();
    for request in requests {
        let request = ExportLogsServiceRequest::decode(request.clone()).expect("a request");
        let mapped = map_request(&config, None, 0, &request, |_| Admission::Keep);
        for log in mapped.expect("every record kept").logs {
            seq += 1;
            documents.push(index.document(&log, seq));
        }
    }
    documents
}

/// The store's options as the server's defaults set them (and `LOGBRIDGE_INDEX_PAYLOAD_PATHS`,
/// which the server reads too).
fn store_options() -> StoreOptions {
    let mut options = StoreOptions::new(128 << 20);
    options.payloads = std::env::var("LOGBRIDGE_INDEX_PAYLOAD_PATHS").as_deref() != Ok("false");
    options
}

/// Tantivy alone indexing the documents of `requests` (built first, off the clock) into a new
/// index made as logbridge makes one, until the commit of all of them: records per second.
fn raw_tantivy(requests: &[bytes::Bytes]) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut index = BareIndex::create(dir.path(), &store_options()).expect("an index");
    let documents = documents(&index, requests);
    let started = Instant::now();
    let count = documents.len();
    for document in documents {
        index.writer.add_document(document).expect("a document");
    }
    index.writer.commit().expect("a commit");
    let seconds = started.elapsed().as_secs_f64();
    index.writer.wait_merging_threads().expect("merges");
    count as f64 / seconds
}

struct Args {
    records: usize,
    exporters: usize,
    runs: usize,
    transports: Vec<Transport>,
    /// The dedup windows to run with, in milliseconds (0: off).
    dedup: Vec<u64>,
}

fn args() -> Args {
    let mut args = Args {
        records: 2_000_000,
        exporters: 4,
        runs: 3,
        transports: vec![Transport::Grpc, Transport::HttpProtobuf],
        dedup: vec![DEDUP_ON],
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
            "--dedup" => {
                args.dedup = match value().as_str() {
                    "on" => vec![DEDUP_ON],
                    "off" => vec![0],
                    _ => vec![0, DEDUP_ON],
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
    let mut raw = Vec::new();
    println!(
        "\n| transport | dedup | exporters | records/s | MB/s | export p50 | export p99 | ack→visible p50 | ack→visible p99 | peak RSS | dedup window | refused |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for transport in &args.transports {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); args.dedup.len()];
        for _ in 0..args.runs {
            // tantivy alone on the same documents, between the runs of the server
            raw.push(raw_tantivy(&requests));
            eprintln!("run: raw tantivy: {:.0} records/s", raw[raw.len() - 1]);
            for (mode, window) in args.dedup.iter().enumerate() {
                let dir = tempfile::tempdir().expect("temp dir");
                let index = format!("commit_interval_ms = 1000\ndedup_window_ms = {window}");
                let keys = BenchKeys::generate();
                let bin = env!("CARGO_BIN_EXE_logbridge");
                let server = Server::start_with(bin, dir.path(), &index, &keys, "").await;
                let report = ingest(&server, requests.clone(), args.exporters, *transport).await;
                let window_bytes = server.metric("logbridge_dedup_window_bytes").await;
                let rss = server.peak_rss_bytes();
                server.stop();
                eprintln!(
                    "run: {:?} dedup {} ms: {:.0} records/s, export p99 {:?}, visible p99 {:?}, peak RSS {} MiB, window {:.2} bytes/record, probe {:.0} requests/s",
                    transport,
                    window,
                    report.records_per_second(),
                    report.export_p99,
                    report.visible_p99,
                    rss >> 20,
                    window_bytes / args.records as f64,
                    report.probe_requests as f64 / report.seconds
                );
                runs[mode].push((report, rss, window_bytes));
            }
        }
        for (runs, window) in runs.iter().zip(&args.dedup) {
            let med = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
            println!(
                "| {:?} | {} | {} | {:.0} | {:.1} | {:.1} ms | {:.1} ms | {:.0} ms | {:.0} ms | {:.0} MiB | {:.2} B/record | {:.0} |",
                transport,
                if *window == 0 { "off" } else { "on" },
                args.exporters,
                med(&|(r, _, _)| r.records_per_second()),
                med(&|(r, _, _)| r.mb_per_second()),
                med(&|(r, _, _)| r.export_p50.as_secs_f64() * 1e3),
                med(&|(r, _, _)| r.export_p99.as_secs_f64() * 1e3),
                med(&|(r, _, _)| r.visible_p50.as_secs_f64() * 1e3),
                med(&|(r, _, _)| r.visible_p99.as_secs_f64() * 1e3),
                med(&|(_, rss, _)| *rss as f64 / (1 << 20) as f64),
                med(&|(_, _, w)| w / args.records as f64),
                med(&|(r, _, _)| r.refused as f64),
            );
        }
    }
    let mut sorted = raw.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "\ntantivy alone on the same documents (in process, one indexing thread, the index settings of logbridge, one commit at the end): {:.0} records/s, median of {} runs ({:.0} to {:.0}), one before each run above",
        median(raw),
        sorted.len(),
        sorted[0],
        sorted[sorted.len() - 1],
    );
}
