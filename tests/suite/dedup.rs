//! Exactly once across client retries: the same records sent again by real OTel SDK exporters,
//! over HTTP/protobuf, HTTP/JSON and gRPC, in batches of other sizes, with `kill -9` of the real
//! binary between the sends, are acknowledged and stored once; distinct records that share a
//! timestamp are all kept.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use common::PATIENCE;
use common::process::{
    Served, serve, stored_messages, total, wait_ready, write_config_with, write_key,
};
use logbridge::auth::Secret;
use logbridge::emit::{EmitOptions, exporter};
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_otlp::Protocol;
use opentelemetry_sdk::logs::{BatchConfigBuilder, BatchLogProcessor, SdkLoggerProvider};

/// Records sent in each round.
const RECORDS: usize = 1000;

/// Ten records share each nanosecond.
const SAME_TIME: usize = 10;

/// Nanoseconds since the epoch of the first record.
const BASE: u64 = 1_760_000_000_000_000_000;

/// Sends `messages` through the SDK's batch processor over `protocol`, `batch` records an
/// export at most (the processor cuts shorter ones too, as it catches up), and waits until
/// every export was acknowledged. Record `i` is stamped
/// `BASE + i / SAME_TIME`, observed then too: sent again, it is the same record.
async fn send(
    served: &Served,
    secret: &Secret,
    protocol: Protocol,
    batch: usize,
    messages: &[String],
) {
    let endpoint = match protocol {
        Protocol::Grpc => format!("http://{}", served.grpc),
        _ => format!("http://{}", served.http),
    };
    let options = EmitOptions {
        protocol,
        endpoint: Some(endpoint),
        key: Some(secret.expose().to_owned()),
        count: 0,
        user: None,
        seed: 0,
        gzip: false,
    };
    let processor = BatchLogProcessor::builder(exporter(&options).unwrap())
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_export_batch_size(batch)
                .with_max_queue_size(RECORDS * 2)
                .build(),
        )
        .build();
    let provider = SdkLoggerProvider::builder()
        .with_log_processor(processor)
        .build();
    let logger = provider.logger("dedup-test");
    for (i, message) in messages.iter().enumerate() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(BASE + (i / SAME_TIME) as u64);
        let mut record = logger.create_log_record();
        record.set_timestamp(at);
        record.set_observed_timestamp(at);
        record.set_severity_number(Severity::Info);
        record.set_severity_text("INFO");
        record.set_body(AnyValue::from(message.clone()));
        record.add_attribute("activity.log_type", "tool_call");
        record.add_attribute("activity.assistant_id", "asst-1");
        record.add_attribute("activity.room_name", format!("room-{}", i % 7));
        record.add_attribute("activity.latency_ms", 120i64);
        logger.emit(record);
    }
    tokio::task::spawn_blocking(move || {
        provider.force_flush().unwrap();
        provider.shutdown().unwrap();
    })
    .await
    .unwrap();
}

/// The value of a counter in `/metrics`; the test fails if the server does not report it.
async fn counter(served: &Served, name: &str) -> f64 {
    let text = common::client()
        .get(format!("http://{}/metrics", served.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("/metrics has no {name}:\n{text}"))
}

/// Waits until the user has `expected` logs.
async fn wait_for_total(served: &Served, secret: &Secret, expected: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = total(&served.api, secret).await;
        if now == expected {
            return;
        }
        assert!(now < expected, "{now} logs stored, {expected} sent");
        assert!(
            Instant::now() < deadline,
            "{now} of {expected} logs visible"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kill(served: &mut Served) {
    served.child.kill().unwrap();
    served.child.wait().unwrap();
}

fn assert_once_each(stored: &[String], sent: &[&[String]]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for message in stored {
        *counts.entry(message.as_str()).or_default() += 1;
    }
    let expected: usize = sent.iter().map(|s| s.len()).sum();
    assert_eq!(stored.len(), expected);
    for message in sent.iter().flat_map(|s| s.iter()) {
        assert_eq!(counts.get(message.as_str()), Some(&1), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_export_sent_three_times_over_http_and_grpc_with_kill_9_between_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("index");
    // no commit before the kill: the write-ahead log alone has the first records
    let config = write_config_with(dir.path(), &index, "commit_interval_ms = 600000", "");
    let secret = Secret::generate();
    write_key(dir.path(), &secret);
    let sent: Vec<String> = (0..RECORDS).map(|i| format!("call {i}")).collect();

    // first: HTTP/protobuf, the SDK's default batches of 512
    let mut served = serve(&config);
    wait_ready(&served.api).await;
    send(&served, &secret, Protocol::HttpBinary, 512, &sent).await;
    kill(&mut served);

    // again: HTTP/JSON in batches of 100, after a restart that replayed the log
    write_config_with(dir.path(), &index, "commit_interval_ms = 100", "");
    let mut served = serve(&config);
    wait_ready(&served.api).await;
    send(&served, &secret, Protocol::HttpJson, 100, &sent).await;
    assert_eq!(
        counter(&served, "logbridge_records_duplicate_total").await,
        1000.0
    );
    wait_for_total(&served, &secret, 1000).await;
    // committed: the write-ahead log is emptied, the journal alone remembers
    kill(&mut served);

    // and again: gRPC in batches of 333
    let served = serve(&config);
    wait_ready(&served.api).await;
    send(&served, &secret, Protocol::Grpc, 333, &sent).await;
    assert_eq!(
        counter(&served, "logbridge_records_duplicate_total").await,
        1000.0
    );
    assert_eq!(
        counter(&served, "logbridge_records_accepted_total").await,
        1000.0
    );

    // new records at the same nanoseconds are new: every one is kept
    let other: Vec<String> = (0..RECORDS).map(|i| format!("other call {i}")).collect();
    send(&served, &secret, Protocol::Grpc, 512, &other).await;
    wait_for_total(&served, &secret, 2000).await;
    assert_eq!(
        counter(&served, "logbridge_records_duplicate_total").await,
        1000.0
    );
    let stored = stored_messages(&served.api, &secret).await;
    assert_once_each(&stored, &[&sent, &other]);
}
