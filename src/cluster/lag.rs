//! Bounded, visible lag. Each replica reports, after every commit and at least every second,
//! the stream sequence its reads see (a core NATS message on `logbridge.<cluster>.visible`; no
//! state in JetStream or etcd). A gateway remembers when JetStream acknowledged each of its
//! publishes, by shard; the oldest of them that no ready replica of the shard shows yet is how
//! far behind the shard's reads are. Past `[cluster] max_lag_ms`, the gateway refuses new exports
//! for the shard retryably, until a replica catches up: ack → visible stays bounded under
//! overload rather than growing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::membership::View;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{Metrics, Seconds, ShardLabels};

/// How often a replica reports its position when it commits nothing.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// A report older than this is not taken as a replica's position: the replica stopped.
const REPORT_TTL: Duration = Duration::from_secs(3);

/// Acknowledgements a gateway remembers by shard, at most: past this the oldest are dropped
/// (the shard is then refused anyway, its replicas being that far behind).
const ACKS_KEPT: usize = 100_000;

/// The subject positions are reported on.
pub fn subject(cluster: &str) -> String {
    format!("logbridge.{cluster}.visible")
}

/// A replica's report: its reads see the shard's stream through `through`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Visible {
    pub shard: u32,
    pub node: String,
    pub through: u64,
}

/// A gateway's knowledge of how far behind each shard's reads are.
pub struct Freshness {
    max_lag: Duration,
    view: watch::Receiver<View>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By shard: this gateway's acknowledged publishes not yet seen visible, by sequence.
    acks: HashMap<u32, BTreeMap<u64, Instant>>,
    /// By shard, then node: the position a replica last reported, and when.
    reports: HashMap<u32, HashMap<String, (u64, Instant)>>,
}

impl State {
    /// How far the reads of `shard` see: the best position a ready replica reported lately.
    fn visible(&self, shard: u32, view: &View, now: Instant) -> Option<u64> {
        let ready = view.replicas.get(&shard)?;
        self.reports
            .get(&shard)?
            .iter()
            .filter(|(node, (_, at))| {
                now.duration_since(*at) < REPORT_TTL && ready.get(*node).is_some_and(|r| r.ready)
            })
            .map(|(_, (through, _))| *through)
            .max()
    }

    /// How long the oldest acknowledgement of `shard` not yet visible has waited.
    fn lag(&mut self, shard: u32, view: &View, now: Instant) -> Duration {
        let visible = self.visible(shard, view, now);
        let Some(acks) = self.acks.get_mut(&shard) else {
            return Duration::ZERO;
        };
        if let Some(visible) = visible {
            *acks = acks.split_off(&(visible + 1));
        }
        acks.first_key_value()
            .map_or(Duration::ZERO, |(_, at)| now.duration_since(*at))
    }
}

impl Freshness {
    pub fn new(max_lag: Duration, view: watch::Receiver<View>, metrics: Arc<Metrics>) -> Self {
        Self {
            max_lag,
            view,
            metrics,
            state: Mutex::default(),
        }
    }

    /// JetStream acknowledged a publish to `shard` at `seq`.
    pub fn acknowledged(&self, shard: u32, seq: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let acks = state.acks.entry(shard).or_default();
        acks.insert(seq, Instant::now());
        if acks.len() > ACKS_KEPT {
            acks.pop_first();
        }
    }

    /// Whether `shard` takes new exports: its reads are within the bound of its last
    /// acknowledgements. Otherwise how far behind they are.
    pub fn within_bound(&self, shard: u32) -> Result<(), Duration> {
        let now = Instant::now();
        let lag = {
            let view = self.view.borrow();
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.lag(shard, &view, now)
        };
        self.metrics
            .cluster_shard_lag
            .get_or_create(&ShardLabels { shard })
            .set(lag.as_secs_f64());
        if lag > self.max_lag {
            self.metrics.cluster_lag_refusals.inc();
            return Err(lag);
        }
        Ok(())
    }

    /// Takes the replicas' reports from `client` until `stop`.
    pub async fn follow(
        self: Arc<Self>,
        client: async_nats::Client,
        cluster: String,
        stop: CancellationToken,
    ) {
        let mut reports = loop {
            match client.subscribe(subject(&cluster)).await {
                Ok(reports) => break reports,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the replicas' positions; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(REPORT_INTERVAL) => {}
                    }
                }
            }
        };
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = reports.next() => message,
            };
            let Some(message) = message else { return };
            let Ok(report) = serde_json::from_slice::<Visible>(&message.payload) else {
                continue;
            };
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let replicas = state.reports.entry(report.shard).or_default();
            replicas.insert(report.node, (report.through, Instant::now()));
        }
    }
}

/// A replica's side: the stream sequence its reads see, reported to the gateways after each
/// commit and at least every [`REPORT_INTERVAL`], and how far behind that is, in `/metrics`.
pub struct ReplicaLag {
    shard: u32,
    node: String,
    subject: String,
    client: async_nats::Client,
    /// The stream sequence reads see through, shared with the replica's reads (a header).
    seen: Arc<AtomicU64>,
    messages: Gauge,
    seconds: Seconds,
    /// The last message delivered, and how many the stream held after it then.
    delivered: u64,
    pending: u64,
    /// When the oldest message delivered since the last commit was published (nanoseconds),
    /// and the last one delivered.
    unseen_since: Option<u64>,
    last_published: u64,
    reported: Option<(u64, Instant)>,
}

impl ReplicaLag {
    pub fn new(
        client: async_nats::Client,
        cluster: &str,
        node: &str,
        shard: u32,
        through: u64,
        metrics: &Metrics,
    ) -> Self {
        let labels = ShardLabels { shard };
        Self {
            shard,
            node: node.to_owned(),
            subject: subject(cluster),
            client,
            seen: Arc::new(AtomicU64::new(through)),
            messages: metrics
                .cluster_replica_lag_messages
                .get_or_create(&labels)
                .clone(),
            seconds: metrics.cluster_replica_lag.get_or_create(&labels).clone(),
            delivered: through,
            pending: 0,
            unseen_since: None,
            last_published: 0,
            reported: None,
        }
    }

    /// The position reads see, as it moves.
    pub fn seen(&self) -> Arc<AtomicU64> {
        self.seen.clone()
    }

    /// The message at `seq`, published at `published` (nanoseconds), was delivered, with
    /// `pending` more in the stream after it.
    pub fn delivered(&mut self, seq: u64, pending: u64, published: u64) {
        self.delivered = seq;
        self.pending = pending;
        self.last_published = published;
        self.unseen_since.get_or_insert(published);
    }

    /// A commit made the stream visible through `through`.
    pub fn visible(&mut self, through: u64) {
        self.seen.store(through, Ordering::Relaxed);
        self.unseen_since = None;
    }

    /// Sets the gauges, and reports the position when it moved or the last report is a
    /// [`REPORT_INTERVAL`] old.
    pub fn update(&mut self, handle: &tokio::runtime::Handle) {
        let through = self.seen.load(Ordering::Relaxed);
        let behind = self.delivered.saturating_sub(through) + self.pending;
        self.messages.set(i64::try_from(behind).unwrap_or(i64::MAX));
        // the oldest message not visible: one delivered since the commit, else at most as old
        // as the last one delivered
        let oldest = match (self.unseen_since, behind) {
            (_, 0) => None,
            (Some(since), _) => Some(since),
            (None, _) => Some(self.last_published),
        };
        let age = oldest.map_or(0, |at| crate::ingest::now_nanos().saturating_sub(at));
        self.seconds.set(Duration::from_nanos(age).as_secs_f64());
        let due = self
            .reported
            .is_none_or(|(reported, at)| reported != through || at.elapsed() >= REPORT_INTERVAL);
        if !due {
            return;
        }
        self.reported = Some((through, Instant::now()));
        let report = Visible {
            shard: self.shard,
            node: self.node.clone(),
            through,
        };
        let payload = serde_json::to_vec(&report).expect("a report serializes");
        let (client, subject) = (self.client.clone(), self.subject.clone());
        handle.spawn(async move {
            // a report lost is sent again within a second
            let _ = client.publish(subject, payload.into()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::ReplicaStatus;

    fn view(ready: &[(u32, &str, bool)]) -> View {
        let mut view = View::default();
        for &(shard, node, ready) in ready {
            view.replicas.entry(shard).or_default().insert(
                node.to_owned(),
                ReplicaStatus {
                    api: String::new(),
                    ready,
                },
            );
        }
        view
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_acknowledgement_no_ready_replica_shows() {
        let start = Instant::now();
        let mut state = State::default();
        let view = view(&[(1, "a", true), (1, "b", false)]);
        let second = Duration::from_secs(1);
        for seq in 10..20 {
            state
                .acks
                .entry(1)
                .or_default()
                .insert(seq, start + second * (seq as u32 - 10));
        }
        let now = start + second * 12;
        // nothing reported: the oldest acknowledgement's age
        assert_eq!(state.lag(1, &view, now), second * 12);
        // a ready replica through 14: from the acknowledgement of 15 on
        state
            .reports
            .entry(1)
            .or_default()
            .insert("a".into(), (14, now));
        assert_eq!(state.lag(1, &view, now), second * 7);
        // a replica not ready counts for nothing, however far it is
        state
            .reports
            .entry(1)
            .or_default()
            .insert("b".into(), (19, now));
        assert_eq!(state.lag(1, &view, now), second * 7);
        // a report that grew old no longer counts; the acknowledgements seen stay forgotten
        assert_eq!(
            state.lag(1, &view, now + REPORT_TTL),
            second * 7 + REPORT_TTL
        );
        // all seen: no lag
        state
            .reports
            .entry(1)
            .or_default()
            .insert("a".into(), (19, now));
        assert_eq!(state.lag(1, &view, now), Duration::ZERO);
        assert_eq!(
            state.lag(2, &view, now),
            Duration::ZERO,
            "nothing published"
        );
    }
}
