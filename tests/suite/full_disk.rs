//! Real full disks under the real binary: size-limited tmpfs mounts fill up while exporters
//! stream, then get room again. While storage fails exports are refused retryably, `/readyz`
//! says why and `/logs` serves what is committed; once space returns ingest resumes by itself,
//! and every acknowledged record is there exactly once, before and after `kill -9`.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::process::{
    Served, serve, stored_messages, total, wait_ready, write_config_with, write_key,
};
use common::tmpfs::Tmpfs;
use common::{
    PATIENCE, activity, assert_each_acknowledged_once, authorized, labeled_metric, metric, readyz,
    request_of, text, wait_for_readyz, with_attr,
};
use logbridge::auth::Secret;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use tonic::Code;

const MIB: u64 = 1024 * 1024;
const EXPORTERS: usize = 3;
const BATCH: usize = 200;

/// Exporters that stream batches and, like an SDK, send a refused batch again until it is taken.
struct Stream {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Stream {
    fn start(grpc: &str, secret: &Secret, round: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let tasks = (0..EXPORTERS)
            .map(|exporter| {
                let url = format!("http://{grpc}");
                let secret = secret.clone();
                let (stop, acked, refused) = (stop.clone(), acked.clone(), refused.clone());
                let round = round.to_owned();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    let mut client = LogsServiceClient::connect(url).await.unwrap();
                    for batch in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let messages: Vec<String> = (0..BATCH)
                            .map(|i| format!("{round}-e{exporter}-b{batch}-{i}"))
                            .collect();
                        loop {
                            let records = messages
                                .iter()
                                .enumerate()
                                .map(|(i, m)| {
                                    // a kilobyte that compresses little, so disks fill soon
                                    let blob = hex::encode(rand::random::<[u8; 512]>());
                                    with_attr(
                                        activity("tool_call", 1 + i as u64, m),
                                        "activity.request_data",
                                        text(&format!("{{\"blob\":\"{blob}\"}}")),
                                    )
                                })
                                .collect();
                            match client
                                .export(authorized(request_of(records), &secret))
                                .await
                            {
                                Ok(response) => {
                                    assert_eq!(response.into_inner().partial_success, None);
                                    acked.fetch_add(BATCH, Ordering::Relaxed);
                                    mine.extend(messages);
                                    break;
                                }
                                Err(status) => {
                                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                                    refused.fetch_add(1, Ordering::Relaxed);
                                    if stop.load(Ordering::Relaxed) {
                                        return mine;
                                    }
                                    // the SDK's backoff, shortened
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        Self {
            stop,
            acked,
            refused,
            tasks,
        }
    }

    /// Waits until `n` more records are acknowledged than now.
    async fn wait_for_more_acks(&self, n: usize) {
        let target = self.acked.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + PATIENCE;
        while self.acked.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "acknowledgements stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops streaming; the acknowledged messages.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for task in self.tasks {
            acked.extend(task.await.unwrap());
        }
        acked
    }
}

/// Every acknowledged message is stored exactly once, and nothing else is.
async fn assert_exactly_once(api: &str, secret: &Secret, acked: &[String]) {
    let stored = stored_messages(api, secret).await;
    assert_each_acknowledged_once(&stored, acked, "after the disk filled");
    // a batch is stored only when acknowledged
    assert_eq!(stored.len(), acked.len());
}

/// Waits until every acknowledged record is visible, then checks them, kills the server with
/// SIGKILL, starts it again and checks again.
async fn check_then_crash_and_check(
    mut served: Served,
    config: &Path,
    secret: &Secret,
    acked: &[String],
) {
    let deadline = Instant::now() + PATIENCE;
    while total(&served.api, secret).await < acked.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "acknowledged records never became visible"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_exactly_once(&served.api, secret, acked).await;
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    let restarted = serve(config);
    wait_ready(&restarted.api).await;
    assert_exactly_once(&restarted.api, secret, acked).await;
}

/// The operator's view of a disk that is full: `/readyz` 503 with the reason, the failure in
/// `/metrics`, and `/logs` still answering.
async fn assert_failing_visibly(served: &Served, secret: &Secret, reason: &str) {
    let api = format!("http://{}", served.api);
    let (_, body) = wait_for_readyz(&api, 503).await;
    assert!(
        body.starts_with("storage failing: ") && body.contains(reason),
        "{body}"
    );
    // the writer recovers each second and fails again on the clients' next retry: the gauge
    // says so again within a retry or two
    let deadline = Instant::now() + common::PATIENCE;
    while metric(&api, "logbridge_storage_failing").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "/metrics never showed the storage failing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // /logs keeps answering (with what is committed; recovery attempts may publish more while a
    // walk over every page would run, so one page it is)
    total(&served.api, secret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_and_log_on_one_disk_that_fills_then_frees() {
    let dir = tempfile::tempdir().unwrap();
    let data = Tmpfs::mount(&dir.path().join("data"), 3 * MIB);
    let config = write_config_with(
        dir.path(),
        &dir.path().join("data/index"),
        "commit_interval_ms = 100",
        "",
    );
    let secret = Secret::generate();
    write_key(dir.path(), &secret);
    let served = serve(&config);
    wait_ready(&served.api).await;

    let stream = Stream::start(&served.grpc, &secret, "one");
    assert_failing_visibly(&served, &secret, "No space left on device").await;
    let deadline = Instant::now() + PATIENCE;
    while stream.refused.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no export was refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // space comes back: ingest resumes by itself
    data.resize(256 * MIB);
    let resumed = Instant::now();
    wait_for_readyz(&format!("http://{}", served.api), 200).await;
    stream.wait_for_more_acks(3 * BATCH).await;
    let took = resumed.elapsed();
    assert!(took < Duration::from_secs(10), "resumed after {took:?}");
    let refused = stream.refused.load(Ordering::Relaxed);
    let acked = stream.stop().await;
    eprintln!(
        "one disk: {} records acknowledged, {refused} refusals, resumed {took:?} after space returned",
        acked.len()
    );
    check_then_crash_and_check(served, &config, &secret, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_disk_fills_while_the_log_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let index_path = dir.path().join("index");
    let index = Tmpfs::mount(&index_path, 2 * MIB);
    let _log = Tmpfs::mount(&index_path.join("wal"), 256 * MIB);
    let config = write_config_with(dir.path(), &index_path, "commit_interval_ms = 100", "");
    let secret = Secret::generate();
    write_key(dir.path(), &secret);
    let served = serve(&config);
    wait_ready(&served.api).await;

    let stream = Stream::start(&served.grpc, &secret, "index");
    assert_failing_visibly(&served, &secret, "No space left on device").await;
    let api = format!("http://{}", served.api);
    assert!(
        labeled_metric(
            &api,
            "logbridge_storage_failures_total{stage=\"index_commit\"}"
        )
        .await
            + labeled_metric(
                &api,
                "logbridge_storage_failures_total{stage=\"index_write\"}"
            )
            .await
            >= 1.0
    );
    index.resize(256 * MIB);
    wait_for_readyz(&api, 200).await;
    stream.wait_for_more_acks(3 * BATCH).await;
    let acked = stream.stop().await;
    check_then_crash_and_check(served, &config, &secret, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_disk_fills_while_the_index_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let index_path = dir.path().join("index");
    std::fs::create_dir_all(&index_path).unwrap();
    // smaller than one batch in the log: every append fails until it grows
    let log = Tmpfs::mount(&index_path.join("wal"), 16 * 1024);
    let config = write_config_with(dir.path(), &index_path, "commit_interval_ms = 100", "");
    let secret = Secret::generate();
    write_key(dir.path(), &secret);
    let served = serve(&config);
    wait_ready(&served.api).await;

    let stream = Stream::start(&served.grpc, &secret, "log");
    assert_failing_visibly(
        &served,
        &secret,
        "writing the write-ahead log: No space left on device",
    )
    .await;
    let api = format!("http://{}", served.api);
    assert!(
        metric(
            &api,
            "logbridge_storage_failures_total{stage=\"wal_write\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(stream.acked.load(Ordering::Relaxed), 0);
    log.resize(256 * MIB);
    stream.wait_for_more_acks(3 * BATCH).await;
    assert_eq!(readyz(&api).await.0, 200);
    let acked = stream.stop().await;
    check_then_crash_and_check(served, &config, &secret, &acked).await;
}
