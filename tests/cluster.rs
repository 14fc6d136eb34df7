//! Cluster mode on one machine: three NATS servers (JetStream clustered), one etcd, gateways and
//! indexers, each a real process; real faults (`kill -9`). Every test compares what `/logs`
//! serves through the gateways (totals, order, cursors, `q`) with what was acknowledged.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::PATIENCE;
use common::cluster::{TestCluster, USERS, export_until_acknowledged, records};
use logbridge::emit::{EmitOptions, emit};
use logbridge::workload::Workload;
use opentelemetry_otlp::Protocol;

/// Waits until `user`'s total through `gateway` is `expected`.
async fn wait_for_total(cluster: &TestCluster, gateway: usize, user: usize, expected: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = cluster
            .get(&cluster.gateways[gateway], user, "limit=1")
            .await;
        if status == 200 && body["data"]["total"].as_u64() == Some(expected as u64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "user {user} never reached {expected} logs through gateway {gateway}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many acknowledged logs are missing from `stored`, and how many are there more often than
/// they were sent (logs compared by message; a message sent twice must be stored twice).
fn differences(stored: &[String], sent: &[String]) -> (usize, usize) {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for message in sent {
        *counts.entry(message).or_default() += 1;
    }
    for message in stored {
        *counts.entry(message).or_default() -= 1;
    }
    let lost = counts.values().filter(|n| **n > 0).sum::<i64>();
    let doubled = -counts.values().filter(|n| **n < 0).sum::<i64>();
    (lost as usize, doubled as usize)
}

/// Asserts that each user's logs, walked through every gateway, are exactly the acknowledged
/// messages, each once, newest first.
async fn assert_exactly(cluster: &TestCluster, acked: &HashMap<usize, Vec<String>>, when: &str) {
    for (&user, messages) in acked {
        wait_for_total(cluster, 0, user, messages.len()).await;
        for gateway in &cluster.gateways {
            let stored = cluster.walk(gateway, user, "").await;
            let (lost, doubled) = differences(&stored, messages);
            assert_eq!(
                (lost, doubled, stored.len()),
                (0, 0, messages.len()),
                "{when}: user {user} through {}: (lost, stored twice, stored)",
                gateway.api
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporters_through_both_gateways_are_read_back_exactly() {
    let cluster = TestCluster::start(2, 3).await;
    let options = |gateway: &common::cluster::Node, protocol, user: usize, seed| EmitOptions {
        protocol,
        endpoint: Some(match protocol {
            Protocol::Grpc => format!("http://{}", gateway.grpc),
            _ => format!("http://{}", gateway.served.as_ref().unwrap().http),
        }),
        key: Some(cluster.ingest.expose().to_owned()),
        count: 1500,
        user: Some(USERS[user].to_owned()),
        seed,
        gzip: seed == 3,
    };
    let sends = [
        (0, Protocol::Grpc, 0, 1),
        (1, Protocol::HttpBinary, 1, 2),
        (1, Protocol::Grpc, 2, 3),
        (0, Protocol::HttpJson, 3, 4),
    ];
    for (gateway, protocol, user, seed) in sends {
        emit(&options(&cluster.gateways[gateway], protocol, user, seed))
            .await
            .unwrap();
    }
    let mut acked = HashMap::new();
    for (_, _, user, seed) in sends {
        let sent: Vec<String> = Workload::new(seed).take(1500).map(|a| a.message).collect();
        acked.insert(user, sent);
    }
    assert_exactly(&cluster, &acked, "after the SDK exports").await;

    // the newest page is the last sent, in order, and `q` finds exactly the matching logs
    let sent = &acked[&0];
    let (status, body) = cluster.get(&cluster.gateways[1], 0, "limit=50").await;
    assert_eq!(status, 200);
    let newest: Vec<String> = sent.iter().rev().take(50).cloned().collect();
    assert_eq!(common::messages(&body["data"]), newest);
    let word = sent[0].split_whitespace().next().unwrap().to_lowercase();
    let matching = sent
        .iter()
        .filter(|m| {
            m.to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w == word)
        })
        .count();
    let found = cluster
        .walk(&cluster.gateways[0], 0, &format!("&q={word}"))
        .await;
    assert_eq!(found.len(), matching, "q={word}");
    // statistics come from the same replica, with the same totals
    let stats: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/logs/stats", cluster.gateways[0].api))
        .bearer_auth(cluster.readers[2].expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["data"]["total"], 1500);
}

/// Sends `batches` batches of `size` records for each user, alternating gateways, retrying each
/// until acknowledged; what was acknowledged, by user.
async fn load(
    cluster: &TestCluster,
    first_batch: u64,
    batches: u64,
    size: u64,
) -> HashMap<usize, Vec<String>> {
    let grpc: Vec<String> = cluster.gateways.iter().map(|g| g.grpc.clone()).collect();
    let mut acked: HashMap<usize, Vec<String>> = HashMap::new();
    for batch in first_batch..first_batch + batches {
        for (user, name) in USERS.iter().enumerate() {
            let records = records(name, batch * size, size);
            let messages: Vec<String> = records
                .iter()
                .map(|r| match &r.body.as_ref().unwrap().value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => s.clone(),
                    _ => unreachable!(),
                })
                .collect();
            export_until_acknowledged(&grpc, batch as usize + user, &cluster.ingest, records).await;
            acked.entry(user).or_default().extend(messages);
        }
    }
    acked
}
