//! `DELETE /logs` in cluster mode: the single node's contract (the exact count, only the caller's
//! logs, errors naming the parameter) through a gateway, and erased logs never come back: not
//! after an indexer's `kill -9` and restart, not after a replica replays its stream, not after a
//! joining indexer copies a replica.

use crate::common;

use common::cluster::{SHARDS, TestCluster, USERS, export_until_acknowledged, records};
use serde_json::json;

/// The message of user `user`'s record `n`; every tenth is an error.
fn message(user: usize, n: u64) -> String {
    format!("{} record {n}", USERS[user])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_logs_never_come_back_after_a_kill_a_replay_or_a_copy() {
    // two indexers: each holds every shard
    let mut cluster = TestCluster::start(1, 2).await;
    let shard = logbridge::cluster::shard_of(USERS[0], SHARDS);
    let grpc = cluster.grpc();
    let mut sent: [Vec<String>; 2] = Default::default();
    for batch in 0..10 {
        for (user, sent) in sent.iter_mut().enumerate() {
            let records = records(USERS[user], batch * 100, 100);
            export_until_acknowledged(&grpc, 0, &cluster.ingest, records).await;
            sent.extend((batch * 100..(batch + 1) * 100).map(|n| message(user, n)));
        }
    }

    // user 0's errors: exactly its hundred, none of user 1's
    let (status, body) = cluster
        .delete(&cluster.gateways[0], 0, "status=error")
        .await;
    assert_eq!(
        (status, &body["data"]),
        (200, &json!({ "deleted": 100 })),
        "{body}"
    );
    // a search of the grammar, as on a single node: words starting with 99 but not record 999
    let (status, body) = cluster
        .delete(
            &cluster.gateways[0],
            0,
            "q=record%2099*%20-%22record%20999%22",
        )
        .await;
    assert_eq!(
        (status, &body["data"]),
        (200, &json!({ "deleted": 9 })),
        "{body}"
    );
    let searched = |n: u64| n == 99 || (991..=998).contains(&n);
    let mut kept: Vec<String> = (0..1000)
        .filter(|&n| n % 10 != 0 && !searched(n))
        .map(|n| message(0, n))
        .collect();
    // a filter that does not parse names itself and erases nothing
    let (status, body) = cluster
        .delete(&cluster.gateways[0], 0, "status=bogus")
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (400, Some("status must be success or error"))
    );
    // logs published after the erasure are not erased by it
    let later = records(USERS[0], 1000, 100);
    export_until_acknowledged(&grpc, 0, &cluster.ingest, later).await;
    kept.extend((1000..1100).map(|n| message(0, n)));
    cluster
        .assert_replicas_exact(0, &[shard], &kept, "after the erasure")
        .await;
    let shard_1 = logbridge::cluster::shard_of(USERS[1], SHARDS);
    cluster
        .assert_replicas_exact(1, &[shard_1], &sent[1], "user 1 after user 0's erasure")
        .await;

    // kill -9 of indexer-0 and a restart: it resumes from its commit
    cluster.indexers[0].kill();
    cluster.indexers[0].restart();
    cluster
        .assert_replicas_exact(0, &[shard], &kept, "after indexer-0's kill -9")
        .await;

    // indexer-1 loses its replica while indexer-0 is down: with no peer to copy, it replays the
    // whole stream, the erasure in its place
    cluster.indexers[0].kill();
    cluster.indexers[1].kill();
    let replica = cluster
        .dir
        .path()
        .join("indexer-1/index/shards")
        .join(shard.to_string());
    std::fs::remove_dir_all(&replica).unwrap();
    cluster.indexers[1].restart();
    cluster
        .assert_replicas_exact(0, &[shard], &kept, "after indexer-1 replayed the stream")
        .await;
    let indexer_1 = &cluster.indexers[1];
    assert_eq!(
        cluster
            .metric(indexer_1, "logbridge_cluster_replica_copies_total")
            .await,
        0.0,
        "indexer-1 replayed, it copied nothing"
    );

    // a joining indexer copies indexer-1's replica, erasure applied
    cluster.add_node("indexer", "indexer-2");
    cluster
        .assert_replicas_exact(0, &[shard], &kept, "after indexer-2 copied the replica")
        .await;
    let indexer_2 = &cluster.indexers[2];
    assert!(
        cluster
            .metric(indexer_2, "logbridge_cluster_replica_copies_total")
            .await
            >= 1.0
    );

    // and everything left of user 0's, counted exactly; user 1's untouched
    let (status, body) = cluster.delete(&cluster.gateways[0], 0, "").await;
    assert_eq!(
        (status, &body["data"]),
        (200, &json!({ "deleted": kept.len() })),
        "{body}"
    );
    cluster
        .assert_replicas_exact(0, &[shard], &[], "after erasing everything")
        .await;
    cluster
        .assert_replicas_exact(1, &[shard_1], &sent[1], "user 1 in the end")
        .await;
}
