//! One pass of the indexer's loop over the shards: each replica brought in line with the
//! cluster's view. Nothing here waits on the network: copies from peers are fetched beside it
//! ([`super::copying`]) and put in place by a later pass once they arrived.

use std::time::{Duration, Instant};

use super::copying::{self, Copied, Copies};
use super::{IndexerContext, Replicas, open, shard_dir};
use crate::cluster::membership::{Membership, ReplicaStatus, View};
use crate::cluster::shard::resume_from;
use crate::metrics::ShardLabels;

/// One pass of the loop over the shards, with what it works from.
pub(super) struct Reconcile<'a> {
    pub context: &'a IndexerContext,
    pub replicas: &'a Replicas,
    pub copies: &'a mut Copies,
    pub membership: &'a Membership,
    pub view: &'a View,
}

impl Reconcile<'_> {
    /// Brings this node's replica of `shard` in line with the view: puts a finished copy in
    /// place, starts a copy where one is due, opens a replica it owns and closes one it no
    /// longer owns once the new owners are ready.
    pub fn shard(&mut self, shard: u32) {
        let context = self.context;
        let owners = self.view.owners(shard, context.replicas_per_shard);
        let mine = owners.contains(&context.node_id.as_str());
        if !mine {
            self.copies.cancel(shard);
        }
        // when a copy of a shard this node does not hold just finished: whether it is in place
        let mut copied = None;
        if let Some(copy) = self.copies.finished(shard) {
            match copy.hole {
                Some(last) => {
                    if self.replace_with(shard, copy, last) {
                        copied = Some(true);
                    }
                }
                None => copied = Some(self.put_in_place(shard, copy)),
            }
        }
        if mine
            && !self.copies.running(shard)
            && let Some(last) = self.replicas.hole_due(shard)
        {
            self.copies.start(context, shard, self.view, Some(last));
        }
        // a replica replaced by a copy is opened below, from the copy
        let held = self.replicas.holds(shard);
        if mine && !held && !self.copies.running(shard) {
            let dir = shard_dir(&context.dir, shard);
            // a shard this node never held starts from a ready peer's copy where there is one
            // (and its stream from after it), else from the start of the stream
            if !dir.join("meta.json").exists()
                && copied.is_none()
                && !copying::ready_peers(context, shard, self.view).is_empty()
            {
                self.copies.start(context, shard, self.view, None);
                return;
            }
            match open(context, shard, copied == Some(true)) {
                Ok(replica) => {
                    tracing::info!(shard, "replica opened; catching up with the stream");
                    self.membership.set_replica(
                        shard,
                        Some(ReplicaStatus {
                            api: context.advertise.clone(),
                            ready: false,
                        }),
                    );
                    self.replicas.insert(shard, replica);
                }
                Err(e) => {
                    tracing::error!(shard, error = %format!("{e:#}"), "cannot open a replica")
                }
            }
        } else if !mine && held && self.view.owners_ready(shard, context.replicas_per_shard) {
            self.close(shard);
        }
    }

    /// Puts the copy of a shard this node does not hold yet in its folder; whether it is there.
    fn put_in_place(&self, shard: u32, copy: Copied) -> bool {
        if copy.committed.is_none() {
            // a failed copy leaves nothing, but an unpack that finished as it was given up
            let _ = std::fs::remove_dir_all(&copy.staging);
            return false;
        }
        let dir = shard_dir(&self.context.dir, shard);
        let placed = match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::rename(&copy.staging, &dir),
        };
        if let Err(e) = placed {
            tracing::warn!(shard, error = %e, "cannot put a peer's copy in place; the replica replays its stream");
            let _ = std::fs::remove_dir_all(&copy.staging);
            return false;
        }
        true
    }

    /// Replaces this node's replica of `shard`, which lacks stream messages through `last`,
    /// with `copy` when it holds them (its commit is past `last`): the replica is closed and the
    /// copy put in its folder, for the loop to open; whether it is there. While no peer's copy
    /// covers the hole, the replica stays as it is, unread, and asks again later.
    fn replace_with(&self, shard: u32, copy: Copied, last: u64) -> bool {
        let context = self.context;
        let covers = copy
            .committed
            .is_some_and(|committed| resume_from(committed) > last);
        let mut held = self.replicas.0.write().unwrap_or_else(|e| e.into_inner());
        if !covers {
            let _ = std::fs::remove_dir_all(&copy.staging);
            if let Some(replica) = held.get_mut(&shard) {
                replica.recopy_at = Instant::now() + replica.recopy_backoff;
                replica.recopy_backoff = (replica.recopy_backoff * 2).min(RECOPY_BACKOFF_MAX);
            }
            return false;
        }
        let Some(replica) = held.remove(&shard) else {
            let _ = std::fs::remove_dir_all(&copy.staging);
            return false;
        };
        drop(held);
        replica.stop.cancel();
        let _ = replica.thread.join();
        let dir = shard_dir(&context.dir, shard);
        let closed = closed_dir(context, shard);
        let swapped =
            std::fs::rename(&dir, &closed).and_then(|()| std::fs::rename(&copy.staging, &dir));
        match swapped.and_then(|()| std::fs::remove_dir_all(&closed)) {
            Ok(()) => {
                tracing::info!(
                    shard,
                    "replica with a gap replaced by a complete peer's copy"
                );
                true
            }
            // a copy that did not land in place leaves no index: the shard opens afresh
            // (copied or replayed)
            Err(e) => {
                tracing::warn!(shard, error = %e, "cannot put the copy in place of the replica with a gap");
                let _ = std::fs::remove_dir_all(&copy.staging);
                let _ = std::fs::remove_dir_all(&closed);
                dir.join("meta.json").exists()
            }
        }
    }

    /// Closes this node's replica of a shard that moved to its new owners, and removes it.
    fn close(&self, shard: u32) {
        let context = self.context;
        let replica = self.replicas.remove(shard);
        self.membership.set_replica(shard, None);
        // the shard's gauges leave with it, rather than keep its last values
        let metrics = &context.api.metrics;
        let labels = ShardLabels { shard };
        metrics.cluster_replica_missing.remove(&labels);
        metrics.cluster_replica_lag_messages.remove(&labels);
        metrics.cluster_replica_lag.remove(&labels);
        if let Some(replica) = replica {
            tracing::info!(shard, "shard moved to its new owners; replica closed");
            // renamed at once, so that a shard coming back before the removal is done opens a
            // fresh folder
            let dir = shard_dir(&context.dir, shard);
            let closed = closed_dir(context, shard);
            let renamed = std::fs::rename(&dir, &closed);
            std::thread::spawn(move || {
                replica.stop.cancel();
                let _ = replica.thread.join();
                if let Err(e) = renamed.and_then(|()| std::fs::remove_dir_all(&closed)) {
                    tracing::warn!(shard, error = %e, "cannot remove a closed replica's folder");
                }
            });
        }
    }
}

/// How long a replica with a gap first waits between asking its peers for a copy that fills it.
pub(super) const RECOPY_INTERVAL: Duration = Duration::from_secs(5);

/// The longest it waits between two such copies.
const RECOPY_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// A new folder beside the replicas' for a replica of `shard` being removed: a shard opened
/// again meanwhile gets a fresh folder of its own, and a crash leaves it to the next start's
/// clean-up.
fn closed_dir(context: &IndexerContext, shard: u32) -> std::path::PathBuf {
    context
        .dir
        .join(format!("closed-{shard}-{}", rand::random::<u64>()))
}
