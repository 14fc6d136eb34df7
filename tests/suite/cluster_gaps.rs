//! Holes in a shard's stream: a replica whose stream dropped messages it never indexed (the
//! stream's limits, while its indexer was down) is never read and never copied. It takes the
//! copy of a complete peer; where no peer is complete, it says which messages are missing.

use crate::common;

use std::ops::Range;
use std::time::{Duration, Instant};

use common::PATIENCE;
use common::cluster::{
    GrpcTargets, SHARDS, TestCluster, USERS, export_until_acknowledged, records,
};

/// Batches of 100 records of user 0, numbered from `batches.start * 100`, each acknowledged;
/// their messages are added to `sent`.
async fn send(
    grpc: &GrpcTargets,
    cluster: &TestCluster,
    batches: Range<u64>,
    sent: &mut Vec<String>,
) {
    for batch in batches {
        let records = records(USERS[0], batch * 100, 100);
        export_until_acknowledged(grpc, batch as usize, &cluster.ingest, records).await;
        sent.extend((batch * 100..(batch + 1) * 100).map(|n| format!("{} record {n}", USERS[0])));
    }
}

/// Makes `shard`'s stream keep only its newest `messages` messages, as an operator's
/// `max_msgs` does: JetStream drops the older ones at once.
async fn keep_newest(cluster: &TestCluster, shard: u32, messages: i64) {
    let mut stream = cluster.stream(shard).await;
    let mut config = stream.info().await.unwrap().config.clone();
    config.max_messages = messages;
    cluster
        .jetstream()
        .await
        .update_stream(config)
        .await
        .unwrap();
}

/// `shard`'s stream: its first and last sequence.
async fn stream_bounds(cluster: &TestCluster, shard: u32) -> (u64, u64) {
    let mut stream = cluster.stream(shard).await;
    let state = &stream.info().await.unwrap().state;
    (state.first_sequence, state.last_sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_missing_dropped_messages_is_never_read_and_copies_a_complete_peer() {
    // two indexers: each holds every shard
    let mut cluster = TestCluster::start(1, 2).await;
    let shard = logbridge::cluster::shard_of(USERS[0], SHARDS);
    let grpc = cluster.grpc();
    let mut sent = Vec::new();
    send(&grpc, &cluster, 0..10, &mut sent).await;
    cluster
        .assert_replicas_exact(0, &[shard], &sent, "before the faults")
        .await;

    // indexer-0 is down while ten more batches arrive; indexer-1 indexes them
    cluster.indexers[0].kill();
    send(&grpc, &cluster, 10..20, &mut sent).await;
    let deadline = Instant::now() + PATIENCE;
    while cluster.replica_total(1, shard, 0).await != Ok(2000) {
        assert!(
            Instant::now() < deadline,
            "indexer-1 never indexed the 2,000 logs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // then the stream keeps only its newest five messages: most of what indexer-0 missed is gone
    let (_, last) = stream_bounds(&cluster, shard).await;
    keep_newest(&cluster, shard, 5).await;
    assert_eq!(stream_bounds(&cluster, shard).await, (last - 4, last));

    // back, indexer-0 finds the hole, never serves its replica, and copies indexer-1's
    cluster.indexers[0].restart();
    let found = cluster.indexers[0]
        .served
        .as_mut()
        .unwrap()
        .wait_for_line("the stream no longer holds messages this replica never indexed");
    assert!(found.contains(&format!("shard={shard}")), "{found}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        match cluster.replica_total(0, shard, 0).await {
            // any answer at all is the whole: a replica with a hole is never read
            Ok(total) => {
                assert_eq!(total, 2000, "indexer-0 served its replica with a hole");
                break;
            }
            Err(why) => {
                assert!(
                    Instant::now() < deadline,
                    "indexer-0 never served again: {why}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    cluster
        .assert_replicas_exact(0, &[shard], &sent, "after indexer-0 copied indexer-1")
        .await;
    let indexer_0 = &cluster.indexers[0];
    assert_eq!(
        cluster
            .metric(indexer_0, "logbridge_cluster_replica_copies_total")
            .await,
        1.0
    );
    let missing = format!("logbridge_cluster_replica_missing_messages{{shard=\"{shard}\"}}");
    assert_eq!(cluster.metric(indexer_0, &missing).await, 0.0);

    // both indexers down while ten more batches arrive: the stream, still keeping five messages,
    // drops the first ones before any replica indexed them
    let (_, through) = stream_bounds(&cluster, shard).await;
    cluster.indexers[0].kill();
    cluster.indexers[1].kill();
    send(&grpc, &cluster, 20..30, &mut sent).await;
    let (first, _) = stream_bounds(&cluster, shard).await;
    assert!(
        first > through + 1,
        "the stream dropped nothing: {first}, {through}"
    );
    cluster.indexers[0].restart();
    cluster.indexers[1].restart();
    // neither is complete: each says what it lacks, on /readyz and in /metrics, and nothing
    // reads the shard
    let expected = format!(
        "not ready: shard {shard} lacks messages {} to {} of its stream, gone before it indexed \
         them; waiting for a complete peer to copy",
        through + 1,
        first - 1
    );
    let client = cluster.http_client().timeout(PATIENCE).build().unwrap();
    for (n, indexer) in cluster.indexers.iter().enumerate() {
        let url = format!("{}/readyz", cluster.api_url(indexer));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let response = client.get(&url).send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            if (status, body.as_str()) == (503, expected.as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never said what it lacks: {status} {body}",
                indexer.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            cluster.metric(indexer, &missing).await,
            (first - 1 - through) as f64,
            "{}",
            indexer.id
        );
        assert!(cluster.replica_total(n, shard, 0).await.is_err());
    }
    let (status, body) = cluster.get(&cluster.gateways[0], 0, "limit=1").await;
    assert_eq!(status, 503, "{body}");
}
