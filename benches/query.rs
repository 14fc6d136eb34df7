//! Query benchmark: `GET /logs` and `GET /logs/stats` latency and throughput over HTTP on a large index, with warm
//! caches and several concurrent clients; plus the index footprint and start-up time.
//!
//!     cargo bench --bench query -- [--records 10000000] [--dir PATH] [--clients 4] [--requests 400] [--runs 3] [--only NAME]
//!
//! The index is built in `--dir` (default `target/bench-index`) on first use, merged into one
//! segment (the footprint is measured after that final merge, with where its bytes go, next to
//! zstd of the same logs' NDJSON export), and reused after.

#[path = "harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{BASE_NANOS, Server, build_index, disk_bytes, final_merge, query, query_types};

struct Args {
    records: usize,
    dir: PathBuf,
    clients: usize,
    requests: usize,
    runs: usize,
    /// Only the query types whose name holds this.
    only: String,
}

fn args() -> Args {
    let mut args = Args {
        records: 10_000_000,
        dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-index")),
        clients: 4,
        requests: 400,
        runs: 3,
        only: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--records" => args.records = value().parse().expect("--records N"),
            "--dir" => args.dir = PathBuf::from(value()),
            "--clients" => args.clients = value().parse().expect("--clients N"),
            "--requests" => args.requests = value().parse().expect("--requests N"),
            "--runs" => args.runs = value().parse().expect("--runs N"),
            "--only" => args.only = value(),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

const BIN: &str = env!("CARGO_BIN_EXE_logbridge");

/// Where the index's bytes go, per record: each component of the segments (stored documents,
/// postings, positions, terms, fast fields, field norms), and the fields that take the most of
/// the postings, positions and terms.
fn breakdown(index_dir: &Path) {
    let index = tantivy::Index::open_in_dir(index_dir).expect("open the index");
    let searcher = index.reader().expect("a reader").searcher();
    let usage = searcher.space_usage().expect("space usage");
    let records = searcher.num_docs().max(1) as f64;
    let per = |bytes: u64| bytes as f64 / records;
    let mut components: Vec<(&str, u64)> = vec![
        ("stored documents", 0),
        ("postings", 0),
        ("positions", 0),
        ("terms", 0),
        ("fast fields", 0),
        ("field norms", 0),
    ];
    let mut fields: std::collections::BTreeMap<String, u64> = Default::default();
    for segment in usage.segments() {
        let parts = [
            segment.store().total(),
            segment.postings().total(),
            segment.positions().total(),
            segment.termdict().total(),
            segment.fast_fields().total(),
            segment.fieldnorms().total(),
        ];
        for ((_, total), bytes) in components.iter_mut().zip(parts) {
            *total += bytes.get_bytes();
        }
        for part in [segment.postings(), segment.positions(), segment.termdict()] {
            for field in part.fields() {
                *fields.entry(field.field_name().to_owned()).or_default() +=
                    field.total().get_bytes();
            }
        }
    }
    println!(
        "\n| where the bytes go ({} segments) | bytes/record |",
        usage.segments().len()
    );
    println!("|---|---|");
    for (name, bytes) in &components {
        println!("| {name} | {:.1} |", per(*bytes));
    }
    println!("| total | {:.1} |", per(usage.total().get_bytes()));
    let mut fields: Vec<(String, u64)> = fields.into_iter().collect();
    fields.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    println!("\n| field: postings, positions and terms | bytes/record |");
    println!("|---|---|");
    for (name, bytes) in fields {
        println!("| {name} | {:.1} |", per(bytes));
    }
}

/// Counts the bytes written through it.
#[derive(Default)]
struct Counted(u64);

impl std::io::Write for Counted {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of the logs' NDJSON export that zstd at level 19 compresses: a sample, as that level
/// takes minutes per hundred megabytes here.
const LEVEL_19_SAMPLE: usize = 64 << 20;

/// The index's bytes per record next to the NDJSON export of the same logs (each stored log as
/// `GET /logs/export` streams it, one per line, in index order) and what zstd makes of it:
/// level 3 of all of it, level 19 of its first [`LEVEL_19_SAMPLE`] bytes.
fn against_zstd(index_dir: &Path, index_bytes: u64) {
    use std::io::Write;

    let searcher = tantivy::Index::open_in_dir(index_dir)
        .and_then(|index| index.reader())
        .expect("open the index")
        .searcher();
    let records = searcher.num_docs().max(1) as f64;
    let mut level_3 = zstd::stream::Encoder::new(Counted::default(), 3).expect("zstd");
    let mut ndjson = 0u64;
    let mut sample = Vec::with_capacity(LEVEL_19_SAMPLE);
    logbridge::store::each_served(index_dir, |json| {
        let line = [json, b"\n"].concat();
        level_3.write_all(&line).expect("zstd");
        ndjson += line.len() as u64;
        if sample.len() + line.len() <= LEVEL_19_SAMPLE {
            sample.extend_from_slice(&line);
        }
    })
    .expect("the stored logs");
    let level_3 = level_3.finish().expect("zstd").0;
    let sample_19 = zstd::bulk::compress(&sample, 19).expect("zstd").len() as f64;
    let sample_3 = zstd::bulk::compress(&sample, 3).expect("zstd").len() as f64;
    let per = |bytes: f64| bytes / records;
    println!("\n| the same logs | bytes/record |");
    println!("|---|---|");
    println!("| index on disk | {:.1} |", per(index_bytes as f64));
    println!("| NDJSON export | {:.1} |", per(ndjson as f64));
    println!("| zstd -3 of the NDJSON | {:.1} |", per(level_3 as f64));
    println!(
        "| zstd -19 of the NDJSON (its ratio on the first {} MiB: {:.1}x, -3 there {:.1}x) | {:.1} |",
        LEVEL_19_SAMPLE >> 20,
        sample.len() as f64 / sample_19,
        sample.len() as f64 / sample_3,
        per(ndjson as f64 * sample_19 / sample.len() as f64),
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let args = args();
    build_index(BIN, &args.dir, args.records).await;
    final_merge(&args.dir.join("index"));
    let index_bytes = disk_bytes(&args.dir.join("index"));
    breakdown(&args.dir.join("index"));
    against_zstd(&args.dir.join("index"), index_bytes);
    let server = Server::start(BIN, &args.dir, 1000).await;
    let warm_up = server.warmed().await;
    println!(
        "index: {} records, {:.0} bytes/record on disk, start-up {:.0} ms, then warm-up {:.0} ms, \
         peak RSS after start {} MiB",
        args.records,
        index_bytes as f64 / args.records as f64,
        ms(server.startup),
        ms(warm_up),
        server.peak_rss_bytes() >> 20
    );
    let newest = BASE_NANOS + args.records as u64 * 1_000_000;
    // "first": the query's first request, on segments the warm-up has seen
    println!("\n| query | matches | first (cold) | p50 | p99 | requests/s |");
    println!("|---|---|---|---|---|---|");
    for (name, large, path, q) in query_types(newest) {
        if !name.contains(&args.only) {
            continue;
        }
        let key = if large {
            &server.large_reader
        } else {
            &server.small_reader
        };
        let mut reports = Vec::new();
        for _ in 0..args.runs {
            reports.push(query(&server, name, key, (path, &q), args.clients, args.requests).await);
        }
        let median = |f: &dyn Fn(&harness::QueryReport) -> f64| {
            let mut values: Vec<f64> = reports.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        println!(
            "| {name} | {} | {:.1} ms | {:.2} ms | {:.2} ms | {:.0} |",
            reports[0].total,
            ms(reports[0].cold),
            median(&|r| ms(r.p50)),
            median(&|r| ms(r.p99)),
            median(&|r| r.per_second),
        );
    }
    server.stop();
}
