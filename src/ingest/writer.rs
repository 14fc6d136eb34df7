//! The thread that owns the index writer and the write-ahead log, and the queue in front of it.
//!
//! The writer takes every batch waiting (group commit), gives each log its sequence number,
//! appends them all to the write-ahead log with one fsync, adds them to the index, and only then
//! answers the batches. It commits the index at most every `commit_interval`, and each commit
//! empties the write-ahead log.
//!
//! Storage faults: a batch whose append or fsync fails is cut off the log again and refused; an
//! index that fails (a segment write, a commit, `meta.json`) is rolled back and rebuilt from the
//! write-ahead log, which keeps every acknowledged log until a commit holds it. While storage
//! fails every batch is refused (retryable) and [`Health::Failing`] says why; every
//! [`RETRY_INTERVAL`] the writer tries to recover, and takes batches again once it has.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::budget::Reservation;
use super::chunk::{EncodedLog, LogKey};
use super::dedup::Dedup;
use super::now_nanos;
use super::wal::{Wal, WalBatch};
use crate::faults::Faults;
use crate::lifecycle::Retention;
use crate::metrics::{Metrics, StorageLabels};
use crate::store::{LogQuery, LogWriter, StoreError};

/// Most batches written with one fsync.
const MAX_GROUP: usize = 256;

/// How often a writer whose storage fails tries to recover.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Why a batch was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the writer is shut down")]
    Closed,
    /// Storage fails; the batch is not stored and may be sent again.
    #[error("storage is failing: {0}")]
    Storage(String),
}

/// What the writer can do, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Replaying the write-ahead log.
    Starting,
    /// Taking batches.
    Ready,
    /// Storage fails: batches are refused until it recovers.
    Failing(String),
    /// Shut down, or stopped for good.
    Stopped,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Starting => f.write_str("starting: replaying the write-ahead log"),
            Health::Ready => f.write_str("ready"),
            Health::Failing(reason) => write!(
                f,
                "storage failing: {reason}; exports are refused until it recovers"
            ),
            Health::Stopped => f.write_str("stopped"),
        }
    }
}

type Done = oneshot::Sender<Result<(), WriteError>>;

/// A batch of logs and the memory it holds.
struct Batch {
    logs: Vec<EncodedLog>,
    /// Released when the writer is done with the logs.
    _reservation: Reservation,
    done: Done,
}

enum WriterMessage {
    Batch(Batch),
    Flush(Done),
    /// Erase what a query selects; answers how many logs were erased.
    Erase(LogQuery, oneshot::Sender<Result<u64, WriteError>>),
    Close,
}

/// The sending side of the ingest queue; cheap to clone. What waits in it is bounded by the
/// memory budget its batches reserved, not by a count.
#[derive(Clone)]
pub struct IngestQueue {
    tx: Sender<WriterMessage>,
    metrics: Arc<Metrics>,
}

/// The writer thread; [`WriterThread::shutdown`] commits and stops it.
pub struct WriterThread {
    tx: Sender<WriterMessage>,
    handle: JoinHandle<()>,
}

/// What the writer thread needs besides the index writer.
pub struct WriterOptions {
    /// Folder of the write-ahead log.
    pub wal_dir: PathBuf,
    /// Longest time between accepting a log and committing it.
    pub commit_interval: Duration,
    /// What the writer can do, published for `/readyz` and the receivers.
    pub health: watch::Sender<Health>,
    pub metrics: Arc<Metrics>,
    /// Failures to inject into the write-ahead log (tests).
    pub faults: Faults,
    /// How long logs are kept.
    pub retention: Retention,
    /// How often expired logs are deleted.
    pub sweep_interval: Duration,
    /// How long a retried log is recognized and not stored again; zero for never.
    pub dedup_window: Duration,
    /// Most bytes the dedup window holds: past it, the oldest of it is forgotten early.
    pub dedup_max_bytes: usize,
}

/// Starts the writer thread: it first replays the write-ahead log, then takes batches. `died`
/// receives why the writer stopped for good, if it ever does without being shut down.
pub fn spawn_writer(
    writer: LogWriter,
    options: WriterOptions,
    died: oneshot::Sender<String>,
) -> io::Result<(IngestQueue, WriterThread)> {
    let (tx, rx) = mpsc::channel();
    let metrics = options.metrics.clone();
    let handle = std::thread::Builder::new()
        .name("index-writer".to_owned())
        .spawn(move || {
            let mut death = DeathNotice::new(died, options.health.clone());
            match recover(writer, &options) {
                Ok(state) => {
                    state.run(rx, options.commit_interval);
                    death.disarm();
                }
                Err(e) => death.set_reason(format!("cannot replay the write-ahead log: {e}")),
            }
        })?;
    let queue = IngestQueue {
        tx: tx.clone(),
        metrics,
    };
    Ok((queue, WriterThread { tx, handle }))
}

/// Tells the server why the writer thread ended, unless it ended because it was shut down; a
/// panic unwinding the thread counts too.
struct DeathNotice {
    died: Option<oneshot::Sender<String>>,
    health: watch::Sender<Health>,
    reason: String,
}

impl DeathNotice {
    fn new(died: oneshot::Sender<String>, health: watch::Sender<Health>) -> Self {
        Self {
            died: Some(died),
            health,
            reason: "the index writer thread panicked".to_owned(),
        }
    }

    fn set_reason(&mut self, reason: String) {
        self.reason = reason;
    }

    fn disarm(&mut self) {
        self.died = None;
    }
}

impl Drop for DeathNotice {
    fn drop(&mut self) {
        self.health.send_replace(Health::Stopped);
        if let Some(died) = self.died.take() {
            let _ = died.send(std::mem::take(&mut self.reason));
        }
    }
}

impl IngestQueue {
    /// Queues a batch and waits until it is durable and in the index. `reservation` covers the
    /// memory the logs hold until the writer is done with them.
    pub async fn write(
        &self,
        logs: Vec<EncodedLog>,
        reservation: Reservation,
    ) -> Result<(), WriteError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(WriterMessage::Batch(Batch {
                logs,
                _reservation: reservation,
                done,
            }))
            .map_err(|_| WriteError::Closed)?;
        self.metrics.queue_depth.inc();
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Erases the logs `query` selects (its filters and time window) and answers how many there
    /// were, once the erasure is committed: from then on no restart or replay brings them back.
    pub async fn erase(&self, query: LogQuery) -> Result<u64, WriteError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(WriterMessage::Erase(query, done))
            .map_err(|_| WriteError::Closed)?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Commits everything written so far and makes it visible.
    pub async fn flush(&self) -> Result<(), WriteError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(WriterMessage::Flush(done))
            .map_err(|_| WriteError::Closed)?;
        answer.await.map_err(|_| WriteError::Closed)?
    }
}

impl WriterThread {
    /// Commits what was written and stops the thread; later writes fail with `Closed`.
    pub fn shutdown(self) {
        // A send fails only when the thread has already stopped.
        let _ = self.tx.send(WriterMessage::Close);
        if self.handle.join().is_err() {
            tracing::error!("index writer thread panicked");
        }
    }
}

/// Where storage failed, for the log, `/metrics` and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
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

/// The writer thread's state.
struct Writer {
    index: LogWriter,
    wal: Wal,
    /// The next sequence number to hand out; one given to a refused batch is never reused.
    next_seq: u64,
    /// Whether logs were added since the last commit.
    uncommitted: bool,
    /// Why the writer refuses batches, while storage fails.
    failure: Option<String>,
    /// Whether the index writer failed: it must be rolled back and rebuilt from the log.
    index_broken: bool,
    /// When to try to recover next, while failing.
    retry_at: Instant,
    health: watch::Sender<Health>,
    metrics: Arc<Metrics>,
    retention: Retention,
    sweep_interval: Duration,
    /// When expired logs are next deleted; `None` when nothing ever expires.
    sweep_at: Option<Instant>,
    /// The chunks stored within the dedup window; `None` when retries are not recognized.
    dedup: Option<Dedup>,
}

/// Adds to the index what the write-ahead log holds beyond the last commit, and opens the log
/// for writing. Only an unreadable log is an error; a failing index makes a failing writer.
fn recover(mut index: LogWriter, options: &WriterOptions) -> Result<Writer, io::Error> {
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
    fn run(mut self, rx: mpsc::Receiver<WriterMessage>, commit_interval: Duration) {
        // When the oldest uncommitted log must be committed by.
        let mut deadline: Option<Instant> = None;
        // A message taken while gathering a group, handled next.
        let mut held: Option<WriterMessage> = None;
        loop {
            // what is due runs first: a queue that never empties must not put it off
            let now = Instant::now();
            if self.failure.is_some() && now >= self.retry_at {
                self.try_recover();
            }
            if deadline.is_some_and(|at| now >= at) {
                let _ = self.commit();
                deadline = None;
            }
            if self.sweep_at.is_some_and(|at| now >= at) {
                self.sweep();
                deadline = deadline.filter(|_| self.uncommitted);
            }
            let retry_at = self.failure.as_ref().map(|_| self.retry_at);
            let wake = [deadline, retry_at, self.sweep_at]
                .into_iter()
                .flatten()
                .min();
            let message = match (held.take(), wake) {
                (Some(message), _) => Ok(message),
                (None, None) => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                (None, Some(at)) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match message {
                Ok(WriterMessage::Batch(batch)) => {
                    let mut group = vec![batch];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(WriterMessage::Batch(batch)) => group.push(batch),
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_group(group);
                    if self.uncommitted {
                        deadline.get_or_insert_with(|| Instant::now() + commit_interval);
                    }
                }
                Ok(WriterMessage::Erase(query, done)) => {
                    let _ = done.send(self.erase(&query));
                    deadline = deadline.filter(|_| self.uncommitted);
                }
                Ok(WriterMessage::Flush(done)) => {
                    if self.failure.is_some() {
                        self.try_recover();
                    }
                    let _ = done.send(self.commit());
                    deadline = None;
                }
                // done at the top of the loop
                Err(RecvTimeoutError::Timeout) => {}
                Ok(WriterMessage::Close) | Err(RecvTimeoutError::Disconnected) => {
                    if self.failure.is_some() {
                        self.try_recover();
                    }
                    if let Err(e) = self.commit() {
                        tracing::error!(
                            error = %e,
                            "final commit failed; the write-ahead log keeps every acknowledged log for the next start"
                        );
                    }
                    return;
                }
            }
        }
    }

    /// Logs, fsyncs and indexes a group of batches, then answers each.
    fn write_group(&mut self, mut group: Vec<Batch>) {
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
    fn commit(&mut self) -> Result<(), WriteError> {
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

    fn erase(&mut self, query: &LogQuery) -> Result<u64, WriteError> {
        let erased = self.delete(|index| index.delete(query))?;
        if erased > 0 {
            self.metrics.records_erased.inc_by(erased);
            // erased logs leave the disk now, not when merges get to them
            self.index.purge_deleted();
        }
        Ok(erased)
    }

    /// Deletes the logs past their retention; storage that fails skips a sweep.
    fn sweep(&mut self) {
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
    fn persist_journal(&mut self) -> Result<(), WriteError> {
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
    fn rotate_wal(&mut self) {
        if let Err(e) = self.wal.rotate(self.next_seq) {
            self.count_failure(Stage::WalRotate);
            tracing::warn!(error = %e, "cannot start a fresh write-ahead log segment; the current one keeps growing");
        }
        self.metrics.wal_bytes.set(gauge(self.wal.bytes()));
    }

    /// Records a storage failure: batches are refused from now on until recovery. Returns the
    /// reason given to clients and `/readyz`.
    fn fail(&mut self, stage: Stage, error: &dyn fmt::Display) -> String {
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

    fn count_failure(&self, stage: Stage) {
        self.metrics
            .storage_failures
            .get_or_create(&StorageLabels {
                stage: stage.label(),
            })
            .inc();
    }

    /// Tries to get back to a working log and index; on success batches are taken again.
    fn try_recover(&mut self) {
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

fn answer(group: Vec<Batch>, result: &Result<(), WriteError>) {
    for batch in group {
        let _ = batch.done.send(result.clone());
    }
}

/// Now, in whole seconds since the epoch.
fn now_secs() -> u64 {
    now_nanos() / 1_000_000_000
}

/// A count as a gauge value.
fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{Fault, WritePoint};
    use crate::ingest::MemoryBudget;
    use crate::mapping::example_log as log;
    use crate::store::{self, LogQuery, Store, StoreOptions};

    /// A writer on a fresh folder with faults on command, and the store to read it back.
    struct Harness {
        _dir: tempfile::TempDir,
        writer: Writer,
        store: Store,
        health: watch::Receiver<Health>,
        faults: Faults,
        metrics: Arc<Metrics>,
    }

    fn harness() -> Harness {
        open_harness(tempfile::tempdir().unwrap(), Faults::injector())
    }

    /// A writer on `dir` as a start finds it.
    fn open_harness(dir: tempfile::TempDir, faults: Faults) -> Harness {
        let options = StoreOptions {
            faults: faults.clone(),
            ..StoreOptions::new(16 << 20)
        };
        let (store, index) = store::open(&dir.path().join("index"), &options).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (health, health_rx) = watch::channel(Health::Starting);
        let options = WriterOptions {
            wal_dir: dir.path().join("wal"),
            commit_interval: Duration::from_secs(1),
            health,
            metrics: metrics.clone(),
            faults: faults.clone(),
            retention: Retention::default(),
            sweep_interval: Duration::from_secs(30),
            dedup_window: Duration::from_secs(600),
            dedup_max_bytes: 64 << 20,
        };
        let writer = recover(index, &options).unwrap();
        Harness {
            _dir: dir,
            writer,
            store,
            health: health_rx,
            faults,
            metrics,
        }
    }

    impl Harness {
        /// The writer and the store started again on the same folder, as after `kill -9`.
        fn restart(self) -> Harness {
            let Harness {
                _dir,
                writer,
                store,
                faults,
                ..
            } = self;
            drop((writer, store));
            open_harness(_dir, faults)
        }

        /// Writes one batch of `messages` and returns its answer.
        fn write(&mut self, messages: &[&str]) -> Result<(), WriteError> {
            let (done, mut answer) = oneshot::channel();
            let batch = Batch {
                logs: messages.iter().map(|m| EncodedLog::new(log(m))).collect(),
                _reservation: MemoryBudget::new(1 << 20).reservation(),
                done,
            };
            self.writer.metrics.queue_depth.inc();
            self.writer.write_group(vec![batch]);
            answer.try_recv().expect("answered")
        }

        /// The messages of every stored log with their sequence numbers, oldest first.
        fn stored(&self) -> Vec<(u64, String)> {
            let query = LogQuery {
                user_id: "u".into(),
                limit: 100,
                ..Default::default()
            };
            let mut stored: Vec<(u64, String)> = self
                .store
                .search(&query)
                .unwrap()
                .logs
                .into_iter()
                .map(|(key, json)| {
                    let log: serde_json::Value = serde_json::from_slice(&json).unwrap();
                    (key.seq, log["message"].as_str().unwrap().to_owned())
                })
                .collect();
            stored.reverse();
            stored
        }

        fn failing(&self) -> bool {
            matches!(*self.health.borrow(), Health::Failing(_))
        }
    }

    fn failures(metrics: &Metrics, stage: &'static str) -> u64 {
        metrics
            .storage_failures
            .get_or_create(&StorageLabels { stage })
            .get()
    }

    #[test]
    fn replay_skips_what_the_index_already_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut index) =
            store::open(&dir.path().join("index"), &StoreOptions::new(16 << 20)).unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::start(&wal_dir, 1, &Faults::none()).unwrap();
        let encoded = |m| EncodedLog::new(log(m));
        wal.push(1, &[encoded("a"), encoded("b")]);
        wal.push(3, &[encoded("c")]);
        wal.sync().unwrap();
        // a crash after the index committed seq 1 and 2, before the log was emptied
        index.add(&log("a"), 1).unwrap();
        index.add(&log("b"), 2).unwrap();
        index.commit(2).unwrap();
        drop(wal);

        let metrics = Arc::new(Metrics::new());
        let (health, health_rx) = watch::channel(Health::Starting);
        let options = WriterOptions {
            wal_dir,
            commit_interval: Duration::from_secs(1),
            health,
            metrics: metrics.clone(),
            faults: Faults::none(),
            retention: Retention::default(),
            sweep_interval: Duration::from_secs(30),
            dedup_window: Duration::from_secs(600),
            dedup_max_bytes: 64 << 20,
        };
        let writer = recover(index, &options).unwrap();
        assert_eq!(writer.next_seq, 4);
        assert_eq!(writer.index.committed_seq(), 3);
        assert_eq!(store.num_logs(), 3);
        assert_eq!(writer.wal.bytes(), 0);
        assert_eq!(metrics.index_logs.get(), 3);
        assert_eq!(*health_rx.borrow(), Health::Ready);
    }

    #[test]
    fn a_refused_batch_is_not_stored_and_its_numbers_are_never_reused() {
        let mut h = harness();
        h.write(&["a"]).unwrap();
        h.faults.fail_times(WritePoint::WalSync, Fault::Io, 1);
        let refused = h.write(&["refused", "refused too"]).unwrap_err();
        assert_eq!(
            refused,
            WriteError::Storage(
                "writing the write-ahead log: Input/output error (os error 5)".into()
            )
        );
        assert!(h.failing());
        // refused while failing, before the retry is due
        assert!(h.write(&["too early"]).is_err());
        h.writer.try_recover();
        assert_eq!(*h.health.borrow(), Health::Ready);
        h.write(&["b"]).unwrap();
        h.writer.commit().unwrap();
        // seq 2 and 3 went to the refused batch, 4 to the one refused while failing
        assert_eq!(h.stored(), vec![(1, "a".into()), (5, "b".into())]);
        assert_eq!(failures(&h.metrics, "wal_write"), 1);
        assert_eq!(h.metrics.storage_recoveries.get(), 1);
        assert_eq!(h.metrics.storage_failing.get(), 0);
        // the log holds nothing of what was refused
        let mut replayed = Vec::new();
        h.writer
            .wal
            .replay(|batch| {
                replayed.push(batch.first_seq);
                Ok(())
            })
            .unwrap();
        assert!(replayed.is_empty(), "{replayed:?}");
    }

    #[test]
    fn logs_sent_again_are_acknowledged_and_stored_once_even_after_a_refusal() {
        let mut h = harness();
        h.write(&["a", "b", "c"]).unwrap();
        h.write(&["a", "b", "c"]).unwrap();
        // a retry of a refused batch is no duplicate: nothing of it was stored
        h.faults.fail_times(WritePoint::WalSync, Fault::Io, 1);
        assert!(h.write(&["d", "e"]).is_err());
        h.writer.try_recover();
        h.write(&["b", "c", "d", "e"]).unwrap();
        h.writer.commit().unwrap();
        let messages: Vec<String> = h.stored().into_iter().map(|(_, m)| m).collect();
        assert_eq!(messages, ["a", "b", "c", "d", "e"]);
        assert_eq!(h.metrics.records_duplicate.get(), 5);
    }

    #[test]
    fn a_batch_refused_while_the_log_cannot_be_cut_back_is_stored_when_sent_again() {
        let mut h = harness();
        h.write(&["a"]).unwrap();
        // the fsync fails, and so does the cut: the refused frame stays in the log's file
        h.faults.fail_times(WritePoint::WalSync, Fault::Io, 2);
        assert!(h.write(&["refused"]).is_err());
        assert!(h.writer.wal.is_poisoned());
        let mut h = h.restart();
        // the replay skips the refused frame for the index and for the dedup window alike
        assert_eq!(h.stored(), vec![(1, "a".into())]);
        h.write(&["refused"]).unwrap();
        h.writer.commit().unwrap();
        assert_eq!(h.stored(), vec![(1, "a".into()), (3, "refused".into())]);
        assert_eq!(h.metrics.records_duplicate.get(), 0);
    }

    #[test]
    fn logs_stored_before_a_restart_are_duplicates_after_it() {
        let mut h = harness();
        h.write(&["a", "b"]).unwrap();
        h.writer.commit().unwrap();
        h.write(&["c"]).unwrap();
        // "c" is in the write-ahead log only; "a" and "b" in the journal only
        let mut h = h.restart();
        h.write(&["a", "b", "c", "d"]).unwrap();
        h.writer.commit().unwrap();
        let messages: Vec<String> = h.stored().into_iter().map(|(_, m)| m).collect();
        assert_eq!(messages, ["a", "b", "c", "d"]);
        assert_eq!(h.metrics.records_duplicate.get(), 3);
    }

    #[test]
    fn a_failed_commit_is_rolled_back_and_rebuilt_from_the_log_exactly_once() {
        let mut h = harness();
        h.write(&["a"]).unwrap();
        h.writer.commit().unwrap();
        h.write(&["b", "c"]).unwrap();
        // the commit cannot write its segment files: b and c are acknowledged, not yet indexed
        h.faults.fail(WritePoint::IndexWrite, Fault::NoSpace);
        let failed = h.writer.commit().unwrap_err();
        assert!(
            matches!(&failed, WriteError::Storage(reason) if reason.contains("No space left on device")),
            "{failed:?}"
        );
        assert!(h.failing());
        assert!(h.write(&["refused"]).is_err());
        // still failing: recovery cannot commit either
        h.writer.try_recover();
        assert!(h.failing());
        assert_eq!(h.stored(), vec![(1, "a".into())]);

        h.faults.clear(WritePoint::IndexWrite);
        h.writer.try_recover();
        assert_eq!(*h.health.borrow(), Health::Ready);
        assert_eq!(
            h.stored(),
            vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]
        );
        h.write(&["d"]).unwrap();
        h.writer.commit().unwrap();
        assert_eq!(h.stored().len(), 4);
        assert_eq!(h.stored()[3], (5, "d".into()));
        assert!(failures(&h.metrics, "index_commit") >= 1);
        assert_eq!(h.writer.wal.bytes(), 0);
    }

    #[test]
    fn a_failed_meta_json_is_rolled_back_and_rebuilt_exactly_once() {
        let mut h = harness();
        h.write(&["a", "b"]).unwrap();
        h.faults.fail_times(WritePoint::IndexMeta, Fault::Io, 1);
        assert!(h.writer.commit().is_err());
        assert!(h.failing());
        h.writer.try_recover();
        assert_eq!(*h.health.borrow(), Health::Ready);
        assert_eq!(h.stored(), vec![(1, "a".into()), (2, "b".into())]);
        assert_eq!(h.store.num_logs(), 2);
    }

    #[test]
    fn a_failed_rotation_keeps_the_log_and_replay_skips_what_is_committed() {
        let mut h = harness();
        h.faults.fail(WritePoint::WalRotate, Fault::NoSpace);
        h.write(&["a"]).unwrap();
        h.writer.commit().unwrap();
        h.write(&["b"]).unwrap();
        h.writer.commit().unwrap();
        assert!(h.writer.wal.bytes() > 0);
        assert_eq!(failures(&h.metrics, "wal_rotate"), 2);
        assert_eq!(*h.health.borrow(), Health::Ready);
        h.faults.clear(WritePoint::WalRotate);
        h.write(&["c"]).unwrap();
        h.writer.commit().unwrap();
        assert_eq!(h.writer.wal.bytes(), 0);
        assert_eq!(
            h.stored(),
            vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]
        );
    }

    #[test]
    fn a_writer_thread_that_dies_says_why() {
        let (died, mut reason) = oneshot::channel();
        let (health, health_rx) = watch::channel(Health::Ready);
        let thread = std::thread::spawn(move || {
            let _notice = DeathNotice::new(died, health);
            panic!("a bug");
        });
        assert!(thread.join().is_err());
        assert_eq!(
            reason.try_recv().unwrap(),
            "the index writer thread panicked"
        );
        assert_eq!(*health_rx.borrow(), Health::Stopped);

        let (died, mut reason) = oneshot::channel();
        let (health, _) = watch::channel(Health::Ready);
        DeathNotice::new(died, health).disarm();
        assert!(reason.try_recv().is_err());
    }
}
