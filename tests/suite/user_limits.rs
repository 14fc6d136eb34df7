//! Per-user ingest limits: over the limit an export is refused whole, with retry advice in each
//! transport's terms. (One user's flood beside another's is `fairness.rs`.)

use crate::common;

use std::time::{Duration, Instant};

use common::{AppOptions, activity, at_ms, metric, request_of, spawn_app_with, text, with_attr};
use prost::Message as _;
use tonic_types::StatusExt as _;

fn records(who: &str, n: u64) -> Vec<opentelemetry_proto::tonic::logs::v1::LogRecord> {
    (0..n)
        .map(|i| activity("tool_call", at_ms(i), &format!("{who} {i}")))
        .collect()
}

/// Alice's limit: one record a second, and a burst she spends at once. What comes back while
/// the test runs (a token a second) is far less than any export she sends after the burst, so
/// what is accepted and refused is exact however slow the machine is: only the retry advice
/// depends on the time gone by, and the test knows an upper bound of that.
const RATE: u64 = 1;
const BURST: u64 = 5_000;

#[tokio::test]
async fn over_the_limit_an_export_is_refused_whole_with_retry_advice() {
    let app = spawn_app_with(AppOptions {
        settings: vec![(
            "LOGBRIDGE_LIMITS_USERS",
            format!(r#"{{ "user-alice" = {{ records_per_second = {RATE}, burst = {BURST} }} }}"#),
        )],
        ..AppOptions::default()
    })
    .await;
    let alice = &app.keys.alice;
    // no token of alice's bucket can have come back before this
    let began = Instant::now();
    assert_eq!(
        app.export(alice, records("a", BURST))
            .await
            .unwrap()
            .partial_success,
        None
    );

    // the bucket is empty, a token a second comes back: the next export is refused before its
    // body is read, until there is room for one of the size alice sent last (the whole burst,
    // in BURST seconds less the time gone by)
    let status = app.export(alice, records("b", 10)).await.unwrap_err();
    let gone_by = began.elapsed();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().starts_with(
            "user \"user-alice\" is over its ingest limit of 1 records per second; retry in"
        ),
        "{}",
        status.message()
    );
    let delay = status
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay
        .expect("a delay");
    let full = Duration::from_secs(BURST / RATE);
    assert!(
        delay <= full && delay >= full - gone_by,
        "retry in {delay:?}, {gone_by:?} after the burst was spent"
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
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    let gone_by = began.elapsed().as_secs();
    assert!(
        retry_after <= BURST / RATE && retry_after + gone_by + 1 >= BURST / RATE,
        "Retry-After: {retry_after}, {gone_by} s after the burst was spent"
    );

    // a platform export with a user over the limit is refused for every user in it
    let mut mixed = vec![with_attr(
        activity("tool_call", at_ms(1), "carol 1"),
        "user.id",
        text("user-carol"),
    )];
    // (more of alice's than could have come back while the test runs)
    mixed.extend(
        records("alice", 1_000)
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
    assert_eq!(app.logs(alice, "").await["total"], BURST);
    assert_eq!(app.logs(&app.keys.bob, "").await["total"], 500);
    assert_eq!(
        metric(&app.api_url, "logbridge_exports_throttled_total").await,
        3.0
    );
}
