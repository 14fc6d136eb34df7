//! `q`, the search grammar, end to end: operators, prefixes, fields and payload paths mean the
//! same in `GET /logs`, statistics, export, tail and `DELETE /logs`; bad queries are refused
//! naming where; a prefix that stands for too many words is refused; payload paths can be left
//! out of the index.

use crate::common;

use common::process::{logs_request, serve, terminate, write_config, write_key};
use common::sse::Events;
use common::{
    AppOptions, TestApp, activity, at_ms, messages, spawn_app, spawn_app_with, text, with_attr,
};
use logbridge::auth::Secret;
use logbridge::store::MAX_PREFIX_TERMS;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::Value as Json;
use tantivy::schema::{FAST, STORED, STRING, Schema, TEXT};

/// A log at `ms` with `message`, its payloads, and `status`.
fn log(ms: u64, message: &str, request: &str, response: &str, status: &str) -> LogRecord {
    let mut record = activity("inbound_context_lookup", at_ms(ms), message);
    record = with_attr(record, "activity.request_data", text(request));
    record = with_attr(record, "activity.response_data", text(response));
    with_attr(record, "activity.status", text(status))
}

/// Alice's six logs, and a log of Bob's with her words and her caller's number.
pub(crate) async fn app_with_calls() -> TestApp {
    let app = spawn_app().await;
    let caller = |n: &str| format!(r#"{{"payload":{{"caller_number":"{n}","attempt":2}}}}"#);
    app.ingest(
        &app.keys.alice,
        vec![
            log(
                1,
                "Caller context fetched",
                &caller("+919876543210"),
                r#"{"context_keys":["customer_name","plan"],"size":2}"#,
                "success",
            ),
            log(
                2,
                "Caller context lookup timed out",
                &caller("+919811112222"),
                r#"{"error":"timeout","timeout_ms":3000}"#,
                "error",
            ),
            log(
                3,
                "Tool get_weather returned HTTP 200",
                r#"{"city":"Pune"}"#,
                r#"{"summary":"Light rain, 24 C"}"#,
                "success",
            ),
            log(
                4,
                "Tool book_appointment failed: rate limit",
                r#"{"slot":"10:30"}"#,
                r#"{"error":"rate limit","retry":true}"#,
                "error",
            ),
            log(
                5,
                "Webhook delivery timed out, retrying",
                r#"{"url":"https://example.com/hook"}"#,
                r#"{"attempts":3}"#,
                "error",
            ),
            log(
                6,
                "Caller context fetched",
                &caller("+919876543210"),
                r#"{"context_keys":["account_id"],"size":1}"#,
                "success",
            ),
        ],
    )
    .await;
    app.ingest(
        &app.keys.bob,
        vec![log(
            7,
            "Caller context fetched for bob timed out",
            &caller("+919876543210"),
            r#"{"context_keys":["customer_name"]}"#,
            "error",
        )],
    )
    .await;
    app
}

pub(crate) const FETCHED_1: &str = "Caller context fetched";
pub(crate) const TIMED_OUT_2: &str = "Caller context lookup timed out";
pub(crate) const WEATHER_3: &str = "Tool get_weather returned HTTP 200";
pub(crate) const RATE_4: &str = "Tool book_appointment failed: rate limit";
pub(crate) const WEBHOOK_5: &str = "Webhook delivery timed out, retrying";

pub(crate) fn encoded(q: &str) -> String {
    serde_urlencoded::to_string([("q", q)]).unwrap()
}

#[tokio::test]
async fn operators_prefixes_fields_and_payload_paths_find_exactly_their_logs() {
    let app = app_with_calls().await;
    let cases: &[(&str, &[&str])] = &[
        // today's queries
        ("timed out", &[WEBHOOK_5, TIMED_OUT_2]),
        ("\"timed out, retrying\"", &[WEBHOOK_5]),
        // exclusion, of a word and of a phrase
        ("timed -webhook", &[TIMED_OUT_2]),
        ("context -\"lookup timed\"", &[FETCHED_1, FETCHED_1]),
        // OR, and groups
        ("weather OR webhook", &[WEBHOOK_5, WEATHER_3]),
        ("(weather OR rate) tool", &[RATE_4, WEATHER_3]),
        ("tool -(weather OR rate)", &[]),
        // prefixes
        ("retr*", &[WEBHOOK_5]),
        ("appoint* OR weath*", &[RATE_4, WEATHER_3]),
        // fields
        ("status:error", &[WEBHOOK_5, RATE_4, TIMED_OUT_2]),
        ("status:er* -tool", &[WEBHOOK_5, TIMED_OUT_2]),
        (
            "log_type:inbound_context_lookup fetched",
            &[FETCHED_1, FETCHED_1],
        ),
        ("assistant_id:asst-1 room_name:room-* rate", &[RATE_4]),
        ("message:\"http 200\"", &[WEATHER_3]),
        // payload paths: a whole value, ignoring case; its words; numbers and booleans
        (
            "request_data.payload.caller_number:\"+919876543210\"",
            &[FETCHED_1, FETCHED_1],
        ),
        ("request_data.payload.caller_number:+91981*", &[TIMED_OUT_2]),
        ("response_data.context_keys:customer_name", &[FETCHED_1]),
        ("response_data.context_keys:cust*", &[FETCHED_1]),
        ("response_data.summary:rain", &[WEATHER_3]),
        ("response_data.summary:\"light RAIN\"", &[WEATHER_3]),
        ("response_data.summary:\"rain light\"", &[]),
        ("request_data.city:PUNE", &[WEATHER_3]),
        (
            "response_data.timeout_ms:3000 OR response_data.retry:true",
            &[RATE_4, TIMED_OUT_2],
        ),
        (
            "request_data.payload.attempt:2 -response_data.size:1",
            &[TIMED_OUT_2, FETCHED_1],
        ),
        (
            "request_data.url:\"https://example.com/hook\"",
            &[WEBHOOK_5],
        ),
        ("response_data.error:timeout", &[TIMED_OUT_2]),
        ("response_data.nothing:here", &[]),
        // what is not a field is words, as it was
        ("user_id:x OR retrying", &[WEBHOOK_5]),
    ];
    for (q, expected) in cases {
        let data = app.logs(&app.keys.alice, &encoded(q)).await;
        assert_eq!(messages(&data), *expected, "{q}");
        assert_eq!(data["total"], expected.len(), "{q}");
    }

    // the page tells the explorer which words to mark
    let q = encoded("(Timeout OR \"rate limit\") -retrying ca* status:error");
    let response = get(&app, &app.keys.alice, &format!("/logs?{q}")).await;
    assert_eq!(
        response.headers()["logbridge-highlight"],
        "w=ca*&w=limit&w=rate&w=timeout"
    );
}

#[tokio::test]
async fn statistics_export_tail_and_erasure_take_the_same_grammar() {
    let app = app_with_calls().await;
    let alice = &app.keys.alice;
    let q = "(timed OR rate) -webhook request_data.payload.caller_number:+91* OR retry:x";
    // the same three logs in every reading
    let data = app.logs(alice, &encoded(q)).await;
    assert_eq!(messages(&data), [TIMED_OUT_2]);
    let q = "status:error -response_data.attempts:3";
    let data = app.logs(alice, &encoded(q)).await;
    assert_eq!(messages(&data), [RATE_4, TIMED_OUT_2]);

    let stats = get(&app, alice, &format!("/logs/stats?{}", encoded(q))).await;
    assert_eq!(stats.status(), 200);
    assert_eq!(stats.json::<Json>().await.unwrap()["data"]["total"], 2);

    let export = get(&app, alice, &format!("/logs/export?{}", encoded(q))).await;
    assert_eq!(export.status(), 200);
    let body = export.text().await.unwrap();
    let exported: Vec<String> = body
        .lines()
        .map(|line| {
            serde_json::from_str::<Json>(line).unwrap()["message"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(exported, [RATE_4, TIMED_OUT_2]);

    // a tail sees only the new logs the query selects
    let tail = get(&app, alice, &format!("/logs/tail?{}", encoded(q))).await;
    let mut events = Events::new(tail);
    app.ingest(
        alice,
        vec![
            log(10, "retrying again", "{}", r#"{"attempts":3}"#, "error"),
            log(11, "failed once more", "{}", r#"{"attempts":4}"#, "error"),
            log(12, "fine", "{}", "{}", "success"),
        ],
    )
    .await;
    let event = events.next().await;
    assert_eq!(event.data["message"], "failed once more");

    // an erasure by the query erases what it selects, and nothing of Bob's
    let (status, body) = app
        .delete_logs(
            Some(&app.keys.alice_eraser),
            &encoded("request_data.payload.caller_number:\"+919876543210\""),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["deleted"], 2);
    app.flush().await;
    let data = app.logs(alice, &encoded("fetched")).await;
    assert_eq!(data["total"], 0);
    let data = app.logs(&app.keys.bob, &encoded("fetched")).await;
    assert_eq!(data["total"], 1);
}

/// `GET path` with `key`.
async fn get(app: &TestApp, key: &Secret, path: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.api_url))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap()
}

/// The status and message of a request of Alice's with `q` (with a key that may erase).
async fn refusal(app: &TestApp, method: reqwest::Method, path: &str, q: &str) -> (u16, String) {
    let response = app
        .client
        .request(method, format!("{}{path}?{}", app.api_url, encoded(q)))
        .bearer_auth(app.keys.alice_eraser.expose())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Json = response.json().await.unwrap();
    (
        status,
        body["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn bad_queries_are_refused_everywhere_naming_the_problem_and_where() {
    let app = spawn_app().await;
    // more distinct words with one prefix than a prefix may stand for
    let records = (0..=MAX_PREFIX_TERMS as u64)
        .map(|n| activity("tool_call", at_ms(n), &format!("zq{n:05}")))
        .collect();
    app.ingest(&app.keys.bob, records).await;
    let cases = [
        (
            "(timeout",
            "q has a '(' that is never closed (at character 1)",
        ),
        ("a OR", "q has OR without a term after it (at character 3)"),
        (
            "x*",
            "q has the prefix \"x*\": a prefix needs at least 2 characters before the star (at character 1)",
        ),
        (
            "status:fine",
            "q has status:fine, which none is: status is one of success, error (at character 1)",
        ),
        (
            "ok request_data:+91",
            "q has request_data: without a path; name one, such as request_data.payload.caller_number:… (at character 4)",
        ),
        (
            "ok zq*",
            "q has the prefix \"zq*\", which stands for more than 10000 words: give more of it (at character 4)",
        ),
    ];
    let paths = [
        (reqwest::Method::GET, "/logs"),
        (reqwest::Method::GET, "/logs/stats"),
        (reqwest::Method::GET, "/logs/export"),
        (reqwest::Method::GET, "/logs/tail"),
        (reqwest::Method::DELETE, "/logs"),
    ];
    for (q, message) in cases {
        for (method, path) in &paths {
            let answer = refusal(&app, method.clone(), path, q).await;
            assert_eq!(answer, (400, message.to_owned()), "{method} {path} {q}");
        }
    }
    // Bob's words count toward the bound, never toward Alice's answers
    let data = app.logs(&app.keys.alice, &encoded("zq0000*")).await;
    assert_eq!(data["total"], 0);
    let data = app.logs(&app.keys.bob, &encoded("zq0000*")).await;
    assert_eq!(data["total"], 10);
    // a prefix of many words (read as a range of the dictionary) finds as one of few does
    let data = app.logs(&app.keys.bob, &encoded("zq0* OR zq1*")).await;
    assert_eq!(data["total"], MAX_PREFIX_TERMS + 1);
    assert_eq!(messages(&data)[0], "zq10000");
    // nothing was erased by the refused erasures
    assert_eq!(
        app.logs(&app.keys.bob, "").await["total"],
        MAX_PREFIX_TERMS + 1
    );
}

#[tokio::test]
async fn payload_paths_can_be_left_out_of_the_index() {
    let app = spawn_app_with(AppOptions {
        settings: vec![("LOGBRIDGE_INDEX_PAYLOAD_PATHS", "false".to_owned())],
        ..Default::default()
    })
    .await;
    app.ingest(
        &app.keys.alice,
        vec![log(
            1,
            "Caller context fetched",
            r#"{"n":"+9198"}"#,
            "{}",
            "success",
        )],
    )
    .await;
    let (status, message) = refusal(
        &app,
        reqwest::Method::GET,
        "/logs",
        "fetched request_data.n:\"+9198\"",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        message,
        "q names a payload path, and this server does not index them ([index] payload_paths = false) (at character 9)"
    );
    let data = app
        .logs(&app.keys.alice, &encoded("fetched OR nothing"))
        .await;
    assert_eq!(messages(&data), ["Caller context fetched"]);
}

/// An index as the previous logbridge wrote it: the fields of statistics, none of payloads.
fn write_previous_index(dir: &std::path::Path, user: &str, logs: &[(&str, &str)]) {
    let mut builder = Schema::builder();
    let user_field = builder.add_text_field("user", STRING);
    builder.add_text_field("scoped", STRING);
    let message = builder.add_text_field("message", TEXT);
    let timestamp = builder.add_u64_field("timestamp", FAST);
    let seq = builder.add_u64_field("seq", FAST);
    let doc = builder.add_bytes_field("doc", STORED);
    builder.add_u64_field("kind", FAST);
    builder.add_u64_field("latency_ms", FAST);
    builder.add_text_field("assistant_id", FAST);
    std::fs::create_dir_all(dir).unwrap();
    let index = tantivy::Index::create_in_dir(dir, builder.build()).unwrap();
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 16 << 20).unwrap();
    for (n, (text, request)) in logs.iter().enumerate() {
        let served = serde_json::json!({
            "log_type": "inbound_context_lookup", "status": "success", "assistant_id": "a",
            "room_name": "r", "timestamp": "2026-03-10T09:15:42.000Z", "message": text,
            "request_data": serde_json::from_str::<Json>(request).unwrap(),
            "response_data": {}, "latency_ms": 5, "trace_id": null, "span_id": null,
            "severity_text": "INFO",
        });
        let mut document = tantivy::TantivyDocument::new();
        document.add_text(user_field, user);
        document.add_text(message, text);
        document.add_u64(timestamp, at_ms(n as u64));
        document.add_u64(seq, n as u64 + 1);
        document.add_bytes(doc, serde_json::to_vec(&served).unwrap().as_slice());
        writer.add_document(document).unwrap();
    }
    let mut prepared = writer.prepare_commit().unwrap();
    prepared.set_payload(&format!(r#"{{"last_seq":{}}}"#, logs.len()));
    prepared.commit().unwrap();
    writer.wait_merging_threads().unwrap();
}

#[tokio::test]
async fn an_index_of_the_previous_version_is_upgraded_and_its_payloads_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let secret = Secret::generate();
    write_key(dir.path(), &secret);
    write_previous_index(
        &dir.path().join("index"),
        "u",
        &[
            (
                "Caller context fetched",
                r#"{"payload":{"caller_number":"+919876543210"}}"#,
            ),
            (
                "Caller context fetched",
                r#"{"payload":{"caller_number":"+919811112222"}}"#,
            ),
        ],
    );
    let mut served = serve(&config);
    served.wait_for_line("index upgraded");
    let found = logs_request(
        reqwest::Method::GET,
        &served.api,
        &secret,
        &encoded("request_data.payload.caller_number:\"+919811112222\" fetched"),
    )
    .await;
    assert_eq!(found["data"]["total"], 1, "{found}");
    assert_eq!(
        found["data"]["logs"][0]["request_data"]["payload"]["caller_number"],
        "+919811112222"
    );
    let all = logs_request(reqwest::Method::GET, &served.api, &secret, "").await;
    assert_eq!(all["data"]["total"], 2);
    terminate(&mut served);
}
