//! A replica's consumer: the thread that feeds one replica's index from its shard's stream,
//! from the message after its last commit on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::{RETRY_INTERVAL, ReplicaState};
use crate::cluster::erasure::{ERASURE_HEADER, Erasure, Erasures};
use crate::cluster::lag::ReplicaLag;
use crate::cluster::shard::{log_seq, resume_from};
use crate::cluster::stream::Chunk;
use crate::ingest::now_nanos;
use crate::lifecycle::Retention;
use crate::store::{self, LogWriter};

/// The thread that feeds one replica's index from its shard's stream.
pub(super) struct Consumer {
    pub(super) handle: Handle,
    pub(super) jetstream: jetstream::Context,
    pub(super) stream: String,
    pub(super) shard: u32,
    pub(super) writer: LogWriter,
    pub(super) commit_interval: Duration,
    pub(super) state: watch::Sender<ReplicaState>,
    /// Messages of the stream this replica lacks (`logbridge_cluster_replica_missing_messages`).
    pub(super) missing: Gauge,
    /// The erasures applied, and how far the stream was consumed.
    pub(super) erasures: Arc<Erasures>,
    /// Logs erased (`logbridge_records_erased_total`).
    pub(super) erased: Counter,
    /// How far behind the stream the replica's reads are: reported to gateways and in metrics.
    pub(super) lag: ReplicaLag,
    pub(super) stop: CancellationToken,
    pub(super) retention: Retention,
    pub(super) sweep_interval: Duration,
    /// When expired logs are next deleted.
    pub(super) sweep_at: Instant,
}

/// Why a pass over the stream ended.
enum Pass {
    Stopped,
    /// Start over from the last commit after a pause.
    Retry,
    /// The stream no longer holds messages this replica never indexed: it consumes no more.
    Gap,
}

impl Consumer {
    pub(super) fn run(mut self) {
        loop {
            match self.pass() {
                Pass::Retry => {}
                Pass::Stopped => break,
                Pass::Gap => {
                    // the replica stays as it is, unread, until it is replaced or closed
                    self.handle.block_on(self.stop.cancelled());
                    break;
                }
            }
            let stop = self.stop.clone();
            let stopped = self.handle.block_on(async {
                tokio::select! {
                    () = stop.cancelled() => true,
                    () = tokio::time::sleep(RETRY_INTERVAL) => false,
                }
            });
            if stopped {
                break;
            }
        }
        // what was added and not committed is consumed again by the next start
        if let Err(e) = self.writer.rollback() {
            tracing::warn!(shard = self.shard, error = %e, "cannot roll back on close");
        }
    }

    /// Consumes from the message after the last commit until stopped or until something fails.
    fn pass(&mut self) -> Pass {
        let shard = self.shard;
        let start = resume_from(self.writer.committed_seq());
        let (jetstream, name, stop) = (
            self.jetstream.clone(),
            self.stream.clone(),
            self.stop.clone(),
        );
        let setup = self.handle.block_on(async move {
            let setup = async {
                let mut stream = jetstream.get_stream(&name).await?;
                let state = &stream.info().await?.state;
                let (first, end) = (state.first_sequence, state.last_sequence);
                let consumer = stream
                    .create_consumer(pull::OrderedConfig {
                        deliver_policy: DeliverPolicy::ByStartSequence {
                            start_sequence: start,
                        },
                        ..Default::default()
                    })
                    .await?;
                let messages = consumer.messages().await?;
                anyhow::Ok((first, end, messages))
            };
            tokio::select! {
                () = stop.cancelled() => None,
                setup = setup => Some(setup),
            }
        });
        let (first, end, mut messages) = match setup {
            None => return Pass::Stopped,
            Some(Ok(setup)) => setup,
            Some(Err(e)) => {
                tracing::warn!(shard, error = %format!("{e:#}"), "cannot consume the shard's stream; retrying");
                return Pass::Retry;
            }
        };
        if end + 1 < start {
            // The stream holds less than this replica committed: it was deleted and created
            // again, or lost messages. Serving on would hide every log published since.
            self.state.send_replace(ReplicaState::CatchingUp);
            tracing::error!(
                shard,
                stream = %self.stream,
                stream_ends_at = end,
                committed_through = start - 1,
                "the stream holds less than this replica committed; not serving this shard until an operator restores the stream or removes the replica's folder"
            );
            return Pass::Retry;
        }
        if start < first {
            // the stream dropped messages (its limits, a purge) before this replica indexed them
            return self.gap(start, first - 1, None);
        }
        if end < start {
            self.state.send_replace(ReplicaState::Ready);
        }
        let mut next = start;
        // when a message last came, or the stream was last found to hold nothing more
        let mut heard = Instant::now();
        let mut added_through: Option<u64> = None;
        let mut deadline: Option<Instant> = None;
        loop {
            let wait = deadline.map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
            });
            let stop = self.stop.clone();
            let waiting = Instant::now();
            let received = self.handle.block_on(async {
                tokio::select! {
                    () = stop.cancelled() => None,
                    next = tokio::time::timeout(wait, messages.next()) => Some(next),
                }
            });
            self.lag.waited(waiting.elapsed());
            match received {
                None => {
                    if let Err(e) = self.commit(added_through) {
                        // the next start consumes again from the last commit
                        self.failed(&e);
                    }
                    return Pass::Stopped;
                }
                Some(Err(_elapsed)) => {
                    if heard.elapsed() >= STALL_CHECK {
                        if self.stalled(next) {
                            tracing::warn!(
                                shard,
                                next,
                                "the stream holds messages its consumer does not deliver; consuming again"
                            );
                            return self.end_pass(added_through);
                        }
                        heard = Instant::now();
                    }
                }
                Some(Ok(None)) => {
                    tracing::warn!(shard, "the shard's stream ended; consuming again");
                    return self.end_pass(added_through);
                }
                Some(Ok(Some(Err(e)))) => {
                    tracing::warn!(shard, error = %e, "consuming the shard's stream failed; consuming again from the last commit");
                    return self.end_pass(added_through);
                }
                Some(Ok(Some(Ok(message)))) => {
                    heard = Instant::now();
                    let stream_seq = match message.info() {
                        Ok(info) => {
                            let published = info.published.unix_timestamp_nanos();
                            self.lag.delivered(
                                info.stream_sequence,
                                info.pending,
                                u64::try_from(published).unwrap_or(0),
                            );
                            info.stream_sequence
                        }
                        Err(e) => {
                            tracing::warn!(shard, error = %e, "a message without its stream sequence; consuming again");
                            return self.end_pass(added_through);
                        }
                    };
                    if stream_seq < next {
                        continue;
                    }
                    if stream_seq > next {
                        // messages dropped from the stream while this replica consumed it
                        return self.gap(next, stream_seq - 1, added_through);
                    }
                    next = stream_seq + 1;
                    let erasure = message
                        .headers
                        .as_ref()
                        .is_some_and(|headers| headers.get(ERASURE_HEADER).is_some());
                    if erasure {
                        if let Err(e) = self.erase(stream_seq, &message.payload, added_through) {
                            return self.failed(&e);
                        }
                        added_through = None;
                        deadline = None;
                        if stream_seq >= end {
                            self.state.send_replace(ReplicaState::Ready);
                        }
                    } else {
                        if let Err(e) = self.add(stream_seq, &message.payload) {
                            return self.failed(&e);
                        }
                        added_through = Some(stream_seq);
                        self.erasures.consumed(stream_seq);
                        deadline.get_or_insert_with(|| Instant::now() + self.commit_interval);
                    }
                }
            }
            if !self.retention.keeps_everything() && Instant::now() >= self.sweep_at {
                if let Err(e) = self.sweep(added_through) {
                    return self.failed(&e);
                }
                // the sweep committed what was added: caught up, if that was the end
                if added_through.is_some_and(|through| through >= end) {
                    self.state.send_replace(ReplicaState::Ready);
                }
                deadline = None;
                added_through = None;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                if let Err(e) = self.commit(added_through) {
                    return self.failed(&e);
                }
                deadline = None;
                if added_through.is_some_and(|through| through >= end) {
                    self.state.send_replace(ReplicaState::Ready);
                }
                added_through = None;
            }
            self.lag.update(&self.handle);
        }
    }

    /// Whether the stream holds the message at `next` (or later) while the consumer delivers
    /// nothing: a consumer left behind by a NATS server that was cut off and came back.
    fn stalled(&self, next: u64) -> bool {
        let (jetstream, name) = (self.jetstream.clone(), self.stream.clone());
        let last = self.handle.block_on(async move {
            let asked = async {
                let mut stream = jetstream.get_stream(&name).await?;
                anyhow::Ok(stream.info().await?.state.last_sequence)
            };
            tokio::time::timeout(STALL_CHECK, asked).await
        });
        // a stream that does not answer is no proof: the next check asks again
        matches!(last, Ok(Ok(last)) if last >= next)
    }

    /// Adds the logs of the chunk at `stream_seq` that are not past their retention (what
    /// expired meanwhile would only be deleted by the next sweep). A message that is no chunk
    /// (from a newer version) is logged and passed.
    fn add(&mut self, stream_seq: u64, payload: &[u8]) -> Result<(), store::StoreError> {
        let chunk = match serde_json::from_slice::<Chunk>(payload) {
            Ok(chunk) => chunk,
            Err(e) => {
                tracing::error!(shard = self.shard, stream_seq, error = %e, "a message of the stream is not a chunk of logs; skipped");
                return Ok(());
            }
        };
        let now = now_nanos();
        for (position, log) in chunk.logs.iter().enumerate() {
            if self.retention.keeps(&log.user_id, log.timestamp_nanos, now) {
                self.writer
                    .add(log, log_seq(self.shard, stream_seq, position))?;
            }
        }
        Ok(())
    }

    /// The stream no longer holds its messages `first..=last`, which this replica never
    /// indexed: what it added before them is committed, and it consumes no more. It is never
    /// read or copied; the indexer replaces it with a complete peer's copy when one is ready.
    fn gap(&mut self, first: u64, last: u64, through: Option<u64>) -> Pass {
        if let Err(e) = self.commit(through) {
            return self.failed(&e);
        }
        self.missing
            .set(i64::try_from(last - first + 1).unwrap_or(i64::MAX));
        self.state
            .send_replace(ReplicaState::Missing { first, last });
        tracing::error!(
            shard = self.shard,
            stream = %self.stream,
            first_missing = first,
            last_missing = last,
            "the stream no longer holds messages this replica never indexed; not serving this shard until a complete peer's replica is copied"
        );
        Pass::Gap
    }

    /// Applies the erasure at `stream_seq` where it stands in the stream: what came before it is
    /// committed, the logs its filters select are deleted, and the deletion is committed with the
    /// erasure's sequence as the position, so that a restart resumes after it. One that cannot
    /// be read (from a newer version) is logged and passed, erasing nothing.
    fn erase(
        &mut self,
        stream_seq: u64,
        payload: &[u8],
        added_through: Option<u64>,
    ) -> Result<(), store::StoreError> {
        self.commit(added_through)?;
        let erasure = serde_json::from_slice::<Erasure>(payload)
            .map_err(|e| e.to_string())
            .and_then(|erasure| Ok((erasure.query().map_err(|e| e.to_string())?, erasure)));
        let deleted = match erasure {
            Ok((query, erasure)) => {
                let deleted = self.writer.delete(&query)?;
                tracing::info!(
                    shard = self.shard,
                    stream_seq,
                    user = %erasure.user_id,
                    filters = %erasure.filters,
                    deleted,
                    "erasure applied"
                );
                deleted
            }
            Err(e) => {
                tracing::error!(shard = self.shard, stream_seq, error = %e, "an erasure that cannot be read; passed");
                0
            }
        };
        self.commit_through(stream_seq)?;
        if deleted > 0 {
            self.erased.inc_by(deleted);
            // erased logs leave the disk now, not when merges get to them
            self.writer.purge_deleted();
        }
        self.erasures.applied(stream_seq, deleted);
        Ok(())
    }

    /// Deletes the logs past their retention and commits that with what was added.
    fn sweep(&mut self, through: Option<u64>) -> Result<(), store::StoreError> {
        self.sweep_at = Instant::now() + self.sweep_interval;
        let mut expired = 0;
        for expiry in self.retention.expiries(now_nanos()) {
            expired += self.writer.expire(&expiry)?;
        }
        if expired > 0 || through.is_some() {
            let through = through.unwrap_or(resume_from(self.writer.committed_seq()) - 1);
            self.commit_through(through)?;
        }
        if expired > 0 {
            tracing::info!(
                shard = self.shard,
                expired,
                "retention sweep deleted expired logs"
            );
        }
        Ok(())
    }

    /// Ends a pass to consume again from the last commit: what was added is committed first, or
    /// rolled back when the commit fails, so that nothing is added twice.
    fn end_pass(&mut self, through: Option<u64>) -> Pass {
        match self.commit(through) {
            Ok(()) => Pass::Retry,
            Err(e) => self.failed(&e),
        }
    }

    /// Commits what was added through the message at `through`, if anything was.
    fn commit(&mut self, through: Option<u64>) -> Result<(), store::StoreError> {
        match through {
            Some(through) => self.commit_through(through),
            None => Ok(()),
        }
    }

    /// Commits with the message at `through` as the position: reads see the stream through it.
    fn commit_through(&mut self, through: u64) -> Result<(), store::StoreError> {
        self.writer
            .commit(log_seq(self.shard, through, LAST_POSITION))?;
        self.lag.visible(through);
        Ok(())
    }

    /// The index failed: back to its last commit, and consume again from there.
    fn failed(&mut self, error: &dyn std::fmt::Display) -> Pass {
        // reads go to the shard's other replica until this one has caught up again
        self.state.send_replace(ReplicaState::CatchingUp);
        tracing::error!(shard = self.shard, error = %error, "the replica's index failed; rolling back to its last commit");
        if let Err(e) = self.writer.rollback() {
            tracing::error!(shard = self.shard, error = %e, "cannot roll the replica's index back yet");
        }
        Pass::Retry
    }
}

/// How long a consumer may deliver nothing before the stream is asked whether it holds more.
const STALL_CHECK: Duration = Duration::from_secs(5);

/// The commit payload records the highest sequence number a message may give, so that a
/// message is either wholly committed or consumed again.
const LAST_POSITION: usize = crate::cluster::shard::LOGS_PER_MESSAGE - 1;
