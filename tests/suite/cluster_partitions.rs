//! Pauses and network partitions under load: an indexer paused past its lease, a gateway cut off
//! from NATS, an indexer cut off from etcd, a NATS server cut off from its peers. The cuts are
//! real: a proxy on each hop that stops passing anything, connections left open and silent, as a
//! partitioned network leaves them. Each test counts the acknowledged logs lost and stored twice
//! (0 and 0), through every gateway and on every replica, and that exports during the fault were
//! refused retryably, never acknowledged and lost.

use crate::common;

use std::time::{Duration, Instant};

use common::PATIENCE;
use common::cluster::{
    Acked, Options, SHARDS, TestCluster, USERS, assert_exactly, finished, start_load, wait_acked,
};

/// The logs a load acknowledged so far.
fn load_size(acked: &Acked) -> usize {
    acked.lock().unwrap().acked.values().map(Vec::len).sum()
}

/// Batches of 100 records per user the loads send.
const BATCHES: u64 = 30;

/// The acknowledged logs in all: every batch of every user.
const RECORDS: usize = BATCHES as usize * 100 * USERS.len();

/// `gateway`'s count of OTLP/gRPC exports answered with `status`.
async fn exports_answered(cluster: &TestCluster, gateway: usize, status: &str) -> f64 {
    let sample = format!("logbridge_otlp_exports_total{{transport=\"grpc\",status=\"{status}\"}}");
    cluster
        .labeled_metric(&cluster.gateways[gateway], &sample)
        .await
}

/// Waits until the cluster's view no longer has `indexer` (marked out of view): every user's
/// shard is served by its owners among the others, which copied the shards it held.
async fn wait_until_gone(cluster: &TestCluster, indexer: usize) {
    assert!(!cluster.indexers[indexer].live());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut served = true;
        for (user, name) in USERS.iter().enumerate() {
            let shard = logbridge::cluster::shard_of(name, SHARDS);
            for owner in cluster.owners(shard) {
                served &= cluster.held(owner, user).await.is_some();
            }
        }
        if served {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "indexer-{indexer}'s shards never moved"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The exports the gateways refused retryably so far, together.
async fn refusals(cluster: &TestCluster) -> f64 {
    let mut refused = 0.0;
    for gateway in 0..cluster.gateways.len() {
        refused += exports_answered(cluster, gateway, "UNAVAILABLE").await;
    }
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexer_paused_past_its_lease_loses_and_doubles_nothing() {
    let mut cluster = TestCluster::start(2, 3).await;
    let (acked, load) = start_load(&cluster, 0, BATCHES, 100);
    wait_acked(&acked, 2000).await;
    // paused past its lease (5 s): the others take its shards; then it comes back
    cluster.indexers[0].pause();
    wait_until_gone(&cluster, 0).await;
    wait_acked(&acked, 6000).await;
    cluster.indexers[0].resume();
    let (acked, _) = finished(acked, load).await;
    assert_eq!(acked.values().map(Vec::len).sum::<usize>(), RECORDS);
    assert_exactly(&cluster, &acked, "after indexer-0's pause").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cut_off_from_nats_refuses_retryably_and_loses_nothing() {
    let mut cluster = TestCluster::start(1, 3).await;
    // gateway-1 reaches NATS through proxies the test cuts
    let (proxies, urls) = cluster.nats_proxies().await;
    let etcd = cluster.etcd.url.clone();
    cluster.add_node_via("gateway", "gateway-1", &urls, &etcd, &[]);
    cluster.wait_all_shards_served().await;
    let (acked, load) = start_load(&cluster, 0, BATCHES, 100);
    wait_acked(&acked, 2000).await;
    for proxy in &proxies {
        proxy.cut();
    }
    let refused_before = exports_answered(&cluster, 1, "UNAVAILABLE").await;
    // the load goes on through gateway-0; what gateway-1 takes it refuses, after the publish
    // timeout (5 s) each
    wait_acked(&acked, 3200).await;
    let refused = exports_answered(&cluster, 1, "UNAVAILABLE").await - refused_before;
    assert!(refused >= 1.0, "gateway-1 refused nothing while cut off");
    for proxy in &proxies {
        proxy.heal();
    }
    let (acked, _) = finished(acked, load).await;
    assert_eq!(acked.values().map(Vec::len).sum::<usize>(), RECORDS);
    assert_exactly(&cluster, &acked, "after gateway-1 was cut off from NATS").await;
    // every answer of gateway-1 was an acknowledgement or a retryable refusal
    for status in ["INTERNAL", "UNKNOWN", "DATA_LOSS", "DEADLINE_EXCEEDED"] {
        assert_eq!(exports_answered(&cluster, 1, status).await, 0.0, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexer_cut_off_from_etcd_loses_and_doubles_nothing() {
    let mut cluster = TestCluster::start(2, 2).await;
    // indexer-2 reaches etcd through a proxy the test cuts
    let (proxy, etcd) = cluster.etcd_proxy().await;
    let nats = cluster.nats.urls();
    cluster.add_node_via("indexer", "indexer-2", &nats, &etcd, &[]);
    cluster.wait_all_shards_served().await;
    let (acked, load) = start_load(&cluster, 0, BATCHES, 100);
    wait_acked(&acked, 2000).await;
    // its lease runs out: the others take its shards while it goes on with its last view
    proxy.cut();
    cluster.indexers[2].out_of_view = true;
    wait_until_gone(&cluster, 2).await;
    wait_acked(&acked, 8000).await;
    proxy.heal();
    cluster.indexers[2].out_of_view = false;
    let (acked, _) = finished(acked, load).await;
    assert_eq!(acked.values().map(Vec::len).sum::<usize>(), RECORDS);
    assert_exactly(&cluster, &acked, "after indexer-2 was cut off from etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_cut_off_from_its_peers_loses_and_doubles_nothing() {
    let options = Options {
        partitionable: true,
        ..Options::default()
    };
    let cluster = TestCluster::start_with(2, 3, options).await;
    let shard = logbridge::cluster::shard_of(USERS[0], SHARDS);
    let (acked, load) = start_load(&cluster, 0, BATCHES, 100);
    wait_acked(&acked, 2000).await;
    // the server leading user 0's stream becomes the minority side, its clients still on it
    let stream = format!("LOGBRIDGE_logbridge_{shard}");
    let leader = cluster.nats.stream_leader(&stream).await;
    let (before, refused_before) = (load_size(&acked), refusals(&cluster).await);
    cluster.nats.isolate(leader);
    // the majority sees the partition: it elects another leader of the stream
    let other = (leader + 1) % 3;
    let elected = cluster
        .nats
        .stream_leader_seen_by(other, &stream, Some(leader))
        .await;
    assert_ne!(elected, leader);
    // until the majority acknowledged more, or the minority's clients were refused: a gateway
    // connected to the cut-off server is refused until the partition heals
    let deadline = Instant::now() + Duration::from_secs(120);
    while load_size(&acked) < before + 2000 && refusals(&cluster).await < refused_before + 2.0 {
        assert!(
            Instant::now() < deadline,
            "neither acknowledged nor refused"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.nats.rejoin(leader);
    let (acked, retries) = finished(acked, load).await;
    eprintln!("{retries} exports sent again");
    assert_eq!(acked.values().map(Vec::len).sum::<usize>(), RECORDS);
    assert_exactly(&cluster, &acked, "after a NATS server was cut off").await;
}
