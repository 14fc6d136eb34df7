//! `GET /logs/tail` in cluster mode resumes wherever a gateway sends it: a replica whose reads
//! are a commit behind the event a tail resumes after waits for them to show it, so a resumed
//! tail is never refused and never repeats.

use crate::common;

use common::cluster::{SHARDS, TestCluster, USERS, export_until_acknowledged, records};
use common::sse::{Event, Events};
use logbridge::cluster::shard_of;

/// A tail of user 0's logs at `url` (a gateway's `/logs/tail`, or an indexer's
/// `/shards/<n>/logs/tail`), resumed after `last_event_id`.
async fn tail(cluster: &TestCluster, url: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = cluster
        .http_client()
        .build()
        .unwrap()
        .get(url)
        .bearer_auth(cluster.readers[0].expose());
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    request.send().await.unwrap()
}

/// The messages of `count` more events of `events`.
async fn messages(events: &mut Events, count: usize) -> (Vec<String>, Event) {
    let mut messages = Vec::new();
    let mut last = None;
    for _ in 0..count {
        let event = events.next().await;
        assert_eq!(event.kind, None, "{event:?}");
        messages.push(event.data["message"].as_str().unwrap().to_owned());
        last = Some(event);
    }
    (messages, last.expect("at least one event"))
}

fn sent(first: u64, count: u64) -> Vec<String> {
    (first..first + count)
        .map(|n| format!("{} record {n}", USERS[0]))
        .collect()
}

#[tokio::test]
async fn a_tail_resumed_on_a_replica_a_commit_behind_waits_for_it_and_repeats_nothing() {
    // indexer-0 commits every 200 ms, indexer-1 every 5 s: after an export, indexer-1's reads
    // stay behind indexer-0's for up to 5 s
    let mut cluster = TestCluster::start(0, 0).await;
    let (nats, etcd) = (cluster.nats.urls(), cluster.etcd.url.clone());
    cluster.add_node_via("indexer", "indexer-0", &nats, &etcd, &[]);
    let slow = [("LOGBRIDGE_INDEX_COMMIT_INTERVAL_MS", "5000")];
    cluster.add_node_via("indexer", "indexer-1", &nats, &etcd, &slow);
    cluster.add_node("gateway", "gateway-0");
    cluster.wait_all_shards_served().await;
    let grpc = cluster.grpc();
    let gateway_tail = format!("{}/logs/tail", cluster.api_url(&cluster.gateways[0]));
    let shard = shard_of(USERS[0], SHARDS);
    let behind = format!("{}/shards/{shard}", cluster.api_url(&cluster.indexers[1]));

    let mut live = Events::new(tail(&cluster, &gateway_tail, None).await);
    // an event the gateway's tail showed that indexer-1's reads do not show yet
    let mut next = 0;
    let resumed_after = loop {
        assert!(next < 10, "indexer-1 was never behind the gateway's tail");
        export_until_acknowledged(&grpc, 0, &cluster.ingest, records(USERS[0], next, 1)).await;
        let (shown, event) = messages(&mut live, 1).await;
        assert_eq!(shown, sent(next, 1));
        next += 1;
        let newest = cluster
            .http_client()
            .build()
            .unwrap()
            .get(format!("{behind}/logs?limit=1"))
            .bearer_auth(cluster.readers[0].expose())
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        if newest["data"]["logs"][0]["message"] != event.data["message"] {
            break event.id.unwrap();
        }
    };

    // resumed on indexer-1 directly: it waits for its next commit rather than refusing an id it
    // does not show yet, then goes on from there
    let mut resumed = Events::new(
        tail(
            &cluster,
            &format!("{behind}/logs/tail"),
            Some(&resumed_after),
        )
        .await,
    );
    // and through the gateway, which sends it to a replica that shows the event
    let mut through_gateway =
        Events::new(tail(&cluster, &gateway_tail, Some(&resumed_after)).await);
    export_until_acknowledged(&grpc, 0, &cluster.ingest, records(USERS[0], next, 3)).await;
    for events in [&mut live, &mut resumed, &mut through_gateway] {
        let (shown, _) = messages(events, 3).await;
        assert_eq!(
            shown,
            sent(next, 3),
            "the new logs, once each, oldest first"
        );
    }
}
