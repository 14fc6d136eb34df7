//! Acknowledged means durable: the real binary is killed with SIGKILL while exporters stream
//! records over gRPC, restarted on the same data folder, and every acknowledged record must be
//! there exactly once.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{Served, serve, stored_messages, wait_ready, write_config, write_key};
use common::{PATIENCE, activity, assert_each_acknowledged_once, authorized, request_of};
use logbridge::auth::Secret;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;

const EXPORTERS: usize = 3;
const BATCH: usize = 50;

/// Streams batches from several exporters until `stop`; returns the acknowledged messages.
async fn stream_until_killed(
    grpc: String,
    secret: Secret,
    round: usize,
    kill_after: usize,
    served: &mut Served,
) -> Vec<String> {
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for exporter in 0..EXPORTERS {
        let acked = acked.clone();
        let grpc = grpc.clone();
        let secret = secret.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut client) = LogsServiceClient::connect(format!("http://{grpc}")).await else {
                return;
            };
            for batch in 0.. {
                let messages: Vec<String> = (0..BATCH)
                    .map(|i| format!("r{round}-e{exporter}-b{batch}-{i}"))
                    .collect();
                let records = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| activity("tool_call", 1 + (batch * BATCH + i) as u64, m))
                    .collect();
                match client
                    .export(authorized(request_of(records), &secret))
                    .await
                {
                    Ok(response) => {
                        assert_eq!(response.into_inner().partial_success, None);
                        acked.lock().unwrap().extend(messages);
                    }
                    // the server is gone
                    Err(_) => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + PATIENCE;
    while acked.lock().unwrap().len() < kill_after {
        assert!(Instant::now() < deadline, "exports stalled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // SIGKILL, mid-stream: no chance to commit or flush anything
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(acked)
        .expect("every exporter has stopped")
        .into_inner()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let secret = Secret::generate();
    write_key(dir.path(), &secret);

    let mut all_acked: Vec<String> = Vec::new();
    // kill early (before the first commit), later (after several), and again on a replayed index
    for (round, kill_after) in [300, 3000, 1200, 6000].into_iter().enumerate() {
        let mut served = serve(&config);
        wait_ready(&served.api).await;
        let acked = stream_until_killed(
            served.grpc.clone(),
            secret.clone(),
            round,
            kill_after,
            &mut served,
        )
        .await;
        assert!(acked.len() >= kill_after);
        all_acked.extend(acked);

        let restarted = serve(&config);
        wait_ready(&restarted.api).await;
        let stored = stored_messages(&restarted.api, &secret).await;
        assert_each_acknowledged_once(&stored, &all_acked, &format!("round {round}"));
        // in-flight exports may or may not have landed; nothing else may appear
        assert!(stored.len() >= all_acked.len());
        assert!(stored.len() <= all_acked.len() + (round + 1) * EXPORTERS * BATCH);
        drop(restarted);
    }
}
