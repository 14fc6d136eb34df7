//! Storage faults a full disk does not reach in a fixed order, injected on command at the write
//! points of the write-ahead log and the index: what clients, `/readyz` and `/metrics` see, and
//! that nothing acknowledged is lost or stored twice. (`tests/full_disk.rs` fills real disks.)

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use logbridge::emit::{EmitOptions, emit};
use logbridge::faults::{Fault, Faults, WritePoint};
use opentelemetry_otlp::Protocol;
use prost::Message as _;
use tonic::Code;
use tonic_types::StatusExt as _;

async fn app_with_faults(faults: &Faults, commit_interval_ms: u64) -> TestApp {
    spawn_app_with(AppOptions {
        faults: faults.clone(),
        commit_interval_ms,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_refused_retryably_and_ingest_resumes_by_itself() {
    let faults = Faults::injector();
    let mut app = app_with_faults(&faults, 60_000).await;
    app.ingest(
        &app.keys.alice,
        vec![activity("tool_call", at_ms(1), "before")],
    )
    .await;

    faults.fail_times(WritePoint::WalSync, Fault::Io, 1);
    let batch = vec![activity("tool_call", at_ms(2), "during")];
    let status = app
        .export(&app.keys.alice, batch.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        "logbridge cannot store logs now (writing the write-ahead log: Input/output error \
         (os error 5)), retry later"
    );
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));

    // the operator's view while it fails
    let (code, reason) = readyz(&app.api_url).await;
    assert_eq!(code, 503);
    assert_eq!(
        reason,
        "storage failing: writing the write-ahead log: Input/output error (os error 5); \
         exports are refused until it recovers\n"
    );
    assert_eq!(metric(&app.api_url, "logbridge_storage_failing").await, 1.0);
    assert_eq!(
        metric(
            &app.api_url,
            "logbridge_storage_failures_total{stage=\"wal_write\"}"
        )
        .await,
        1.0
    );
    // reads go on from what is committed
    assert_eq!(messages(&app.logs(&app.keys.alice, "").await), ["before"]);

    // HTTP clients get the same refusal while it lasts
    let response = app
        .client
        .post(format!("{}/v1/logs", app.http_url))
        .bearer_auth(app.keys.alice.expose())
        .header("content-type", "application/x-protobuf")
        .body(request_of(batch.clone()).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");

    // back by itself (within the patience), without a restart, and the client's retry is
    // stored once
    wait_for_readyz(&app.api_url, 200).await;
    app.ingest(&app.keys.alice, batch).await;
    assert_eq!(
        messages(&app.logs(&app.keys.alice, "").await),
        ["during", "before"]
    );
    assert_eq!(metric(&app.api_url, "logbridge_storage_failing").await, 0.0);
    assert_eq!(
        metric(&app.api_url, "logbridge_storage_recoveries_total").await,
        1.0
    );
    app.restart().await;
    assert_eq!(
        messages(&app.logs(&app.keys.alice, "").await),
        ["during", "before"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_cannot_commit_refuses_until_it_can_and_sdk_exporters_lose_nothing() {
    let faults = Faults::injector();
    let mut app = app_with_faults(&faults, 100).await;
    // every index write fails: commits cannot flush their segments
    faults.fail(WritePoint::IndexWrite, Fault::NoSpace);

    let exporters: Vec<_> = [Protocol::Grpc, Protocol::HttpBinary]
        .into_iter()
        .enumerate()
        .map(|(n, protocol)| {
            let options = EmitOptions {
                protocol,
                endpoint: Some(match protocol {
                    Protocol::Grpc => app.grpc_url.clone(),
                    _ => app.http_url.clone(),
                }),
                key: Some(app.keys.alice.expose().to_owned()),
                count: 1500,
                user: None,
                seed: n as u64,
                gzip: false,
            };
            tokio::spawn(async move { emit(&options).await })
        })
        .collect();

    let (_, reason) = wait_for_readyz(&app.api_url, 503).await;
    assert!(
        reason.starts_with("storage failing: ") && reason.contains("No space left on device"),
        "{reason}"
    );
    // refusals reach the clients, who keep retrying
    let deadline = Instant::now() + PATIENCE;
    while refused_exports(&app.api_url).await == 0.0 {
        assert!(Instant::now() < deadline, "no export was refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.logs(&app.keys.alice, "limit=1").await["total"], 0);

    faults.clear(WritePoint::IndexWrite);
    for exporter in exporters {
        exporter.await.unwrap().unwrap();
    }
    app.flush().await;
    assert_eq!(app.logs(&app.keys.alice, "limit=1").await["total"], 3000);
    assert!(
        labeled_metric(
            &app.api_url,
            "logbridge_storage_failures_total{stage=\"index_commit\"}"
        )
        .await
            + labeled_metric(
                &app.api_url,
                "logbridge_storage_failures_total{stage=\"index_write\"}"
            )
            .await
            >= 1.0
    );
    app.restart().await;
    assert_eq!(app.logs(&app.keys.alice, "limit=1").await["total"], 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_merges_lose_nothing_and_ingest_goes_on() {
    let faults = Faults::injector();
    let mut app = app_with_faults(&faults, 60_000).await;
    faults.fail(WritePoint::Merge, Fault::NoSpace);
    // a commit per export: enough segments for the merge policy to merge them
    let mut sent = 0;
    let deadline = Instant::now() + PATIENCE;
    while faults.hits(WritePoint::Merge) == 0 {
        assert!(Instant::now() < deadline, "no merge was attempted");
        let records = (0..50)
            .map(|i| activity("tool_call", at_ms(sent + i), &format!("m{}", sent + i)))
            .collect();
        app.ingest(&app.keys.alice, records).await;
        sent += 50;
    }
    assert_eq!(readyz(&app.api_url).await.0, 200);
    assert!(
        metric(
            &app.api_url,
            "logbridge_storage_failures_total{stage=\"merge\"}"
        )
        .await
            >= 1.0
    );
    faults.clear(WritePoint::Merge);
    for _ in 0..10 {
        let records = (0..50)
            .map(|i| activity("tool_call", at_ms(sent + i), &format!("m{}", sent + i)))
            .collect();
        app.ingest(&app.keys.alice, records).await;
        sent += 50;
    }
    let expected: Vec<String> = (0..sent).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(
        common::process::stored_messages(
            app.api_url.trim_start_matches("http://"),
            &app.keys.alice
        )
        .await,
        expected
    );
    app.restart().await;
    assert_eq!(app.logs(&app.keys.alice, "limit=1").await["total"], sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_rotate_keeps_growing_and_replays_nothing_twice() {
    let faults = Faults::injector();
    let mut app = app_with_faults(&faults, 60_000).await;
    faults.fail(WritePoint::WalRotate, Fault::Io);
    for n in 0..3u64 {
        app.ingest(
            &app.keys.alice,
            vec![activity("tool_call", at_ms(n), &format!("r{n}"))],
        )
        .await;
    }
    assert!(metric(&app.api_url, "logbridge_wal_bytes").await > 0.0);
    assert_eq!(
        metric(
            &app.api_url,
            "logbridge_storage_failures_total{stage=\"wal_rotate\"}"
        )
        .await,
        3.0
    );
    assert_eq!(readyz(&app.api_url).await.0, 200);
    // the log still holds every committed batch: replay must skip them all
    app.restart().await;
    assert_eq!(
        messages(&app.logs(&app.keys.alice, "").await),
        ["r2", "r1", "r0"]
    );
    assert_eq!(metric(&app.api_url, "logbridge_wal_bytes").await, 0.0);
}
