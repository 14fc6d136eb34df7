//! `GET /openapi.json` describes every REST endpoint, and Schemathesis, fuzzing all of them
//! against a live server with a read key, finds no server error and no answer that departs from
//! the document.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{activity, at_ms, spawn_app, text, tools, with_attr};
use serde_json::Value as Json;

#[tokio::test]
async fn the_document_lists_every_endpoint_with_its_key_and_errors() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/openapi.json", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Json = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let operations: BTreeSet<String> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().unwrap().keys();
            methods.map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    let expected = [
        "GET /logs",
        "DELETE /logs",
        "GET /logs/export",
        "GET /logs/stats",
        "GET /logs/tail",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /alerts",
        "POST /alerts",
        "GET /alerts/{id}",
        "PUT /alerts/{id}",
        "DELETE /alerts/{id}",
    ];
    assert_eq!(operations, expected.map(str::to_owned).into());
    for operation in expected.iter().filter(|o| o.contains("/alerts")) {
        let (method, path) = operation.split_once(' ').unwrap();
        let spec = &document["paths"][path][method.to_lowercase()];
        assert_eq!(
            spec["security"],
            serde_json::json!([{"bearer": []}]),
            "{operation}"
        );
        let documented = |status: &str| spec["responses"][status].is_object();
        assert!(
            ["400", "401", "403", "500"].into_iter().all(documented),
            "{operation}"
        );
        assert_eq!(documented("404"), path.ends_with("{id}"), "{operation}");
    }
    for operation in expected.iter().filter(|o| o.contains("/logs")) {
        let (method, path) = operation.split_once(' ').unwrap();
        let spec = &document["paths"][path][method.to_lowercase()];
        assert_eq!(
            spec["security"],
            serde_json::json!([{"bearer": []}]),
            "{operation}"
        );
        for status in ["200", "400", "401", "403", "503"] {
            assert!(
                spec["responses"][status].is_object(),
                "{operation} {status}"
            );
        }
        let parameters: Vec<&str> = spec["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for filter in [
            "log_type",
            "status",
            "assistant_id",
            "room_name",
            "start_time",
            "end_time",
            "q",
        ] {
            assert!(parameters.contains(&filter), "{operation} lacks {filter}");
        }
    }
    // every operation works in cluster mode, for every user
    for (path, method) in [
        ("/logs", "get"),
        ("/logs", "delete"),
        ("/logs/stats", "get"),
        ("/logs/tail", "get"),
        ("/logs/export", "get"),
    ] {
        let responses = &document["paths"][path][method]["responses"];
        assert!(responses["501"].is_null(), "{method} {path} 501");
    }
    let log = &document["components"]["schemas"]["ActivityLog"]["properties"];
    let fields: BTreeSet<&str> = log
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, logbridge::api::CSV_COLUMNS.into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_fault_in_any_endpoint() {
    let tools = tools::installed();
    let app = spawn_app().await;
    let records = (0..60u64)
        .map(|i| {
            let types = ["tool_call", "end_call_webhook", "inbound_context_lookup"];
            let mut record = activity(types[(i % 3) as usize], at_ms(i * 1000), "lookup done");
            record = with_attr(
                record,
                "activity.room_name",
                text(&format!("room-{}", i % 5)),
            );
            if i % 4 == 0 {
                record = with_attr(record, "activity.status", text("error"));
            }
            record
        })
        .collect();
    app.ingest(&app.keys.alice, records).await;

    let schema = format!("{}/openapi.json", app.api_url);
    // reads logs and manages alert rules: every operation but erasure gets past its key
    let authorization = format!("Authorization: Bearer {}", app.keys.alice.expose());
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let schemathesis = tools.schemathesis.clone();
    // its caches go to a temporary folder, not the source tree
    let workdir = tempfile::tempdir().unwrap();
    let cwd = workdir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            .current_dir(cwd)
            .args([
                "--config-file",
                config,
                "run",
                &schema,
                "-H",
                &authorization,
            ])
            .args(["--mode", "all", "--max-examples", "25", "--seed", "1"])
            .args(["--request-timeout", "5", "--no-color"])
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found faults:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // every operation was tested, none skipped
    assert!(report.contains("Tested: 13"), "{report}");
}
