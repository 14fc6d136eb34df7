//! `DELETE /logs`: a key with the delete scope erases its user's logs that match the filters of
//! `GET /logs`, exactly those, and they never come back: not after `kill -9`, a merge or a
//! restart.

use crate::common;

use std::time::{Duration, Instant};

use common::process::{
    Served, Setup, logs_request, serve, start_with, stored_messages, terminate, wait_ready,
    write_config_with,
};
use common::{
    PATIENCE, activity, at_ms, authorized, messages, request_of, spawn_app, text, with_attr,
};
use logbridge::auth::Secret;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::json;

/// Six logs of `who`: rooms `room-1` and `room-2` in turn, one of them about a refund.
fn six_logs(who: &str) -> Vec<LogRecord> {
    (0..6u64)
        .map(|i| {
            let about = if i == 4 {
                "refund issued"
            } else {
                "lookup done"
            };
            let record = activity("tool_call", at_ms(i * 1000), &format!("{who} {i} {about}"));
            with_attr(
                record,
                "activity.room_name",
                text(&format!("room-{}", 1 + i % 2)),
            )
        })
        .collect()
}

#[tokio::test]
async fn erasure_takes_exactly_the_callers_matching_logs() {
    let app = spawn_app().await;
    app.ingest(&app.keys.alice, six_logs("alice")).await;
    app.ingest(&app.keys.bob, six_logs("bob")).await;
    let eraser = Some(&app.keys.alice_eraser);
    let all = "limit=100";

    let (status, body) = app.delete_logs(eraser, "room_name=room-2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"success": true, "message": "Activity logs deleted", "data": {"deleted": 3}})
    );
    assert_eq!(
        messages(&app.logs(&app.keys.alice, all).await),
        [
            "alice 4 refund issued",
            "alice 2 lookup done",
            "alice 0 lookup done"
        ]
    );

    // text and time window together: only the refund between 3 s and 5 s
    let window = "q=refund&start_time=2026-03-10T09:15:45Z&end_time=2026-03-10T09:15:47Z";
    let (status, body) = app.delete_logs(eraser, window).await;
    assert_eq!((status, &body["data"]), (200, &json!({"deleted": 1})));
    // what no longer matches erases nothing
    let (status, body) = app.delete_logs(eraser, window).await;
    assert_eq!((status, &body["data"]), (200, &json!({"deleted": 0})));
    assert_eq!(
        messages(&app.logs(&app.keys.alice, all).await),
        ["alice 2 lookup done", "alice 0 lookup done"]
    );

    // no filters: the rest of alice's logs; bob's six are untouched throughout
    let (status, body) = app.delete_logs(eraser, "").await;
    assert_eq!((status, &body["data"]), (200, &json!({"deleted": 2})));
    assert_eq!(app.logs(&app.keys.alice, all).await["total"], 0);
    let bob = app.logs(&app.keys.bob, all).await;
    assert_eq!(bob["total"], 6);
    assert_eq!(messages(&bob)[0], "bob 5 lookup done");
    assert_eq!(
        common::metric(&app.api_url, "logbridge_records_erased_total").await,
        6.0
    );
}

#[tokio::test]
async fn erasure_needs_the_delete_scope_and_valid_filters() {
    let app = spawn_app().await;
    app.ingest(&app.keys.alice, six_logs("alice")).await;
    let cases: [(Option<&Secret>, &str, u16, &str); 6] = [
        (
            None,
            "",
            401,
            "missing API key: send Authorization: Bearer <key>",
        ),
        (
            Some(&app.keys.alice),
            "",
            403,
            "this API key lacks the delete scope",
        ),
        (
            Some(&app.keys.alice_reader),
            "room_name=room-1",
            403,
            "this API key lacks the delete scope",
        ),
        (
            Some(&app.keys.alice_eraser),
            "limit=10",
            400,
            "limit is not accepted by DELETE /logs, which erases every log matching the filters",
        ),
        (
            Some(&app.keys.alice_eraser),
            "cursor=abc",
            400,
            "cursor is not accepted by DELETE /logs, which erases every log matching the filters",
        ),
        (
            Some(&app.keys.alice_eraser),
            "status=broken",
            400,
            "status must be success or error",
        ),
    ];
    for (key, query, status, message) in cases {
        let (got, body) = app.delete_logs(key, query).await;
        assert_eq!(
            (got, body["message"].as_str()),
            (status, Some(message)),
            "{query}"
        );
        assert_eq!(body["success"], false);
    }
    let response = app
        .client
        .put(format!("{}/logs", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD, DELETE");
    // none of it erased anything
    assert_eq!(app.logs(&app.keys.alice, "").await["total"], 6);
}

/// `future`, which must end within [`PATIENCE`]: `what` names it when it does not.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {PATIENCE:?}"))
}

/// Exports `records` with `secret` over gRPC; panics unless all are accepted.
async fn export(grpc: &str, secret: &Secret, records: Vec<LogRecord>) {
    let exported = async {
        let mut client = LogsServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        client
            .export(authorized(request_of(records), secret))
            .await
            .unwrap()
            .into_inner()
    };
    let response = within("an export", exported).await;
    assert_eq!(response.partial_success, None);
}

/// `DELETE /logs?{query}` against a served binary: the number erased.
async fn erase(api: &str, secret: &Secret, query: &str) -> u64 {
    let erased = logs_request(reqwest::Method::DELETE, api, secret, query);
    let body = within("an erasure", erased).await;
    body["data"]["deleted"].as_u64().expect("a count")
}

/// How many logs `secret`'s user has, as `/logs` shows them: those committed.
async fn visible(served: &Served, secret: &Secret) -> u64 {
    within("GET /logs", common::process::total(&served.api, secret)).await
}

/// Waits until `/logs` shows `count` logs of `secret`'s user; `what` names them.
async fn wait_visible(served: &Served, secret: &Secret, count: u64, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while visible(served, secret).await < count {
        assert!(Instant::now() < deadline, "{what} never visible");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 100 logs, half in room `keep`, half in room `erase`, tagged `batch`.
fn batch(batch: u64) -> (Vec<LogRecord>, Vec<String>) {
    let mut kept = Vec::new();
    let records = (0..100u64)
        .map(|i| {
            let room = if i % 2 == 0 { "keep" } else { "erase" };
            let message = format!("b{batch}-{i}-{room}");
            if room == "keep" {
                kept.push(message.clone());
            }
            let record = activity("tool_call", at_ms(batch * 1000 + i), &message);
            with_attr(record, "activity.room_name", text(room))
        })
        .collect();
    (records, kept)
}

/// Deleted logs still on disk: the tombstone files of the index.
fn tombstones(index: &std::path::Path) -> usize {
    std::fs::read_dir(index)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "del")
        })
        .count()
}

async fn assert_kept(served: &Served, secret: &Secret, kept: &[String], when: &str) {
    let mut stored = within("a walk of /logs", stored_messages(&served.api, secret)).await;
    stored.sort();
    let mut expected = kept.to_vec();
    expected.sort();
    assert_eq!(stored, expected, "{when}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_logs_never_come_back_after_sigkill_a_merge_or_a_restart() {
    // the first batches land in segments of their own: each is committed (shown by /logs)
    // before the next is sent
    let Setup {
        dir,
        config,
        secret,
        mut served,
    } = start_with("commit_interval_ms = 100", "").await;
    let index = dir.path().join("index");
    let mut kept = Vec::new();
    for b in 0..2 {
        let (records, keep) = batch(b);
        export(&served.grpc, &secret, records).await;
        kept.extend(keep);
        wait_visible(&served, &secret, 100 * (b + 1), &format!("batch {b}")).await;
    }
    // the last is acknowledged from the write-ahead log alone when the erasure arrives: after a
    // clean restart with a commit an hour after a batch, nothing but the erasure commits it
    let printed = terminate(&mut served);
    assert!(
        printed.iter().all(|l| !l.contains("panicked")),
        "{printed:#?}"
    );
    write_config_with(dir.path(), &index, "commit_interval_ms = 3600000", "");
    let mut served = serve(&config);
    wait_ready(&served.api).await;
    let (records, keep) = batch(2);
    export(&served.grpc, &secret, records).await;
    kept.extend(keep);
    assert_eq!(
        visible(&served, &secret).await,
        200,
        "the last batch is acknowledged, not committed"
    );
    assert_eq!(erase(&served.api, &secret, "room_name=erase").await, 150);
    // SIGKILL right after the answer: no clean shutdown, no later commit
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    // one line for the operator: who erased what, and how much
    let line = served
        .lines
        .iter()
        .find(|l| l.contains("activity logs erased"))
        .expect("an erasure line");
    for part in ["key=u", "user=u", "room_name=erase", "deleted=150"] {
        assert!(line.contains(part), "{part} in {line}");
    }

    // from here on a commit follows a batch within 100 ms again
    write_config_with(dir.path(), &index, "commit_interval_ms = 100", "");
    let mut served = serve(&config);
    wait_ready(&served.api).await;
    assert_kept(
        &served,
        &secret,
        &kept,
        "after kill -9 and the log's replay",
    )
    .await;

    // one more log makes a commit, after which the half-deleted segments are merged
    let (mut records, _) = batch(3);
    records.truncate(1);
    export(&served.grpc, &secret, records).await;
    kept.push("b3-0-keep".to_owned());
    let deadline = Instant::now() + PATIENCE;
    while tombstones(&index) > 0 {
        assert!(Instant::now() < deadline, "deleted logs never merged away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_visible(&served, &secret, 151, "the last log").await;
    assert_kept(&served, &secret, &kept, "after the merge").await;
    let printed = terminate(&mut served);
    assert!(
        printed
            .iter()
            .chain(&served.printed)
            .all(|l| !l.contains("panicked")),
        "{printed:#?}"
    );

    let served = serve(&config);
    wait_ready(&served.api).await;
    assert_kept(&served, &secret, &kept, "after a restart").await;
}
