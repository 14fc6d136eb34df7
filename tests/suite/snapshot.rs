//! `logbridge snapshot --to DIR` against a running server that keeps ingesting: a server started
//! on the snapshot serves exactly the logs committed when it was taken, and its alert rules.

use crate::common;

use std::os::unix::fs::MetadataExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::process::{
    Setup, run, serve, start, stored_messages, total, wait_ready, write_config_with, write_key,
};
use common::{PATIENCE, activity, at_ms, authorized, request_of};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;

const BATCH: u64 = 50;

fn message(i: u64) -> String {
    format!("m{i:06}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_busy_server_serves_exactly_what_was_committed() {
    let Setup {
        dir,
        config,
        secret,
        served,
    } = start().await;

    // one exporter, batch after batch, each acknowledged before the next
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let exporter = {
        let (stop, acked, secret) = (stop.clone(), acked.clone(), secret.clone());
        let grpc = served.grpc.clone();
        tokio::spawn(async move {
            let mut client = LogsServiceClient::connect(format!("http://{grpc}"))
                .await
                .unwrap();
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let records = (next..next + BATCH)
                    .map(|i| activity("tool_call", at_ms(i), &message(i)))
                    .collect();
                let response = client
                    .export(authorized(request_of(records), &secret))
                    .await
                    .unwrap();
                assert_eq!(response.into_inner().partial_success, None);
                next += BATCH;
                acked.store(next, Ordering::Relaxed);
            }
        })
    };
    let deadline = Instant::now() + PATIENCE;
    while total(&served.api, &secret).await < 1000 {
        assert!(Instant::now() < deadline, "ingest stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let visible_before = total(&served.api, &secret).await;
    let rule = serde_json::json!({
        "name": "tool errors", "filters": { "status": "error" }, "window": "5m",
        "measure": "count", "comparison": ">", "threshold": 10,
    });
    let alerts = |api: &str| format!("http://{api}/alerts");
    let created = common::client()
        .post(alerts(&served.api))
        .bearer_auth(secret.expose())
        .json(&rule)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let snapshot_dir = dir.path().join("snapshot");
    let output = run(
        &config,
        &["snapshot", "--to", snapshot_dir.to_str().unwrap()],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    let logs: u64 = printed
        .strip_prefix("snapshot of ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{printed}"));
    let linked: usize = printed
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(printed.ends_with(" files linked, 0 copied\n"), "{printed}");

    // ingest goes on after the snapshot
    let after = acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + PATIENCE;
    while acked.load(Ordering::Relaxed) < after + 500 {
        assert!(
            Instant::now() < deadline,
            "ingest stalled after the snapshot"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    exporter.await.unwrap();
    let acked = acked.load(Ordering::Relaxed);
    println!(
        "snapshot: {printed}visible before: {visible_before}, acknowledged at the end: {acked}"
    );
    assert!(logs >= visible_before, "{logs} < {visible_before}");
    assert!(logs < acked);
    assert!(linked > 0);
    // the logs of every user: the folder is its owner's alone
    let mode = std::fs::metadata(&snapshot_dir).unwrap().mode();
    assert_eq!(mode & 0o777, 0o700);
    // the segment files are the live index's own, linked, not copied: each one the live index
    // still holds (merges since may have let some go) is the same file
    let live = dir.path().join("index");
    let mut segment_files = 0;
    for entry in std::fs::read_dir(&snapshot_dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        // a segment's files are named by its 32-hex-digit id; meta.json and the rest are written
        let is_segment_file = name
            .split_once('.')
            .is_some_and(|(id, _)| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        if !is_segment_file {
            continue;
        }
        segment_files += 1;
        if let Ok(original) = std::fs::metadata(live.join(&name)) {
            assert_eq!(
                entry.metadata().unwrap().ino(),
                original.ino(),
                "{name} was copied, not linked"
            );
        }
    }
    assert_eq!(segment_files, linked, "{printed}");

    // a server on the snapshot: every log committed then, in order, and nothing else
    let other = tempfile::tempdir().unwrap();
    write_key(other.path(), &secret);
    let snapshot_config = write_config_with(other.path(), &snapshot_dir, "", "");
    let from_snapshot = serve(&snapshot_config);
    wait_ready(&from_snapshot.api).await;
    let mut stored = stored_messages(&from_snapshot.api, &secret).await;
    stored.reverse();
    let expected: Vec<String> = (0..logs).map(message).collect();
    assert_eq!(stored, expected);
    assert_eq!(logs % BATCH, 0, "a commit holds whole batches");
    let listed: serde_json::Value = common::client()
        .get(alerts(&from_snapshot.api))
        .bearer_auth(secret.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["data"]["rules"][0]["name"], "tool errors",
        "{listed}"
    );
    // the live server kept everything
    let deadline = Instant::now() + PATIENCE;
    while total(&served.api, &secret).await < acked {
        assert!(Instant::now() < deadline, "the live server lost logs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // a snapshot never writes into a folder that holds something
    let output = run(
        &config,
        &["snapshot", "--to", snapshot_dir.to_str().unwrap()],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("exists and is not empty: a snapshot goes to a new folder"),
        "{stderr}"
    );
}
