//! Per-user ingest limits in cluster mode hold for the whole cluster: each gateway enforces its
//! share of a user's rate and burst among the live gateways it sees.

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::{TestCluster, USERS, records, wait_for_total};
use common::{PATIENCE, authorized, request_of};
use tonic_types::StatusExt as _;

/// User 0's limit: one record a second and a burst of 2,000 for the whole cluster. What comes
/// back while the test runs (half a token a second at each gateway) is far less than any export
/// it sends past the burst, so what is accepted and refused is exact however slow the machine.
const LIMIT: &str = r#"{ "user-0" = { records_per_second = 1, burst = 2000 } }"#;

#[tokio::test]
async fn two_gateways_together_hold_a_users_limit() {
    let mut cluster = TestCluster::start(0, 2).await;
    let (nats, etcd) = (cluster.nats.urls(), cluster.etcd.url.clone());
    for id in ["gateway-0", "gateway-1"] {
        cluster.add_node_via(
            "gateway",
            id,
            &nats,
            &etcd,
            &[("LOGBRIDGE_LIMITS_USERS", LIMIT)],
        );
    }
    cluster.wait_all_shards_served().await;
    // each gateway knows of the other: its share is half of every limit
    let deadline = Instant::now() + PATIENCE;
    for gateway in &cluster.gateways {
        while cluster.metric(gateway, "logbridge_cluster_gateways").await != 2.0 {
            assert!(
                Instant::now() < deadline,
                "{} never saw two gateways",
                gateway.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let grpc = cluster.grpc();
    let began = Instant::now();
    let mut first = 0;
    for gateway in 0..2 {
        let mut client = grpc.connect(gateway).await.unwrap();
        // half the burst is taken at each gateway...
        let half = records(USERS[0], first, 1_000);
        first += 1_000;
        let response = client
            .export(authorized(request_of(half), &cluster.ingest))
            .await
            .unwrap_or_else(|e| panic!("gateway {gateway}: {e}"));
        assert_eq!(response.into_inner().partial_success, None);
        // ...and not a record more, though the user's burst is 2,000
        let status = client
            .export(authorized(
                request_of(records(USERS[0], first, 100)),
                &cluster.ingest,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().starts_with(
                "user \"user-0\" is over its ingest limit of 1 records per second; retry in"
            ),
            "{}",
            status.message()
        );
        // a gateway's share of the rate is half a record a second: 100 records take 200 s
        let delay = status
            .get_details_retry_info()
            .expect("RetryInfo")
            .retry_delay
            .expect("a delay");
        let gone_by = began.elapsed();
        let full = Duration::from_secs(200);
        assert!(
            delay <= full && delay + gone_by >= full,
            "retry in {delay:?}, {gone_by:?} after the test began"
        );
        // another user is not limited
        let response = client
            .export(authorized(
                request_of(records(USERS[1], gateway as u64 * 3_000, 3_000)),
                &cluster.ingest,
            ))
            .await
            .unwrap();
        assert_eq!(response.into_inner().partial_success, None);
    }
    let gateway = &cluster.gateways[0];
    wait_for_total(&cluster, gateway, 0, 2_000).await;
    wait_for_total(&cluster, gateway, 1, 6_000).await;
    for gateway in &cluster.gateways {
        assert_eq!(
            cluster
                .metric(gateway, "logbridge_exports_throttled_total")
                .await,
            1.0,
            "{}",
            gateway.id
        );
    }
}
