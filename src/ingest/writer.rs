//! The bounded queue in front of the index writer, and the thread that owns the writer.
//!
//! Receivers submit batches without blocking: a full queue is overload, answered to the client so
//! it backs off. The writer thread gives each log its sequence number, adds it to the index,
//! answers the batch, and commits at most every `commit_interval`.

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::mapping::ActivityLog;
use crate::store::{LogWriter, StoreError};

/// Why a batch was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the ingest queue is full")]
    QueueFull,
    #[error("the writer is shut down")]
    Closed,
    #[error("the index failed: {0}")]
    Store(String),
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
}

/// The writer thread; [`WriterThread::shutdown`] commits and stops it.
pub struct WriterThread {
    tx: SyncSender<WriterMessage>,
    handle: JoinHandle<()>,
}

/// Starts the writer thread with a queue of `capacity` batches.
pub fn spawn_writer(
    writer: LogWriter,
    commit_interval: Duration,
    capacity: usize,
) -> std::io::Result<(IngestQueue, WriterThread)> {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let handle = std::thread::Builder::new()
        .name("index-writer".to_owned())
        .spawn(move || run(writer, rx, commit_interval))?;
    Ok((IngestQueue { tx: tx.clone() }, WriterThread { tx, handle }))
}

impl IngestQueue {
    /// Queues a batch and waits until the writer has taken it in.
    pub async fn write(&self, logs: Vec<ActivityLog>) -> Result<(), WriteError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .try_send(WriterMessage::Batch { logs, done })
            .map_err(|e| match e {
                TrySendError::Full(_) => WriteError::QueueFull,
                TrySendError::Disconnected(_) => WriteError::Closed,
            })?;
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

fn run(mut writer: LogWriter, rx: mpsc::Receiver<WriterMessage>, commit_interval: Duration) {
    let mut next_seq = writer.committed_seq() + 1;
    // When the oldest uncommitted log must be committed by.
    let mut deadline: Option<Instant> = None;
    let commit = |writer: &mut LogWriter, next_seq: u64| -> Result<(), WriteError> {
        let started = Instant::now();
        writer.commit(next_seq - 1)?;
        tracing::debug!(
            last_seq = next_seq - 1,
            took_ms = started.elapsed().as_millis() as u64,
            "committed"
        );
        Ok(())
    };
    loop {
        let message = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match message {
            Ok(WriterMessage::Batch { logs, done }) => {
                let result = logs.iter().try_for_each(|log| {
                    writer.add(log, next_seq)?;
                    next_seq += 1;
                    Ok::<_, WriteError>(())
                });
                if !logs.is_empty() {
                    deadline.get_or_insert_with(|| Instant::now() + commit_interval);
                }
                if let Err(e) = &result {
                    tracing::error!(error = %e, "adding logs to the index failed");
                }
                let _ = done.send(result);
            }
            Ok(WriterMessage::Flush(done)) => {
                let result = commit(&mut writer, next_seq);
                deadline = None;
                let _ = done.send(result);
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = commit(&mut writer, next_seq) {
                    tracing::error!(error = %e, "commit failed");
                }
                deadline = None;
            }
            Ok(WriterMessage::Close) | Err(RecvTimeoutError::Disconnected) => {
                if let Err(e) = commit(&mut writer, next_seq) {
                    tracing::error!(error = %e, "final commit failed");
                }
                return;
            }
        }
    }
}
