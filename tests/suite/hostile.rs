//! Broken and hostile input: each gets a clear error or a documented outcome, and the server
//! keeps serving.

use crate::common;

use common::*;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList};
use prost::Message as _;
use serde_json::json;
use tonic::Code;

/// An AnyValue `depth` levels deep: arrays within kvlists within arrays...
fn nested(depth: usize) -> Value {
    let mut value = Value::StringValue("leaf".to_owned());
    for level in 0..depth {
        let inner = AnyValue { value: Some(value) };
        value = if level % 2 == 0 {
            Value::ArrayValue(ArrayValue {
                values: vec![inner],
            })
        } else {
            Value::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    key: "k".to_owned(),
                    value: Some(inner),
                    ..Default::default()
                }],
            })
        };
    }
    value
}

async fn post_protobuf(app: &TestApp, body: Vec<u8>) -> (u16, tonic_types::Status) {
    let response = app
        .client
        .post(format!("{}/v1/logs", app.http_url))
        .bearer_auth(app.keys.alice.expose())
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    (
        status,
        tonic_types::Status::decode(body).unwrap_or_default(),
    )
}

/// The server still takes and serves a normal record; `message` is one word.
async fn still_serving(app: &TestApp, message: &str) {
    app.ingest(
        &app.keys.alice,
        vec![activity("tool_call", at_ms(999), message)],
    )
    .await;
    let data = app.logs(&app.keys.alice, &format!("q={message}")).await;
    assert_eq!(messages(&data), [message]);
}

#[tokio::test]
async fn absurdly_nested_values_are_refused_at_decoding() {
    let app = spawn_app().await;
    let record = with_attr(
        activity("tool_call", at_ms(1), "deep"),
        "activity.request_data",
        nested(300),
    );
    let status = app
        .export(&app.keys.alice, vec![record.clone()])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("recursion limit"), "{status:?}");

    let (status, body) = post_protobuf(&app, request_of(vec![record]).encode_to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(body.code, 3);
    assert!(body.message.contains("recursion limit"), "{}", body.message);

    // decodable, but deeper than request_data may nest: that record alone is rejected
    let deep = with_attr(
        activity("tool_call", at_ms(2), "deep"),
        "activity.request_data",
        text(&format!(r#"{{"k":{}{}}}"#, "[".repeat(40), "]".repeat(40))),
    );
    let response = app
        .export(
            &app.keys.alice,
            vec![deep, activity("tool_call", at_ms(3), "fine")],
        )
        .await
        .unwrap();
    assert_eq!(
        response.partial_success.unwrap().error_message,
        "1 of 2 log records rejected: record 0: request_data nests deeper than 32 levels"
    );
    still_serving(&app, "afternesting").await;
}

#[tokio::test]
async fn invalid_utf8_is_a_decoding_error() {
    let app = spawn_app().await;
    let mut body = request_of(vec![activity("tool_call", at_ms(1), "ZZZZ")]).encode_to_vec();
    let at = body.windows(4).position(|w| w == b"ZZZZ").unwrap();
    body[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
    let (status, status_body) = post_protobuf(&app, body.clone()).await;
    assert_eq!(status, 400);
    assert!(
        status_body
            .message
            .contains("invalid string value: data is not UTF-8 encoded"),
        "{}",
        status_body.message
    );

    let mut json =
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"ZZZZ"}}]}]}]}"#
            .to_vec();
    let at = json.windows(4).position(|w| w == b"ZZZZ").unwrap();
    json[at..at + 2].copy_from_slice(&[0xc3, 0x28]);
    let response = app
        .client
        .post(format!("{}/v1/logs", app.http_url))
        .bearer_auth(app.keys.alice.expose())
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let message = response.json::<serde_json::Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with("invalid OTLP/JSON: invalid unicode code point"),
        "{message}"
    );
    still_serving(&app, "afterutf8").await;
}

#[tokio::test]
async fn huge_values_are_cut_or_rejected_per_record() {
    let app = spawn_app().await;
    let huge_message = "m".repeat(1 << 20);
    let huge_data = format!(r#"{{"blob":"{}"}}"#, "d".repeat(1 << 20));
    let records = vec![
        activity("tool_call", at_ms(1), &huge_message),
        with_attr(
            activity("tool_call", at_ms(2), "big data"),
            "activity.request_data",
            text(&huge_data),
        ),
        with_attr(
            activity("tool_call", at_ms(3), "long name"),
            "activity.assistant_id",
            text(&"a".repeat(10_000)),
        ),
    ];
    let response = app.export(&app.keys.alice, records).await.unwrap();
    assert_eq!(
        response.partial_success.unwrap().error_message,
        "2 of 3 log records rejected: record 1: request_data is longer than 65536 bytes; \
         record 2: assistant_id is longer than 256 bytes"
    );
    app.flush().await;
    let data = app.logs(&app.keys.alice, "").await;
    let message = data["logs"][0]["message"].as_str().unwrap();
    assert_eq!(
        message.len(),
        32 * 1024 + "... [truncated from 1048576 bytes]".len()
    );
    assert!(message.ends_with("mmm... [truncated from 1048576 bytes]"));
    still_serving(&app, "afterhuge").await;
}

#[tokio::test]
async fn absurd_timestamps_are_kept_as_sent_or_refused_when_not_numbers() {
    let app = spawn_app().await;
    let mut zero = activity("tool_call", 0, "zero time");
    zero.observed_time_unix_nano = at_ms(5);
    let far = activity("tool_call", u64::MAX, "far future");
    app.ingest(&app.keys.alice, vec![zero, far]).await;
    let data = app.logs(&app.keys.alice, "").await;
    assert_eq!(messages(&data), ["far future", "zero time"]);
    assert_eq!(data["logs"][0]["timestamp"], "2554-07-21T23:34:33.709Z");
    assert_eq!(data["logs"][1]["timestamp"], "2026-03-10T09:15:42.005Z");
    let data = app
        .logs(&app.keys.alice, "end_time=2100-01-01T00:00:00Z")
        .await;
    assert_eq!(messages(&data), ["zero time"]);

    let body = serde_json::to_vec(&json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"timeUnixNano": "18446744073709551616"}
    ]}]}]}))
    .unwrap();
    let response = app
        .client
        .post(format!("{}/v1/logs", app.http_url))
        .bearer_auth(app.keys.alice.expose())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"code": 3, "message": "invalid OTLP/JSON: resourceLogs[0].scopeLogs[0].logRecords[0].timeUnixNano must be an unsigned 64-bit integer or a decimal string"})
    );
    still_serving(&app, "aftertime").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_built_to_expand_are_refused_before_they_do() {
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let app = spawn_app().await;
    let export = |resource: Vec<KeyValue>, records: usize| {
        opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(); records],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    };

    // a million empty records: 2 MB on the wire, hundreds of MB decoded
    // encoded before the call: a million records take seconds to encode in a debug build, which
    // a busy machine would spend of the server's first-request deadline
    let huge = export(vec![], 1_000_000).encode_to_vec();
    let status = app.export_raw(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "the export decodes to more than 134217728 bytes"
    );

    // a 60 KB value in the Resource, read by every one of a thousand empty records
    let data = format!("{{\"blob\":\"{}\"}}", "x".repeat(60_000));
    let resource = vec![
        kv("activity.log_type", text("tool_call")),
        kv("activity.request_data", text(&data)),
        kv("activity.response_data", text(&data)),
    ];
    let request = export(resource, 1_000);
    assert!(request.encode_to_vec().len() < 200_000);
    let status = app
        .grpc_client()
        .await
        .export(authorized(request.clone(), &app.keys.alice))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "the export maps to more than 134217728 bytes"
    );
    let (code, body) = post_protobuf(&app, request.encode_to_vec()).await;
    assert_eq!(code, 413);
    assert_eq!(body.message, "the export maps to more than 134217728 bytes");

    // nothing of them was stored, and the server keeps serving
    app.flush().await;
    assert_eq!(app.logs(&app.keys.alice, "limit=1").await["total"], 0);
    still_serving(&app, "afterwards").await;
}
