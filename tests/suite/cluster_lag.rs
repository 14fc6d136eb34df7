//! Bounded, visible lag: replicas report what their reads see; a gateway refuses new exports
//! for a shard retryably while no ready replica of it shows the exports it acknowledged within
//! `max_lag_ms`, and takes them again once one catches up. Reads say how fresh they are.

use crate::common;

use std::time::{Duration, Instant};

use common::PATIENCE;
use common::cluster::{
    GrpcTargets, Options, SHARDS, TestCluster, USERS, export_until_acknowledged, records,
};
use common::{authorized, request_of};

/// The bound of the test cluster.
const MAX_LAG: Duration = Duration::from_millis(1000);

/// Batches of 100 records of user 0, and the messages of those acknowledged.
#[derive(Default)]
struct Load {
    batch: u64,
    sent: Vec<String>,
}

impl Load {
    /// The next batch.
    fn next(&self) -> Vec<opentelemetry_proto::tonic::logs::v1::LogRecord> {
        records(USERS[0], self.batch * 100, 100)
    }

    /// The next batch was acknowledged.
    fn acknowledged(&mut self) {
        let first = self.batch * 100;
        self.sent
            .extend((first..first + 100).map(|n| format!("{} record {n}", USERS[0])));
        self.batch += 1;
    }
}

/// The load's next batch, exported once through the first gateway: its answer.
async fn export_once(
    grpc: &GrpcTargets,
    cluster: &TestCluster,
    load: &Load,
) -> Result<(), tonic::Status> {
    let request = authorized(request_of(load.next()), &cluster.ingest);
    let mut client = grpc.connect(0).await.expect("a connection to the gateway");
    client.export(request).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_wait_while_no_replica_is_within_the_lag_bound() {
    // two indexers: each holds every shard
    let options = Options {
        cluster_settings: "max_lag_ms = 1000",
        ..Options::default()
    };
    let mut cluster = TestCluster::start_with(1, 2, options).await;
    let shard = logbridge::cluster::shard_of(USERS[0], SHARDS);
    let grpc = cluster.grpc();
    let mut load = Load::default();
    export_until_acknowledged(&grpc, 0, &cluster.ingest, load.next()).await;
    load.acknowledged();
    cluster
        .assert_replicas_exact(0, &[shard], &load.sent, "caught up")
        .await;

    // a page says how far into the shard's stream its replica had read: all of it
    let mut stream = cluster.stream(shard).await;
    let last = stream.info().await.unwrap().state.last_sequence;
    let response = cluster
        .get_as(&cluster.gateways[0], 0, "/logs?limit=1")
        .await;
    assert_eq!(
        response.headers()["logbridge-indexed-through"],
        format!("{shard}:{last}").as_str()
    );
    let lag_messages = format!("logbridge_cluster_replica_lag_messages{{shard=\"{shard}\"}}");
    for indexer in &cluster.indexers {
        assert_eq!(
            cluster.metric(indexer, &lag_messages).await,
            0.0,
            "{}",
            indexer.id
        );
    }

    // one replica paused: the other keeps the shard within the bound, nothing is refused
    cluster.indexers[0].pause();
    for _ in 0..3 {
        let answer = export_once(&grpc, &cluster, &load).await;
        assert!(answer.is_ok(), "refused with one replica up: {answer:?}");
        load.acknowledged();
        tokio::time::sleep(MAX_LAG / 2).await;
    }

    // reads go to the replica within the bound: the paused one is asked only when no other
    // answers (it would not answer at all)
    let (status, body) = cluster.get(&cluster.gateways[0], 0, "limit=1").await;
    assert_eq!(
        (status, body["data"]["total"].as_u64()),
        (200, Some(load.sent.len() as u64)),
        "{body}"
    );

    // both paused: what is acknowledged stops becoming visible, and once the oldest of it has
    // waited the bound, exports for the shard are refused retryably, storing nothing
    cluster.indexers[1].pause();
    let paused = Instant::now();
    let deadline = paused + PATIENCE;
    let refusal = loop {
        let answer = export_once(&grpc, &cluster, &load).await;
        match answer {
            Ok(_) => load.acknowledged(),
            Err(status) => break status,
        }
        assert!(
            Instant::now() < deadline,
            "never refused with both replicas paused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        paused.elapsed() >= MAX_LAG,
        "refused {:?} after the pause, before the bound",
        paused.elapsed()
    );
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(
        refusal
            .message()
            .contains(&format!("the reads of shard {shard} are"))
            && refusal
                .message()
                .contains("past cluster.max_lag_ms), retry later"),
        "{}",
        refusal.message()
    );
    let gateway = &cluster.gateways[0];
    assert!(
        cluster
            .metric(gateway, "logbridge_cluster_lag_refusals_total")
            .await
            >= 1.0
    );
    let shard_lag = format!("logbridge_cluster_shard_lag_seconds{{shard=\"{shard}\"}}");
    assert!(cluster.metric(gateway, &shard_lag).await > MAX_LAG.as_secs_f64());

    // resumed, the replicas catch up and the shard takes exports again; every acknowledged log
    // is there once, none of the refused ones
    cluster.indexers[0].resume();
    cluster.indexers[1].resume();
    export_until_acknowledged(&grpc, 0, &cluster.ingest, load.next()).await;
    load.acknowledged();
    cluster
        .assert_replicas_exact(0, &[shard], &load.sent, "after the pause")
        .await;
    assert_eq!(cluster.metric(gateway, &shard_lag).await, 0.0);
}
