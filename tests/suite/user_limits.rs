//! Per-user ingest limits: over the limit an export is refused whole, with retry advice in each
//! transport's terms. (That one user's flood does not slow another's is `tests/fairness.rs`.)

use crate::common;

use std::time::Duration;

use common::{AppOptions, activity, at_ms, metric, request_of, spawn_app_with, text, with_attr};
use prost::Message as _;
use tonic_types::StatusExt as _;

fn records(who: &str, n: u64) -> Vec<opentelemetry_proto::tonic::logs::v1::LogRecord> {
    (0..n)
        .map(|i| activity("tool_call", at_ms(i), &format!("{who} {i}")))
        .collect()
}

#[tokio::test]
async fn over_the_limit_an_export_is_refused_whole_with_retry_advice() {
    let app = spawn_app_with(AppOptions {
        settings: vec![(
            "LOGBRIDGE_LIMITS_USERS",
            r#"{ "user-alice" = { records_per_second = 2, burst = 20 } }"#.to_owned(),
        )],
        ..AppOptions::default()
    })
    .await;
    let alice = &app.keys.alice;
    assert_eq!(
        app.export(alice, records("a", 15))
            .await
            .unwrap()
            .partial_success,
        None
    );

    // five left, two more a second: the next export is refused before its body is read, until
    // there is room for one of the size alice sent last (15 records, in 5 seconds)
    let status = app.export(alice, records("b", 10)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().starts_with(
            "user \"user-alice\" is over its ingest limit of 2 records per second; retry in"
        ),
        "{}",
        status.message()
    );
    let delay = status
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay
        .expect("a delay");
    assert!(
        delay > Duration::from_secs(4) && delay <= Duration::from_secs(5),
        "{delay:?}"
    );

    // OTLP/HTTP: 429 and Retry-After in whole seconds
    let body = request_of(records("c", 10)).encode_to_vec();
    let response = app
        .client
        .post(format!("{}/v1/logs", app.http_url))
        .bearer_auth(alice.expose())
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(["4", "5"].contains(&retry_after.as_str()), "{retry_after}");

    // a platform export with a user over the limit is refused for every user in it
    let mut mixed = vec![with_attr(
        activity("tool_call", at_ms(1), "carol 1"),
        "user.id",
        text("user-carol"),
    )];
    mixed.extend(
        records("alice", 15)
            .into_iter()
            .map(|r| with_attr(r, "user.id", text("user-alice"))),
    );
    let status = app.export(&app.keys.platform, mixed).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    // others are not limited
    assert_eq!(
        app.export(&app.keys.bob, records("bob", 500))
            .await
            .unwrap()
            .partial_success,
        None
    );
    app.flush().await;
    assert_eq!(app.logs(alice, "").await["total"], 15);
    assert_eq!(app.logs(&app.keys.bob, "").await["total"], 500);
    assert_eq!(
        metric(&app.api_url, "logbridge_exports_throttled_total").await,
        3.0
    );
}
