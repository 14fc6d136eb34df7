//! The benchmark harness at a tiny size, so it never rots: the real binary, both transports, the
//! visibility probe, and every query type of the query benchmark.

use crate::common::harness;

use harness::{
    BASE_NANOS, BATCH, LARGE_USER, RequestEncoder, SEED, SMALL_USER, Server, Transport, disk_bytes,
    ingest, query, query_types,
};
use logbridge::workload::Workload;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_harness_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(env!("CARGO_BIN_EXE_logbridge"), dir.path(), 50).await;
    let mut encoder = RequestEncoder::new(SEED);
    let grpc = ingest(&server, encoder.encode(6 * BATCH), 3, Transport::Grpc).await;
    assert_eq!(grpc.records, 6 * BATCH);
    assert!(grpc.bytes > 6 * BATCH * 400);
    assert!(grpc.records_per_second() > 0.0);
    assert!(grpc.visible_p50 > std::time::Duration::ZERO);
    let http = ingest(
        &server,
        encoder.encode(BATCH + 10),
        2,
        Transport::HttpProtobuf,
    )
    .await;
    assert_eq!(http.records, BATCH + 10);
    assert!(server.peak_rss_bytes() > 0);

    let records = 7 * BATCH + 10;
    let owned = |user: &str| {
        Workload::new(SEED)
            .take(records)
            .filter(|a| a.user_id == user)
            .count() as u64
    };
    let newest = BASE_NANOS + records as u64 * 1_000_000;
    for (name, large, path, q) in query_types(newest) {
        let key = if large {
            &server.large_reader
        } else {
            &server.small_reader
        };
        let report = query(&server, name, key, (path, &q), 2, 6).await;
        assert!(report.p99 >= report.p50, "{name}");
        match name {
            "no filter, large user" => assert_eq!(report.total, owned(LARGE_USER)),
            "no filter, small user" => assert_eq!(report.total, owned(SMALL_USER)),
            "stats, large user" => assert_eq!(report.total, owned(LARGE_USER)),
            "stats, small user" => assert_eq!(report.total, owned(SMALL_USER)),
            _ => assert!(report.total <= owned(LARGE_USER), "{name}"),
        }
    }
    assert!(disk_bytes(&dir.path().join("index")) > 0);
    server.stop();
}
