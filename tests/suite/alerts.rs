//! Alerts: rules through `/alerts`, evaluated by the real server over its index, delivered to a
//! real Prometheus Alertmanager and to a webhook receiver in the test that checks the signature.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logbridge::auth::Secret;
use serde_json::{Value as Json, json};

use crate::common::{
    self, AppOptions, PATIENCE, TestApp, activity, labeled_metric, metric, now_nanos,
    spawn_app_with, text, webhooks, with_attr,
};

/// A Prometheus Alertmanager on a free port, stopped when dropped.
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start() -> Self {
        let tools = common::tools::installed();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: support\n  group_by: [alertname, user_id]\nreceivers:\n  - name: support\n",
        )
        .unwrap();
        let mut child = Command::new(&tools.alertmanager)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            // no gossip: a single Alertmanager
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("prometheus-alertmanager starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let mut printed = Vec::new();
        let address = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("Alertmanager never listened; printed: {printed:#?}"));
            if line.contains("msg=\"Listening on\"") {
                let address = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .expect("an address")
                    .to_owned();
                break address;
            }
            printed.push(line);
        };
        Self {
            child,
            url: format!("http://{address}"),
            _dir: dir,
        }
    }

    /// The alerts Alertmanager holds (active ones), as its v2 API lists them.
    async fn alerts(&self) -> Vec<Json> {
        let answer: Json = common::client()
            .get(format!("{}/api/v2/alerts", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer.as_array().expect("a list of alerts").clone()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An app whose rules are evaluated every second and whose alerts go to `alertmanager` and
/// `webhook` (a URL each, or none).
async fn app_with_receivers(alertmanager: Option<&str>, webhook: Option<&str>) -> TestApp {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("webhook.secret");
    std::fs::write(&secret_file, format!("{}\n", webhooks::SECRET)).unwrap();
    let mut settings = vec![
        ("LOGBRIDGE_ALERTS_EVALUATION_INTERVAL_MS", "1000".to_owned()),
        ("LOGBRIDGE_ALERTS_EVALUATION_BUDGET_MS", "1000".to_owned()),
        // a firing alert is sent to Alertmanager again every 2 s, to end 8 s later unless
        // sent again
        ("LOGBRIDGE_ALERTS_RESEND_INTERVAL_MS", "2000".to_owned()),
    ];
    if let Some(url) = alertmanager {
        settings.push(("LOGBRIDGE_ALERTS_ALERTMANAGER_URL", url.to_owned()));
    }
    if let Some(url) = webhook {
        settings.push(("LOGBRIDGE_ALERTS_WEBHOOK_URL", url.to_owned()));
        settings.push((
            "LOGBRIDGE_ALERTS_WEBHOOK_SECRET_FILE",
            secret_file.display().to_string(),
        ));
    }
    let app = spawn_app_with(AppOptions {
        commit_interval_ms: 100,
        settings,
        ..AppOptions::default()
    })
    .await;
    // the secret is read at start
    drop(secret_dir);
    app
}

/// `method /alerts{path}` with `key` and a JSON `body`: status and JSON answer.
async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&Secret>,
    body: Option<&Json>,
) -> (u16, Json) {
    let mut request = app
        .client
        .request(method, format!("{}/alerts{path}", app.api_url));
    if let Some(key) = key {
        request = request.bearer_auth(key.expose());
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A rule of more than four failed end-of-call webhooks in 10 s, with labels for the support team.
fn webhook_rule() -> Json {
    json!({
        "name": "CRM webhooks failing",
        "filters": { "log_type": "end_call_webhook", "status": "error" },
        "window": "10s",
        "measure": "count",
        "comparison": ">",
        "threshold": 4,
        "labels": { "team": "support", "severity": "page" },
        "annotations": { "runbook_url": "https://wiki.example.com/crm-webhooks" },
    })
}

fn failed_webhooks(count: u64) -> Vec<opentelemetry_proto::tonic::logs::v1::LogRecord> {
    let now = now_nanos();
    (0..count)
        .map(|i| {
            with_attr(
                activity(
                    "end_call_webhook",
                    now + i,
                    &format!("CRM answered 502 ({i})"),
                ),
                "activity.status",
                text("error"),
            )
        })
        .collect()
}

/// Polls rule `id` of `key`'s until `done` holds of it; panics after `patience`.
async fn wait_for_rule(
    app: &TestApp,
    key: &Secret,
    id: &str,
    patience: Duration,
    done: impl Fn(&Json) -> bool,
) -> Json {
    let deadline = Instant::now() + patience;
    loop {
        let (status, body) = call(
            app,
            reqwest::Method::GET,
            &format!("/{id}"),
            Some(key),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if done(&body["data"]) {
            return body["data"].clone();
        }
        assert!(Instant::now() < deadline, "rule never got there: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_burst_of_webhook_errors_fires_through_alertmanager_and_a_signed_webhook_then_resolves() {
    let alertmanager = Alertmanager::start();
    let (hook_url, mut hooks) = webhooks::receiver().await;
    let app = app_with_receivers(Some(&alertmanager.url), Some(&hook_url)).await;
    let (status, created) = call(
        &app,
        reqwest::Method::POST,
        "",
        Some(&app.keys.alice),
        Some(&webhook_rule()),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["state"]["status"], "inactive");

    // another user's errors never count: alice's rule measures 0 over them
    app.ingest(&app.keys.bob, failed_webhooks(8)).await;
    let bob_visible = now_nanos();
    let evaluated_after = |rule: &Json, after: u64| {
        rule["state"]["evaluated_at"].as_str().is_some_and(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_nanos_opt()
                .unwrap() as u64
                > after
        })
    };
    let rule = wait_for_rule(&app, &app.keys.alice, &id, PATIENCE, |r| {
        evaluated_after(r, bob_visible)
    })
    .await;
    assert_eq!(rule["state"]["status"], "inactive", "{rule}");
    assert_eq!(rule["state"]["value"], 0.0);

    // five of alice's: more than four in the window
    let burst = Instant::now();
    app.ingest(&app.keys.alice, failed_webhooks(5)).await;
    // within the window plus one interval
    let firing = webhooks::next_signed(&mut hooks, Duration::from_secs(11), "firing").await;
    println!("fired {:?} after the burst", burst.elapsed());
    assert_eq!(firing["status"], "firing");
    assert_eq!(firing["rule_id"], id.as_str());
    assert_eq!(firing["value"], 5.0);
    assert_eq!(firing["threshold"], 4.0);
    assert_eq!(firing["ends_at"], Json::Null);
    assert_eq!(
        firing["labels"],
        json!({
            "alertname": "CRM webhooks failing",
            "rule_id": id,
            "severity": "page",
            "team": "support",
            "user_id": "user-alice",
        })
    );
    assert_eq!(
        firing["annotations"]["runbook_url"],
        "https://wiki.example.com/crm-webhooks"
    );
    assert_eq!(
        firing["annotations"]["summary"],
        "count over 10s is 5 (> 4)"
    );

    // Alertmanager holds it with the rule's labels, for routing and silences
    let deadline = Instant::now() + PATIENCE;
    let held = loop {
        let alerts = alertmanager.alerts().await;
        if let Some(alert) = alerts
            .iter()
            .find(|a| a["labels"]["rule_id"] == id.as_str())
        {
            break alert.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager never held the alert: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(held["labels"]["alertname"], "CRM webhooks failing");
    assert_eq!(held["labels"]["team"], "support");
    assert_eq!(held["labels"]["user_id"], "user-alice");
    assert_eq!(held["status"]["state"], "active");
    assert_eq!(held["annotations"]["value"], "5");
    assert_eq!(held["receivers"][0]["name"], "support");

    let rule = wait_for_rule(&app, &app.keys.alice, &id, PATIENCE, |r| {
        r["state"]["deliveries"]["alertmanager"]["delivered_at"].is_string()
            && r["state"]["deliveries"]["webhook"]["delivered_at"].is_string()
    })
    .await;
    assert_eq!(rule["state"]["status"], "firing", "{rule}");
    assert_eq!(rule["state"]["fired_value"], 5.0);
    assert_eq!(metric(&app.api_url, "logbridge_alerts_firing").await, 1.0);

    // the errors stop: once they leave the window the alert resolves, in both receivers
    let resolved =
        webhooks::next_signed(&mut hooks, Duration::from_secs(11) + PATIENCE, "resolved").await;
    println!("resolved {:?} after the burst", burst.elapsed());
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["value"], 0.0);
    assert!(resolved["ends_at"].is_string());
    // told it ended: gone at once, not when its last sending runs out 6 to 8 s from now
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let alerts = alertmanager.alerts().await;
        if !alerts.iter().any(|a| a["labels"]["rule_id"] == id.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager still shows it: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rule = wait_for_rule(&app, &app.keys.alice, &id, PATIENCE, |r| {
        r["state"]["status"] == "resolved"
    })
    .await;
    assert!(rule["state"]["resolved_at"].is_string(), "{rule}");

    // exactly one firing and one resolving webhook: nothing for bob's logs, no repeats
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hooks.try_recv().is_err(), "no other webhook");
    assert_eq!(
        labeled_metric(
            &app.api_url,
            "logbridge_alert_deliveries_total{receiver=\"webhook\",outcome=\"delivered\"}"
        )
        .await,
        2.0
    );
    // fired, sent again every 2 s of the 10 s it fired, resolved
    let to_alertmanager = labeled_metric(
        &app.api_url,
        "logbridge_alert_deliveries_total{receiver=\"alertmanager\",outcome=\"delivered\"}",
    )
    .await;
    assert!(
        to_alertmanager >= 5.0,
        "{to_alertmanager} sent to Alertmanager"
    );
    assert_eq!(metric(&app.api_url, "logbridge_alerts_firing").await, 0.0);
    assert_eq!(
        metric(&app.api_url, "logbridge_alert_evaluation_failures_total").await,
        0.0
    );
    // every round of the test's evaluations is timed, none was cut short by the budget
    assert_eq!(metric(&app.api_url, "logbridge_alert_rules").await, 1.0);
    let rounds = metric(&app.api_url, "logbridge_alert_round_duration_seconds_count").await;
    let evaluations = metric(&app.api_url, "logbridge_alert_evaluations_total").await;
    assert!(rounds >= 10.0, "{rounds} rounds");
    // the rule was created within the first two rounds
    assert!(
        evaluations >= rounds - 2.0,
        "{evaluations} evaluations in {rounds} rounds"
    );
    assert!(metric(&app.api_url, "logbridge_alert_evaluation_seconds_total").await > 0.0);
    assert_eq!(
        metric(&app.api_url, "logbridge_alert_evaluations_deferred_total").await,
        0.0
    );
}

#[tokio::test]
async fn rules_are_each_users_own_survive_restarts_and_bad_ones_are_named() {
    let mut app = spawn_app_with(AppOptions {
        settings: vec![("LOGBRIDGE_ALERTS_MAX_RULES_PER_USER", "2".to_owned())],
        ..AppOptions::default()
    })
    .await;
    let post = |key, body| call(&app, reqwest::Method::POST, "", key, body);
    let rule = webhook_rule();
    let (status, body) = post(None, Some(&rule)).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            401,
            Some("missing API key: send Authorization: Bearer <key>")
        )
    );
    let (status, body) = post(Some(&app.keys.alice_reader), Some(&rule)).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (403, Some("this API key lacks the alerts scope"))
    );

    let refused = [
        (
            json!({ "window": "7x" }),
            "window must be a whole number of s, m, h or d, such as 30s, 5m, 1h or 1d",
        ),
        (json!({ "window": "5s" }), "window must be from 10s to 7d"),
        (
            json!({ "filters": { "end_time": "2026-01-01T00:00:00Z" } }),
            "filters.end_time is not a filter of a rule: the rule's window sets the time",
        ),
        (
            json!({ "filters": { "status": "broken" } }),
            "filters: status must be success or error",
        ),
        (
            json!({ "filters": { "q": "(timeout" } }),
            "filters: q has a '(' that is never closed (at character 1)",
        ),
        (
            json!({ "measure": "latency_p99", "filters": {} }),
            "measure latency_p99 needs filters.log_type: latencies are kept per type",
        ),
        (
            json!({ "labels": { "user_id": "user-bob" } }),
            "labels.user_id is set by logbridge",
        ),
        (
            json!({ "comparison": "=" }),
            "the body is not a rule: unknown variant `=`, expected one of `>`, `>=`, `<`, `<=` at line 1 column 139",
        ),
    ];
    for (change, message) in refused {
        let mut body = rule.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = call(
            &app,
            reqwest::Method::POST,
            "",
            Some(&app.keys.alice),
            Some(&body),
        )
        .await;
        assert_eq!(
            (status, answer["message"].as_str()),
            (400, Some(message)),
            "{body}"
        );
    }
    let (status, answer) = post(Some(&app.keys.alice), None).await;
    assert_eq!(status, 400);
    assert_eq!(
        answer["message"],
        "the body is not a rule: EOF while parsing a value at line 1 column 0"
    );

    let (status, created) = post(Some(&app.keys.alice), Some(&rule)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["for"], "0s");
    assert_eq!(created["data"]["filters"], rule["filters"]);

    // bob sees none of alice's rules, and cannot touch them
    let path = format!("/{id}");
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let (status, answer) = call(
            &app,
            method.clone(),
            &path,
            Some(&app.keys.bob),
            Some(&rule),
        )
        .await;
        assert_eq!(
            (status, answer["message"].as_str()),
            (404, Some(format!("no alert rule {id}").as_str())),
            "{method}"
        );
    }
    let (_, listed) = call(&app, reqwest::Method::GET, "", Some(&app.keys.bob), None).await;
    assert_eq!(listed["data"]["rules"], json!([]));

    // a replacement keeps the id and starts the alert over
    let mut changed = rule.clone();
    changed["threshold"] = json!(9);
    changed["for"] = json!("2m");
    let (status, replaced) = call(
        &app,
        reqwest::Method::PUT,
        &path,
        Some(&app.keys.alice),
        Some(&changed),
    )
    .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["data"]["id"], id.as_str());
    assert_eq!(replaced["data"]["threshold"], 9.0);
    assert_eq!(
        replaced["data"]["created_at"],
        created["data"]["created_at"]
    );

    // the bound of rules per user
    let (status, _) = post(Some(&app.keys.alice), Some(&rule)).await;
    assert_eq!(status, 201);
    let (status, answer) = post(Some(&app.keys.alice), Some(&rule)).await;
    assert_eq!(
        (status, answer["message"].as_str()),
        (
            400,
            Some("a user has at most 2 alert rules: delete one first")
        )
    );
    let (status, answer) = call(
        &app,
        reqwest::Method::PATCH,
        "",
        Some(&app.keys.alice),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["message"].as_str()),
        (
            405,
            Some("method not allowed: this endpoint takes GET, HEAD, POST")
        )
    );

    // rules survive a restart, with their ids and contents
    app.restart_with(&AppOptions {
        settings: vec![("LOGBRIDGE_ALERTS_MAX_RULES_PER_USER", "2".to_owned())],
        ..AppOptions::default()
    })
    .await;
    let (status, listed) = call(&app, reqwest::Method::GET, "", Some(&app.keys.alice), None).await;
    assert_eq!(status, 200);
    let rules = listed["data"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    let kept = rules
        .iter()
        .find(|r| r["id"] == id.as_str())
        .expect("the replaced rule");
    assert_eq!(kept["threshold"], 9.0);
    assert_eq!(kept["for"], "2m");

    let (status, deleted) = call(
        &app,
        reqwest::Method::DELETE,
        &path,
        Some(&app.keys.alice),
        None,
    )
    .await;
    assert_eq!(
        (status, deleted["data"]["id"].as_str()),
        (200, Some(id.as_str()))
    );
    let (status, _) = call(
        &app,
        reqwest::Method::GET,
        &path,
        Some(&app.keys.alice),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_receiver_that_fails_is_retried_and_its_failures_are_shown() {
    // a port nothing listens on
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let app = app_with_receivers(None, Some(&hook_url)).await;
    // holds from the first evaluation: a count is never below zero
    let mut always = webhook_rule();
    always["comparison"] = json!(">=");
    always["threshold"] = json!(0);
    let (status, created) = call(
        &app,
        reqwest::Method::POST,
        "",
        Some(&app.keys.alice),
        Some(&always),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    // the first attempt, then another a second later
    let rule = wait_for_rule(&app, &app.keys.alice, &id, PATIENCE, |r| {
        r["state"]["deliveries"]["webhook"]["failures"].as_u64() >= Some(2)
    })
    .await;
    assert_eq!(rule["state"]["status"], "firing");
    let webhook = &rule["state"]["deliveries"]["webhook"];
    assert!(webhook["delivered_at"].is_null(), "{webhook}");
    assert!(
        webhook["error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{webhook}"
    );
    assert!(
        labeled_metric(
            &app.api_url,
            "logbridge_alert_deliveries_total{receiver=\"webhook\",outcome=\"failed\"}"
        )
        .await
            >= 2.0
    );
    // ingest and queries go on meanwhile
    app.ingest(&app.keys.alice, failed_webhooks(3)).await;
    assert_eq!(app.logs(&app.keys.alice, "").await["total"], 3);
}
