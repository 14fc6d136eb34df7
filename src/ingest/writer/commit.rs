//! Writing a group of batches (log, fsync, index, answer), commits, erasure and expiry.

use std::time::Instant;

use super::faults::Stage;
use super::{Batch, WriteError, Writer, answer, gauge, now_secs};
use crate::ingest::now_nanos;
use crate::store::{LogQuery, LogWriter, StoreError};

impl Writer {
    /// Logs, fsyncs and indexes a group of batches, then answers each.
    pub(super) fn write_group(&mut self, mut group: Vec<Batch>) {
        self.metrics.queue_depth.dec_by(group.len() as i64);
        if let Some(reason) = &self.failure {
            // numbers handed out all the same: a refused batch's are never reused
            self.next_seq += group.iter().map(|b| b.logs.len() as u64).sum::<u64>();
            let refusal = WriteError::Storage(reason.clone());
            answer(group, &Err(refusal));
            return;
        }
        let mark = self.dedup.as_ref().map(|d| d.window.mark());
        let duplicates = self.drop_duplicates(&mut group);
        let first_seq = self.next_seq;
        let num_logs: u64 = group.iter().map(|b| b.logs.len() as u64).sum();
        // handed out whatever happens next, so a refused batch's numbers are never reused
        self.next_seq += num_logs;
        let mut seq = first_seq;
        for batch in &group {
            self.wal.push(seq, &batch.logs);
            seq += batch.logs.len() as u64;
        }
        let synced = self.wal.sync();
        self.metrics.wal_bytes.set(gauge(self.wal.bytes()));
        if let Err(e) = synced {
            // The batches are cut off the log again and refused. Should the cut have failed too,
            // a commit through their sequence numbers makes replay skip them all the same.
            let reason = self.fail(Stage::WalWrite, &e);
            if let (Some(dedup), Some(mark)) = (&mut self.dedup, mark) {
                dedup.window.rollback(mark);
            }
            let _ = self.commit();
            answer(group, &Err(WriteError::Storage(reason)));
            return;
        }
        self.metrics.records_duplicate.inc_by(duplicates);
        let logs = group.iter().flat_map(|batch| &batch.logs);
        for (seq, log) in (first_seq..).zip(logs) {
            if let Err(e) = self.index.add(&log.log, seq) {
                // durable in the log: acknowledged, and indexed again once the index recovers
                self.fail(Stage::IndexWrite, &e);
                break;
            }
        }
        self.uncommitted |= num_logs > 0;
        answer(group, &Ok(()));
    }

    /// Drops the logs of the group stored already within the dedup window (a client's retry);
    /// how many.
    fn drop_duplicates(&mut self, group: &mut [Batch]) -> u64 {
        let Some(dedup) = &mut self.dedup else {
            return 0;
        };
        let dropped = dedup.drop_duplicates(group.iter_mut().map(|b| &mut b.logs), now_secs());
        self.metrics
            .dedup_window_bytes
            .set(gauge(dedup.window.memory_bytes() as u64));
        dropped
    }

    /// Commits the index up to the last sequence number given out, then empties the log.
    pub(super) fn commit(&mut self) -> Result<(), WriteError> {
        if self.index_broken {
            return Err(WriteError::Storage(
                self.failure.clone().unwrap_or_default(),
            ));
        }
        let started = Instant::now();
        let last_seq = self.next_seq - 1;
        let wal_bytes = self.wal.bytes();
        // what the commit holds is in the dedup journal first: the log is emptied after it
        self.persist_journal()?;
        if let Err(e) = self.index.commit(last_seq) {
            return Err(WriteError::Storage(self.fail(Stage::IndexCommit, &e)));
        }
        self.uncommitted = false;
        self.rotate_wal();
        self.metrics.commits.inc();
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.index_logs.set(gauge(self.index.num_logs()));
        self.metrics
            .index_deleted_logs
            .set(gauge(self.index.num_deleted_logs()));
        tracing::debug!(
            last_seq,
            wal_bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "committed"
        );
        match &self.failure {
            // committed, but new batches wait for the log to recover
            Some(reason) => Err(WriteError::Storage(reason.clone())),
            None => Ok(()),
        }
    }

    /// Commits what was written, marks what `delete` selects deleted, and commits that: the
    /// answer (how many logs) comes only once the deletion is durable. Commits rotate the
    /// write-ahead log, so the deleted logs leave it too.
    fn delete(
        &mut self,
        delete: impl FnOnce(&mut LogWriter) -> Result<u64, StoreError>,
    ) -> Result<u64, WriteError> {
        if let Some(reason) = &self.failure {
            return Err(WriteError::Storage(reason.clone()));
        }
        // the deletes see, and count, only what is committed
        if self.uncommitted {
            self.commit()?;
        }
        let deleted = match delete(&mut self.index) {
            Ok(deleted) => deleted,
            Err(e) => return Err(WriteError::Storage(self.fail(Stage::IndexDelete, &e))),
        };
        if deleted > 0 {
            self.commit()?;
        }
        Ok(deleted)
    }

    pub(super) fn erase(&mut self, query: &LogQuery) -> Result<u64, WriteError> {
        let erased = self.delete(|index| index.delete(query))?;
        if erased > 0 {
            self.metrics.records_erased.inc_by(erased);
            // erased logs leave the disk now, not when merges get to them
            self.index.purge_deleted();
        }
        Ok(erased)
    }

    /// Deletes the logs past their retention; storage that fails skips a sweep.
    pub(super) fn sweep(&mut self) {
        self.sweep_at = Some(Instant::now() + self.sweep_interval);
        let now = now_nanos();
        let expiries = self.retention.expiries(now);
        let swept = self.delete(|index| {
            expiries
                .iter()
                .try_fold(0, |total, expiry| Ok(total + index.expire(expiry)?))
        });
        match swept {
            Ok(expired) => {
                self.metrics.records_expired.inc_by(expired);
                self.metrics
                    .retention_last_sweep
                    .set(gauge(now / 1_000_000_000));
                if expired > 0 {
                    tracing::info!(expired, "retention sweep deleted expired logs");
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention sweep skipped"),
        }
    }

    /// Writes the dedup window's new chunks to its journal, durably. A journal that cannot be
    /// written is a storage failure: batches are refused until it can.
    pub(super) fn persist_journal(&mut self) -> Result<(), WriteError> {
        let Some(dedup) = &mut self.dedup else {
            return Ok(());
        };
        let now = now_secs();
        let persisted = dedup.persist(now);
        self.metrics
            .dedup_window_bytes
            .set(gauge(dedup.window.memory_bytes() as u64));
        self.metrics.dedup_window_seconds.set(gauge(
            dedup.window.oldest().map_or(0, |at| now.saturating_sub(at)),
        ));
        persisted.map_err(|e| WriteError::Storage(self.fail(Stage::DedupJournal, &e)))
    }

    /// A fresh log segment. On failure the current one goes on growing, which keeps replay
    /// correct (it skips what the commit holds); the next commit tries again.
    pub(super) fn rotate_wal(&mut self) {
        if let Err(e) = self.wal.rotate(self.next_seq) {
            self.count_failure(Stage::WalRotate);
            tracing::warn!(error = %e, "cannot start a fresh write-ahead log segment; the current one keeps growing");
        }
        self.metrics.wal_bytes.set(gauge(self.wal.bytes()));
    }
}
