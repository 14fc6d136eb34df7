//! Replaying the write-ahead log into the index on start, and rebuilding the index from it
//! after a fault.

use std::io;
use std::time::Instant;

use super::faults::Stage;
use super::{Health, RETRY_INTERVAL, Writer, WriterOptions, gauge, now_secs};
use crate::ingest::chunk::LogKey;
use crate::ingest::dedup::Dedup;
use crate::ingest::now_nanos;
use crate::ingest::wal::{Wal, WalBatch};
use crate::lifecycle::Retention;
use crate::store::{LogWriter, StoreError};

/// Adds to the index what the write-ahead log holds beyond the last commit, and opens the log
/// for writing. Only an unreadable log is an error; a failing index makes a failing writer.
pub(super) fn recover(mut index: LogWriter, options: &WriterOptions) -> Result<Writer, io::Error> {
    let committed = index.committed_seq();
    let mut last_seq = committed;
    let mut replayed = 0u64;
    let mut add_error: Option<StoreError> = None;
    let started = Instant::now();
    let now = now_secs();
    let mut dedup = if options.dedup_window.is_zero() {
        Dedup::remove(&options.wal_dir);
        None
    } else {
        let (window, max_bytes) = (options.dedup_window, options.dedup_max_bytes);
        Some(Dedup::open(&options.wal_dir, window, max_bytes, now)?)
    };
    Wal::recover(&options.wal_dir, |batch| {
        // the journal has every committed log's chunks; those after the commit are remembered
        // again (a batch refused while the log could not be cut back is not after it: a
        // commit through its numbers came first)
        if let Some(dedup) = dedup.as_mut().filter(|_| batch.first_seq > committed) {
            let keys: Vec<LogKey> = batch.logs.iter().map(LogKey::of_log).collect();
            dedup.window.register(&keys, now);
        }
        if add_error.is_none() {
            match add_missing(&mut index, committed, &batch, &options.retention) {
                Ok(added) => replayed += added,
                Err(e) => add_error = Some(e),
            }
        }
        last_seq = last_seq.max((batch.first_seq + batch.logs.len() as u64).saturating_sub(1));
        Ok(())
    })?;
    // the replayed segments stay until a commit holds what they carry
    let wal = Wal::start(&options.wal_dir, last_seq + 1, &options.faults)?;
    let mut writer = Writer {
        index,
        wal,
        next_seq: last_seq + 1,
        uncommitted: replayed > 0,
        failure: None,
        index_broken: false,
        retry_at: Instant::now(),
        health: options.health.clone(),
        metrics: options.metrics.clone(),
        retention: options.retention.clone(),
        sweep_interval: options.sweep_interval,
        sweep_at: None,
        dedup,
    };
    if let Some(e) = add_error {
        writer.fail(Stage::IndexWrite, &e);
    } else if replayed > 0 {
        let _ = writer.commit();
        tracing::info!(
            replayed,
            last_seq,
            took_ms = started.elapsed().as_millis() as u64,
            "write-ahead log replayed"
        );
    } else if writer.persist_journal().is_ok() {
        // a clean start: nothing to keep from older segments, the journal has their chunks
        writer.rotate_wal();
    }
    if !writer.retention.keeps_everything() {
        // what expired while the server was down is gone before it reports ready
        writer.sweep();
    }
    writer
        .metrics
        .index_logs
        .set(gauge(writer.index.num_logs()));
    if writer.failure.is_none() {
        writer.health.send_replace(Health::Ready);
    }
    Ok(writer)
}

impl Writer {
    /// Tries to get back to a working log and index; on success batches are taken again.
    pub(super) fn try_recover(&mut self) {
        self.retry_at = Instant::now() + RETRY_INTERVAL;
        if let Err(e) = self.wal.repair() {
            self.fail(Stage::WalWrite, &e);
            return;
        }
        // a commit needs the journal: it must take appends again
        if self.persist_journal().is_err() {
            return;
        }
        if self.index_broken {
            if let Err(e) = self.readd_from_wal() {
                self.fail(Stage::Recovery, &e);
                return;
            }
            self.index_broken = false;
            let _ = self.commit();
            if self.index_broken {
                // the commit failed again, and said so
                return;
            }
        }
        tracing::info!("storage recovered; taking exports again");
        self.failure = None;
        self.metrics.storage_failing.set(0);
        self.metrics.storage_recoveries.inc();
        self.health.send_replace(Health::Ready);
    }

    /// Rolls the index back to what is on disk and adds again, from the write-ahead log, every
    /// log it does not hold; the next commit makes them durable in the index.
    fn readd_from_wal(&mut self) -> Result<(), RebuildError> {
        self.index.rollback()?;
        let committed = self.index.committed_seq();
        let mut readded = 0u64;
        let (index, retention) = (&mut self.index, &self.retention);
        self.wal
            .replay(|batch| {
                readded +=
                    add_missing(index, committed, &batch, retention).map_err(io::Error::other)?;
                Ok(())
            })
            .map_err(RebuildError::Wal)?;
        tracing::info!(
            readded,
            committed,
            "index rolled back; the logs it lacked are added again from the write-ahead log"
        );
        Ok(())
    }
}

/// Adds the logs of `batch` that the index does not hold (those after `committed`); how many.
fn add_missing(
    index: &mut LogWriter,
    committed: u64,
    batch: &WalBatch,
    retention: &Retention,
) -> Result<u64, StoreError> {
    let now = now_nanos();
    let mut added = 0;
    for (seq, log) in (batch.first_seq..).zip(&batch.logs) {
        // what expired meanwhile would only be deleted again by the next sweep
        if seq > committed && retention.keeps(&log.user_id, log.timestamp_nanos, now) {
            index.add(log, seq)?;
            added += 1;
        }
    }
    Ok(added)
}

/// Why the index could not be rebuilt from the write-ahead log.
#[derive(Debug, thiserror::Error)]
enum RebuildError {
    #[error(transparent)]
    Index(#[from] StoreError),
    #[error("cannot read the write-ahead log: {0}")]
    Wal(io::Error),
}
