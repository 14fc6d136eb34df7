//! Mapping benchmark: `map_request` alone, in process, on the single core it runs on.
//!
//!     cargo bench --bench mapping -- [--runs 5]
//!
//! - `workload`: exports of 512 records of the deterministic workload, as the ingest bench sends.
//! - `documents`: the tantivy documents of those records as the store's writer builds them
//!   (stored document, scoped terms, payload terms by path).
//! - `huge resource`: one export of 20,000 records under a Resource of 20,000 attributes, the
//!   ones the mapping reads at the end (the shape that was quadratic when each field of each
//!   record scanned the Resource).

use std::time::{Duration, Instant};

use logbridge::mapping::{Admission, MappingConfig, map_request};
use logbridge::store::{BareIndex, StoreOptions};
use logbridge::workload::Workload;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

fn request(
    records: Vec<opentelemetry_proto::tonic::logs::v1::LogRecord>,
    resource: Vec<KeyValue>,
) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let mut runs = 5;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    let config = MappingConfig::default();

    let mut workload = Workload::new(1);
    let exports: Vec<ExportLogsServiceRequest> = (0..200)
        .map(|n| {
            let records = (0..512)
                .map(|i| workload.next_activity().to_log_record(1 + n * 512 + i))
                .collect();
            request(records, vec![attribute("service.name", "voice-worker")])
        })
        .collect();
    let samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            for export in &exports {
                let mapped = map_request(&config, None, 0, export, |_| Admission::Keep).unwrap();
                assert_eq!(mapped.logs.len(), 512);
            }
            started.elapsed()
        })
        .collect();
    let took = median(samples);
    println!(
        "workload: {} records in {:.1} ms, {:.0} records/s (median of {runs})",
        200 * 512,
        took.as_secs_f64() * 1e3,
        (200.0 * 512.0) / took.as_secs_f64()
    );

    let logs: Vec<_> = exports
        .iter()
        .flat_map(|export| {
            map_request(&config, None, 0, export, |_| Admission::Keep)
                .unwrap()
                .logs
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let index = BareIndex::create(dir.path(), &StoreOptions::new(64 << 20)).expect("an index");
    let samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            for (seq, log) in logs.iter().enumerate() {
                std::hint::black_box(index.document(log, seq as u64));
            }
            started.elapsed()
        })
        .collect();
    let took = median(samples);
    println!(
        "documents: {} built in {:.1} ms, {:.0} documents/s (median of {runs})",
        logs.len(),
        took.as_secs_f64() * 1e3,
        logs.len() as f64 / took.as_secs_f64()
    );

    let mut resource: Vec<KeyValue> = (0..20_000)
        .map(|i| attribute(&format!("resource.noise.{i}"), "x"))
        .collect();
    resource.push(attribute("activity.assistant_id", "from-resource"));
    resource.push(attribute("user.id", "user-r"));
    let records = Workload::new(2)
        .take(20_000)
        .enumerate()
        .map(|(i, activity)| {
            let mut record = activity.to_log_record(1 + i as u64);
            record
                .attributes
                .retain(|kv| kv.key != "activity.assistant_id" && kv.key != "user.id");
            record
        })
        .collect();
    let huge = request(records, resource);
    let samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let mapped = map_request(&config, None, 0, &huge, |_| Admission::Keep).unwrap();
            assert_eq!(mapped.logs.len(), 20_000);
            started.elapsed()
        })
        .collect();
    println!(
        "huge resource: 20,000 records under 20,000 resource attributes in {:.1} ms (median of {runs})",
        median(samples).as_secs_f64() * 1e3
    );
}
