//! What an operator relies on: metrics, backpressure under a flood, graceful shutdown.

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::process::{serve, stored_messages, terminate, write_config, write_key};
use common::*;
use logbridge::auth::Secret;
use logbridge::emit::{EmitOptions, emit};
use opentelemetry_otlp::Protocol;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use prost::Message as _;
use tonic::Code;
use tonic_types::StatusExt as _;

#[tokio::test]
async fn metrics_count_what_happened() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/metrics", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );

    let mut no_type = activity("tool_call", at_ms(1), "x");
    no_type
        .attributes
        .retain(|kv| kv.key != "activity.log_type");
    let records = vec![
        activity("tool_call", at_ms(1), "a"),
        activity("tool_call", at_ms(2), "b"),
        no_type,
        with_attr(
            activity("tool_call", at_ms(3), "c"),
            "activity.status",
            text("?"),
        ),
    ];
    app.export(&app.keys.alice, records).await.unwrap();
    app.export(&app.keys.alice_reader, vec![])
        .await
        .unwrap_err();
    app.flush().await;
    let bad = app
        .client
        .post(format!("{}/v1/logs", app.http_url))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 415);
    app.logs(&app.keys.alice, "").await;
    app.get_logs(Some(&app.keys.alice), "limit=0").await;

    let expectations = [
        ("logbridge_records_received_total", 4.0),
        ("logbridge_records_accepted_total", 2.0),
        (
            "logbridge_records_rejected_total{reason=\"missing_log_type\"}",
            1.0,
        ),
        (
            "logbridge_records_rejected_total{reason=\"invalid_status\"}",
            1.0,
        ),
        (
            "logbridge_otlp_exports_total{transport=\"grpc\",status=\"OK\"}",
            1.0,
        ),
        (
            "logbridge_otlp_exports_total{transport=\"grpc\",status=\"PERMISSION_DENIED\"}",
            1.0,
        ),
        (
            "logbridge_otlp_exports_total{transport=\"http\",status=\"415\"}",
            1.0,
        ),
        ("logbridge_ingest_queue_depth", 0.0),
        ("logbridge_wal_bytes", 0.0),
        ("logbridge_index_logs", 2.0),
        ("logbridge_index_commits_total", 1.0),
        ("logbridge_index_commit_duration_seconds_count", 1.0),
        (
            "logbridge_logs_request_duration_seconds_count{status=\"200\"}",
            1.0,
        ),
        (
            "logbridge_logs_request_duration_seconds_count{status=\"400\"}",
            1.0,
        ),
    ];
    for (sample, expected) in expectations {
        assert_eq!(metric(&app.api_url, sample).await, expected, "{sample}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_refused_with_retry_information_not_buffered() {
    // room for about two of these exports in flight at once
    let app = spawn_app_with(AppOptions {
        max_message_bytes: 512 * 1024,
        max_inflight_bytes: 16 * 512 * 1024,
        ..Default::default()
    })
    .await;
    let batch = |exporter: usize| -> Vec<_> {
        (0..3000)
            .map(|i| activity("tool_call", at_ms(i), &format!("g{exporter}-{i}")))
            .collect()
    };

    // gRPC: 32 exports at once against a budget for about three
    let mut tasks = Vec::new();
    for exporter in 0..32 {
        let url = app.grpc_url.clone();
        let key = app.keys.alice.clone();
        let records = batch(exporter);
        tasks.push(tokio::spawn(async move {
            let mut client = LogsServiceClient::connect(url).await.unwrap();
            (
                exporter,
                client.export(authorized(request_of(records), &key)).await,
            )
        }));
    }
    let mut accepted = HashSet::new();
    let mut refused = 0;
    for task in tasks {
        let (exporter, result) = task.await.unwrap();
        match result {
            Ok(response) => {
                assert_eq!(response.into_inner().partial_success, None);
                accepted.insert(exporter);
            }
            Err(status) => {
                refused += 1;
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert_eq!(status.message(), "logbridge is overloaded, retry later");
                let retry = status.get_details_retry_info().expect("RetryInfo details");
                assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
                let trailer = status
                    .metadata()
                    .get_bin("google.rpc.retryinfo-bin")
                    .expect("retryinfo trailer")
                    .to_bytes()
                    .unwrap();
                let info = tonic_types::pb::RetryInfo::decode(trailer).unwrap();
                assert_eq!(info.retry_delay.unwrap().seconds, 1);
            }
        }
    }
    assert!(refused > 0, "32 concurrent exports never spent the budget");
    assert!(!accepted.is_empty());

    // HTTP: the same flood gets 503 with Retry-After
    let mut tasks = Vec::new();
    for exporter in 100..132 {
        let client = app.client.clone();
        let url = format!("{}/v1/logs", app.http_url);
        let key = app.keys.alice.clone();
        let body = request_of(batch(exporter)).encode_to_vec();
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(key.expose())
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = response.bytes().await.unwrap();
            (exporter, status, retry_after, body)
        }));
    }
    let mut refused = 0;
    for task in tasks {
        let (exporter, status, retry_after, body) = task.await.unwrap();
        match status {
            200 => {
                accepted.insert(exporter);
            }
            503 => {
                refused += 1;
                assert_eq!(retry_after.as_deref(), Some("1"));
                let status = tonic_types::Status::decode(body).unwrap();
                assert_eq!(status.code, Code::Unavailable as i32);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        refused > 0,
        "32 concurrent HTTP exports never spent the budget"
    );

    // exactly the accepted exports are stored, each record once
    app.flush().await;
    let data = app.logs(&app.keys.alice, "limit=1").await;
    assert_eq!(data["total"], accepted.len() * 3000);
    assert_eq!(
        metric(&app.api_url, "logbridge_ingest_queue_depth").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporters_retry_through_overload_and_lose_nothing() {
    // the SDK sends 512 records (about 330 KB) per export: room for about two at once
    let app = spawn_app_with(AppOptions {
        max_message_bytes: 400 * 1024,
        max_inflight_bytes: 16 * 400 * 1024,
        ..Default::default()
    })
    .await;
    let mut tasks = Vec::new();
    for (n, protocol) in [Protocol::Grpc, Protocol::HttpBinary]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let endpoint = match protocol {
            Protocol::Grpc => app.grpc_url.clone(),
            _ => app.http_url.clone(),
        };
        let options = EmitOptions {
            protocol,
            endpoint: Some(endpoint),
            key: Some(app.keys.alice.expose().to_owned()),
            count: 2500,
            user: None,
            seed: n as u64,
            gzip: false,
        };
        tasks.push(tokio::spawn(async move { emit(&options).await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    app.flush().await;
    assert_eq!(app.logs(&app.keys.alice, "limit=1").await["total"], 15_000);
    // the budget was spent, and the refused batches came back
    let refused = refused_exports(&app.api_url).await;
    assert!(refused > 0.0, "the exporters never spent the budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_exports_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let secret = Secret::generate();
    write_key(dir.path(), &secret);
    let mut served = serve(&config);
    let grpc = format!("http://{}", served.grpc);

    // exporters stream until the server stops answering
    let acked_so_far = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for exporter in 0..3 {
        let grpc = grpc.clone();
        let secret = secret.clone();
        let acked_so_far = acked_so_far.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let Ok(mut client) = LogsServiceClient::connect(grpc).await else {
                return acked;
            };
            for batch in 0.. {
                let messages: Vec<String> = (0..100)
                    .map(|i| format!("s{exporter}-{batch}-{i}"))
                    .collect();
                let records = messages
                    .iter()
                    .map(|m| activity("tool_call", at_ms(1), m))
                    .collect();
                match client
                    .export(authorized(request_of(records), &secret))
                    .await
                {
                    Ok(_) => {
                        acked_so_far.fetch_add(messages.len(), Ordering::Relaxed);
                        acked.extend(messages);
                    }
                    Err(_) => return acked,
                }
            }
            acked
        }));
    }
    // let some records through, then ask it to stop mid-stream
    let deadline = Instant::now() + PATIENCE;
    while acked_so_far.load(Ordering::Relaxed) < 2000 {
        assert!(Instant::now() < deadline, "exports stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // a clean exit, within the patience
    let after = terminate(&mut served);
    assert!(
        after.iter().any(|l| l.contains("logbridge stopped")),
        "{after:#?}"
    );
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    assert!(acked.len() >= 2000);

    let restarted = serve(&config);
    let mut stored = HashSet::new();
    for message in stored_messages(&restarted.api, &secret).await {
        assert!(stored.insert(message.clone()), "{message} stored twice");
    }
    for message in &acked {
        assert!(stored.contains(message), "acknowledged {message} lost");
    }
}
