//! The bounded queue in front of the index writer, and the thread that owns the writer and the
//! write-ahead log.
//!
//! Receivers submit batches without blocking: a full queue is overload, answered to the client so
//! it backs off. The writer thread takes every batch waiting (group commit), gives each log its
//! sequence number, appends them all to the write-ahead log with one fsync, adds them to the index,
//! and only then answers the batches. It commits the index at most every `commit_interval`, and
//! each commit empties the write-ahead log.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::wal::Wal;
use crate::mapping::ActivityLog;
use crate::metrics::Metrics;
use crate::store::{LogWriter, StoreError};

/// Most batches written with one fsync.
const MAX_GROUP: usize = 256;

/// Why a batch was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the ingest queue is full")]
    QueueFull,
    #[error("the writer is shut down")]
    Closed,
    #[error("the index failed: {0}")]
    Store(String),
    #[error("the write-ahead log failed: {0}")]
    Wal(String),
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Store(e.to_string())
    }
}

type Done = oneshot::Sender<Result<(), WriteError>>;

enum WriterMessage {
    Batch { logs: Vec<ActivityLog>, done: Done },
    Flush(Done),
    Close,
}

/// The sending side of the ingest queue; cheap to clone.
#[derive(Clone)]
pub struct IngestQueue {
    tx: SyncSender<WriterMessage>,
    metrics: Arc<Metrics>,
}

/// The writer thread; [`WriterThread::shutdown`] commits and stops it.
pub struct WriterThread {
    tx: SyncSender<WriterMessage>,
    handle: JoinHandle<()>,
}

/// What the writer thread needs besides the index writer.
pub struct WriterOptions {
    /// Folder of the write-ahead log.
    pub wal_dir: PathBuf,
    /// Longest time between accepting a log and committing it.
    pub commit_interval: Duration,
    /// Batches the queue holds.
    pub capacity: usize,
    /// Set to true once the write-ahead log is replayed and the writer takes batches.
    pub ready: watch::Sender<bool>,
    pub metrics: Arc<Metrics>,
}

/// Starts the writer thread: it first replays the write-ahead log, then takes batches.
pub fn spawn_writer(
    writer: LogWriter,
    options: WriterOptions,
) -> std::io::Result<(IngestQueue, WriterThread)> {
    let (tx, rx) = mpsc::sync_channel(options.capacity);
    let metrics = options.metrics.clone();
    let handle = std::thread::Builder::new()
        .name("index-writer".to_owned())
        .spawn(
            move || match recover(writer, &options.wal_dir, options.metrics) {
                Ok(state) => {
                    options.ready.send_replace(true);
                    state.run(rx, options.commit_interval);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot recover the write-ahead log; not ingesting")
                }
            },
        )?;
    let queue = IngestQueue {
        tx: tx.clone(),
        metrics,
    };
    Ok((queue, WriterThread { tx, handle }))
}

impl IngestQueue {
    /// Queues a batch and waits until it is durable and in the index.
    pub async fn write(&self, logs: Vec<ActivityLog>) -> Result<(), WriteError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .try_send(WriterMessage::Batch { logs, done })
            .map_err(|e| match e {
                TrySendError::Full(_) => WriteError::QueueFull,
                TrySendError::Disconnected(_) => WriteError::Closed,
            })?;
        self.metrics.queue_depth.inc();
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Commits everything written so far and makes it visible; waits for a place in the queue.
    pub async fn flush(&self) -> Result<(), WriteError> {
        let (done, answer) = oneshot::channel();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || tx.send(WriterMessage::Flush(done)))
            .await
            .map_err(|_| WriteError::Closed)?
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
    next_seq: u64,
    metrics: Arc<Metrics>,
}

/// Adds to the index what the write-ahead log holds beyond the last commit, commits it, and
/// opens the log for writing.
fn recover(
    mut index: LogWriter,
    wal_dir: &std::path::Path,
    metrics: Arc<Metrics>,
) -> Result<Writer, WriteError> {
    let committed = index.committed_seq();
    let mut last_seq = committed;
    let mut replayed = 0u64;
    let started = Instant::now();
    Wal::recover(wal_dir, |batch| {
        for (seq, log) in (batch.first_seq..).zip(&batch.logs) {
            // what an earlier commit holds is not added twice
            if seq > committed {
                index.add(log, seq).map_err(std::io::Error::other)?;
                replayed += 1;
            }
            last_seq = last_seq.max(seq);
        }
        Ok(())
    })
    .map_err(|e| WriteError::Wal(e.to_string()))?;
    if replayed > 0 {
        index.commit(last_seq)?;
        tracing::info!(
            replayed,
            last_seq,
            took_ms = started.elapsed().as_millis() as u64,
            "write-ahead log replayed"
        );
    }
    let wal = Wal::start(wal_dir, last_seq + 1).map_err(|e| WriteError::Wal(e.to_string()))?;
    metrics.index_logs.set(gauge(index.num_logs()));
    Ok(Writer {
        index,
        wal,
        next_seq: last_seq + 1,
        metrics,
    })
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<WriterMessage>, commit_interval: Duration) {
        // When the oldest uncommitted log must be committed by.
        let mut deadline: Option<Instant> = None;
        // A message taken while gathering a group, handled next.
        let mut held: Option<WriterMessage> = None;
        loop {
            let message = match (held.take(), deadline) {
                (Some(message), _) => Ok(message),
                (None, None) => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                (None, Some(at)) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match message {
                Ok(WriterMessage::Batch { logs, done }) => {
                    let mut group = vec![(logs, done)];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(WriterMessage::Batch { logs, done }) => group.push((logs, done)),
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if self.write_group(group) {
                        deadline.get_or_insert_with(|| Instant::now() + commit_interval);
                    }
                }
                Ok(WriterMessage::Flush(done)) => {
                    let _ = done.send(self.commit());
                    deadline = None;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.commit() {
                        tracing::error!(error = %e, "commit failed");
                    }
                    deadline = None;
                }
                Ok(WriterMessage::Close) | Err(RecvTimeoutError::Disconnected) => {
                    if let Err(e) = self.commit() {
                        tracing::error!(error = %e, "final commit failed");
                    }
                    return;
                }
            }
        }
    }

    /// Logs, fsyncs and indexes a group of batches, then answers each; true if any log was added.
    fn write_group(&mut self, group: Vec<(Vec<ActivityLog>, Done)>) -> bool {
        self.metrics.queue_depth.dec_by(group.len() as i64);
        let first_seq = self.next_seq;
        let mut seq = first_seq;
        for (logs, _) in &group {
            self.wal.push(seq, logs);
            seq += logs.len() as u64;
        }
        let result = self
            .wal
            .sync()
            .map_err(|e| WriteError::Wal(e.to_string()))
            .and_then(|()| {
                let logs = group.iter().flat_map(|(logs, _)| logs);
                for (seq, log) in (first_seq..).zip(logs) {
                    self.index.add(log, seq)?;
                }
                Ok(())
            });
        self.metrics.wal_bytes.set(gauge(self.wal.bytes()));
        let added = result.is_ok() && seq > first_seq;
        if result.is_ok() {
            self.next_seq = seq;
        } else if let Err(e) = &result {
            tracing::error!(error = %e, "writing logs failed");
        }
        for (_, done) in group {
            let _ = done.send(result.clone());
        }
        added
    }

    /// Commits the index up to the last sequence number given out, then empties the log.
    fn commit(&mut self) -> Result<(), WriteError> {
        let started = Instant::now();
        let last_seq = self.next_seq - 1;
        let wal_bytes = self.wal.bytes();
        self.index.commit(last_seq)?;
        if let Err(e) = self.wal.rotate(self.next_seq) {
            // the log only grows; replay stays correct, as it skips what the commit holds
            tracing::error!(error = %e, "cannot truncate the write-ahead log");
        }
        self.metrics.commits.inc();
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.wal_bytes.set(gauge(self.wal.bytes()));
        self.metrics.index_logs.set(gauge(self.index.num_logs()));
        tracing::debug!(
            last_seq,
            wal_bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "committed"
        );
        Ok(())
    }
}

/// A count as a gauge value.
fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::example_log as log;
    use crate::store;

    #[test]
    fn replay_skips_what_the_index_already_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut index) = store::open(&dir.path().join("index"), 16 << 20).unwrap();
        let wal_dir = dir.path().join("wal");
        let mut wal = Wal::start(&wal_dir, 1).unwrap();
        wal.push(1, &[log("a"), log("b")]);
        wal.push(3, &[log("c")]);
        wal.sync().unwrap();
        // a crash after the index committed seq 1 and 2, before the log was emptied
        index.add(&log("a"), 1).unwrap();
        index.add(&log("b"), 2).unwrap();
        index.commit(2).unwrap();
        drop(wal);

        let metrics = Arc::new(Metrics::new());
        let writer = recover(index, &wal_dir, metrics.clone()).unwrap();
        assert_eq!(writer.next_seq, 4);
        assert_eq!(writer.index.committed_seq(), 3);
        assert_eq!(store.num_logs(), 3);
        assert_eq!(writer.wal.bytes(), 0);
        assert_eq!(metrics.index_logs.get(), 3);
    }
}
