//! A user spread over several shards gets the answers a single node holding all of its logs
//! gives: `GET /logs` pages at any offset, `/logs/stats` (counts, buckets, latency percentiles,
//! the busiest assistants) and `/logs/export` (every log, newest first, in either format); and
//! `/logs/tail` follows on from a page and resumes across reconnects, missing and repeating
//! nothing.

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::{SHARDS, TestCluster, USERS, export_until_acknowledged, spread};
use common::sse::Events;
use common::{PATIENCE, TestApp, activity, spawn_app, text, with_attr};
use logbridge::auth::Secret;
use logbridge::cluster::{shard_for, shard_of};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::Value as Json;

const TYPES: [&str; 3] = ["tool_call", "end_call_webhook", "inbound_context_lookup"];

/// A log of the data set: its type, stamp, assistant and latency by its number.
fn log(n: u64, at: u64, assistant: &str) -> LogRecord {
    let mut record = activity(TYPES[(n % 3) as usize], at, &format!("log {n}"));
    record = with_attr(record, "activity.assistant_id", text(assistant));
    // latencies past 2,048 ms too, where buckets are wider than a millisecond
    let latency = (n * 37) % 5_000;
    record = with_attr(
        record,
        "activity.latency_ms",
        Value::IntValue(latency as i64),
    );
    if n % 7 == 0 {
        record = with_attr(record, "activity.status", text("error"));
    }
    record
}

/// A query in the search grammar: `(log OR nothing) -status:error assistant_id:busy-*`.
const GRAMMAR: &str = "q=%28log%20OR%20nothing%29%20-status%3Aerror%20assistant_id%3Abusy-%2A";

/// The data set around the cut-over `from`, as a single node takes it (no user attribute).
/// Before the cut-over, on the home shard: 1,100 assistants with one log each (more than a shard
/// lists), one log of `z-late`, and 20 logs of each of eight busy assistants. After it, over
/// the three shards: 200 more of each busy assistant, and 60 of `z-late`, all on shards other
/// than the home shard, which does not list its one log there: it must be found.
fn data_set(from: u64) -> Vec<LogRecord> {
    let ms = 1_000_000;
    let before = from - 3_600_000 * ms;
    let mut logs = Vec::new();
    let mut n = 0;
    let mut next = |logs: &mut Vec<LogRecord>, at: u64, assistant: &str| {
        logs.push(log(n, at, assistant));
        n += 1;
    };
    for i in 0..1_100 {
        next(
            &mut logs,
            before + i * 1_000 * ms,
            &format!("one-off-{i:04}"),
        );
    }
    next(&mut logs, before + 1_100_000 * ms, "z-late");
    for i in 0..160 {
        next(
            &mut logs,
            before + (1_200 + i) * 1_000 * ms,
            &format!("busy-{}", i % 8),
        );
    }
    for i in 0..1_600 {
        next(&mut logs, from + i * 500 * ms, &format!("busy-{}", i % 8));
    }
    let home = shard_of(USERS[0], SHARDS);
    let spread = [logbridge::cluster::Spread { from, shards: 3 }];
    let mut late = 0;
    let mut at = from + 1_000_000 * ms;
    while late < 60 {
        at += 777 * ms;
        let record = log(n, at, "z-late");
        let message = format!("log {n}");
        if shard_for(USERS[0], at, &message, &spread, SHARDS) != home {
            logs.push(record);
            late += 1;
        }
        n += 1;
    }
    logs
}

async fn single_node_stats(app: &TestApp, key: &Secret, query: &str) -> Json {
    let response = app
        .client
        .get(format!("{}/logs/stats?{query}", app.api_url))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// `path?query` of the single node as alice: status, content type and body.
async fn single_node(app: &TestApp, path: &str, query: &str) -> (u16, String, Vec<u8>) {
    let response = app
        .client
        .get(format!("{}{path}?{query}", app.api_url))
        .bearer_auth(app.keys.alice.expose())
        .send()
        .await
        .unwrap();
    answer(response).await
}

/// `path?query` through the cluster's gateway as user 0: status, content type and body.
async fn gathered(cluster: &TestCluster, path: &str, query: &str) -> (u16, String, Vec<u8>) {
    let response = cluster
        .http_client()
        .build()
        .unwrap()
        .get(format!(
            "{}{path}?{query}",
            cluster.api_url(&cluster.gateways[0])
        ))
        .bearer_auth(cluster.readers[0].expose())
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn answer(response: reqwest::Response) -> (u16, String, Vec<u8>) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

async fn gathered_stats(cluster: &TestCluster, query: &str) -> (u16, Json) {
    let response = cluster
        .http_client()
        .build()
        .unwrap()
        .get(format!(
            "{}/logs/stats?{query}",
            cluster.api_url(&cluster.gateways[0])
        ))
        .bearer_auth(cluster.readers[0].expose())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A single node holding `logs` as alice's, once the cluster holds them all as user 0's.
async fn load(cluster: &TestCluster, logs: &[LogRecord]) -> TestApp {
    let app = spawn_app().await;
    for chunk in logs.chunks(1_000) {
        app.ingest(&app.keys.alice, chunk.to_vec()).await;
    }
    let grpc = cluster.grpc();
    for chunk in logs.chunks(1_000) {
        let records = chunk
            .iter()
            .map(|r| with_attr(r.clone(), "user.id", text(USERS[0])))
            .collect();
        export_until_acknowledged(&grpc, 0, &cluster.ingest, records).await;
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = gathered_stats(cluster, "").await;
        if status == 200 && body["data"]["total"] == logs.len() {
            return app;
        }
        assert!(
            Instant::now() < deadline,
            "never all gathered: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_spread_users_statistics_and_exports_are_a_single_nodes() {
    let cluster = TestCluster::start(1, 2).await;
    let from = spread(&cluster, 0, 3).await;
    let logs = data_set(from);
    let total = logs.len();

    let app = load(&cluster, &logs).await;

    let start = chrono::DateTime::from_timestamp_nanos((from - 1_800_000_000_000) as i64)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for query in [
        String::new(),
        "interval=1h".to_owned(),
        "status=error".to_owned(),
        "log_type=end_call_webhook&interval=5m".to_owned(),
        format!("start_time={start}"),
        "assistant_id=z-late".to_owned(),
        "q=nothing-matches".to_owned(),
        GRAMMAR.to_owned(),
    ] {
        let (status, gathered) = gathered_stats(&cluster, &query).await;
        assert_eq!(status, 200, "{query}: {gathered}");
        let single = single_node_stats(&app, &app.keys.alice, &query).await;
        assert_eq!(gathered, single, "{query}");
    }
    // the busiest: eight busy assistants, z-late with its 61 logs (one on a shard whose own
    // busiest leave it out), then the first of the assistants with one log
    let (_, body) = gathered_stats(&cluster, "").await;
    let mut expected: Vec<(String, u64)> = (0..8).map(|i| (format!("busy-{i}"), 220)).collect();
    expected.push(("z-late".to_owned(), 61));
    expected.push(("one-off-0000".to_owned(), 1));
    assert_eq!(top_assistants(&body), expected);
    // a bad parameter is named, as by a single node
    let (status, body) = gathered_stats(&cluster, "interval=2m").await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "interval must be 1m, 5m, 1h or 1d");

    // every log, newest first, as the single node exports it, in either format
    for query in [
        "",
        "format=csv",
        "status=error&format=ndjson",
        "log_type=tool_call&format=csv",
        "q=nothing-matches",
        "q=nothing-matches&format=csv",
        GRAMMAR,
    ] {
        let (status, content_type, body) = gathered(&cluster, "/logs/export", query).await;
        assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
        let single = single_node(&app, "/logs/export", query).await;
        assert_eq!(
            (status, content_type.as_str()),
            (single.0, single.1.as_str()),
            "{query}"
        );
        assert!(body == single.2, "{query}: the exports differ");
    }
    let (_, _, body) = gathered(&cluster, "/logs/export", "").await;
    assert_eq!(body.iter().filter(|&&b| b == b'\n').count(), total);
    let (status, _, body) = gathered(&cluster, "/logs/export", "format=xml").await;
    assert_eq!(status, 400);
    let body: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["message"], "format must be ndjson or csv");

    // pages at any offset, and past the end, as the single node's (cursors are signed with
    // another key: whether there is one is compared)
    for query in [
        "limit=100",
        "limit=100&page=5",
        "limit=7&page=3&status=error",
        "limit=100&page=30",
        "limit=100&page=31",
        "limit=50&page=2001",
        "q=nothing-matches",
        &format!("{GRAMMAR}&limit=20&page=3"),
    ] {
        let (status, _, body) = gathered(&cluster, "/logs", query).await;
        assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
        let mut gathered: Json = serde_json::from_slice(&body).unwrap();
        let (_, _, body) = single_node(&app, "/logs", query).await;
        let mut single: Json = serde_json::from_slice(&body).unwrap();
        for data in [&mut gathered["data"], &mut single["data"]] {
            let cursor = data.as_object_mut().unwrap().remove("next_cursor");
            data["has_cursor"] = cursor.is_some().into();
        }
        assert_eq!(gathered, single, "{query}");
    }
}

/// Logs of user 0 stamped from `at` on, one a millisecond, that land on the shards of its
/// spread from `from` as `due` says: each shard's assistants, by the shard's place after the
/// home shard. `n` numbers the logs.
fn placed(from: u64, at: u64, mut due: [Vec<String>; 3], n: &mut u64) -> Vec<LogRecord> {
    let spread = [logbridge::cluster::Spread { from, shards: 3 }];
    let home = shard_of(USERS[0], SHARDS);
    let mut logs = Vec::new();
    let mut at = at;
    while due.iter().any(|due| !due.is_empty()) {
        let shard = shard_for(USERS[0], at, &format!("log {n}"), &spread, SHARDS);
        let k = ((shard + SHARDS - home) % SHARDS) as usize;
        if let Some(assistant) = due[k].pop() {
            logs.push(log(*n, at, &assistant));
        }
        *n += 1;
        at += 1_000_000;
    }
    logs
}

/// `count` logs of each of `assistants`.
fn each(assistants: impl Iterator<Item = String>, count: usize) -> Vec<String> {
    assistants
        .flat_map(|a| std::iter::repeat_n(a, count))
        .collect()
}

/// An hour into the data set of [`busiest_set`].
const STARS_AFTER: u64 = 3_600_000_000_000;

/// Past the cut-over `from`, two sets of logs that no shard's own 1,000 busiest settle:
/// - first, on each of the three shards, 1,001 assistants of its own with three logs each, and
///   two logs of each of ten assistants found on every shard, which no shard lists but which
///   have six in all;
/// - an hour on, twenty stars with five logs each and a thousand others with one on the first
///   shard, which lists the stars; on the second, 1,001 others with two logs each (it lists
///   1,000 of them, and bounds the rest by two) and one log of each of the last ten stars,
///   which it must count; on the third, one log of `star-05`.
fn busiest_set(from: u64) -> Vec<LogRecord> {
    let mut n = 0;
    let flat = std::array::from_fn(|k| {
        let mut due = each((0..1_001).map(|i| format!("shard-{k}-{i:04}")), 3);
        due.extend(each((0..10).map(|i| format!("everywhere-{i}")), 2));
        due
    });
    let mut logs = placed(from, from, flat, &mut n);
    let mut first = each((0..20).map(|i| format!("star-{i:02}")), 5);
    first.extend((0..1_000).map(|i| format!("filler-{i:04}")));
    let mut second = each((0..1_001).map(|i| format!("other-{i:04}")), 2);
    second.extend((10..20).map(|i| format!("star-{i:02}")));
    let third = vec!["star-05".to_owned()];
    logs.extend(placed(
        from,
        from + STARS_AFTER,
        [first, second, third],
        &mut n,
    ));
    logs
}

/// The busiest assistants of a statistics' answer, with their counts.
fn top_assistants(body: &Json) -> Vec<(String, u64)> {
    body["data"]["top_assistants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["assistant_id"].as_str().unwrap().to_owned(),
                a["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_spread_users_busiest_assistants_are_exact_when_no_shard_lists_them() {
    let cluster = TestCluster::start(1, 2).await;
    let from = spread(&cluster, 0, 3).await;
    let logs = busiest_set(from);
    assert_eq!(logs.len(), 3 * 3_023 + 1_100 + 2_012 + 1);
    let app = load(&cluster, &logs).await;

    let stars = chrono::DateTime::from_timestamp_nanos((from + STARS_AFTER) as i64)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let stars = format!("start_time={stars}");
    for query in ["", &stars, "status=error", "log_type=tool_call&interval=1m"] {
        let (status, gathered) = gathered_stats(&cluster, query).await;
        assert_eq!(status, 200, "{query}: {gathered}");
        let single = single_node_stats(&app, &app.keys.alice, query).await;
        assert_eq!(gathered, single, "{query}");
    }
    // six logs each: the ten found on every shard, before the stars with as many (by id)
    let (_, body) = gathered_stats(&cluster, "").await;
    let expected: Vec<(String, u64)> = (0..10).map(|i| (format!("everywhere-{i}"), 6)).collect();
    assert_eq!(top_assistants(&body), expected);
    // an hour on, the stars counted on the second shard, which did not list them
    let (_, body) = gathered_stats(&cluster, &stars).await;
    let expected: Vec<(String, u64)> = [5, 10, 11, 12, 13, 14, 15, 16, 17, 18]
        .map(|i| (format!("star-{i:02}"), 6))
        .into();
    assert_eq!(top_assistants(&body), expected);
}

/// Records of user 0 numbered `first..first + count`, stamped past the cut-over `from`: they
/// land on all three shards.
fn fresh(from: u64, first: u64, count: u64) -> Vec<LogRecord> {
    (first..first + count)
        .map(|n| {
            let record = activity(
                "tool_call",
                from + 5_000_000_000_000 + n,
                &format!("fresh {n}"),
            );
            with_attr(record, "user.id", text(USERS[0]))
        })
        .collect()
}

#[tokio::test]
async fn a_spread_users_tail_follows_on_from_a_page_and_resumes_every_shard() {
    let cluster = TestCluster::start(1, 2).await;
    let from = spread(&cluster, 0, 3).await;
    let grpc = cluster.grpc();
    export_until_acknowledged(&grpc, 0, &cluster.ingest, fresh(from, 0, 30)).await;
    let deadline = Instant::now() + PATIENCE;
    let sequence = loop {
        let response = cluster
            .http_client()
            .build()
            .unwrap()
            .get(format!(
                "{}/logs?limit=1",
                cluster.api_url(&cluster.gateways[0])
            ))
            .bearer_auth(cluster.readers[0].expose())
            .send()
            .await
            .unwrap();
        // a 503 while a replica catches up is an answer to wait on, like a total short of 30
        let status = response.status();
        let sequence = response
            .headers()
            .get("logbridge-sequence")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Json = response.json().await.unwrap();
        if status == 200 && body["data"]["total"] == 30 {
            break sequence.expect("a page says where it was read");
        }
        assert!(Instant::now() < deadline, "never all 30: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // a position per shard of the user
    let home = shard_of(USERS[0], SHARDS);
    let mut shards: Vec<u32> = (0..3).map(|k| (home + k) % SHARDS).collect();
    shards.sort();
    let named: Vec<u32> = sequence
        .split(',')
        .map(|pair| pair.split_once(':').unwrap().0.parse().unwrap())
        .collect();
    assert_eq!(named, shards, "{sequence}");

    // a tail from the page: the logs acknowledged since, each once, none from before
    let url = format!("{}/logs/tail", cluster.api_url(&cluster.gateways[0]));
    let client = cluster.http_client().build().unwrap();
    let open = |last: Option<String>, cursor: Option<String>| {
        let url = match cursor {
            Some(cursor) => format!("{url}?cursor={cursor}"),
            None => url.clone(),
        };
        let mut request = client.get(url).bearer_auth(cluster.readers[0].expose());
        if let Some(last) = last {
            request = request.header("Last-Event-ID", last);
        }
        request.send()
    };
    let mut tail = Events::new(open(None, Some(sequence)).await.unwrap());
    export_until_acknowledged(&grpc, 0, &cluster.ingest, fresh(from, 30, 60)).await;
    let mut seen = Vec::new();
    let mut last_id = String::new();
    for _ in 0..30 {
        let event = tail.next().await;
        assert_eq!(event.kind, None, "{event:?}");
        seen.push(event.data["message"].as_str().unwrap().to_owned());
        last_id = event.id.unwrap();
    }
    drop(tail);
    // resumed from the 30th event: the other 30, and the logs sent meanwhile, each once
    export_until_acknowledged(&grpc, 0, &cluster.ingest, fresh(from, 90, 10)).await;
    let mut resumed = Events::new(open(Some(last_id), None).await.unwrap());
    for _ in 0..40 {
        let event = resumed.next().await;
        assert_eq!(event.kind, None, "{event:?}");
        seen.push(event.data["message"].as_str().unwrap().to_owned());
    }
    seen.sort();
    let mut expected: Vec<String> = (30..100).map(|n| format!("fresh {n}")).collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "every new log once, none from before the page"
    );
    // an id that names another user's shard, or no shard, is refused by name
    let stranger = (0..SHARDS).find(|s| !shards.contains(s)).unwrap();
    let response = open(Some(format!("{stranger}:5")), None).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Json = response.json().await.unwrap();
    assert_eq!(
        body["message"],
        format!("Last-Event-ID names shard {stranger}, which holds none of this user's logs")
    );
    // a tail of a user not spread yet ends, resumably, once its logs go to more shards: it
    // would miss theirs; reconnecting, the client follows them all
    let mut single = Events::new(
        client
            .get(&url)
            .bearer_auth(cluster.readers[1].expose())
            .send()
            .await
            .unwrap(),
    );
    spread(&cluster, 1, 2).await;
    let end = single.next().await;
    assert_eq!(end.kind.as_deref(), Some("end"));
    assert_eq!(
        end.data,
        serde_json::json!({
            "message": "this user's logs now go to more shards: reconnect with Last-Event-ID to resume",
            "resumable": true,
        })
    );
}
