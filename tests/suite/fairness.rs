//! One user's flood does not slow another user's exports: user A, limited to 200 records a
//! second, floods the real binary far past that while user B's export latency is measured, and
//! compared with B's latency alone. A test binary of its own, so that no other test shares the
//! machine while it measures.

use crate::common;

use crate::common::harness::raw_grpc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::process::{serve, stored_messages, total, wait_ready, write_config_with};
use common::{PATIENCE, activity, at_ms, authorized, request_of, write_keys_file};
use logbridge::auth::{KeyRecord, Scope, Secret};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use prost::Message as _;

/// The `q`-th quantile of `samples`.
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// `exports` exports of 20 records for user B, one after another; their latencies.
async fn measure_b(grpc: &str, key: &Secret, round: &str, exports: usize) -> Vec<Duration> {
    let mut client = LogsServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut latencies = Vec::with_capacity(exports);
    for e in 0..exports {
        let records = (0..20u64)
            .map(|i| activity("tool_call", at_ms(i), &format!("b-{round}-{e}-{i}")))
            .collect();
        let request = authorized(request_of(records), key);
        let started = Instant::now();
        let response = client.export(request).await.expect("B's export");
        latencies.push(started.elapsed());
        assert_eq!(response.into_inner().partial_success, None);
    }
    latencies
}

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

    measure_b(&served.grpc, &b, "warm", 50).await;
    let mut alone = measure_b(&served.grpc, &b, "alone", EXPORTS).await;

    // A floods from 2 connections with 16 exports of 100 records in flight on each, sending
    // again as soon as an answer comes whatever it says, from a thread of its own so that B's
    // client is not queued behind it
    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flood_started = Instant::now();
    let flood = {
        let (stop, accepted, refused) = (stop.clone(), accepted.clone(), refused.clone());
        let (grpc, a) = (served.grpc.clone(), a.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                // encoded once: the flood costs its client next to nothing
                let records = (0..100)
                    .map(|i| activity("tool_call", at_ms(i), &format!("a {i}")))
                    .collect();
                let body = bytes::Bytes::from(request_of(records).encode_to_vec());
                let authorization = format!("Bearer {}", a.expose());
                let mut senders = Vec::new();
                for _ in 0..2 {
                    let channel = tonic::transport::Endpoint::new(format!("http://{grpc}"))
                        .unwrap()
                        .connect()
                        .await
                        .unwrap();
                    for _ in 0..16 {
                        let (stop, accepted, refused) =
                            (stop.clone(), accepted.clone(), refused.clone());
                        let (channel, authorization, body) =
                            (channel.clone(), authorization.clone(), body.clone());
                        senders.push(tokio::spawn(async move {
                            while !stop.load(Ordering::Relaxed) {
                                let sent =
                                    raw_grpc::export(channel.clone(), &authorization, body.clone())
                                        .await;
                                match sent {
                                    Ok(_) => accepted.fetch_add(100, Ordering::Relaxed),
                                    Err(status) => {
                                        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                                        refused.fetch_add(1, Ordering::Relaxed)
                                    }
                                };
                            }
                        }));
                    }
                }
                for sender in senders {
                    sender.await.unwrap();
                }
            });
        })
    };
    // the flood is under way before B measures
    let deadline = Instant::now() + PATIENCE;
    while refused.load(Ordering::Relaxed) < 32 {
        assert!(
            !flood.is_finished() && Instant::now() < deadline,
            "the flood never got 32 refusals ({} so far)",
            refused.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut flooded = measure_b(&served.grpc, &b, "flood", EXPORTS).await;
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let flood_seconds = flood_started.elapsed().as_secs_f64();

    let (accepted, refused) = (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let (p50_alone, p99_alone) = (quantile(&mut alone, 0.5), quantile(&mut alone, 0.99));
    let (p50_flood, p99_flood) = (quantile(&mut flooded, 0.5), quantile(&mut flooded, 0.99));
    println!(
        "B alone: p50 {p50_alone:?} p99 {p99_alone:?}; B during A's flood: p50 {p50_flood:?} \
         p99 {p99_flood:?}; A: {accepted} records accepted, {refused} exports refused in \
         {flood_seconds:.1} s"
    );
    // A got its limit (a full bucket, then 200 a second), not more
    assert!(
        accepted as f64 <= 200.0 + 200.0 * flood_seconds + 100.0,
        "A got {accepted} records in {flood_seconds:.1} s"
    );
    // A offered far more than it got: every refused export was 100 records
    let offered = (accepted + 100 * refused) as f64 / flood_seconds;
    println!(
        "A offered {offered:.0} records a second, {:.0} times its limit",
        offered / 200.0
    );
    assert!(
        offered > 10.0 * 200.0,
        "A offered only {offered:.0} records a second"
    );
    // B's typical export is as fast as alone; its p99 within twice that alone, give or take
    // 10 ms for a debug build sharing two cores with both clients
    assert!(
        p50_flood <= 2 * p50_alone,
        "B's p50 {p50_flood:?} during the flood, {p50_alone:?} alone"
    );
    assert!(
        p99_flood <= 2 * p99_alone + Duration::from_millis(10),
        "B's p99 {p99_flood:?} during the flood, {p99_alone:?} alone"
    );
    // every one of B's records is there, once committed
    let expected = 20 * (50 + 2 * EXPORTS) as u64;
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
