//! `GET /logs/export`: every matching log, newest first, streamed as NDJSON or CSV, with memory
//! that does not grow with the export.

use crate::common;

use crate::common::harness::raw_grpc;

use std::time::{Duration, Instant};

use common::process::{Setup, serve, start_with, terminate, total, wait_ready};
use common::{PATIENCE, activity, at_ms, request_of, spawn_app, text, window, with_attr};
use http_body_util::BodyExt as _;
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

/// Logs the export reads from the index at a time (`PAGE` in `src/api/export.rs`).
const EXPORT_PAGE: u64 = 1_000;

/// What the export's design holds at once, in pages: the encoded chunks waiting for the client
/// (4, and the place kept for an error), the page being read and the one being encoded, and
/// what the response's writer holds, with room to spare.
const PAGES_HELD: u64 = 10;

/// What the export may take besides its pages and the index's document caches: the allocator's
/// slack (pages are made on blocking threads and freed on the runtime's). Seen here: 3 to 10 MiB,
/// flat from the first tenth of the export to its end.
const EXPORT_OVERHEAD: u64 = 12 * 1024 * 1024;

/// What tantivy's document store caches per segment read: 100 decompressed blocks of 16 KiB
/// (and the last document that overflows each).
const STORE_CACHE_PER_SEGMENT: u64 = 100 * (16 + 2) * 1024;

/// The pace of the reader: a client that takes its time, though the debug server sends slower.
const READ_BYTES_PER_SECOND: f64 = 12.0 * 1024.0 * 1024.0;

/// How long the reader stops after the first chunk: an export whose pages piled up while its
/// client took nothing would grow by megabytes a second meanwhile; a bounded one waits.
const STALL: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_200000_logs_streams_in_bounded_memory() {
    let Setup {
        dir,
        config,
        secret,
        mut served,
    } = start_with(
        // no commit until the shutdown below, and room for every log in one segment per
        // indexing thread: few segments, so that the index's caches are small and fixed
        "commit_interval_ms = 600000\nwriter_memory_mb = 1024",
        "",
    )
    .await;
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
    // committed at shutdown; a fresh server on the index: no merge or memory of the ingest left
    // to blur the figures
    terminate(&mut served);
    let served = serve(&config);
    wait_ready(&served.api).await;
    assert_eq!(total(&served.api, &secret).await, RECORDS);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index/meta.json")).unwrap())
            .unwrap();
    let segments = meta["segments"].as_array().expect("segments").len() as u64;

    // a small export first (5 pages), so that what any export sets up once (the blocking
    // threads, the connection's buffers) is there before the measure
    let warm_up = common::client()
        .get(format!(
            "http://{}/logs/export?end_time=2026-03-10T09:15:47Z",
            served.api
        ))
        .bearer_auth(secret.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(warm_up.status().as_u16(), 200);
    assert_eq!(warm_up.text().await.unwrap().lines().count(), 5_000);

    // the peak from here on is the export's; what the server maps of the index files is
    // counted apart (it is the page cache's, and grows with what is read, not with what is held)
    served.reset_peak_rss();
    let (peak_before, anon_before, files_before) = (
        served.status_bytes("VmHWM"),
        served.status_bytes("RssAnon"),
        served.status_bytes("RssFile"),
    );
    let api_url = format!("http://{}", served.api);
    let response = window::get(&api_url, "/logs/export", &secret).await;
    assert_eq!(response.status().as_u16(), 200);
    let mut body = response.into_body();
    // read slowly as it streams, counting lines and checking the order, keeping nothing, and
    // looking at the server's memory all along
    let started = Instant::now();
    let (mut lines, mut bytes, mut previous, mut partial) = (0u64, 0usize, u64::MAX, Vec::new());
    let mut most_anon = anon_before;
    let mut stalled_at = None;
    loop {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("a chunk of the export, or its end, within the patience");
        let Some(frame) = frame else { break };
        let Ok(chunk) = frame.expect("the export is not cut").into_data() else {
            continue;
        };
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
        most_anon = most_anon.max(served.status_bytes("RssAnon"));
        if lines > 0 && stalled_at.is_none() {
            // the reader stops a while, looking at the server's memory meanwhile
            let stalled = Instant::now();
            while stalled.elapsed() < STALL {
                tokio::time::sleep(Duration::from_millis(100)).await;
                most_anon = most_anon.max(served.status_bytes("RssAnon"));
            }
            stalled_at = Some(stalled.elapsed());
        }
        // the pace of a slow reader, not a wait for the server
        let due = started
            + stalled_at.unwrap_or_default()
            + Duration::from_secs_f64(bytes as f64 / READ_BYTES_PER_SECOND);
        tokio::time::sleep_until(due.into()).await;
    }
    assert!(partial.is_empty());
    assert_eq!(lines, RECORDS);
    assert_eq!(previous, 0);
    let (peak_after, files_after) = (served.status_bytes("VmHWM"), served.status_bytes("RssFile"));
    // the highest the server's own memory went during the export: its peak, less what the
    // index files it mapped added (they only grow while it reads, so this is at most the
    // growth of its anonymous memory at the peak)
    let growth = peak_after
        .saturating_sub(peak_before)
        .saturating_sub(files_after.saturating_sub(files_before));
    let sampled = most_anon - anon_before;
    let page = bytes as u64 * EXPORT_PAGE / RECORDS;
    let bound = PAGES_HELD * page + segments * STORE_CACHE_PER_SEGMENT + EXPORT_OVERHEAD;
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "export of {RECORDS} logs ({:.1} MiB of NDJSON, pages of {:.2} MiB) read in {:?}: the \
         server's memory grew by {:.1} MiB at its peak ({:.1} MiB of index files mapped besides), \
         by {:.1} MiB anonymous as sampled; bound {:.1} MiB ({segments} segments)",
        mib(bytes as u64),
        mib(page),
        started.elapsed(),
        mib(growth),
        mib(files_after.saturating_sub(files_before)),
        mib(sampled),
        mib(bound),
    );
    // the bound is a few pages: an export that held its whole result (or a growing part of it)
    // could not stay under it
    assert!(
        3 * bound < bytes as u64,
        "the test cannot tell: bound {bound} for {bytes} bytes"
    );
    assert!(
        growth < bound && sampled < bound,
        "the export grew the server's memory by {:.1} MiB at its peak ({:.1} MiB sampled), over \
         {PAGES_HELD} pages of {:.2} MiB and {:.0} MiB besides",
        mib(growth),
        mib(sampled),
        mib(page),
        mib(EXPORT_OVERHEAD)
    );

    // two exports whose clients stop reading hold the user's two places; a third is told to
    // retry
    let client = common::client();
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
