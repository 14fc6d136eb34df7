//! `GET /logs/export`: every matching log, newest first, streamed as NDJSON or CSV, with memory
//! that does not grow with the export.

use crate::common;

use crate::common::harness::raw_grpc;

use std::time::{Duration, Instant};

use common::process::{Setup, start, total};
use common::{PATIENCE, activity, at_ms, request_of, spawn_app, text, with_attr};
use logbridge::api::CSV_COLUMNS;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message as _;
use serde_json::Value;

#[tokio::test]
async fn csv_and_ndjson_hold_the_same_logs_newest_first() {
    let app = spawn_app().await;
    let tricky = with_attr(
        activity("tool_call", at_ms(2), "a \"quoted\", comma\nand a new line"),
        "activity.request_data",
        text(r#"{"caller": "+1 555", "nested": {"a": [1, 2]}}"#),
    );
    let plain = activity("end_call_webhook", at_ms(1), "plain");
    let other_status = with_attr(
        activity("tool_call", at_ms(3), "failed"),
        "activity.status",
        text("error"),
    );
    app.ingest(&app.keys.alice, vec![tricky, plain, other_status])
        .await;
    app.ingest(
        &app.keys.bob,
        vec![activity("tool_call", at_ms(4), "bob's")],
    )
    .await;

    let get = |query: &str| {
        let request = app
            .client
            .get(format!("{}/logs/export?{query}", app.api_url))
            .bearer_auth(app.keys.alice.expose());
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            (status, content_type, response.text().await.unwrap())
        }
    };
    let (status, content_type, ndjson) = get("").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/x-ndjson")
    );
    let logs: Vec<Value> = ndjson
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // exactly what GET /logs serves, in its order; bob's log is not there
    let page = app.logs(&app.keys.alice, "limit=100").await;
    assert_eq!(Value::Array(logs.clone()), page["logs"]);
    assert_eq!(logs.len(), 3);

    let (status, content_type, csv) = get("format=csv").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/csv; charset=utf-8")
    );
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header, CSV_COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    for (row, log) in rows.iter().zip(&logs) {
        for (column, field) in CSV_COLUMNS.iter().zip(row.iter()) {
            let expected = match &log[*column] {
                Value::Null => String::new(),
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            assert_eq!(field, expected, "{column}");
        }
    }
    // the nested request data is JSON text in its cell
    let request_data: Value = serde_json::from_str(&rows[1][6]).unwrap();
    assert_eq!(request_data["nested"]["a"][1], 2);
    assert_eq!(&rows[1][5], "a \"quoted\", comma\nand a new line");

    // the filters of GET /logs apply; paging parameters and unknown formats are refused
    let (_, _, errors_only) = get("status=error").await;
    assert_eq!(errors_only.lines().count(), 1);
    let (_, _, empty) = get("format=csv&room_name=nowhere").await;
    // every cell quoted
    let quoted: Vec<String> = CSV_COLUMNS.iter().map(|c| format!("\"{c}\"")).collect();
    assert_eq!(empty, quoted.join(",") + "\n");
    for (query, message) in [
        ("format=xml", "format must be ndjson or csv"),
        (
            "limit=5",
            "limit is not accepted by GET /logs/export, which exports every log matching the filters",
        ),
        (
            "log_type=nope",
            "log_type must be one of tool_call, end_call_webhook, inbound_context_lookup",
        ),
    ] {
        let (status, _, body) = get(query).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (status, body["message"].as_str()),
            (400, Some(message)),
            "{query}"
        );
    }
    let keyless = app
        .client
        .get(format!("{}/logs/export", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(keyless.status().as_u16(), 401);
}

#[tokio::test]
async fn csv_cells_a_spreadsheet_would_run_are_neutralised() {
    let app = spawn_app().await;
    // each cell that starts like a formula, in a text column of its own
    let cells = [
        ("message", "=HYPERLINK(\"http://evil.example\",\"x\")"),
        ("room_name", "+1 555 0100"),
        ("assistant_id", "-2+3+cmd|' /C calc'!A0"),
        ("severity_text", "@SUM(A1:A2)"),
        ("message", "\tindented"),
        ("message", "\rreturned"),
        ("message", "x;=1+1 where ; splits cells"),
        ("message", "plain = fine"),
    ];
    let records = cells
        .iter()
        .enumerate()
        .map(|(n, (column, cell))| {
            let record = activity("tool_call", at_ms(n as u64), &format!("row {n}"));
            match *column {
                "message" => activity("tool_call", at_ms(n as u64), cell),
                "room_name" => with_attr(record, "activity.room_name", text(cell)),
                "assistant_id" => with_attr(record, "activity.assistant_id", text(cell)),
                _ => LogRecord {
                    severity_text: (*cell).to_owned(),
                    ..record
                },
            }
        })
        .collect();
    app.ingest(&app.keys.alice, records).await;
    let export = |format: &'static str| {
        let request = app
            .client
            .get(format!("{}/logs/export?format={format}", app.api_url))
            .bearer_auth(app.keys.alice.expose());
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.text().await.unwrap()
        }
    };
    let csv = export("csv").await;
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let column = |name: &str| CSV_COLUMNS.iter().position(|c| *c == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), cells.len());
    // newest first: the last record is the first row
    for (row, (name, cell)) in rows.iter().rev().zip(cells) {
        let expected = if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{cell}")
        } else {
            cell.to_owned()
        };
        assert_eq!(&row[column(name)], expected, "{name}");
        // numbers stay numbers
        assert_eq!(&row[column("latency_ms")], "100");
    }
    assert_eq!(
        &rows[7][column("message")],
        "'=HYPERLINK(\"http://evil.example\",\"x\")"
    );
    // every cell is quoted: a separator of another locale never starts a cell
    assert!(csv.contains("\"x;=1+1 where ; splits cells\""), "{csv}");
    assert_eq!(&rows[0][column("message")], "plain = fine");
    // NDJSON holds the logs as stored
    let ndjson = export("ndjson").await;
    let oldest: Value = serde_json::from_str(ndjson.lines().last().unwrap()).unwrap();
    assert_eq!(oldest["message"], cells[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_200000_logs_streams_in_bounded_memory() {
    let Setup {
        dir: _dir,
        secret,
        served,
        ..
    } = start().await;
    const RECORDS: u64 = 200_000;
    const BATCH: u64 = 2_000;
    let channel = tonic::transport::Endpoint::new(format!("http://{}", served.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let authorization = format!("Bearer {}", secret.expose());
    for batch in 0..RECORDS / BATCH {
        let records = (0..BATCH)
            .map(|i| {
                let n = batch * BATCH + i;
                activity(
                    "tool_call",
                    at_ms(n),
                    &format!("record {n} of the export test"),
                )
            })
            .collect();
        let body = bytes::Bytes::from(request_of(records).encode_to_vec());
        raw_grpc::export(channel.clone(), &authorization, body)
            .await
            .expect("export");
    }
    let deadline = Instant::now() + PATIENCE;
    while total(&served.api, &secret).await < RECORDS {
        assert!(Instant::now() < deadline, "ingest never visible");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = served.peak_rss();

    let mut response = reqwest::Client::new()
        .get(format!("http://{}/logs/export", served.api))
        .bearer_auth(secret.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // read as it streams: count lines and check the order, keeping nothing
    let (mut lines, mut bytes, mut previous, mut partial) = (0u64, 0usize, u64::MAX, Vec::new());
    while let Some(chunk) = response.chunk().await.unwrap() {
        bytes += chunk.len();
        partial.extend_from_slice(&chunk);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let log: Value = serde_json::from_slice(&line).unwrap();
            let n: u64 = log["message"]
                .as_str()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            assert!(n < previous, "{n} after {previous}: not newest first");
            previous = n;
            lines += 1;
        }
    }
    assert!(partial.is_empty());
    assert_eq!(lines, RECORDS);
    assert_eq!(previous, 0);
    let after = served.peak_rss();
    let rise = after.saturating_sub(before);
    println!(
        "export of {RECORDS} logs ({:.1} MiB of NDJSON): peak RSS {:.1} MiB before, {:.1} MiB after",
        bytes as f64 / 1048576.0,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    assert!(
        rise < 16 * 1024 * 1024,
        "the export raised peak RSS by {} KiB for {} KiB of output",
        rise / 1024,
        bytes / 1024
    );

    // two exports whose clients stop reading hold the user's two places; a third is told to
    // retry
    let client = reqwest::Client::new();
    let export = || {
        client
            .get(format!("http://{}/logs/export", served.api))
            .bearer_auth(secret.expose())
            .send()
    };
    let stalled = [export().await.unwrap(), export().await.unwrap()];
    let third = export().await.unwrap();
    assert_eq!(third.status().as_u16(), 503);
    assert_eq!(third.headers()["retry-after"], "1");
    let body: Value = third.json().await.unwrap();
    assert_eq!(
        body["message"],
        "too many exports in progress for this user, retry later"
    );
    // clients that go away end their exports and free the places
    drop(stalled);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = export().await.unwrap();
        if response.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the stalled exports never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
