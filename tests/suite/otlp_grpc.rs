//! OTLP/gRPC against a running server: the Rust SDK exporter, gzip, auth, partial success, and
//! the status codes of the conformance checklist.

use crate::common;

use common::*;
use logbridge::emit::{EmitOptions, emit};
use logbridge::workload::Workload;
use opentelemetry_otlp::Protocol;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use tonic::Code;
use tonic::codec::CompressionEncoding;

fn sdk_options(app: &TestApp, key: &logbridge::auth::Secret, count: usize) -> EmitOptions {
    EmitOptions {
        protocol: Protocol::Grpc,
        endpoint: Some(app.grpc_url.clone()),
        key: Some(key.expose().to_owned()),
        count,
        user: None,
        seed: 11,
        gzip: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_exporter_delivers_over_grpc() {
    let app = spawn_app().await;
    emit(&sdk_options(&app, &app.keys.alice, 2500))
        .await
        .unwrap();
    app.flush().await;

    let data = app.logs(&app.keys.alice, "limit=100").await;
    assert_eq!(data["total"], 2500);
    // newest first: the last activities sent come first
    let sent: Vec<String> = Workload::new(11).take(2500).map(|a| a.message).collect();
    let expected: Vec<String> = sent.iter().rev().take(100).cloned().collect();
    assert_eq!(messages(&data), expected);
    let newest = &data["logs"][0];
    let activity = Workload::new(11).nth(2499).unwrap();
    assert_eq!(newest["log_type"], activity.log_type.as_str());
    assert_eq!(newest["status"], activity.status.as_str());
    assert_eq!(newest["assistant_id"], activity.assistant_id.as_str());
    assert_eq!(newest["room_name"], activity.room_name.as_str());
    assert_eq!(newest["latency_ms"], activity.latency_ms);
    // a kvlist arrives as an object; key order is not kept by the SDK's map, values are
    for (key, value) in activity.request_data.as_object().unwrap() {
        assert_eq!(&newest["request_data"][key], value, "request_data.{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_exporter_sends_gzip_and_platform_keys_name_the_user() {
    let app = spawn_app().await;
    let mut options = sdk_options(&app, &app.keys.platform, 300);
    options.gzip = true;
    options.user = Some("user-bob".to_owned());
    emit(&options).await.unwrap();
    app.flush().await;
    assert_eq!(app.logs(&app.keys.bob, "").await["total"], 300);
    assert_eq!(app.logs(&app.keys.alice, "").await["total"], 0);
}

#[tokio::test]
async fn a_gzip_export_from_a_plain_grpc_client_is_accepted() {
    let app = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(app.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = LogsServiceClient::new(channel)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let request = authorized(
        request_of(vec![activity("tool_call", at_ms(1), "zipped")]),
        &app.keys.alice,
    );
    let response = client.export(request).await.unwrap().into_inner();
    assert_eq!(response.partial_success, None);
    app.flush().await;
    assert_eq!(messages(&app.logs(&app.keys.alice, "").await), ["zipped"]);
}

#[tokio::test]
async fn an_empty_export_succeeds_without_partial_success() {
    let app = spawn_app().await;
    let response = app.export(&app.keys.alice, vec![]).await.unwrap();
    assert_eq!(response.partial_success, None);
    let mut client = app.grpc_client().await;
    let request = authorized(ExportLogsServiceRequest::default(), &app.keys.alice);
    assert_eq!(
        client
            .export(request)
            .await
            .unwrap()
            .into_inner()
            .partial_success,
        None
    );
}

#[tokio::test]
async fn unmappable_records_are_counted_in_partial_success() {
    let app = spawn_app().await;
    let mut no_type = activity("tool_call", at_ms(1), "no type");
    no_type
        .attributes
        .retain(|kv| kv.key != "activity.log_type");
    let records = vec![
        no_type,
        activity("tool_call", at_ms(2), "good"),
        with_attr(
            activity("tool_call", at_ms(3), "bad status"),
            "activity.status",
            text("bad"),
        ),
        activity("TOOL_CALL", at_ms(4), "bad type"),
        with_attr(
            activity("tool_call", at_ms(5), "bad data"),
            "activity.request_data",
            text("[1]"),
        ),
    ];
    let response = app.export(&app.keys.alice, records).await.unwrap();
    let partial = response.partial_success.expect("partial success");
    assert_eq!(partial.rejected_log_records, 4);
    assert_eq!(
        partial.error_message,
        "4 of 5 log records rejected: record 0: no log_type; record 2: invalid status \"bad\" \
         (expected success or error); record 3: unknown log_type \"TOOL_CALL\" (expected \
         tool_call, end_call_webhook or inbound_context_lookup); ..."
    );
    app.flush().await;
    assert_eq!(messages(&app.logs(&app.keys.alice, "").await), ["good"]);

    // all rejected: still OK, with partial success
    let response = app
        .export(&app.keys.alice, vec![activity("nope", at_ms(6), "x")])
        .await
        .unwrap();
    assert_eq!(response.partial_success.unwrap().rejected_log_records, 1);
}

#[tokio::test]
async fn users_are_taken_from_the_key_or_user_id() {
    let app = spawn_app().await;
    let for_bob = with_attr(
        activity("tool_call", at_ms(1), "x"),
        "user.id",
        text("user-bob"),
    );
    // a user-bound key refuses a record naming another user
    let response = app
        .export(&app.keys.alice, vec![for_bob.clone()])
        .await
        .unwrap();
    let partial = response.partial_success.unwrap();
    assert_eq!(partial.rejected_log_records, 1);
    assert_eq!(
        partial.error_message,
        "1 of 1 log records rejected: record 0: user.id does not match the user of the ingest key"
    );
    // a platform key needs user.id
    let response = app
        .export(
            &app.keys.platform,
            vec![activity("tool_call", at_ms(2), "y")],
        )
        .await
        .unwrap();
    assert_eq!(
        response.partial_success.unwrap().error_message,
        "1 of 1 log records rejected: record 0: no user: the key has no user_id and the record no user.id"
    );
    app.ingest(&app.keys.platform, vec![for_bob]).await;
    app.ingest(
        &app.keys.carol_ingest,
        vec![activity("tool_call", at_ms(3), "carol")],
    )
    .await;
    assert_eq!(app.logs(&app.keys.bob, "").await["total"], 1);
    assert_eq!(app.logs(&app.keys.alice, "").await["total"], 0);
}

#[tokio::test]
async fn keys_are_checked() {
    let app = spawn_app().await;
    let records = || vec![activity("tool_call", at_ms(1), "x")];

    let mut client = app.grpc_client().await;
    let status = client
        .export(tonic::Request::new(request_of(records())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "missing API key: send Authorization: Bearer <key>"
    );

    let status = app
        .export(&logbridge::auth::Secret::generate(), records())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "unknown API key");

    let status = app
        .export(&app.keys.alice_reader, records())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "this API key lacks the ingest scope");
    app.flush().await;
    assert_eq!(app.logs(&app.keys.alice, "").await["total"], 0);
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument() {
    let app = spawn_app().await;
    let valid = request_of(vec![activity("tool_call", at_ms(1), "x")]).encode_to_vec();
    for body in [valid[..valid.len() - 3].to_vec(), vec![0xff; 16]] {
        let status = app.export_raw(body).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .starts_with("invalid OTLP protobuf: failed to decode Protobuf message"),
            "{status:?}"
        );
    }
    // the server keeps serving
    let response = app.export_raw(valid).await.unwrap();
    assert!(response.is_empty(), "an empty ExportLogsServiceResponse");
}

#[tokio::test]
async fn an_oversized_export_is_resource_exhausted() {
    let app = spawn_app_with(AppOptions {
        max_message_bytes: 4096,
        ..Default::default()
    })
    .await;
    let big = activity("tool_call", at_ms(1), &"x".repeat(5000));
    let status = app.export(&app.keys.alice, vec![big]).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // compressed below the limit, above it once decompressed
    let channel = tonic::transport::Channel::from_shared(app.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = LogsServiceClient::new(channel).send_compressed(CompressionEncoding::Gzip);
    let big = request_of(vec![activity("tool_call", at_ms(1), &"y".repeat(100_000))]);
    let request = authorized(big, &app.keys.alice);
    let status = client.export(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let small = activity("tool_call", at_ms(2), "fits");
    app.ingest(&app.keys.alice, vec![small]).await;
    assert_eq!(messages(&app.logs(&app.keys.alice, "").await), ["fits"]);
}

#[tokio::test]
async fn event_name_and_severity_map_without_activity_attributes() {
    let app = spawn_app().await;
    let mut record = with_attr(
        activity("tool_call", at_ms(1), "from event_name"),
        "activity.latency_ms",
        Value::DoubleValue(12.6),
    );
    record.attributes.retain(|kv| kv.key != "activity.log_type");
    record.event_name = "end_call_webhook".to_owned();
    record.severity_number = 17;
    record.severity_text = "ERROR".to_owned();
    app.ingest(&app.keys.alice, vec![record]).await;
    let log = &app.logs(&app.keys.alice, "").await["logs"][0];
    assert_eq!(log["log_type"], "end_call_webhook");
    assert_eq!(log["status"], "error");
    assert_eq!(log["severity_text"], "ERROR");
    assert_eq!(log["latency_ms"], 13);
}
