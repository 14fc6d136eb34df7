//! Fairness benchmark: how much one user's flood slows another user's exports. User A, limited
//! to 200 records a second (burst 200), floods the release binary from 2 connections with 16
//! exports of 100 records in flight on each, sending again the moment an answer comes whatever
//! it says; user B sends exports of 20 records one after another, alone and then during the
//! flood, and their latencies are compared.
//!
//!     cargo bench --bench fairness -- [--runs 5] [--exports 300]
//!
//! The contract (B is never refused while A floods, A's excess is refused with
//! RESOURCE_EXHAUSTED, A gets no more than its limit) is checked by `tests/suite/fairness.rs`;
//! this measures the latencies, which only mean something on a quiet machine.

#[path = "harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::flood::{Flood, FloodReport};
use harness::{BenchKeys, LARGE_USER, Server, median, percentile, raw_grpc};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message as _;

/// A's limit, records a second, and its burst.
const A_LIMIT: u64 = 200;

struct Args {
    runs: usize,
    exports: usize,
}

fn args() -> Args {
    let mut args = Args {
        runs: 5,
        exports: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--runs" => args.runs = value().parse().expect("--runs N"),
            "--exports" => args.exports = value().parse().expect("--exports N"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// An export request of `count` tool calls whose messages start with `prefix`.
fn request(prefix: &str, count: u64) -> ExportLogsServiceRequest {
    let attr = |key: &str, value: &str| KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    };
    let records = (0..count)
        .map(|i| LogRecord {
            time_unix_nano: harness::BASE_NANOS + i * 1_000_000,
            severity_number: 9,
            body: Some(AnyValue {
                value: Some(Value::StringValue(format!("{prefix}-{i}"))),
            }),
            attributes: vec![
                attr("activity.log_type", "tool_call"),
                attr("activity.assistant_id", "asst-1"),
                attr("activity.room_name", "room-1"),
            ],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// `exports` exports of 20 records for B, one after another; their latencies.
async fn measure_b(
    channel: &tonic::transport::Channel,
    authorization: &str,
    round: &str,
    exports: usize,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(exports);
    for e in 0..exports {
        let body = Bytes::from(request(&format!("b-{round}-{e}"), 20).encode_to_vec());
        let started = Instant::now();
        let answer = raw_grpc::export(channel.clone(), authorization, body)
            .await
            .expect("B's export is accepted");
        latencies.push(started.elapsed());
        let answer = ExportLogsServiceResponse::decode(answer.as_slice()).expect("an answer");
        assert_eq!(
            answer.partial_success, None,
            "every one of B's records is taken"
        );
    }
    latencies
}

/// One run's figures.
struct Run {
    alone: (Duration, Duration),
    flood: (Duration, Duration),
    offered_per_second: f64,
    accepted: u64,
    refused: u64,
}

async fn run(exports: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    // A is the large user's key, limited; B the probe's
    let limit = format!(
        "[limits.users.\"{LARGE_USER}\"]\nrecords_per_second = {A_LIMIT}\nburst = {A_LIMIT}\n"
    );
    let served = Server::start_with(
        env!("CARGO_BIN_EXE_logbridge"),
        dir.path(),
        "",
        &BenchKeys::generate(),
        &limit,
    )
    .await;
    let b = served.probe.clone();
    let b_channel = tonic::transport::Endpoint::new(served.grpc.clone())
        .unwrap()
        .connect()
        .await
        .expect("B connects");
    measure_b(&b_channel, &b, "warm", 50).await;
    let mut alone = measure_b(&b_channel, &b, "alone", exports).await;

    // A's excess is refused; the test checks how, this only counts
    let flood = Flood::start(
        served.grpc.clone(),
        served.large_reader.clone(),
        Bytes::from(request("a", 100).encode_to_vec()),
        100,
        |_| {},
    );
    flood
        .wait_refused(
            32,
            Duration::from_secs(60),
            "the flood never got 32 refusals",
        )
        .await;
    let mut flooded = measure_b(&b_channel, &b, "flood", exports).await;
    let FloodReport {
        accepted,
        refused,
        offered_per_second,
        ..
    } = flood.stop();
    Run {
        alone: (percentile(&mut alone, 50.0), percentile(&mut alone, 99.0)),
        flood: (
            percentile(&mut flooded, 50.0),
            percentile(&mut flooded, 99.0),
        ),
        offered_per_second,
        accepted,
        refused,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let args = args();
    println!(
        "B: {} exports of 20 records alone, then during A's flood (A limited to {A_LIMIT}/s)\n",
        args.exports
    );
    println!(
        "| run | B alone p50 | B alone p99 | B flood p50 | B flood p99 | p99 flood / alone | A offered/s | times its limit | A accepted | A refused |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut runs = Vec::new();
    for n in 1..=args.runs {
        let r = run(args.exports).await;
        println!(
            "| {n} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} | {:.0} | {:.0} | {} | {} |",
            ms(r.alone.0),
            ms(r.alone.1),
            ms(r.flood.0),
            ms(r.flood.1),
            ms(r.flood.1) / ms(r.alone.1),
            r.offered_per_second,
            r.offered_per_second / A_LIMIT as f64,
            r.accepted,
            r.refused
        );
        runs.push(r);
    }
    let med = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    println!(
        "| median | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} | {:.0} | {:.0} | | |",
        med(&|r| ms(r.alone.0)),
        med(&|r| ms(r.alone.1)),
        med(&|r| ms(r.flood.0)),
        med(&|r| ms(r.flood.1)),
        med(&|r| ms(r.flood.1) / ms(r.alone.1)),
        med(&|r| r.offered_per_second),
        med(&|r| r.offered_per_second / A_LIMIT as f64),
    );
}
