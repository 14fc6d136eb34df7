//! No single user takes every export or search place: a user at its share is refused while
//! another goes on; an export whose reader stalls is cut off after the stall timeout and frees
//! its place; a key revoked mid-export cuts the export off, and its client sees the cut.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{AppOptions, PATIENCE, TestApp, spawn_app_with, window};
use logbridge::auth::Secret;
use serde_json::Value as Json;
use tokio::io::AsyncReadExt as _;

/// The send buffer of the server's REST connections: a reader that stalls stalls the export
/// after a few pages rather than after the megabytes loopback buffers hold.
const SEND_BUFFER: u32 = 16 * 1024;

/// `GET /logs/export` with `key`, read whole: the status, `Retry-After`, and the body (the
/// message of a refusal, the logs' lines of an export).
async fn export(app: &TestApp, key: &Secret) -> (u16, Option<String>, String) {
    let response = app
        .client
        .get(format!("{}/logs/export", app.api_url))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    if status == 200 {
        return (status, retry_after, body);
    }
    let body: Json = serde_json::from_str(&body).unwrap();
    (
        status,
        retry_after,
        body["message"].as_str().unwrap().to_owned(),
    )
}

/// Complete NDJSON lines in `bytes` (after the head, when a raw response is given).
fn lines(bytes: &[u8]) -> usize {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|line| line.starts_with("{\"log_type\"") && line.ends_with('}'))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_export_is_cut_off_while_another_user_exports_and_searches() {
    let app = spawn_app_with(AppOptions {
        settings: vec![
            ("LOGBRIDGE_API_MAX_CONCURRENT_EXPORTS", "2".to_owned()),
            (
                "LOGBRIDGE_API_MAX_CONCURRENT_EXPORTS_PER_USER",
                "1".to_owned(),
            ),
            ("LOGBRIDGE_API_EXPORT_STALL_TIMEOUT_MS", "1000".to_owned()),
        ],
        api_send_buffer_bytes: Some(SEND_BUFFER),
        ..AppOptions::default()
    })
    .await;
    const ALICE: u64 = 10_000;
    app.ingest_many(&app.keys.alice, ALICE).await;
    app.ingest_many(&app.keys.bob, 300).await;

    // alice's export, whose client reads the head and then nothing; its stall timeout cannot
    // have started before the request was sent
    let requested = Instant::now();
    let mut stalled = window::stalled_export(&app.api_url, &app.keys.alice).await;
    let mut received = Vec::new();
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8; 64];
        let n = tokio::time::timeout(PATIENCE, stalled.read(&mut byte))
            .await
            .expect("a head within the patience")
            .unwrap();
        assert!(n > 0, "the connection closed before a head");
        received.extend_from_slice(&byte[..n]);
    }
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));

    // her one place is taken: a second export of hers is refused, saying why
    let (status, retry_after, message) = export(&app, &app.keys.alice).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")));
    assert_eq!(
        message,
        "too many exports in progress for this user, retry later"
    );
    // bob exports and searches meanwhile, and gets everything
    let (status, _, body) = export(&app, &app.keys.bob).await;
    assert_eq!((status, body.lines().count()), (200, 300));
    assert_eq!(app.logs(&app.keys.bob, "limit=1").await["total"], 300);

    // the stall timeout cuts her export off and frees her place
    let deadline = Instant::now() + PATIENCE;
    let again = loop {
        let (status, _, body) = export(&app, &app.keys.alice).await;
        if status == 200 {
            break body;
        }
        assert_eq!(
            (status, body.as_str()),
            (
                503,
                "too many exports in progress for this user, retry later"
            )
        );
        assert!(
            Instant::now() < deadline,
            "the stalled export was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // no sooner than the stall timeout (within the patience, or the loop above fails)
    let freed_after = requested.elapsed();
    assert!(
        freed_after >= Duration::from_secs(1),
        "freed {freed_after:?} after the request, before the 1 s stall timeout"
    );
    assert_eq!(again.lines().count() as u64, ALICE);

    // the stalled client finds part of the export, then a connection closed before the end
    tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut received))
        .await
        .expect("the connection is closed")
        .ok();
    let got = lines(&received) as u64;
    assert!((1..ALICE).contains(&got), "{got} logs before the cut");
    assert!(!received.ends_with(b"\r\n0\r\n\r\n"), "a clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_searches_cannot_take_every_place() {
    let app = spawn_app_with(AppOptions {
        max_concurrent_searches: 4,
        settings: vec![(
            "LOGBRIDGE_API_MAX_CONCURRENT_SEARCHES_PER_USER",
            "2".to_owned(),
        )],
        ..AppOptions::default()
    })
    .await;
    app.ingest_many(&app.keys.alice, 20_000).await;
    app.ingest_many(&app.keys.bob, 10).await;

    // alice: eight clients asking for statistics without pause
    let stop = Arc::new(AtomicBool::new(false));
    let alice: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, key, stop) = (
                app.client.clone(),
                format!("{}/logs/stats", app.api_url),
                app.keys.alice.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let response = client.get(&url).bearer_auth(key.expose()).send().await;
                    let response = response.unwrap();
                    let status = response.status().as_u16();
                    let body: Json = response.json().await.unwrap();
                    outcomes.push((status, body["message"].as_str().unwrap().to_owned()));
                }
                outcomes
            })
        })
        .collect();
    // she is at her share: refused while two of hers run
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = app.get_logs(Some(&app.keys.alice), "limit=1").await;
        if status == 503 {
            assert_eq!(
                body["message"],
                "too many searches in progress for this user, retry later"
            );
            break;
        }
        assert!(Instant::now() < deadline, "alice never reached her share");
    }
    // bob's pages are all served meanwhile
    for _ in 0..40 {
        let (status, body) = app.get_logs(Some(&app.keys.bob), "limit=5").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["total"], 10);
    }
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for client in alice {
        outcomes.extend(client.await.unwrap());
    }
    let served = outcomes.iter().filter(|(status, _)| *status == 200).count();
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    println!(
        "alice: {served} statistics served, {} refused",
        refused.len()
    );
    assert!(served > 0);
    assert!(!refused.is_empty());
    for (status, message) in refused {
        assert_eq!(
            (*status, message.as_str()),
            (
                503,
                "too many searches in progress for this user, retry later"
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_mid_export_cuts_it_off() {
    let app = spawn_app_with(AppOptions {
        api_send_buffer_bytes: Some(SEND_BUFFER),
        ..AppOptions::default()
    })
    .await;
    const TOTAL: u64 = 10_000;
    app.ingest_many(&app.keys.alice, TOTAL).await;
    let response = window::get(&app.api_url, "/logs/export", &app.keys.alice_reader).await;
    assert_eq!(response.status(), 200);
    // the export is under way when the key goes
    let mut body = response.into_body();
    let first = tokio::time::timeout(PATIENCE, http_body_util::BodyExt::frame(&mut body))
        .await
        .expect("a first chunk within the patience")
        .expect("a first chunk")
        .unwrap()
        .into_data()
        .unwrap();
    let kept: Vec<_> = app
        .keys
        .records()
        .into_iter()
        .filter(|k| k.sha256 != app.keys.alice_reader.sha256())
        .collect();
    common::write_keys_file(&app.dir.path().join("keys.toml"), &kept);
    let deadline = Instant::now() + PATIENCE;
    while app.get_logs(Some(&app.keys.alice_reader), "").await.0 != 401 {
        assert!(
            Instant::now() < deadline,
            "the keys file was never read again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // what was on its way arrives, then the transfer breaks off: no clean end
    let rest = window::read(body, None).await;
    let error = rest.error.expect("the export is cut off, not ended");
    // the connection closed before the chunked body's end
    assert!(format!("{error:?}").contains("UnexpectedEof"), "{error:?}");
    let mut bytes = first.to_vec();
    bytes.extend_from_slice(&rest.bytes);
    let got = lines(&bytes) as u64;
    println!("{got} of {TOTAL} logs before the cut");
    assert!((1..TOTAL).contains(&got), "{got} logs before the cut");
    // a key that still reads gets them all
    assert_eq!(
        export(&app, &app.keys.alice).await.2.lines().count() as u64,
        TOTAL
    );
}
