//! Alerts in cluster mode: the rules live in etcd, any gateway serves `/alerts`, one gateway
//! evaluates each rule (once, however many gateways there are) on the replicas of its user's
//! shards, every shard of a spread user added up; when that gateway dies, another takes over
//! where it stopped, without firing again.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{Node, Options, SHARDS, TestCluster, USERS, spread_since, wait_for_total};
use common::{PATIENCE, activity, authorized, now_nanos, request_of, text, webhooks, with_attr};
use logbridge::cluster::{Spread, shard_for};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::{Value as Json, json};

/// More than four failed end-of-call webhooks in 30 s: long enough that the keeper is killed
/// while the alert fires, however slow the machine, and its successor resolves it.
fn webhook_rule(name: &str) -> Json {
    json!({
        "name": name,
        "filters": { "log_type": "end_call_webhook", "status": "error" },
        "window": "30s",
        "measure": "count",
        "comparison": ">",
        "threshold": 4,
        "labels": { "team": "support" },
    })
}

/// `count` failed end-of-call webhooks of `user`, stamped now, `tag` in their messages.
fn failed_webhooks(user: &str, count: u64, tag: &str) -> Vec<LogRecord> {
    let now = now_nanos();
    (0..count)
        .map(|i| {
            let record = activity("end_call_webhook", now + i, &format!("{tag} {i}"));
            let record = with_attr(record, "activity.status", text("error"));
            with_attr(record, "user.id", text(user))
        })
        .collect()
}

/// `method /alerts{path}` through `gateway` as user `user`: status and JSON answer.
async fn call(
    cluster: &TestCluster,
    gateway: &Node,
    user: usize,
    method: reqwest::Method,
    path: &str,
    body: Option<&Json>,
) -> (u16, Json) {
    let client = cluster.http_client().timeout(PATIENCE).build().unwrap();
    let mut request = client
        .request(method, format!("{}/alerts{path}", cluster.api_url(gateway)))
        .bearer_auth(cluster.readers[user].expose());
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Json::String(text)),
    )
}

/// Rule `id` of `user`'s through `gateway` once `done` holds of it; fails after the patience.
async fn wait_for_rule(
    cluster: &TestCluster,
    gateway: &Node,
    user: usize,
    id: &str,
    done: impl Fn(&Json) -> bool,
) -> Json {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = call(
            cluster,
            gateway,
            user,
            reqwest::Method::GET,
            &format!("/{id}"),
            None,
        )
        .await;
        // 503 while the rules move to another gateway
        if status == 200 && done(&body["data"]) {
            return body["data"].clone();
        }
        assert!(
            status == 200 || status == 503,
            "GET /alerts/{id}: {status} {body}"
        );
        assert!(
            Instant::now() < deadline,
            "rule {id} never got there: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The live gateway that keeps the rules, once exactly one says it does; fails after the
/// patience.
async fn keeper_of(cluster: &TestCluster) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut keepers = Vec::new();
        for (n, gateway) in cluster.gateways.iter().enumerate() {
            if gateway.live() && cluster.metric(gateway, "logbridge_alert_keeper").await == 1.0 {
                keepers.push(n);
            }
        }
        if let [keeper] = keepers.as_slice() {
            return *keeper;
        }
        assert!(
            Instant::now() < deadline,
            "no one keeper among the gateways: {keepers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The nanoseconds of an RFC 3339 time of a rule's state, if it has one.
fn nanos(time: &Json) -> Option<u64> {
    let parsed = chrono::DateTime::parse_from_rfc3339(time.as_str()?).ok()?;
    Some(parsed.timestamp_nanos_opt()? as u64)
}

/// Whether `rule` was evaluated after `at` (nanoseconds).
fn evaluated_after(rule: &Json, at: u64) -> bool {
    nanos(&rule["state"]["evaluated_at"]).is_some_and(|t| t > at)
}

#[tokio::test]
async fn one_gateway_evaluates_each_rule_once_and_the_next_takes_over_without_firing_again() {
    let (hook_url, mut hooks) = webhooks::receiver().await;
    let mut cluster = TestCluster::start_with(
        0,
        2,
        Options {
            plaintext: true,
            ..Options::default()
        },
    )
    .await;
    let secret_file = cluster.dir.path().join("webhook.secret");
    std::fs::write(&secret_file, webhooks::SECRET).unwrap();
    let secret_file = secret_file.display().to_string();
    let (nats, etcd) = (cluster.nats.urls(), cluster.etcd.url.clone());
    let settings = [
        ("LOGBRIDGE_ALERTS_EVALUATION_INTERVAL_MS", "1000"),
        ("LOGBRIDGE_ALERTS_EVALUATION_BUDGET_MS", "1000"),
        ("LOGBRIDGE_ALERTS_WEBHOOK_URL", hook_url.as_str()),
        ("LOGBRIDGE_ALERTS_WEBHOOK_SECRET_FILE", secret_file.as_str()),
    ];
    for id in ["gateway-0", "gateway-1"] {
        cluster.add_node_via("gateway", id, &nats, &etcd, &settings);
    }
    cluster.wait_all_shards_served().await;
    // one of them keeps the rules; the other passes /alerts on to it
    let (keeper, other) = match keeper_of(&cluster).await {
        0 => (0, 1),
        _ => (1, 0),
    };
    // user 2 spread over three shards an hour ago: its logs of now are on several shards
    let spreads = [Spread {
        from: now_nanos() - 3_600_000_000_000,
        shards: 3,
    }];
    spread_since(&cluster, 2, 3, spreads[0].from).await;

    // a rule made through the other gateway is the keeper's: both show it, as the same rule
    let (status, created) = call(
        &cluster,
        &cluster.gateways[other],
        0,
        reqwest::Method::POST,
        "",
        Some(&webhook_rule("CRM webhooks failing")),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let plain = created["data"]["id"].as_str().unwrap().to_owned();
    let (status, listed) = call(
        &cluster,
        &cluster.gateways[keeper],
        0,
        reqwest::Method::GET,
        "",
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["data"]["rules"].as_array().unwrap().len(), 1);
    assert_eq!(listed["data"]["rules"][0]["id"], plain.as_str());
    // another user's rule is as missing through any gateway
    for gateway in &cluster.gateways {
        let (status, body) = call(
            &cluster,
            gateway,
            1,
            reqwest::Method::GET,
            &format!("/{plain}"),
            None,
        )
        .await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["message"], format!("no alert rule {plain}"));
    }
    let (status, created) = call(
        &cluster,
        &cluster.gateways[keeper],
        2,
        reqwest::Method::POST,
        "",
        Some(&webhook_rule("CRM webhooks failing, spread")),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let spread = created["data"]["id"].as_str().unwrap().to_owned();

    let grpc = cluster.grpc();
    let mut client = grpc.connect(1).await.unwrap();
    let ingest = cluster.ingest.clone();
    let mut export = async |records: Vec<LogRecord>| {
        let request = authorized(request_of(records), &ingest);
        client.export(request).await.unwrap();
    };
    // another user's errors never count: user 0's rule measures 0 over them
    export(failed_webhooks(USERS[1], 8, "user 1's CRM answered 502")).await;
    wait_for_total(&cluster, &cluster.gateways[0], 1, 8).await;
    let visible = now_nanos();
    let rule = wait_for_rule(&cluster, &cluster.gateways[other], 0, &plain, |rule| {
        evaluated_after(rule, visible)
    })
    .await;
    assert_eq!(rule["state"]["status"], "inactive", "{rule}");
    assert_eq!(rule["state"]["value"], 0.0, "{rule}");

    // five errors each: user 0's on its shard, user 2's over three
    export(failed_webhooks(USERS[0], 5, "user 0's CRM answered 502")).await;
    // five of user 2's, on two shards at least
    let shard_of_log = |record: &LogRecord| {
        let message = record.body.as_ref().and_then(|b| b.value.as_ref());
        let Some(AnyValue::StringValue(message)) = message else {
            panic!("a message")
        };
        shard_for(USERS[2], record.time_unix_nano, message, &spreads, SHARDS)
    };
    let candidates = failed_webhooks(USERS[2], 100, "user 2's CRM answered 502");
    let mut spread_errors = candidates[..4].to_vec();
    let first = shard_of_log(&candidates[0]);
    let fifth = match spread_errors.iter().any(|r| shard_of_log(r) != first) {
        true => &candidates[4],
        false => (candidates[4..].iter())
            .find(|r| shard_of_log(r) != first)
            .expect("a log on another shard"),
    };
    spread_errors.push(fifth.clone());
    let shards: BTreeSet<u32> = spread_errors.iter().map(shard_of_log).collect();
    assert!(shards.len() > 1, "user 2's errors on shards {shards:?}");
    export(spread_errors).await;
    for user in [0, 2] {
        wait_for_total(&cluster, &cluster.gateways[0], user, 5).await;
    }

    // both fire (a rule that does not shows why in its state)...
    for (user, id) in [(0, &plain), (2, &spread)] {
        wait_for_rule(&cluster, &cluster.gateways[other], user, id, |rule| {
            rule["state"]["status"] == "firing"
        })
        .await;
    }
    // ...and each is delivered once, from one gateway: never twice
    let mut fired = Vec::new();
    for _ in 0..2 {
        let alert =
            webhooks::next_signed(&mut hooks, Duration::from_secs(11) + PATIENCE, "firing").await;
        assert_eq!(alert["status"], "firing", "{alert}");
        assert_eq!(alert["value"], 5.0, "{alert}");
        fired.push(alert["labels"]["user_id"].as_str().unwrap().to_owned());
    }
    fired.sort();
    assert_eq!(fired, [USERS[0], USERS[2]]);
    // the states that fired are saved (a later round's evaluation comes after the save), and
    // no gateway sent anything more meanwhile
    let mut fired_at = Vec::new();
    for (user, id) in [(0, &plain), (2, &spread)] {
        let rule = wait_for_rule(&cluster, &cluster.gateways[other], user, id, |rule| {
            let fired = nanos(&rule["state"]["fired_at"]);
            fired.is_some_and(|fired| evaluated_after(rule, fired))
        })
        .await;
        assert_eq!(rule["state"]["status"], "firing", "{rule}");
        assert_eq!(rule["state"]["fired_value"], 5.0, "{rule}");
        fired_at.push(rule["state"]["fired_at"].clone());
    }
    assert!(hooks.try_recv().is_err(), "an alert sent twice");

    // the keeper dies: the other gateway takes the rules over with their states, resolves each
    // alert once its errors leave the window, and fires none again
    cluster.gateways[keeper].kill();
    let mut resolved = Vec::new();
    for _ in 0..2 {
        let alert =
            webhooks::next_signed(&mut hooks, Duration::from_secs(31) + PATIENCE, "resolved").await;
        assert_eq!(alert["status"], "resolved", "{alert}");
        resolved.push(alert["labels"]["user_id"].as_str().unwrap().to_owned());
    }
    resolved.sort();
    assert_eq!(resolved, [USERS[0], USERS[2]]);
    for ((user, id), fired_at) in [(0, &plain), (2, &spread)].into_iter().zip(fired_at) {
        let rule = wait_for_rule(&cluster, &cluster.gateways[other], user, id, |rule| {
            rule["state"]["status"] == "resolved"
        })
        .await;
        assert_eq!(rule["state"]["fired_at"], fired_at, "{rule}");
        assert_eq!(rule["state"]["value"], 0.0, "{rule}");
        assert_eq!(
            rule["state"]["deliveries"]["webhook"]["failures"], 0,
            "{rule}"
        );
    }
    assert!(hooks.try_recv().is_err(), "an alert sent twice");
    assert_eq!(keeper_of(&cluster).await, other);
}
