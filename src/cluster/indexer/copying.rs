//! Copies of peers' replicas, fetched beside the loop that opens and closes replicas: a large
//! shard's copy (up to half an hour) holds up no other shard, no move, no readiness report and
//! no shutdown. The loop starts a copy, goes on, and puts the copy in place once it finished.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::super::copy;
use super::super::membership::View;
use super::IndexerContext;

/// The copies being fetched, by shard.
pub(super) struct Copies {
    running: HashMap<u32, Copying>,
    /// Copies in flight, in `/metrics`.
    in_flight: Gauge,
}

struct Copying {
    /// Where the copy lands: a sibling of the shard's folder.
    staging: PathBuf,
    /// For a replica with a hole: the last message it lacks, which the copy must hold.
    hole: Option<u64>,
    /// What the copy holds (its last sequence number); none when no peer's copy arrived.
    result: oneshot::Receiver<Option<u64>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// A copy that finished.
pub(super) struct Copied {
    /// Where it is, when it arrived.
    pub staging: PathBuf,
    /// The last sequence number it holds; none when no peer's copy arrived (nothing is staged).
    pub committed: Option<u64>,
    /// For a replica with a hole: the last message it lacks.
    pub hole: Option<u64>,
}

impl Copies {
    pub fn new(in_flight: Gauge) -> Self {
        in_flight.set(0);
        Self {
            running: HashMap::new(),
            in_flight,
        }
    }

    /// Whether a copy of `shard` is being fetched.
    pub fn running(&self, shard: u32) -> bool {
        self.running.contains_key(&shard)
    }

    /// Starts fetching a copy of `shard` from its ready peers in `view`, one after the other
    /// until one arrives; for a replica with a hole, `hole` is the last message it lacks.
    pub fn start(&mut self, context: &IndexerContext, shard: u32, view: &View, hole: Option<u64>) {
        let staging = context
            .dir
            .join(format!("copying-{shard}-{}", rand::random::<u64>()));
        let peers = ready_peers(context, shard, view);
        let (sender, result) = oneshot::channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(fetch_from_peers(
            context.clone(),
            peers,
            shard,
            staging.clone(),
            cancel.clone(),
            sender,
        ));
        self.running.insert(
            shard,
            Copying {
                staging,
                hole,
                result,
                cancel,
                task,
            },
        );
        self.in_flight.set(self.running.len() as i64);
    }

    /// The copy of `shard`, once it finished.
    pub fn finished(&mut self, shard: u32) -> Option<Copied> {
        let copying = self.running.get_mut(&shard)?;
        let committed = match copying.result.try_recv() {
            Ok(committed) => committed,
            Err(oneshot::error::TryRecvError::Empty) => return None,
            // the task ended without a word: it failed
            Err(oneshot::error::TryRecvError::Closed) => None,
        };
        let copying = self.running.remove(&shard)?;
        self.in_flight.set(self.running.len() as i64);
        Some(Copied {
            staging: copying.staging,
            committed,
            hole: copying.hole,
        })
    }

    /// Gives up the copy of `shard`, if one is being fetched: it stops at once, and what it
    /// fetched is removed.
    pub fn cancel(&mut self, shard: u32) {
        if let Some(copying) = self.running.remove(&shard) {
            self.in_flight.set(self.running.len() as i64);
            tokio::spawn(copying.cancelled());
        }
    }

    /// Gives up every copy, and waits until what they fetched is removed.
    pub async fn cancel_all(mut self) {
        let cancelled: Vec<_> = self
            .running
            .drain()
            .map(|(_, copying)| copying.cancelled())
            .collect();
        self.in_flight.set(0);
        for copying in cancelled {
            copying.await;
        }
    }
}

impl Copying {
    /// Stops the copy and removes what it staged (it may have finished just before).
    async fn cancelled(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        if self.staging.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.staging)
        {
            tracing::warn!(path = %self.staging.display(), error = %e, "cannot remove a cancelled copy");
        }
    }
}

/// The APIs of the other nodes' ready replicas of `shard`.
pub(super) fn ready_peers(context: &IndexerContext, shard: u32, view: &View) -> Vec<String> {
    view.replicas
        .get(&shard)
        .into_iter()
        .flatten()
        .filter(|(node, status)| status.ready && **node != context.node_id)
        .map(|(_, status)| status.api.clone())
        .collect()
}

/// Copies `shard`'s committed index from the first of `peers` that serves it into `staging`,
/// and says what the copy holds (nothing when none did).
async fn fetch_from_peers(
    context: IndexerContext,
    peers: Vec<String>,
    shard: u32,
    staging: PathBuf,
    cancel: CancellationToken,
    result: oneshot::Sender<Option<u64>>,
) {
    let mut committed = None;
    for peer in peers {
        if cancel.is_cancelled() {
            break;
        }
        let started = Instant::now();
        let fetched = copy::fetch(
            &context.client,
            &peer,
            &context.peer_token,
            shard,
            &staging,
            &cancel,
        )
        .await;
        match fetched {
            Ok(last) => {
                context.api.metrics.cluster_replica_copies.inc();
                tracing::info!(
                    shard,
                    %peer,
                    committed = last,
                    took_ms = started.elapsed().as_millis() as u64,
                    "replica copied from a peer"
                );
                committed = Some(last);
                break;
            }
            Err(e) => tracing::warn!(
                shard,
                %peer,
                error = %format!("{e:#}"),
                "cannot copy the replica from this peer"
            ),
        }
    }
    let _ = result.send(committed);
}
