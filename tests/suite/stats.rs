//! `GET /logs/stats`: exact counts, a histogram by status, latency percentiles and the busiest
//! assistants of the caller's logs under the filters of `GET /logs`; over a million distinct
//! assistants, the busiest are exact and the server's peak memory stays bounded.

use crate::common;

use std::path::Path;
use std::time::Instant;

use common::process::{serve, wait_ready, write_config_with, write_key};
use common::{TestApp, activity, at_ms, spawn_app, text, with_attr};
use logbridge::auth::Secret;
use logbridge::mapping::{ActivityLog, LogStatus, LogType};
use logbridge::store::{self, StoreOptions};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use serde_json::value::RawValue;
use serde_json::{Value as Json, json};

const TYPES: [&str; 3] = ["tool_call", "end_call_webhook", "inbound_context_lookup"];

/// Log `i` of the data set: one every 30 s from 2026-03-10T09:15:42Z, types in turn, every fifth
/// failed, four assistants, latency `10 * i` ms.
struct Log {
    log_type: &'static str,
    failed: bool,
    assistant: String,
    latency: u64,
    time: u64,
}

/// Which logs of the data set a query selects.
type Keep = Box<dyn Fn(&Log) -> bool>;

fn data_set() -> Vec<Log> {
    (0..120u64)
        .map(|i| Log {
            log_type: TYPES[(i % 3) as usize],
            failed: i % 5 == 0,
            assistant: format!("asst-{}", i % 4 + u64::from(i >= 100) * 10),
            latency: 10 * i,
            time: at_ms(i * 30_000),
        })
        .collect()
}

async fn ingest(app: &TestApp, key: &Secret, logs: &[Log]) {
    let records = logs
        .iter()
        .map(|log| {
            let mut record = activity(log.log_type, log.time, "lookup done");
            record = with_attr(record, "activity.assistant_id", text(&log.assistant));
            record = with_attr(
                record,
                "activity.latency_ms",
                Value::IntValue(log.latency as i64),
            );
            if log.failed {
                record = with_attr(record, "activity.status", text("error"));
            }
            record
        })
        .collect();
    app.ingest(key, records).await;
}

async fn stats(app: &TestApp, key: Option<&Secret>, query: &str) -> (u16, Json) {
    let mut request = app
        .client
        .get(format!("{}/logs/stats?{query}", app.api_url));
    if let Some(key) = key {
        request = request.bearer_auth(key.expose());
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json::<Json>().await.unwrap(),
    )
}

/// The value at `quantile` of sorted `values`: the smallest with at least that share at or below.
fn percentile(values: &[u64], quantile: f64) -> u64 {
    let rank = (quantile * values.len() as f64).ceil().max(1.0) as usize;
    values[rank - 1]
}

/// What `GET /logs/stats` must answer for `logs`, histogram aside.
fn expected(logs: &[&Log]) -> (Json, Json, Json) {
    let mut by_type = serde_json::Map::new();
    let mut latency = serde_json::Map::new();
    for t in TYPES {
        let of_type: Vec<&&Log> = logs.iter().filter(|l| l.log_type == t).collect();
        let errors = of_type.iter().filter(|l| l.failed).count();
        by_type.insert(
            t.into(),
            json!({"success": of_type.len() - errors, "error": errors}),
        );
        let mut values: Vec<u64> = of_type.iter().map(|l| l.latency).collect();
        values.sort_unstable();
        let summary = if values.is_empty() {
            json!({"count": 0, "p50": null, "p95": null, "p99": null, "max": null})
        } else {
            json!({
                "count": values.len(),
                "p50": percentile(&values, 0.5),
                "p95": percentile(&values, 0.95),
                "p99": percentile(&values, 0.99),
                "max": values.last(),
            })
        };
        latency.insert(t.into(), summary);
    }
    let mut assistants: Vec<(String, u64, u64)> = Vec::new();
    for log in logs {
        match assistants.iter_mut().find(|(a, _, _)| *a == log.assistant) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += u64::from(log.failed);
            }
            None => assistants.push((log.assistant.clone(), 1, u64::from(log.failed))),
        }
    }
    assistants.sort_by(|a, b| (b.1, &a.0).cmp(&(a.1, &b.0)));
    let top: Vec<Json> = assistants
        .iter()
        .take(10)
        .map(|(a, count, errors)| json!({"assistant_id": a, "count": count, "errors": errors}))
        .collect();
    (by_type.into(), latency.into(), top.into())
}

#[tokio::test]
async fn counts_percentiles_and_assistants_are_exact_under_the_filters() {
    let app = spawn_app().await;
    let logs = data_set();
    ingest(&app, &app.keys.alice, &logs).await;
    // another user's logs count for nobody else
    ingest(&app, &app.keys.bob, &logs[..30]).await;

    let cases: [(&str, Keep); 5] = [
        ("", Box::new(|_| true)),
        ("status=error", Box::new(|l| l.failed)),
        (
            "log_type=tool_call",
            Box::new(|l| l.log_type == "tool_call"),
        ),
        ("assistant_id=asst-2", Box::new(|l| l.assistant == "asst-2")),
        (
            "start_time=2026-03-10T09:30:00Z&end_time=2026-03-10T09:45:00Z",
            Box::new(|l| l.time >= at_ms(858_000) && l.time < at_ms(1_758_000)),
        ),
    ];
    for (query, keep) in cases {
        let (status, body) = stats(&app, Some(&app.keys.alice), query).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(body["success"], true);
        assert_eq!(
            body["message"],
            "Activity log statistics fetched successfully"
        );
        let kept: Vec<&Log> = logs.iter().filter(|l| keep(l)).collect();
        let data = &body["data"];
        assert_eq!(data["total"], kept.len(), "{query}");
        let (by_type, latency, top) = expected(&kept);
        assert_eq!(data["by_type_status"], by_type, "{query}");
        assert_eq!(data["latency_ms"], latency, "{query}");
        assert_eq!(data["top_assistants"], top, "{query}");
        let bucketed: u64 = data["histogram"]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["success"].as_u64().unwrap() + b["error"].as_u64().unwrap())
            .sum();
        assert_eq!(bucketed, kept.len() as u64, "{query}");
    }

    // literal figures of the whole set, beside the reference above
    let (_, body) = stats(&app, Some(&app.keys.alice), "").await;
    let data = &body["data"];
    assert_eq!(data["total"], 120);
    assert_eq!(
        data["by_type_status"]["tool_call"],
        json!({"success": 32, "error": 8})
    );
    assert_eq!(
        data["latency_ms"]["tool_call"],
        json!({"count": 40, "p50": 570, "p95": 1110, "p99": 1170, "max": 1170})
    );
    assert_eq!(
        data["top_assistants"][0],
        json!({"assistant_id": "asst-0", "count": 25, "errors": 5})
    );
    assert_eq!(data["top_assistants"].as_array().unwrap().len(), 8);

    // bob sees his 30 only
    let (_, body) = stats(&app, Some(&app.keys.bob), "").await;
    assert_eq!(body["data"]["total"], 30);
}

#[tokio::test]
async fn the_histogram_has_about_sixty_buckets_or_the_interval_asked_for() {
    let app = spawn_app().await;
    let logs = data_set();
    ingest(&app, &app.keys.alice, &logs).await;

    // 59.5 minutes of logs, 09:15:42 to 10:15:12: one-minute buckets aligned on the minute
    let (_, body) = stats(&app, Some(&app.keys.alice), "").await;
    let histogram = &body["data"]["histogram"];
    assert_eq!(histogram["interval"], "1m");
    assert_eq!(histogram["interval_seconds"], 60.0);
    let buckets = histogram["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 61);
    assert_eq!(
        buckets[0],
        json!({"start": "2026-03-10T09:15:00.000Z", "success": 0, "error": 1})
    );
    assert_eq!(
        buckets[1],
        json!({"start": "2026-03-10T09:16:00.000Z", "success": 2, "error": 0})
    );
    assert_eq!(
        buckets[60],
        json!({"start": "2026-03-10T10:15:00.000Z", "success": 1, "error": 0})
    );

    // an hour asked for, over an explicit day: 24 buckets, all logs in the 09:00 and 10:00 ones
    let (status, body) = stats(
        &app,
        Some(&app.keys.alice),
        "interval=1h&start_time=2026-03-10T00:00:00Z&end_time=2026-03-11T00:00:00Z&status=error",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let histogram = &body["data"]["histogram"];
    assert_eq!(histogram["interval"], "1h");
    let buckets = histogram["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24);
    let errors = |hour: usize| buckets[hour]["error"].as_u64().unwrap();
    let in_first_hour = logs
        .iter()
        .filter(|l| l.failed && l.time < at_ms(2_658_000))
        .count() as u64;
    assert_eq!((errors(9), errors(10)), (in_first_hour, 24 - in_first_hour));
    assert_eq!(
        buckets
            .iter()
            .map(|b| b["success"].as_u64().unwrap())
            .sum::<u64>(),
        0
    );

    // no match: no buckets, zero counts, null percentiles
    let (_, body) = stats(&app, Some(&app.keys.alice), "q=nothing").await;
    assert_eq!(body["data"]["total"], 0);
    assert_eq!(body["data"]["histogram"]["buckets"], json!([]));
    assert_eq!(
        body["data"]["latency_ms"]["end_call_webhook"]["p99"],
        Json::Null
    );
    assert_eq!(body["data"]["top_assistants"], json!([]));
}

#[tokio::test]
async fn bad_parameters_name_themselves() {
    let app = spawn_app().await;
    let key = Some(&app.keys.alice);
    for (query, status, message) in [
        ("interval=2m", 400, "interval must be 1m, 5m, 1h or 1d"),
        (
            "limit=5",
            400,
            "limit is not accepted by GET /logs/stats, which counts every log matching the filters",
        ),
        ("status=maybe", 400, "status must be success or error"),
        (
            "interval=1m&start_time=2026-01-01T00:00:00Z&end_time=2026-03-01T00:00:00Z",
            400,
            "interval cuts the time range into 84960 buckets, more than 10000: choose a wider \
             interval or a narrower start_time and end_time",
        ),
    ] {
        let (got, body) = stats(&app, key, query).await;
        assert_eq!((got, body["message"].as_str().unwrap()), (status, message));
        assert_eq!(body["success"], false);
    }
    let (status, body) = stats(&app, None, "").await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = stats(&app, Some(&app.keys.carol_ingest), "").await;
    assert_eq!(status, 403);
}

const MIB: u64 = 1024 * 1024;

/// The busy assistants' log counts: two tied, two not in the top 10, and each more than the
/// 1 in 4,097 of the logs that makes the top 10 certain (the README's accuracy).
const BUSY: [u32; 12] = [
    1500, 1400, 1300, 1200, 1200, 1000, 900, 800, 700, 600, 500, 400,
];

/// Assistants with one log each: a million distinct assistants with the busy ones.
const NUM_SINGLETONS: u32 = 1_000_000 - BUSY.len() as u32;

/// Most the server's peak resident memory may grow during one `GET /logs/stats`.
const STATS_MEMORY_BOUND: u64 = 64 * MIB;

fn busy_id(k: usize) -> String {
    format!("busy-{k:02}")
}

/// Whether the `j`th log of busy assistant `k` failed.
fn busy_failed(k: usize, j: u32) -> bool {
    j % (k as u32 + 2) == 0
}

/// Writes the data set for user `u` into a new index at `path`: every singleton and busy
/// assistant's logs, shuffled, in a few commits; how many logs.
fn write_many_assistants(path: &Path) -> u64 {
    // an owner per log: singletons by number, busy assistants after them
    let mut owners: Vec<u32> = (0..NUM_SINGLETONS).collect();
    for (k, &count) in BUSY.iter().enumerate() {
        owners.extend(std::iter::repeat_n(
            NUM_SINGLETONS + k as u32,
            count as usize,
        ));
    }
    owners.shuffle(&mut StdRng::seed_from_u64(16));
    let (_store, mut writer) = store::open(path, &StoreOptions::new(256 * MIB as usize)).unwrap();
    let empty = || RawValue::from_string("{}".to_owned()).unwrap();
    let mut seen = [0u32; BUSY.len()];
    for (i, &owner) in owners.iter().enumerate() {
        let (assistant_id, failed) = match owner.checked_sub(NUM_SINGLETONS) {
            None => (format!("solo-{owner:07}"), owner % 7 == 0),
            Some(k) => {
                let k = k as usize;
                seen[k] += 1;
                (busy_id(k), busy_failed(k, seen[k]))
            }
        };
        let log = ActivityLog {
            user_id: "u".to_owned(),
            log_type: LogType::ALL[i % 3],
            status: if failed {
                LogStatus::Error
            } else {
                LogStatus::Success
            },
            assistant_id,
            room_name: "r".to_owned(),
            timestamp_nanos: at_ms(i as u64),
            message: "m".to_owned(),
            request_data: empty(),
            response_data: empty(),
            latency_ms: 5,
            trace_id: None,
            span_id: None,
            severity_text: None,
        };
        let seq = i as u64 + 1;
        writer.add(&log, seq).unwrap();
        if seq % 400_000 == 0 {
            writer.commit(seq).unwrap();
        }
    }
    let num_logs = owners.len() as u64;
    writer.commit(num_logs).unwrap();
    num_logs
}

/// Over a million distinct assistants, more than the summary of the busiest keeps (so they are
/// counted again, exactly), the busiest ten are exact and the server's peak memory grows by less
/// than [`STATS_MEMORY_BOUND`] during the request; one map entry per assistant took 158 MiB here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_distinct_assistants_give_the_exact_busiest_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("index");
    let started = Instant::now();
    let num_logs = {
        let index = index.clone();
        tokio::task::spawn_blocking(move || write_many_assistants(&index))
            .await
            .unwrap()
    };
    eprintln!("wrote {num_logs} logs in {:?}", started.elapsed());

    let config = write_config_with(dir.path(), &index, "commit_interval_ms = 100", "");
    let secret = Secret::generate();
    write_key(dir.path(), &secret);
    let served = serve(&config);
    wait_ready(&served.api).await;
    let client = common::harness::plain_http().build().unwrap();
    let get = |path: &str| {
        client
            .get(format!("http://{}/{path}", served.api))
            .bearer_auth(secret.expose())
            .send()
    };
    // a page first, so that the baseline holds what every search of these logs holds
    let page: Json = get("logs?limit=1").await.unwrap().json().await.unwrap();
    assert_eq!(page["data"]["total"], num_logs);

    served.reset_peak_rss();
    let baseline = served.status_bytes("VmHWM");
    let resident = |name| served.status_bytes(name) as f64 / MIB as f64;
    let (anon, file) = (resident("RssAnon"), resident("RssFile"));
    let started = Instant::now();
    let response = get("logs/stats").await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Json = response.json().await.unwrap();
    let took = started.elapsed();
    let peak = served.status_bytes("VmHWM");
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "stats over {num_logs} logs took {took:?}; peak RSS {:.1} MiB, {:.1} MiB over the \
         baseline of {:.1} MiB (bound {} MiB)",
        peak as f64 / MIB as f64,
        growth as f64 / MIB as f64,
        baseline as f64 / MIB as f64,
        STATS_MEMORY_BOUND / MIB,
    );
    eprintln!(
        "resident after it: anonymous {anon:.1} -> {:.1} MiB, files {file:.1} -> {:.1} MiB",
        resident("RssAnon"),
        resident("RssFile"),
    );

    let data = &body["data"];
    assert_eq!(data["total"], num_logs);
    let mut busiest: Vec<(String, u32, u32)> = BUSY
        .iter()
        .enumerate()
        .map(|(k, &count)| {
            let errors = (1..=count).filter(|&j| busy_failed(k, j)).count() as u32;
            (busy_id(k), count, errors)
        })
        .collect();
    busiest.sort_by(|a, b| (b.1, &a.0).cmp(&(a.1, &b.0)));
    let expected: Vec<Json> = busiest
        .iter()
        .take(10)
        .map(|(id, count, errors)| json!({"assistant_id": id, "count": count, "errors": errors}))
        .collect();
    assert_eq!(data["top_assistants"], Json::from(expected));
    assert!(
        growth < STATS_MEMORY_BOUND,
        "the peak RSS grew by {} MiB during the statistics, over the bound of {} MiB",
        growth / MIB,
        STATS_MEMORY_BOUND / MIB
    );
}
