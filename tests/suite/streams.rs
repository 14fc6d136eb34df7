//! Streams that last as long as their client reads: a tail and a slowly read export go on through
//! several idle timeouts, a shutdown lets a body being sent finish while tails end themselves,
//! and a client that takes nothing of its response leaves an idle connection all the same.

use crate::common;

use std::time::{Duration, Instant};

use common::{AppOptions, PATIENCE, TestApp, activity, at_ms, spawn_app_with, window};
use logbridge::auth::Secret;
use serde_json::Value as Json;
use tokio::io::AsyncReadExt as _;

/// The idle timeout of these tests; the drain after it is as short, so that a connection taken
/// for idle is gone one second later.
const IDLE: Duration = Duration::from_secs(1);

/// The send buffer of the server's REST connections: what is sent is what the client took, give
/// or take this (and what the client's small window holds).
const SEND_BUFFER: u32 = 16 * 1024;

fn short_idle() -> AppOptions {
    AppOptions {
        commit_interval_ms: 200,
        settings: vec![
            ("LOGBRIDGE_SERVER_IDLE_TIMEOUT_MS", "1000".to_owned()),
            ("LOGBRIDGE_SERVER_DRAIN_TIMEOUT_MS", "1000".to_owned()),
        ],
        api_send_buffer_bytes: Some(SEND_BUFFER),
        ..AppOptions::default()
    }
}

/// A tail being read: the `data` of its events, comments skipped.
struct Tail {
    response: reqwest::Response,
    buffer: String,
}

impl Tail {
    async fn open(app: &TestApp, key: &Secret) -> Self {
        let response = app
            .client
            .get(format!("{}/logs/tail", app.api_url))
            .bearer_auth(key.expose())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Tail {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's `event` name (if any) and data; panics after [`PATIENCE`] or if the
    /// stream ends.
    async fn next(&mut self) -> (Option<String>, Json) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(str::to_owned)
                };
                if let Some(data) = field("data: ") {
                    return (field("event: "), serde_json::from_str(&data).unwrap());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("an event within the patience")
                .expect("the stream is not cut")
                .expect("the stream goes on");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// The whole export of `key`'s user, read as fast as it comes.
async fn export_at_once(app: &TestApp, key: &Secret) -> Vec<u8> {
    let response = app
        .client
        .get(format!("{}/logs/export", app.api_url))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_lasts_through_several_idle_timeouts() {
    let app = spawn_app_with(short_idle()).await;
    let mut tail = Tail::open(&app, &app.keys.alice).await;
    let opened = Instant::now();
    // a log every 0.7 s, then a silence of two and a half idle timeouts, then one more
    let sender = {
        let client = app.grpc_client().await;
        let key = app.keys.alice.clone();
        tokio::spawn(async move {
            let mut client = client;
            for (n, pause_before_ms) in [(0, 0), (1, 700), (2, 700), (3, 700), (4, 2_500)] {
                tokio::time::sleep(Duration::from_millis(pause_before_ms)).await;
                let record = activity("tool_call", at_ms(n), &format!("log {n}"));
                let request = common::authorized(common::request_of(vec![record]), &key);
                client.export(request).await.unwrap();
            }
        })
    };
    for n in 0..5 {
        let (kind, data) = tail.next().await;
        assert_eq!(kind, None);
        assert_eq!(data["message"], format!("log {n}"));
    }
    sender.await.unwrap();
    let lasted = opened.elapsed();
    assert!(lasted > 4 * IDLE, "the tail lasted only {lasted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_read_export_is_complete_through_several_idle_timeouts() {
    let app = spawn_app_with(short_idle()).await;
    app.ingest_many(&app.keys.alice, 5_000).await;
    let whole = export_at_once(&app, &app.keys.alice).await;
    assert_eq!(whole.iter().filter(|b| **b == b'\n').count(), 5_000);

    // about four seconds at this pace
    let response = window::get(&app.api_url, "/logs/export", &app.keys.alice).await;
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let read = window::read(response.into_body(), Some(whole.len() as f64 / 4.0)).await;
    let took = started.elapsed();
    assert!(
        read.error.is_none(),
        "cut after {} bytes: {:?}",
        read.bytes.len(),
        read.error
    );
    assert_eq!(read.bytes.len(), whole.len());
    assert!(
        read.bytes == whole,
        "the slow export differs from the fast one"
    );
    assert!(took > 3 * IDLE, "read in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_body_being_sent_finish_and_tails_end_themselves() {
    let mut app = spawn_app_with(AppOptions {
        commit_interval_ms: 200,
        // far past the patience: a shutdown that ends within it did not wait for the drain's end
        settings: vec![("LOGBRIDGE_SERVER_DRAIN_TIMEOUT_MS", "600000".to_owned())],
        api_send_buffer_bytes: Some(SEND_BUFFER),
        ..AppOptions::default()
    })
    .await;
    app.ingest_many(&app.keys.bob, 4_000).await;
    let whole = export_at_once(&app, &app.keys.bob).await;
    // what the buffers between the server and the reader may hold, with room to spare: the
    // server cannot have sent its last byte before the reader took all but this
    let in_between = 256 * 1024;
    assert!(whole.len() > 2 * in_between, "{} bytes", whole.len());
    let mut tail = Tail::open(&app, &app.keys.alice).await;
    let response = window::get(&app.api_url, "/logs/export", &app.keys.bob).await;
    assert_eq!(response.status(), 200);
    // about three seconds at this pace
    let export = tokio::spawn(window::read_marking(
        response.into_body(),
        Some(whole.len() as f64 / 3.0),
        whole.len() - in_between,
    ));

    let server = app.server.take().expect("running");
    let stopped = tokio::spawn(async move {
        tokio::time::timeout(PATIENCE, server.shutdown())
            .await
            .expect("shut down within the patience: neither the tail nor the drain held it");
        Instant::now()
    });
    // the tail ends itself with its final event, leaving the drain to the export
    let (kind, data) = tail.next().await;
    assert_eq!(kind.as_deref(), Some("end"));
    assert_eq!(
        data,
        serde_json::json!({
            "message": "logbridge is shutting down: reconnect with Last-Event-ID to resume",
            "resumable": true,
        })
    );
    let after_end = tokio::time::timeout(PATIENCE, tail.response.chunk())
        .await
        .expect("the tail's stream ends after its final event");
    assert!(
        matches!(after_end, Ok(None)),
        "the tail went on after its final event: {after_end:?}"
    );
    let read = export.await.unwrap();
    assert!(
        read.error.is_none(),
        "cut after {} bytes: {:?}",
        read.bytes.len(),
        read.error
    );
    assert!(
        read.bytes == whole,
        "the export differs from the one before"
    );
    let stopped = stopped.await.unwrap();
    // the drain waited for the export: the shutdown ended after the reader had taken nearly all
    let near_the_end = read.passed_mark.expect("the reader passed the mark");
    assert!(
        stopped >= near_the_end,
        "stopped {:?} before the reader had taken all but the last {in_between} bytes",
        near_the_end - stopped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_export_does_not_hold_up_the_drain() {
    let mut app = spawn_app_with(AppOptions {
        // far past the patience: a shutdown that ends within it did not wait for the drain's end
        settings: vec![("LOGBRIDGE_SERVER_DRAIN_TIMEOUT_MS", "600000".to_owned())],
        api_send_buffer_bytes: Some(SEND_BUFFER),
        ..AppOptions::default()
    })
    .await;
    app.ingest_many(&app.keys.alice, 10_000).await;
    let mut stalled = window::stalled_export(&app.api_url, &app.keys.alice).await;
    // the export has filled what the connection holds and waits for its client
    let mut head = [0u8; 12];
    tokio::time::timeout(PATIENCE, stalled.read_exact(&mut head))
        .await
        .expect("the export's head within the patience")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let server = app.server.take().expect("running");
    let began = Instant::now();
    // dropped once it took nothing for a while, not at the drain's end ten minutes on
    tokio::time::timeout(PATIENCE, server.shutdown())
        .await
        .expect("shut down within the patience, the stalled client dropped");
    println!("shut down {:?} after the signal", began.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_nothing_of_its_response_is_dropped_after_the_idle_timeout() {
    let app = spawn_app_with(AppOptions {
        settings: vec![
            ("LOGBRIDGE_SERVER_IDLE_TIMEOUT_MS", "1000".to_owned()),
            // the export itself would wait far longer for its reader
            ("LOGBRIDGE_API_EXPORT_STALL_TIMEOUT_MS", "600000".to_owned()),
            (
                "LOGBRIDGE_API_MAX_CONCURRENT_EXPORTS_PER_USER",
                "1".to_owned(),
            ),
        ],
        api_send_buffer_bytes: Some(SEND_BUFFER),
        ..AppOptions::default()
    })
    .await;
    app.ingest_many(&app.keys.alice, 10_000).await;
    let mut stalled = window::stalled_export(&app.api_url, &app.keys.alice).await;
    let opened = Instant::now();
    // the export holds the user's one place while its connection is open...
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = app
            .client
            .get(format!("{}/logs/export", app.api_url))
            .bearer_auth(app.keys.alice.expose())
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            // ...until the connection is dropped and the export with it
            drop(response);
            break;
        }
        let body: Json = response.json().await.unwrap();
        assert_eq!(
            body["message"],
            "too many exports in progress for this user, retry later"
        );
        assert!(
            Instant::now() < deadline,
            "the stalled connection was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        opened.elapsed() >= IDLE,
        "freed after {:?}",
        opened.elapsed()
    );
    // the stalled client finds what was sent, and a connection closed before the end
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut received))
        .await
        .expect("the connection is closed")
        .ok();
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    println!("the stalled client got {} bytes", received.len());
    assert!(!received.ends_with(b"\r\n0\r\n\r\n"), "a clean end");
}
