//! `GET /logs` against a running server: the response envelope, every filter, paging, cursors,
//! full-text search, per-user scoping and every error.

use crate::common;

use std::collections::HashSet;

use common::*;
use opentelemetry_proto::tonic::common::v1::{KeyValueList, any_value::Value};
use serde_json::json;

#[tokio::test]
async fn the_response_has_the_reference_shape() {
    let app = spawn_app().await;
    let record = with_attr(
        with_attr(
            activity(
                "inbound_context_lookup",
                at_ms(0),
                "Inbound context lookup completed successfully",
            ),
            "activity.request_data",
            text(
                r#"{"strategy_id":"f0f6","payload":{"caller_number":"+919876543210","note":null}}"#,
            ),
        ),
        "activity.response_data",
        Value::KvlistValue(KeyValueList {
            values: vec![kv("context_size", Value::IntValue(2))],
        }),
    );
    let mut record = with_attr(record, "activity.latency_ms", Value::IntValue(312));
    record.trace_id = vec![0x5b; 16];
    app.ingest(&app.keys.alice, vec![record]).await;

    let (status, body) = app.get_logs(Some(&app.keys.alice), "page=1&limit=20").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "success": true,
            "message": "Activity logs fetched successfully",
            "data": {
                "logs": [{
                    "log_type": "inbound_context_lookup",
                    "status": "success",
                    "assistant_id": "asst-1",
                    "room_name": "room-1",
                    "timestamp": "2026-03-10T09:15:42.000Z",
                    "message": "Inbound context lookup completed successfully",
                    "request_data": {"strategy_id": "f0f6", "payload": {"caller_number": "+919876543210", "note": null}},
                    "response_data": {"context_size": 2},
                    "latency_ms": 312,
                    "trace_id": "5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b",
                    "span_id": null,
                    "severity_text": "INFO"
                }],
                "total": 1,
                "page": 1,
                "limit": 20
            }
        })
    );
}

#[tokio::test]
async fn logs_come_newest_first_with_exact_totals() {
    let app = spawn_app().await;
    let records = [5, 1, 9, 3, 7]
        .iter()
        .map(|&ms| activity("tool_call", at_ms(ms), &format!("t{ms}")))
        .collect();
    app.ingest(&app.keys.alice, records).await;
    let data = app.logs(&app.keys.alice, "").await;
    assert_eq!(messages(&data), ["t9", "t7", "t5", "t3", "t1"]);
    assert_eq!(data["total"], 5);
    assert_eq!(data["limit"], 50);
    assert_eq!(data["page"], 1);
    assert_eq!(data.get("next_cursor"), None);

    let data = app.logs(&app.keys.alice, "limit=2&page=2").await;
    assert_eq!(messages(&data), ["t5", "t3"]);
    assert_eq!(data["total"], 5);

    // past the end: empty page, true total
    let data = app.logs(&app.keys.alice, "limit=2&page=4").await;
    assert_eq!(messages(&data), Vec::<String>::new());
    assert_eq!(data["total"], 5);
    assert_eq!(data["page"], 4);
}

#[tokio::test]
async fn timestamps_order_within_the_same_second() {
    let app = spawn_app().await;
    // 1 ms and 1 µs apart: a seconds-precision sort would scramble them
    let records = vec![
        activity("tool_call", at_ms(1) + 1_000, "b"),
        activity("tool_call", at_ms(1), "a"),
        activity("tool_call", at_ms(2), "c"),
    ];
    app.ingest(&app.keys.alice, records).await;
    let data = app.logs(&app.keys.alice, "").await;
    assert_eq!(messages(&data), ["c", "b", "a"]);
    let stamps: Vec<&str> = data["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["timestamp"].as_str().unwrap())
        .collect();
    assert_eq!(
        stamps,
        [
            "2026-03-10T09:15:42.002Z",
            "2026-03-10T09:15:42.001Z",
            "2026-03-10T09:15:42.001Z"
        ]
    );
}

#[tokio::test]
async fn every_filter_applies_and_they_combine() {
    let app = spawn_app().await;
    let records = vec![
        with_attr(
            activity("tool_call", at_ms(1), "m1"),
            "activity.status",
            text("error"),
        ),
        with_attr(
            activity("tool_call", at_ms(2), "m2"),
            "activity.assistant_id",
            text("asst-2"),
        ),
        with_attr(
            activity("end_call_webhook", at_ms(3), "m3"),
            "activity.room_name",
            text("room-2"),
        ),
        activity("inbound_context_lookup", at_ms(4), "m4"),
        with_attr(
            with_attr(
                activity("tool_call", at_ms(5), "m5"),
                "activity.status",
                text("error"),
            ),
            "activity.room_name",
            text("room-2"),
        ),
    ];
    app.ingest(&app.keys.alice, records).await;
    let cases: [(&str, &[&str]); 9] = [
        ("log_type=tool_call", &["m5", "m2", "m1"]),
        ("log_type=end_call_webhook", &["m3"]),
        ("log_type=inbound_context_lookup", &["m4"]),
        ("status=error", &["m5", "m1"]),
        ("status=success", &["m4", "m3", "m2"]),
        ("assistant_id=asst-2", &["m2"]),
        ("room_name=room-2", &["m5", "m3"]),
        ("room_name=room-2&log_type=tool_call&status=error", &["m5"]),
        ("assistant_id=ASST-2", &[]),
    ];
    for (query, expected) in cases {
        let data = app.logs(&app.keys.alice, query).await;
        assert_eq!(messages(&data), expected, "{query}");
        assert_eq!(data["total"], expected.len(), "{query}");
    }
}

#[tokio::test]
async fn time_range_is_inclusive_start_exclusive_end() {
    let app = spawn_app().await;
    let records = (0..5)
        .map(|i| activity("tool_call", at_ms(i * 1000), &format!("s{i}")))
        .collect();
    app.ingest(&app.keys.alice, records).await;
    let data = app
        .logs(
            &app.keys.alice,
            "start_time=2026-03-10T09:15:43Z&end_time=2026-03-10T09:15:45Z",
        )
        .await;
    assert_eq!(messages(&data), ["s2", "s1"]);
    assert_eq!(data["total"], 2);
    let data = app
        .logs(&app.keys.alice, "start_time=2026-03-10T09:15:45.000Z")
        .await;
    assert_eq!(messages(&data), ["s4", "s3"]);
    let data = app
        .logs(&app.keys.alice, "end_time=2026-03-10T10:15:43%2B01:00")
        .await;
    assert_eq!(messages(&data), ["s0"]);
}

#[tokio::test]
async fn full_text_search_matches_words_and_phrases() {
    let app = spawn_app().await;
    let records = vec![
        activity("tool_call", at_ms(1), "Tool get_weather returned HTTP 200"),
        activity(
            "tool_call",
            at_ms(2),
            "Tool book_appointment failed: HTTP 500 error",
        ),
        activity(
            "end_call_webhook",
            at_ms(3),
            "Webhook delivery failed with error 500 HTTP",
        ),
        activity(
            "inbound_context_lookup",
            at_ms(4),
            "user_id:x OR NOT lookup *",
        ),
    ];
    app.ingest(&app.keys.alice, records).await;
    let cases: [(&str, &[&str]); 8] = [
        (
            "q=failed",
            &[
                "Webhook delivery failed with error 500 HTTP",
                "Tool book_appointment failed: HTTP 500 error",
            ],
        ),
        (
            "q=FAILED%20webhook",
            &["Webhook delivery failed with error 500 HTTP"],
        ),
        (
            "q=%22http%20500%22",
            &["Tool book_appointment failed: HTTP 500 error"],
        ),
        (
            "q=%22500%20http%22%20error",
            &["Webhook delivery failed with error 500 HTTP"],
        ),
        ("q=get_weather", &["Tool get_weather returned HTTP 200"]),
        ("q=user_id%3Ax", &["user_id:x OR NOT lookup *"]),
        ("q=NOT%20lookup", &["user_id:x OR NOT lookup *"]),
        ("q=missing", &[]),
    ];
    for (query, expected) in cases {
        let data = app.logs(&app.keys.alice, query).await;
        assert_eq!(messages(&data), expected, "{query}");
        assert_eq!(data["total"], expected.len(), "{query}");
    }
    let data = app
        .logs(&app.keys.alice, "q=http&log_type=tool_call&limit=1")
        .await;
    assert_eq!(
        messages(&data),
        ["Tool book_appointment failed: HTTP 500 error"]
    );
    assert_eq!(data["total"], 2);
}

#[tokio::test]
async fn users_never_see_each_others_logs() {
    let app = spawn_app().await;
    app.ingest(
        &app.keys.alice,
        vec![activity(
            "tool_call",
            at_ms(1),
            "alice secret user_id:user-bob",
        )],
    )
    .await;
    app.ingest(
        &app.keys.bob,
        vec![
            activity("tool_call", at_ms(2), "bob secret user_id:user-alice"),
            activity("tool_call", at_ms(3), "bob second"),
        ],
    )
    .await;
    // a platform key attributes records by user.id
    app.ingest(
        &app.keys.platform,
        vec![with_attr(
            activity("tool_call", at_ms(4), "platform for alice"),
            "user.id",
            text("user-alice"),
        )],
    )
    .await;

    let alice = app.logs(&app.keys.alice, "").await;
    assert_eq!(
        messages(&alice),
        ["platform for alice", "alice secret user_id:user-bob"]
    );
    let bob = app.logs(&app.keys.bob, "").await;
    assert_eq!(
        messages(&bob),
        ["bob second", "bob secret user_id:user-alice"]
    );
    let reader = app.logs(&app.keys.alice_reader, "").await;
    assert_eq!(reader["total"], 2);

    for query in [
        "q=secret",
        "q=user_id%3Auser-bob",
        "q=user%3Auser-bob",
        "q=bob",
        "q=%22user-bob%22",
        "room_name=room-1",
        "q=user-bob%20*",
    ] {
        let data = app.logs(&app.keys.alice, query).await;
        for message in messages(&data) {
            assert!(!message.starts_with("bob"), "{query} leaked {message}");
        }
    }
    let data = app.logs(&app.keys.alice, "q=bob").await;
    assert_eq!(messages(&data), ["alice secret user_id:user-bob"]);
    let data = app.logs(&app.keys.bob, "q=alice").await;
    assert_eq!(messages(&data), ["bob secret user_id:user-alice"]);
}

#[tokio::test]
async fn paging_equal_timestamps_yields_each_record_exactly_once() {
    let app = spawn_app().await;
    let n: usize = 103;
    // one instant for all, exported in three batches so they span commits
    for chunk in (0..n).collect::<Vec<_>>().chunks(40) {
        let records = chunk
            .iter()
            .map(|i| activity("tool_call", at_ms(7), &format!("r{i:03}")))
            .collect();
        app.ingest(&app.keys.alice, records).await;
    }
    // newest ingested first among equals
    let first = app.logs(&app.keys.alice, "limit=3").await;
    assert_eq!(messages(&first), ["r102", "r101", "r100"]);

    for limit in [1usize, 7, 10, 50, 100] {
        let mut seen = Vec::new();
        let mut page = 1;
        loop {
            let data = app
                .logs(&app.keys.alice, &format!("limit={limit}&page={page}"))
                .await;
            assert_eq!(data["total"], n);
            let got = messages(&data);
            if got.is_empty() {
                break;
            }
            seen.extend(got);
            page += 1;
        }
        let expected: Vec<String> = (0..n).rev().map(|i| format!("r{i:03}")).collect();
        assert_eq!(seen, expected, "limit={limit}");

        // the same walk with cursors
        let mut seen = Vec::new();
        let mut query = format!("limit={limit}");
        let mut pages = 0;
        loop {
            let data = app.logs(&app.keys.alice, &query).await;
            pages += 1;
            assert_eq!(data["page"], pages);
            assert_eq!(data["total"], n);
            seen.extend(messages(&data));
            match data["next_cursor"].as_str() {
                Some(cursor) => query = format!("limit={limit}&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(seen, expected, "cursor walk, limit={limit}");
        assert_eq!(pages, n.div_ceil(limit), "limit={limit}");
    }
}

#[tokio::test]
async fn cursor_walk_is_stable_across_new_ingest_and_restart() {
    let mut app = spawn_app().await;
    let records = (0..10)
        .map(|i| activity("tool_call", at_ms(i), &format!("c{i}")))
        .collect();
    app.ingest(&app.keys.alice, records).await;
    let page1 = app.logs(&app.keys.alice, "limit=4").await;
    assert_eq!(messages(&page1), ["c9", "c8", "c7", "c6"]);
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();

    // newer logs arrive and the server restarts between pages
    app.ingest(
        &app.keys.alice,
        vec![activity("tool_call", at_ms(100), "newer")],
    )
    .await;
    app.restart().await;

    let page2 = app
        .logs(&app.keys.alice, &format!("limit=4&cursor={cursor}"))
        .await;
    assert_eq!(messages(&page2), ["c5", "c4", "c3", "c2"]);
    assert_eq!(page2["page"], 2);
    assert_eq!(page2["total"], 11);
    let cursor = page2["next_cursor"].as_str().unwrap();
    let page3 = app
        .logs(&app.keys.alice, &format!("limit=4&cursor={cursor}"))
        .await;
    assert_eq!(messages(&page3), ["c1", "c0"]);
    assert_eq!(page3.get("next_cursor"), None);
}

#[tokio::test]
async fn limits_clamp_and_empty_values_count_as_absent() {
    let app = spawn_app().await;
    let records = (0..120)
        .map(|i| activity("tool_call", at_ms(i), &format!("l{i}")))
        .collect();
    app.ingest(&app.keys.alice, records).await;
    let data = app.logs(&app.keys.alice, "limit=500").await;
    assert_eq!(data["limit"], 100);
    assert_eq!(messages(&data).len(), 100);
    let data = app
        .logs(
            &app.keys.alice,
            "limit=&log_type=&page=&status=&q=&unknown=1",
        )
        .await;
    assert_eq!(data["limit"], 50);
    assert_eq!(data["total"], 120);
    assert_eq!(messages(&data).len(), 50);
    assert!(data["next_cursor"].is_string());
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let app = spawn_app().await;
    app.ingest(&app.keys.alice, vec![activity("tool_call", at_ms(1), "x")])
        .await;
    let first = app.logs(&app.keys.alice, "limit=1&room_name=room-1").await;
    let other = app.logs(&app.keys.alice, "limit=1").await;
    assert_eq!(first["next_cursor"], serde_json::Value::Null);
    assert_eq!(other["next_cursor"], serde_json::Value::Null);

    let cases = [
        (
            "log_type=TOOL_CALL",
            "log_type must be one of tool_call, end_call_webhook, inbound_context_lookup",
        ),
        (
            "log_type=other",
            "log_type must be one of tool_call, end_call_webhook, inbound_context_lookup",
        ),
        ("status=failed", "status must be success or error"),
        ("page=0", "page must be an integer >= 1"),
        ("page=abc", "page must be an integer >= 1"),
        ("limit=0", "limit must be an integer >= 1"),
        ("limit=-1", "limit must be an integer >= 1"),
        ("limit=2.5", "limit must be an integer >= 1"),
        (
            "start_time=2026-13-01T00:00:00Z",
            "start_time must be an RFC 3339 time such as 2026-03-10T09:15:42Z",
        ),
        (
            "end_time=now",
            "end_time must be an RFC 3339 time such as 2026-03-10T09:15:42Z",
        ),
        (
            "start_time=2026-03-10T00:00:01Z&end_time=2026-03-10T00:00:00Z",
            "start_time must be before end_time",
        ),
        (
            "q=%22open",
            "q has an unbalanced double quote (at character 1)",
        ),
        ("q=%3A%3A%20*", "q must contain at least one word"),
        (
            "cursor=AAAA",
            "cursor is not a valid cursor from this server",
        ),
    ];
    for (query, message) in cases {
        let (status, body) = app.get_logs(Some(&app.keys.alice), query).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(
            body,
            json!({"success": false, "message": message, "data": null}),
            "{query}"
        );
    }
}

#[tokio::test]
async fn cursors_refuse_other_filters_pages_and_tampering() {
    let app = spawn_app().await;
    let records = (0..3)
        .map(|i| activity("tool_call", at_ms(i), &format!("k{i}")))
        .collect();
    app.ingest(&app.keys.alice, records).await;
    app.ingest(&app.keys.bob, vec![activity("tool_call", at_ms(1), "b")])
        .await;
    let data = app
        .logs(&app.keys.alice, "limit=1&log_type=tool_call")
        .await;
    let cursor = data["next_cursor"].as_str().unwrap().to_owned();

    let mut tampered = cursor.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let cases = [
        (
            app.keys.alice.clone(),
            format!("limit=1&log_type=end_call_webhook&cursor={cursor}"),
            "cursor was made for different filters",
        ),
        (
            app.keys.alice.clone(),
            format!("limit=1&cursor={cursor}"),
            "cursor was made for different filters",
        ),
        (
            app.keys.bob.clone(),
            format!("limit=1&log_type=tool_call&cursor={cursor}"),
            "cursor was made for different filters",
        ),
        (
            app.keys.alice.clone(),
            format!("limit=1&log_type=tool_call&page=2&cursor={cursor}"),
            "cursor cannot be combined with page > 1",
        ),
        (
            app.keys.alice.clone(),
            format!("limit=1&log_type=tool_call&cursor={tampered}"),
            "cursor is not a valid cursor from this server",
        ),
        (
            app.keys.alice.clone(),
            format!("limit=1&log_type=tool_call&cursor={}", forged_cursor()),
            "cursor is not a valid cursor from this server",
        ),
    ];
    for (key, query, message) in cases {
        let (status, body) = app.get_logs(Some(&key), &query).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["message"], message, "{query}");
    }
    // the right filters continue, with a different page size too
    let data = app
        .logs(
            &app.keys.alice,
            &format!("limit=5&log_type=tool_call&cursor={cursor}"),
        )
        .await;
    assert_eq!(messages(&data), ["k1", "k0"]);
}

/// A well-formed cursor for alice's `log_type=tool_call` query, signed under another secret.
fn forged_cursor() -> String {
    use logbridge::api::{Cursor, CursorKey, parse_logs_params};
    let forger = CursorKey::from_bytes([42; 32]);
    let pairs = vec![("log_type".to_owned(), "tool_call".to_owned())];
    let query = parse_logs_params(&pairs, "user-alice", &forger)
        .unwrap()
        .query;
    let after = logbridge::store::SortKey {
        timestamp: u64::MAX,
        seq: u64::MAX,
    };
    Cursor::next(&query, after, 2).encode(&forger)
}

#[tokio::test]
async fn filter_values_no_log_can_have_are_a_400() {
    let app = spawn_app().await;
    for name in ["assistant_id", "room_name"] {
        let (status, body) = app
            .get_logs(
                Some(&app.keys.alice),
                &format!("{name}={}", "x".repeat(257)),
            )
            .await;
        assert_eq!(status, 400);
        assert_eq!(body["message"], format!("{name} must be at most 256 bytes"));
    }
    let (status, _) = app
        .get_logs(
            Some(&app.keys.alice),
            &format!("room_name={}", "x".repeat(256)),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn times_before_1970_or_after_2554_keep_their_meaning() {
    let app = spawn_app().await;
    app.ingest(
        &app.keys.alice,
        vec![activity("tool_call", at_ms(1), "now")],
    )
    .await;
    let total = |query: &'static str| {
        let app = &app;
        async move { app.logs(&app.keys.alice, query).await["total"].clone() }
    };
    assert_eq!(
        total("start_time=1960-01-01T00:00:00Z&end_time=1965-01-01T00:00:00Z").await,
        0
    );
    assert_eq!(
        total("start_time=2600-01-01T00:00:00Z&end_time=2700-01-01T00:00:00Z").await,
        0
    );
    assert_eq!(
        total("start_time=1960-01-01T00:00:00Z&end_time=2600-01-01T00:00:00Z").await,
        1
    );
    assert_eq!(total("end_time=1969-12-31T23:59:59Z").await, 0);
}

#[tokio::test]
async fn a_wrong_method_gets_the_error_envelope() {
    let app = spawn_app().await;
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
    ] {
        let response = app
            .client
            .request(method.clone(), format!("{}/logs", app.api_url))
            .bearer_auth(app.keys.alice.expose())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "GET, HEAD, DELETE");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"success": false, "message": "method not allowed: this endpoint takes GET, HEAD, DELETE", "data": null})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_stop_at_a_hundred_thousand_and_point_to_the_cursor() {
    let app = spawn_app().await;
    let records = 100_150u64;
    for chunk in (0..records).collect::<Vec<_>>().chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|&i| activity("tool_call", at_ms(i), "deep"))
            .collect();
        let response = app.export(&app.keys.alice, batch).await.unwrap();
        assert_eq!(response.partial_success, None);
    }
    app.flush().await;
    // the last page an offset reaches
    let data = app.logs(&app.keys.alice, "page=1001&limit=100").await;
    assert_eq!(data["total"], records);
    assert_eq!(data["logs"].as_array().unwrap().len(), 100);
    // its cursor goes on
    let cursor = data["next_cursor"].as_str().unwrap();
    let data = app
        .logs(&app.keys.alice, &format!("limit=100&cursor={cursor}"))
        .await;
    assert_eq!(data["logs"].as_array().unwrap().len(), 50);
    assert_eq!(data["page"], 1002);
    // one past it
    let (status, body) = app
        .get_logs(Some(&app.keys.alice), "page=1002&limit=100")
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        "page 1002 with limit 100 starts past the first 100000 logs; follow data.next_cursor to \
         read further"
    );
    // past the end is still an empty page with the true total
    let data = app.logs(&app.keys.alice, "page=100000&limit=100").await;
    assert_eq!(data["total"], records);
    assert_eq!(data["logs"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_past_the_pool_are_answered_503_not_queued() {
    let app = spawn_app_with(AppOptions {
        max_concurrent_searches: 1,
        ..Default::default()
    })
    .await;
    let records = (0..5_000)
        .map(|i| activity("tool_call", at_ms(i), &format!("pool word{}", i % 50)))
        .collect();
    app.ingest(&app.keys.alice, records).await;
    let searches: Vec<_> = (0..32)
        .map(|i| {
            let request = app
                .client
                .get(format!(
                    "{}/logs?q=pool&page={}&limit=100",
                    app.api_url,
                    1 + i
                ))
                .bearer_auth(app.keys.alice.expose())
                .send();
            tokio::spawn(request)
        })
        .collect();
    let (mut served, mut refused) = (0, 0);
    for search in searches {
        let response = search.await.unwrap().unwrap();
        match response.status().as_u16() {
            200 => served += 1,
            503 => {
                refused += 1;
                assert_eq!(response.headers()["retry-after"], "1");
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(
                    body,
                    json!({"success": false, "message": "too many searches in progress, retry later", "data": null})
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        served > 0 && refused > 0,
        "{served} served, {refused} refused"
    );
}

#[tokio::test]
async fn keys_are_required_and_scoped() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/logs", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"success": false, "message": "missing API key: send Authorization: Bearer <key>", "data": null})
    );

    let unknown = logbridge::auth::Secret::generate();
    let (status, body) = app.get_logs(Some(&unknown), "").await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], "unknown API key");

    let response = app
        .client
        .get(format!("{}/logs", app.api_url))
        .header(
            "authorization",
            format!("Basic {}", app.keys.alice.expose()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // ingest-only keys cannot read
    for key in [&app.keys.platform, &app.keys.carol_ingest] {
        let (status, body) = app.get_logs(Some(key), "").await;
        assert_eq!(status, 403);
        assert_eq!(
            body,
            json!({"success": false, "message": "this API key lacks the read scope", "data": null})
        );
    }
}

#[tokio::test]
async fn health_and_readiness_need_no_key() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let response = app
            .client
            .get(format!("{}{path}", app.api_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let response = app
        .client
        .get(format!("{}/nope", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"success": false, "message": "no such endpoint", "data": null})
    );
}

#[tokio::test]
async fn logs_survive_a_restart() {
    let mut app = spawn_app().await;
    let records = (0..25)
        .map(|i| activity("tool_call", at_ms(i), &format!("d{i}")))
        .collect();
    app.ingest(&app.keys.alice, records).await;
    app.restart().await;
    let data = app.logs(&app.keys.alice, "limit=100").await;
    assert_eq!(data["total"], 25);
    let unique: HashSet<String> = messages(&data).into_iter().collect();
    assert_eq!(unique.len(), 25);

    // new records after the restart sort among the old ones, with fresh sequence numbers
    app.ingest(
        &app.keys.alice,
        vec![activity("tool_call", at_ms(24), "d24-again")],
    )
    .await;
    let data = app.logs(&app.keys.alice, "limit=2").await;
    assert_eq!(messages(&data), ["d24-again", "d24"]);
}

#[tokio::test]
async fn accepted_records_become_visible_without_a_flush() {
    let app = spawn_app_with(AppOptions {
        commit_interval_ms: 50,
        ..Default::default()
    })
    .await;
    let response = app
        .export(
            &app.keys.alice,
            vec![activity("tool_call", at_ms(1), "soon")],
        )
        .await
        .unwrap();
    assert_eq!(response.partial_success, None);
    // the commit timer, not a flush, makes it visible
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let data = app.logs(&app.keys.alice, "").await;
        if data["total"] == 1 {
            assert_eq!(messages(&data), ["soon"]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became visible"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
