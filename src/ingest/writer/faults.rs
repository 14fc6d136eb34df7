//! Where storage failed, and what a failure does to the writer until it recovers.

use std::fmt;
use std::time::Instant;

use super::{Health, RETRY_INTERVAL, Writer};
use crate::metrics::StorageLabels;

/// Where storage failed, for the log, `/metrics` and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Appending to or fsyncing the write-ahead log.
    WalWrite,
    /// Starting a fresh log segment after a commit.
    WalRotate,
    /// Adding documents to the index.
    IndexWrite,
    /// Committing the index (segment files, `meta.json`).
    IndexCommit,
    /// Writing the dedup window's journal.
    DedupJournal,
    /// Marking logs deleted (erasure, retention).
    IndexDelete,
    /// Rolling the index back and rebuilding it from the write-ahead log.
    Recovery,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::WalWrite => "wal_write",
            Stage::WalRotate => "wal_rotate",
            Stage::IndexWrite => "index_write",
            Stage::IndexCommit => "index_commit",
            Stage::DedupJournal => "dedup_journal",
            Stage::IndexDelete => "index_delete",
            Stage::Recovery => "recovery",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Stage::WalWrite => "writing the write-ahead log",
            Stage::WalRotate => "starting a fresh write-ahead log segment",
            Stage::IndexWrite => "writing the index",
            Stage::IndexCommit => "committing the index",
            Stage::DedupJournal => "writing the dedup journal",
            Stage::IndexDelete => "deleting logs from the index",
            Stage::Recovery => "recovering the index from the write-ahead log",
        }
    }
}

impl Writer {
    /// Records a storage failure: batches are refused from now on until recovery. Returns the
    /// reason given to clients and `/readyz`.
    pub(super) fn fail(&mut self, stage: Stage, error: &dyn fmt::Display) -> String {
        self.count_failure(stage);
        if matches!(
            stage,
            Stage::IndexWrite | Stage::IndexCommit | Stage::IndexDelete
        ) {
            self.index_broken = true;
            // Stop the failed writer now: until it is rolled back, its merges may still publish
            // the segments of a failed commit. Recovery rolls back again, long after they
            // stopped, and starts from what is then on disk.
            if let Err(e) = self.index.rollback() {
                tracing::warn!(error = %e, "cannot roll the index writer back yet");
            }
        }
        let reason = format!("{}: {error}", stage.describe());
        if self.failure.is_none() {
            tracing::error!(stage = stage.label(), error = %error, "storage failed; refusing exports until it recovers");
            self.metrics.storage_failing.set(1);
        }
        self.failure = Some(reason.clone());
        self.retry_at = Instant::now() + RETRY_INTERVAL;
        self.health.send_replace(Health::Failing(reason.clone()));
        reason
    }

    pub(super) fn count_failure(&self, stage: Stage) {
        self.metrics
            .storage_failures
            .get_or_create(&StorageLabels {
                stage: stage.label(),
            })
            .inc();
    }
}
