//! OTLP/HTTP against a running server: the Rust SDK exporter (protobuf and JSON), OTLP/JSON
//! variants, gzip, and every error status with its `google.rpc.Status` body.

use crate::common;

use std::io::Write as _;

use common::*;
use logbridge::auth::Secret;
use logbridge::emit::{EmitOptions, emit};
use logbridge::workload::Workload;
use opentelemetry_otlp::Protocol;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message as _;
use serde_json::json;

const FIXTURE: &[u8] = include_bytes!("../data/otlp-logs-example.json");

fn sdk_options(app: &TestApp, protocol: Protocol, count: usize, gzip: bool) -> EmitOptions {
    EmitOptions {
        protocol,
        endpoint: Some(app.http_url.clone()),
        key: Some(app.keys.alice.expose().to_owned()),
        count,
        user: None,
        seed: 5,
        gzip,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_exporter_delivers_over_http_protobuf_and_json() {
    let app = spawn_app().await;
    emit(&sdk_options(&app, Protocol::HttpBinary, 2100, false))
        .await
        .unwrap();
    app.flush().await;
    let data = app.logs(&app.keys.alice, "limit=5").await;
    assert_eq!(data["total"], 2100);
    let sent: Vec<String> = Workload::new(5).take(2100).map(|a| a.message).collect();
    let newest: Vec<String> = sent.iter().rev().take(5).cloned().collect();
    assert_eq!(messages(&data), newest);

    emit(&sdk_options(&app, Protocol::HttpJson, 150, false))
        .await
        .unwrap();
    emit(&sdk_options(&app, Protocol::HttpBinary, 150, true))
        .await
        .unwrap();
    app.flush().await;
    assert_eq!(app.logs(&app.keys.alice, "").await["total"], 2400);
}

struct Post {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: Vec<u8>,
}

async fn post(
    app: &TestApp,
    key: Option<&Secret>,
    content_type: Option<&str>,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> Post {
    let mut request = app
        .client
        .post(format!("{}/v1/logs", app.http_url))
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key.expose());
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Post {
        status: response.status().as_u16(),
        content_type: header("content-type").unwrap_or_default(),
        retry_after: header("retry-after"),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

/// Key, Content-Type, Content-Encoding and body of a request.
struct Request<'a>(
    Option<&'a Secret>,
    Option<&'a str>,
    Option<&'a str>,
    Vec<u8>,
);

fn json_body(post: &Post) -> serde_json::Value {
    serde_json::from_slice(&post.body).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// An OTLP/JSON export of one tool call, with the given timestamp JSON.
fn json_export(time: serde_json::Value, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "resourceLogs": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "worker"}}]},
            "scopeLogs": [{
                "logRecords": [{
                    "timeUnixNano": time,
                    "severityNumber": "SEVERITY_NUMBER_INFO",
                    "traceId": "5B8EFFF798038103D269B633813FC60C",
                    "spanId": "",
                    "body": {"stringValue": message},
                    "attributes": [
                        {"key": "activity.log_type", "value": {"stringValue": "tool_call"}},
                        {"key": "activity.latency_ms", "value": {"intValue": "250"}},
                        {"key": "activity.request_data", "value": {"kvlistValue": {"values": [
                            {"key": "url", "value": {"stringValue": "https://example.com"}},
                            {"key": "retry", "value": {"boolValue": false}}
                        ]}}}
                    ]
                }]
            }]
        }]
    }))
    .unwrap()
}

#[tokio::test]
async fn the_published_otlp_json_example_decodes_and_is_rejected_by_mapping() {
    let app = spawn_app().await;
    let post = post(
        &app,
        Some(&app.keys.alice),
        Some("application/json"),
        None,
        FIXTURE.to_vec(),
    )
    .await;
    assert_eq!(post.status, 200);
    assert_eq!(post.content_type, "application/json");
    assert_eq!(
        json_body(&post),
        json!({"partialSuccess": {
            "rejectedLogRecords": "1",
            "errorMessage": "1 of 1 log records rejected: record 0: no log_type"
        }})
    );
}

#[tokio::test]
async fn otlp_json_takes_numbers_strings_and_snake_case() {
    let app = spawn_app().await;
    let number = json_export(json!(1_773_134_142_000_000_000u64), "as number");
    let string = json_export(json!("1773134142001000000"), "as string");
    for body in [number, string] {
        let post = post(
            &app,
            Some(&app.keys.alice),
            Some("application/json"),
            None,
            body,
        )
        .await;
        assert_eq!(post.status, 200);
        assert_eq!(json_body(&post), json!({}));
    }
    let snake = serde_json::to_vec(&json!({"resource_logs": [{"scope_logs": [{"log_records": [{
        "time_unix_nano": "1773134142002000000",
        "event_name": "end_call_webhook",
        "body": {"string_value": "snake"}
    }]}]}]}))
    .unwrap();
    let post = post(
        &app,
        Some(&app.keys.alice),
        Some("APPLICATION/JSON; charset=utf-8"),
        None,
        snake,
    )
    .await;
    assert_eq!(post.status, 200);
    assert_eq!(json_body(&post), json!({}));
    app.flush().await;

    let data = app.logs(&app.keys.alice, "").await;
    assert_eq!(messages(&data), ["snake", "as string", "as number"]);
    let logs = data["logs"].as_array().unwrap();
    assert_eq!(logs[0]["timestamp"], "2026-03-10T09:15:42.002Z");
    assert_eq!(logs[0]["log_type"], "end_call_webhook");
    assert_eq!(logs[1]["timestamp"], "2026-03-10T09:15:42.001Z");
    assert_eq!(logs[2]["timestamp"], "2026-03-10T09:15:42.000Z");
    assert_eq!(logs[2]["trace_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(logs[2]["span_id"], serde_json::Value::Null);
    assert_eq!(logs[2]["latency_ms"], 250);
    assert_eq!(
        logs[2]["request_data"],
        json!({"url": "https://example.com", "retry": false})
    );
}

#[tokio::test]
async fn protobuf_and_gzip_bodies_answer_in_kind() {
    let app = spawn_app().await;
    let body = request_of(vec![activity("tool_call", at_ms(1), "proto")]).encode_to_vec();
    let post1 = post(
        &app,
        Some(&app.keys.alice),
        Some("application/x-protobuf"),
        None,
        body.clone(),
    )
    .await;
    assert_eq!(post1.status, 200);
    assert_eq!(post1.content_type, "application/x-protobuf");
    let response = ExportLogsServiceResponse::decode(&post1.body[..]).unwrap();
    assert_eq!(response.partial_success, None);

    let zipped = request_of(vec![activity("tool_call", at_ms(2), "proto gzip")]).encode_to_vec();
    let post2 = post(
        &app,
        Some(&app.keys.alice),
        Some("application/x-protobuf"),
        Some("gzip"),
        gzip(&zipped),
    )
    .await;
    assert_eq!(post2.status, 200);

    let post3 = post(
        &app,
        Some(&app.keys.alice),
        Some("application/json"),
        Some("GZIP"),
        gzip(&json_export(json!(1), "json gzip")),
    )
    .await;
    assert_eq!(post3.status, 200);
    assert_eq!(json_body(&post3), json!({}));

    // partial success in protobuf
    let bad = request_of(vec![activity("bogus", at_ms(3), "x")]).encode_to_vec();
    let post4 = post(
        &app,
        Some(&app.keys.alice),
        Some("application/x-protobuf"),
        None,
        bad,
    )
    .await;
    let response = ExportLogsServiceResponse::decode(&post4.body[..]).unwrap();
    assert_eq!(response.partial_success.unwrap().rejected_log_records, 1);

    app.flush().await;
    assert_eq!(
        messages(&app.logs(&app.keys.alice, "").await),
        ["proto gzip", "proto", "json gzip"]
    );
}

#[tokio::test]
async fn errors_carry_a_status_in_the_request_encoding() {
    let app = spawn_app().await;
    let valid_json = json_export(json!(1), "x");
    let valid_proto = request_of(vec![activity("tool_call", at_ms(1), "x")]).encode_to_vec();

    // JSON errors
    let alice = Some(&app.keys.alice);
    let json_type = Some("application/json");
    let cases = [
        (
            Request(None, json_type, None, valid_json.clone()),
            401,
            16,
            "missing API key: send Authorization: Bearer <key>",
        ),
        (
            Request(
                Some(&app.keys.alice_reader),
                json_type,
                None,
                valid_json.clone(),
            ),
            403,
            7,
            "this API key lacks the ingest scope",
        ),
        (
            Request(alice, json_type, None, b"{\"resourceLogs\": [".to_vec()),
            400,
            3,
            "invalid OTLP/JSON: EOF while parsing a list at line 1 column 18",
        ),
        (
            Request(
                alice,
                json_type,
                None,
                b"{\"resourceLogs\": [{\"scopeLogs\": 5}]}".to_vec(),
            ),
            400,
            3,
            "invalid OTLP/JSON: resourceLogs[0].scopeLogs must be an array",
        ),
        (
            Request(
                alice,
                json_type,
                Some("gzip"),
                b"this is certainly not gzip data".to_vec(),
            ),
            400,
            3,
            "invalid gzip body: invalid gzip header",
        ),
        (
            Request(alice, json_type, Some("br"), valid_json.clone()),
            400,
            3,
            "unsupported Content-Encoding \"br\" (expected gzip or none)",
        ),
        (
            Request(alice, Some("text/plain"), None, valid_json.clone()),
            415,
            3,
            "Content-Type must be application/x-protobuf or application/json",
        ),
        (
            Request(alice, None, None, valid_json.clone()),
            415,
            3,
            "Content-Type must be application/x-protobuf or application/json",
        ),
    ];
    for (Request(key, content_type, encoding, body), status, code, message) in cases {
        let post = post(&app, key, content_type, encoding, body).await;
        assert_eq!(post.status, status, "{message}");
        assert_eq!(post.content_type, "application/json", "{message}");
        assert_eq!(json_body(&post), json!({"code": code, "message": message}));
    }

    // protobuf errors
    let cases: Vec<(Option<&Secret>, Vec<u8>, u16, i32)> = vec![
        (None, valid_proto.clone(), 401, 16),
        (
            Some(&app.keys.platform),
            valid_proto[..valid_proto.len() - 2].to_vec(),
            400,
            3,
        ),
    ];
    for (key, body, status, code) in cases {
        let post = post(&app, key, Some("application/x-protobuf"), None, body).await;
        assert_eq!(post.status, status);
        assert_eq!(post.content_type, "application/x-protobuf");
        let decoded = tonic_types::Status::decode(&post.body[..]).unwrap();
        assert_eq!(decoded.code, code);
        assert!(!decoded.message.is_empty());
    }

    let response = app
        .client
        .get(format!("{}/v1/logs", app.http_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);

    app.flush().await;
    assert_eq!(app.logs(&app.keys.alice, "").await["total"], 0);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_even_when_compressed() {
    let app = spawn_app_with(AppOptions {
        max_message_bytes: 4096,
        ..Default::default()
    })
    .await;
    let big = request_of(vec![activity("tool_call", at_ms(1), &"x".repeat(5000))]).encode_to_vec();
    let post1 = post(
        &app,
        Some(&app.keys.alice),
        Some("application/x-protobuf"),
        None,
        big,
    )
    .await;
    assert_eq!(post1.status, 413);
    let status = tonic_types::Status::decode(&post1.body[..]).unwrap();
    assert_eq!(status.code, 8);
    assert_eq!(
        status.message,
        "the request body exceeds the limit of 4096 bytes"
    );

    // a gzip bomb: within the limit on the wire, 3 MiB inflated
    let bomb = gzip(&vec![b' '; 3 * 1024 * 1024]);
    assert!(
        bomb.len() <= 4096,
        "the bomb fits the limit: {}",
        bomb.len()
    );
    let post2 = post(
        &app,
        Some(&app.keys.alice),
        Some("application/json"),
        Some("gzip"),
        bomb,
    )
    .await;
    assert_eq!(post2.status, 413);
    assert_eq!(
        json_body(&post2),
        json!({"code": 8, "message": "the request body exceeds the limit of 4096 bytes"})
    );
    assert_eq!(post2.retry_after, None);

    // still serving
    let small = request_of(vec![activity("tool_call", at_ms(1), "fits")]).encode_to_vec();
    let post3 = post(
        &app,
        Some(&app.keys.alice),
        Some("application/x-protobuf"),
        None,
        small,
    )
    .await;
    assert_eq!(post3.status, 200);
}
