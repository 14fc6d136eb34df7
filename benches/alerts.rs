//! Alert evaluation benchmark: what one round over 1,000 rules costs on a large index, rule by
//! rule as the server's evaluation runs them (one at a time, from the statistics of their
//! windows), with the rules' clock set to the newest log so that their windows hold logs.
//!
//!     cargo bench --bench alerts -- [--records 10000000] [--dir PATH] [--rules 1000] [--runs 3]
//!
//! The index is the query benchmark's (`target/bench-index`), built on first use and merged
//! into one segment.

#[path = "harness/mod.rs"]
mod harness;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use harness::{BASE_NANOS, build_index, final_merge, median, percentile};
use logbridge::alerts::evaluate::measure;
use logbridge::alerts::{Rule, RuleSpec};
use logbridge::store::{self, StoreOptions};

const BIN: &str = env!("CARGO_BIN_EXE_logbridge");

struct Args {
    records: usize,
    dir: PathBuf,
    rules: usize,
    runs: usize,
}

fn args() -> Args {
    let mut args = Args {
        records: 10_000_000,
        dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-index")),
        rules: 1_000,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--records" => args.records = value().parse().expect("--records N"),
            "--dir" => args.dir = PathBuf::from(value()),
            "--rules" => args.rules = value().parse().expect("--rules N"),
            "--runs" => args.runs = value().parse().expect("--runs N"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// Rule `n` of `rules`: ten per user over the workload's 100 users (the largest holds about 30%
/// of the logs), each a mix of what support teams watch: failed webhooks, error ratios, tool
/// latency, searches for timeouts, every log; over 5 minutes, 15 minutes or an hour.
fn rule(n: usize) -> Rule {
    let user = format!("user-{:03}", (n / 10) % 100);
    let window = ["5m", "15m", "1h"][n % 3];
    let (measure, filters) = match n % 5 {
        0 => (
            "count",
            serde_json::json!({ "log_type": "end_call_webhook", "status": "error" }),
        ),
        1 => ("error_ratio", serde_json::json!({})),
        2 => (
            "latency_p95",
            serde_json::json!({ "log_type": "tool_call" }),
        ),
        3 => ("count", serde_json::json!({ "q": "timeout OR timed" })),
        _ => ("count", serde_json::json!({})),
    };
    let spec: RuleSpec = serde_json::from_value(serde_json::json!({
        "name": format!("rule {n}"),
        "filters": filters,
        "window": window,
        "measure": measure,
        "comparison": ">",
        "threshold": 10,
    }))
    .expect("a rule");
    logbridge::api::alert_rule(spec, &user).expect("a valid rule")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let args = args();
    build_index(BIN, &args.dir, args.records).await;
    final_merge(&args.dir.join("index"));
    let (store, _writer) = store::open(&args.dir.join("index"), &StoreOptions::new(64 << 20))
        .expect("the index opens");
    let rules: Vec<Rule> = (0..args.rules).map(rule).collect();
    // the rules' clock: the newest log of the index
    let at = BASE_NANOS + args.records as u64 * 1_000_000;
    let never = AtomicBool::new(false);
    println!(
        "\n{} rules over {} records, one at a time (the server's evaluation), {} rounds",
        rules.len(),
        args.records,
        args.runs
    );
    println!("| round | total | per rule p50 | p99 | max | slowest rule |");
    println!("|---|---|---|---|---|---|");
    let mut totals = Vec::new();
    for run in 0..args.runs {
        let mut times = Vec::with_capacity(rules.len());
        let started = Instant::now();
        for rule in &rules {
            let one = Instant::now();
            measure(&store, rule, at, &never).expect("an evaluation");
            times.push((one.elapsed(), rule));
        }
        let total = started.elapsed();
        totals.push(total.as_secs_f64());
        let (slowest, which) = *times.iter().max_by_key(|(d, _)| *d).expect("rules");
        let mut durations: Vec<Duration> = times.iter().map(|(d, _)| *d).collect();
        println!(
            "| {} | {:.0} ms | {:.2} ms | {:.2} ms | {:.1} ms | {} of {} over {} |",
            run + 1,
            ms(total),
            ms(percentile(&mut durations, 50.0)),
            ms(percentile(&mut durations, 99.0)),
            ms(slowest),
            which.spec.measure.as_str(),
            which.query.user_id,
            which.spec.window,
        );
    }
    println!(
        "median round: {:.0} ms for {} rules",
        median(totals) * 1e3,
        rules.len()
    );
}
