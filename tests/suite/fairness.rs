//! One user's flood does not shut another user out: user A, limited to 200 records a second,
//! floods the real binary far past that while user B exports. Every one of B's exports is taken,
//! A's excess is refused with RESOURCE_EXHAUSTED saying why, and A gets no more than its limit.
//! How much the flood slows B is a measurement, not a contract: `cargo bench --bench fairness`
//! (`benches/fairness.rs`, figures in BENCHMARKS.md).

use crate::common;

use crate::common::harness::flood::{Flood, FloodReport};

use std::time::{Duration, Instant};

use common::process::{serve, stored_messages, total, wait_ready, write_config_with};
use common::{PATIENCE, activity, at_ms, authorized, request_of, write_keys_file};
use logbridge::auth::{KeyRecord, Scope, Secret};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use prost::Message as _;

/// `exports` exports of 20 records for user B, one after another, each taken whole.
async fn export_b(grpc: &str, key: &Secret, exports: usize) {
    let mut client = LogsServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    for e in 0..exports {
        let records = (0..20u64)
            .map(|i| activity("tool_call", at_ms(i), &format!("b-{e}-{i}")))
            .collect();
        let request = authorized(request_of(records), key);
        let response = tokio::time::timeout(PATIENCE, client.export(request))
            .await
            .unwrap_or_else(|_| panic!("B's export {e} unanswered during A's flood"))
            .unwrap_or_else(|status| panic!("B's export {e} refused during A's flood: {status:?}"));
        assert_eq!(response.into_inner().partial_success, None);
    }
}

/// The refusal of A's excess.
const A_REFUSED: &str =
    "user \"user-a\" is over its ingest limit of 200 records per second; retry in";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_flood_does_not_slow_another_users_exports() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Secret::generate(), Secret::generate());
    let key = |name: &str, secret: &Secret| KeyRecord {
        name: name.to_owned(),
        sha256: secret.sha256(),
        scopes: vec![Scope::Read, Scope::Ingest],
        user_id: Some(format!("user-{name}")),
        expires_at: None,
    };
    write_keys_file(&dir.path().join("keys.toml"), &[key("a", &a), key("b", &b)]);
    let limits = "[limits.users.\"user-a\"]\nrecords_per_second = 200\nburst = 200\n";
    let config = write_config_with(dir.path(), &dir.path().join("index"), "", limits);
    let served = serve(&config);
    wait_ready(&served.api).await;
    const EXPORTS: usize = 300;

    // A floods from 2 connections with 16 exports of 100 records in flight on each (encoded once:
    // the flood costs its client next to nothing); every refusal must be A_REFUSED
    let records = (0..100)
        .map(|i| activity("tool_call", at_ms(i), &format!("a {i}")))
        .collect();
    let flood = Flood::start(
        format!("http://{}", served.grpc),
        format!("Bearer {}", a.expose()),
        bytes::Bytes::from(request_of(records).encode_to_vec()),
        100,
        |status| {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert!(status.message().starts_with(A_REFUSED), "{status:?}");
        },
    );
    // the flood is under way before B measures
    flood
        .wait_refused(32, PATIENCE, "the flood never got 32 refusals")
        .await;
    // B exports while A is being refused, and A still is after B is done
    let refused_before_b = flood.refused();
    export_b(&served.grpc, &b, EXPORTS).await;
    flood
        .wait_refused(
            refused_before_b + 32,
            PATIENCE,
            "the flood stopped being refused after B's exports",
        )
        .await;
    // a panic of the flood (a refusal other than A_REFUSED) fails the test here
    let FloodReport {
        accepted,
        refused,
        seconds: flood_seconds,
        offered_per_second,
    } = flood.stop();
    println!(
        "A: {accepted} records accepted, {refused} exports of 100 refused in {flood_seconds:.1} s \
         ({offered_per_second:.0} records a second offered)"
    );
    // A got its limit (a full bucket, then 200 a second), not more, however long the flood took
    assert!(
        accepted as f64 <= 200.0 + 200.0 * flood_seconds,
        "A got {accepted} records in {flood_seconds:.1} s"
    );
    assert!(accepted >= 200, "A's burst was not taken: {accepted}");
    // every one of B's records is there, once committed
    let expected = 20 * EXPORTS as u64;
    let deadline = Instant::now() + PATIENCE;
    while total(&served.api, &b).await < expected {
        assert!(Instant::now() < deadline, "B's records never all visible");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stored_messages(&served.api, &b).await.len() as u64,
        expected
    );
}
