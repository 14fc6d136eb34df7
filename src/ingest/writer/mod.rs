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
//!
//! - this file: the queue, the thread, and its loop;
//! - [`commit`]: writing a group of batches, committing, erasing, expiring;
//! - [`recovery`]: replaying the write-ahead log on start and rebuilding after a fault;
//! - [`faults`]: where storage failed, and what a failure does to the writer.

mod commit;
mod faults;
mod recovery;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::budget::Reservation;
use super::chunk::EncodedLog;
use super::dedup::Dedup;
use super::now_nanos;
use super::wal::Wal;
use crate::faults::Faults;
use crate::lifecycle::Retention;
use crate::metrics::Metrics;
use crate::store::{LogQuery, LogWriter};
use recovery::recover;

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
mod tests;
