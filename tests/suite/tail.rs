//! `GET /logs/tail`: new matching logs as Server-Sent Events within about a second of their
//! acknowledgement, resumable by `Last-Event-ID` without gaps or repeats, a bound on subscribers
//! and slow readers cut off with a final event.

use crate::common;

use std::time::{Duration, Instant};

use common::sse::Events;
use common::{AppOptions, PATIENCE, TestApp, activity, at_ms, spawn_app_with, text, with_attr};
use logbridge::auth::Secret;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tail stream of `key`'s logs, being read.
async fn open_tail(app: &TestApp, key: &Secret, query: &str, last_event_id: Option<u64>) -> Events {
    Events::new(request(app, key, query, last_event_id).await)
}

async fn request(
    app: &TestApp,
    key: &Secret,
    query: &str,
    last_event_id: Option<u64>,
) -> reqwest::Response {
    let mut request = app
        .client
        .get(format!("{}/logs/tail?{query}", app.api_url))
        .bearer_auth(key.expose());
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    request.send().await.unwrap()
}

fn options() -> AppOptions {
    AppOptions {
        // the product's default: tails see logs as commits make them visible
        commit_interval_ms: 1000,
        ..AppOptions::default()
    }
}

fn numbered(n: u64) -> LogRecord {
    activity("tool_call", at_ms(n), &format!("log {n}"))
}

#[tokio::test]
async fn new_matching_logs_arrive_oldest_first_once_committed() {
    let app = spawn_app_with(options()).await;
    let mut tail = open_tail(&app, &app.keys.alice, "status=error", None).await;
    let mut other = open_tail(&app, &app.keys.bob, "", None).await;

    let failed = |n| with_attr(numbered(n), "activity.status", text("error"));
    // request data as the worker sent it, pretty-printed: line breaks between its tokens
    let pretty = with_attr(
        failed(1),
        "activity.request_data",
        text("{\n  \"order\": 1,\r\n\n  \"items\": [\"a\"]\n}"),
    );
    let acked = Instant::now();
    let records = vec![failed(3), numbered(1), pretty, failed(2)];
    let response = app.export(&app.keys.alice, records).await.unwrap();
    assert_eq!(response.partial_success, None);
    app.export(&app.keys.bob, vec![numbered(9)]).await.unwrap();

    // acknowledged order, not timestamp order; the success is filtered out; bob's is not here
    let mut ids = Vec::new();
    for expected in ["log 3", "log 1", "log 2"] {
        let event = tail.next().await;
        assert_eq!(event.kind, None);
        assert_eq!(event.data["message"], expected);
        assert_eq!(event.data["status"], "error");
        ids.push(event.seq());
        if expected == "log 1" {
            assert_eq!(
                event.data["request_data"],
                json!({"order": 1, "items": ["a"]})
            );
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // a one-second commit interval: visible at the next commit, and sent then (each event is
    // waited for with the patience as deadline; how long it took is a figure, not a contract)
    println!(
        "the tail got the last of them {:?} after the answer",
        acked.elapsed()
    );
    // the log object is exactly what GET /logs serves
    let page = app.logs(&app.keys.alice, "status=error&limit=1").await;
    assert_eq!(page["logs"][0]["message"], "log 3");

    let event = other.next().await;
    assert_eq!(event.data["message"], "log 9");

    // an export holds the same log on one line too
    let ndjson = app
        .client
        .get(format!("{}/logs/export?status=error", app.api_url))
        .bearer_auth(app.keys.alice.expose())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ndjson.lines().count(), 3, "{ndjson}");
    for line in ndjson.lines() {
        serde_json::from_str::<Json>(line).unwrap();
    }
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing() {
    let app = spawn_app_with(options()).await;
    const TOTAL: u64 = 600;
    let mut tail = Some(open_tail(&app, &app.keys.alice, "log_type=tool_call", None).await);
    let sender = {
        let client = app.grpc_client().await;
        let key = app.keys.alice.clone();
        tokio::spawn(async move {
            let mut client = client;
            for batch in 0..30 {
                let records = (0..TOTAL / 30).map(|i| numbered(batch * 20 + i)).collect();
                let request = common::authorized(common::request_of(records), &key);
                client.export(request).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut seen: Vec<String> = Vec::new();
    let mut last_id = None;
    let mut connections = 0;
    while (seen.len() as u64) < TOTAL {
        // each connection takes at most 150 events, then drops while logs keep arriving
        let mut tail = match tail.take() {
            Some(tail) => tail,
            None => open_tail(&app, &app.keys.alice, "log_type=tool_call", last_id).await,
        };
        connections += 1;
        for _ in 0..150 {
            if seen.len() as u64 == TOTAL {
                break;
            }
            let event = tail.next().await;
            seen.push(event.data["message"].as_str().unwrap().to_owned());
            last_id = Some(event.seq());
        }
    }
    sender.await.unwrap();
    assert!(connections >= 4, "{connections} connections");
    let expected: Vec<String> = (0..TOTAL).map(|n| format!("log {n}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_tail_from_the_sequence_of_a_page_follows_on_from_it() {
    let app = spawn_app_with(options()).await;
    app.ingest(&app.keys.alice, vec![numbered(1), numbered(2)])
        .await;
    let response = app
        .client
        .get(format!("{}/logs?limit=1", app.api_url))
        .bearer_auth(app.keys.alice.expose())
        .send()
        .await
        .unwrap();
    let sequence: u64 = response.headers()["logbridge-sequence"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sequence, 2);
    // committed after the page was read, before the tail connects
    app.ingest(&app.keys.alice, vec![numbered(3)]).await;
    let mut tail = open_tail(&app, &app.keys.alice, &format!("cursor={sequence}"), None).await;
    app.export(&app.keys.alice, vec![numbered(4)])
        .await
        .unwrap();
    for expected in ["log 3", "log 4"] {
        assert_eq!(tail.next().await.data["message"], expected);
    }
}

#[tokio::test]
async fn bad_resume_points_and_filters_name_themselves() {
    let app = spawn_app_with(options()).await;
    let get = |query: &'static str, id: Option<&'static str>| {
        let mut request = app
            .client
            .get(format!("{}/logs/tail?{query}", app.api_url))
            .bearer_auth(app.keys.alice.expose());
        if let Some(id) = id {
            request = request.header("Last-Event-ID", id);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Json = response.json().await.unwrap();
            (status, body["message"].as_str().unwrap().to_owned())
        }
    };
    for (query, id, message) in [
        (
            "",
            Some("abc"),
            "Last-Event-ID must be the id of an event of this stream, a whole number",
        ),
        (
            "cursor=-1",
            None,
            "cursor must be the id of an event of this stream, a whole number",
        ),
        (
            "",
            Some("5"),
            "Last-Event-ID 5 is ahead of the newest event of this stream",
        ),
        (
            "limit=3",
            None,
            "limit is not accepted by GET /logs/tail, which streams every log matching the filters",
        ),
        (
            "log_type=call",
            None,
            "log_type must be one of tool_call, end_call_webhook, inbound_context_lookup",
        ),
    ] {
        assert_eq!(get(query, id).await, (400, message.to_owned()), "{query}");
    }
    let response = app
        .client
        .get(format!("{}/logs/tail", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn subscribers_are_bounded_in_all_and_per_user() {
    let app = spawn_app_with(AppOptions {
        settings: vec![
            ("LOGBRIDGE_API_MAX_TAIL_SUBSCRIBERS", "3".to_owned()),
            (
                "LOGBRIDGE_API_MAX_TAIL_SUBSCRIBERS_PER_USER",
                "2".to_owned(),
            ),
        ],
        ..options()
    })
    .await;
    let refused = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let body: Json = response.json().await.unwrap();
        body["message"].as_str().unwrap().to_owned()
    };
    let first = open_tail(&app, &app.keys.alice, "", None).await;
    let _second = open_tail(&app, &app.keys.alice_reader, "", None).await;
    assert_eq!(
        refused(request(&app, &app.keys.alice, "", None).await).await,
        "too many tail streams for this user, close one first"
    );
    let _third = open_tail(&app, &app.keys.bob, "", None).await;
    assert_eq!(
        refused(request(&app, &app.keys.bob, "", None).await).await,
        "too many tail subscribers, retry later"
    );

    // a subscriber that leaves frees its place once the server notices
    drop(first);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = request(&app, &app.keys.bob, "", None).await;
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_revoked_key_ends_its_stream() {
    let app = spawn_app_with(options()).await;
    let mut tail = open_tail(&app, &app.keys.alice_reader, "", None).await;
    let keys_file = app.dir.path().join("keys.toml");
    let kept: Vec<_> = app
        .keys
        .records()
        .into_iter()
        .filter(|k| k.sha256 != app.keys.alice_reader.sha256())
        .collect();
    common::write_keys_file(&keys_file, &kept);
    // once the keys file is read again, the key is refused...
    let deadline = Instant::now() + PATIENCE;
    while app.get_logs(Some(&app.keys.alice_reader), "").await.0 != 401 {
        assert!(
            Instant::now() < deadline,
            "the keys file was never read again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the stream ends at the next commit, before the log it would have carried
    app.export(&app.keys.alice, vec![numbered(1)])
        .await
        .unwrap();
    let event = tail.next().await;
    assert_eq!(event.kind.as_deref(), Some("end"));
    assert_eq!(
        event.data,
        json!({"message": "unknown API key", "resumable": false})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_is_cut_off_with_a_final_event() {
    let app = spawn_app_with(AppOptions {
        settings: vec![("LOGBRIDGE_API_TAIL_STALL_TIMEOUT_MS", "1000".to_owned())],
        ..options()
    })
    .await;
    // a client that sends its request and then reads nothing
    let address = app.api_url.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /logs/tail HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\n\r\n",
        app.keys.alice.expose()
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    // a reader that keeps up, beside it
    const TOTAL: u64 = 20_000;
    let mut reader = open_tail(&app, &app.keys.alice, "", None).await;
    let reading = tokio::spawn(async move {
        for n in 0..TOTAL {
            let event = reader.next().await;
            let message = event.data["message"].as_str().unwrap().to_owned();
            assert!(message.starts_with(&format!("log {n} ")), "{message}");
        }
    });

    // far more than the socket buffers and the server's queue hold: about 30 MB of events
    let padding = "x".repeat(1500);
    for batch in 0..(TOTAL / 1_000) {
        let records = (0..1_000)
            .map(|i| {
                let n = batch * 1_000 + i;
                activity("tool_call", at_ms(n), &format!("log {n} {padding}"))
            })
            .collect();
        app.ingest(&app.keys.alice, records).await;
    }
    reading.await.unwrap();

    // the stalled client finds what was sent before the cut, then the final event, then the end
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut received))
        .await
        .expect("the server closes the stream")
        .unwrap();
    let received = String::from_utf8_lossy(&received);
    let events = received.matches("\ndata: {\"log_type\"").count();
    assert!(
        (1..TOTAL as usize).contains(&events),
        "{events} events before the cut"
    );
    let end = received.find("event: end\ndata: ").expect("a final event");
    let data = received[end..].lines().nth(1).unwrap();
    let data: Json = serde_json::from_str(data.trim_start_matches("data: ")).unwrap();
    assert_eq!(
        data,
        json!({
            "message": "the client took no event for 1000 ms and fell behind: \
                        reconnect with Last-Event-ID to resume",
            "resumable": true,
        })
    );
    assert!(
        !received[end..].contains("log_type"),
        "no event after the end"
    );
}
