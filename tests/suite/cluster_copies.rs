//! Copies from peers run beside the indexer's loop: while a joining indexer fetches a large
//! shard's copy over a slow link, its other shards open and become ready, the shards it takes
//! over are let go by their former owners, and a SIGTERM stops it within the drain timeout,
//! leaving nothing of the copy behind.

use crate::common;

use std::time::{Duration, Instant};

use common::PATIENCE;
use common::cluster::{
    Blackhole, SHARDS, TestCluster, USERS, export_until_acknowledged, records, wait_for_total,
};
use common::process::{sigterm, wait_for_clean_exit};
use logbridge::cluster::{owners, shard_of};

/// The big user's logs: their replica is some megabytes, which a link of [`SLOW_LINK`] takes
/// minutes to copy.
const BIG: u64 = 40_000;

/// Bytes a second the link to the peer the joining indexer copies from passes.
const SLOW_LINK: u64 = 64 * 1024;

/// The indexers once the third has joined.
const JOINED: [&str; 3] = ["indexer-0", "indexer-1", "indexer-2"];

#[tokio::test]
async fn a_slow_copy_holds_up_no_other_shard_no_move_and_no_shutdown() {
    // two users whose shards the joining indexer takes, one of which is large
    let taken: Vec<usize> = (0..USERS.len())
        .filter(|&u| owners(shard_of(USERS[u], SHARDS), &JOINED, 2).contains(&"indexer-2"))
        .collect();
    let (big, small) = match taken.as_slice() {
        [big, small, ..] if shard_of(USERS[*big], SHARDS) != shard_of(USERS[*small], SHARDS) => {
            (*big, *small)
        }
        _ => panic!("the joining indexer takes the shards of users {taken:?}: two are needed"),
    };
    let small_shard = shard_of(USERS[small], SHARDS);

    // indexer-0 is reached, by gateways and peers, through a link the test slows down; it comes
    // first among the peers a joining indexer copies from
    let mut cluster = TestCluster::start(0, 0).await;
    let link = Blackhole::start(0, String::new()).await;
    let (nats, etcd) = (cluster.nats.urls(), cluster.etcd.url.clone());
    let advertise = format!("https://{}", link.addr);
    let through_link = [("LOGBRIDGE_CLUSTER_ADVERTISE_URL", advertise.as_str())];
    cluster.add_node_via("indexer", "indexer-0", &nats, &etcd, &through_link);
    link.set_target(cluster.indexers[0].api.clone());
    cluster.add_node("indexer", "indexer-1");
    cluster.add_node("gateway", "gateway-0");
    cluster.wait_all_shards_served().await;

    let grpc = cluster.grpc();
    for batch in 0..BIG / 2_000 {
        let logs = records(USERS[big], batch * 2_000, 2_000);
        export_until_acknowledged(&grpc, 0, &cluster.ingest, logs).await;
    }
    export_until_acknowledged(&grpc, 0, &cluster.ingest, records(USERS[small], 0, 100)).await;
    let gateway = &cluster.gateways[0];
    wait_for_total(&cluster, gateway, big, BIG as usize).await;
    wait_for_total(&cluster, gateway, small, 100).await;
    // both replicas committed every log: a copy holds them all
    for indexer in 0..2 {
        for (user, total) in [(big, BIG), (small, 100)] {
            let deadline = Instant::now() + PATIENCE;
            while cluster.held(indexer, user).await != Some(total) {
                assert!(
                    Instant::now() < deadline,
                    "indexer-{indexer} never held user {user}'s logs"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    link.throttle(SLOW_LINK);
    cluster.add_node("indexer", "indexer-2");
    // the small shard opens and is ready, and its former owner lets it go, while the large
    // shard's copy goes on
    let former = (0..2)
        .find(|&n| !owners(small_shard, &JOINED, 2).contains(&JOINED[n]))
        .expect("the small shard moves from one of the first two indexers");
    let copies_in_flight = || {
        cluster.metric(
            &cluster.indexers[2],
            "logbridge_cluster_replica_copies_in_flight",
        )
    };
    let deadline = Instant::now() + PATIENCE;
    while copies_in_flight().await == 0.0 {
        assert!(Instant::now() < deadline, "indexer-2 never began to copy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copying = copies_in_flight().await;
        let joined = cluster.held(2, small).await;
        let let_go = cluster.held(former, small).await.is_none();
        assert_eq!(
            cluster.held(2, big).await,
            None,
            "the large shard's copy arrived before the small shard moved: the link is too fast"
        );
        assert!(
            copying >= 1.0,
            "the large shard's copy is under way: {copying}"
        );
        if joined == Some(100) && let_go {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "while the large copy ran: indexer-2 holds {joined:?} of the small shard, its former owner let go: {let_go}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // a SIGTERM mid-copy: the node stops within the drain timeout, and nothing of the copy stays
    let node = cluster.indexers[2].served.as_mut().unwrap();
    let stopping = Instant::now();
    sigterm(node);
    wait_for_clean_exit(node);
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
    let shards = cluster.dir.path().join("indexer-2/index/shards");
    let mut left: Vec<String> = std::fs::read_dir(&shards)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected: Vec<String> = (0..SHARDS)
        .filter(|&s| s != shard_of(USERS[big], SHARDS))
        .filter(|&s| owners(s, &JOINED, 2).contains(&"indexer-2"))
        .map(|s| s.to_string())
        .collect();
    expected.sort();
    assert_eq!(
        left, expected,
        "the replicas it opened, and nothing of the copy"
    );
}
