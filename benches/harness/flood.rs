//! One user's flood: 2 connections with 16 exports in flight on each, the same pre-encoded body
//! sent again the moment an answer comes whatever it says, from a thread of its own so that the
//! client measured beside it is not queued behind it. `benches/fairness.rs` measures what it does
//! to another user's latencies; `tests/suite/fairness.rs` checks the contract under it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::raw_grpc;

const CONNECTIONS: usize = 2;
const IN_FLIGHT: usize = 16;

/// A flood under way.
pub struct Flood {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    /// Records in each export.
    records: u64,
    started: Instant,
    thread: JoinHandle<()>,
}

/// What a flood got, once stopped.
pub struct FloodReport {
    /// Records taken.
    pub accepted: u64,
    /// Exports refused.
    pub refused: u64,
    pub seconds: f64,
    /// Records offered a second, taken or not.
    pub offered_per_second: f64,
}

impl Flood {
    /// Starts sending `body` (an export of `records` records) to the gRPC endpoint `grpc`
    /// (`http://host:port`) with `authorization`; `check_refusal` sees every refusal and panics on
    /// one it does not expect, which stops that sender and fails [`Flood::stop`].
    pub fn start(
        grpc: String,
        authorization: String,
        body: Bytes,
        records: u64,
        check_refusal: impl Fn(&tonic::Status) + Send + Sync + 'static,
    ) -> Flood {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let check_refusal = Arc::new(check_refusal);
        let thread = {
            let (stop, accepted, refused) = (stop.clone(), accepted.clone(), refused.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the flood");
                runtime.block_on(async move {
                    let mut senders = Vec::new();
                    for _ in 0..CONNECTIONS {
                        let channel = tonic::transport::Endpoint::new(grpc.clone())
                            .expect("a gRPC address")
                            .connect()
                            .await
                            .expect("the flood connects");
                        for _ in 0..IN_FLIGHT {
                            let (stop, accepted, refused) =
                                (stop.clone(), accepted.clone(), refused.clone());
                            let (channel, authorization, body, check_refusal) = (
                                channel.clone(),
                                authorization.clone(),
                                body.clone(),
                                check_refusal.clone(),
                            );
                            senders.push(tokio::spawn(async move {
                                while !stop.load(Ordering::Relaxed) {
                                    let sent = raw_grpc::export(
                                        channel.clone(),
                                        &authorization,
                                        body.clone(),
                                    )
                                    .await;
                                    match sent {
                                        Ok(_) => accepted.fetch_add(records, Ordering::Relaxed),
                                        Err(status) => {
                                            check_refusal(&status);
                                            refused.fetch_add(1, Ordering::Relaxed)
                                        }
                                    };
                                }
                            }));
                        }
                    }
                    for sender in senders {
                        sender.await.expect("a flood sender failed");
                    }
                });
            })
        };
        Flood {
            stop,
            accepted,
            refused,
            records,
            started,
            thread,
        }
    }

    /// Exports refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Waits until `count` exports in all have been refused; panics, saying `what`, if the flood
    /// stops or `patience` runs out first.
    pub async fn wait_refused(&self, count: u64, patience: Duration, what: &str) {
        let deadline = Instant::now() + patience;
        while self.refused() < count {
            assert!(
                !self.thread.is_finished() && Instant::now() < deadline,
                "{what}: {} refusals, {count} awaited",
                self.refused()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops the flood; panics if a sender did (an unexpected refusal).
    pub fn stop(self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the flood failed");
        let seconds = self.started.elapsed().as_secs_f64();
        let (accepted, refused) = (
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        );
        let offered = accepted + refused * self.records;
        FloodReport {
            accepted,
            refused,
            seconds,
            offered_per_second: offered as f64 / seconds,
        }
    }
}
