//! Bounded, visible lag. Each replica reports, after every commit and at least every second,
//! the stream sequence its reads see (a core NATS message on `logbridge.<cluster>.visible`; no
//! state in JetStream or etcd). A gateway remembers when JetStream acknowledged each of its
//! publishes, by shard; the oldest of them that no ready replica of the shard shows yet is how
//! far behind the shard's reads are. Past `[cluster] max_lag_ms`, the gateway refuses new exports
//! for the shard retryably, until a replica catches up: ack → visible stays bounded under
//! overload rather than growing. Reads go first to the replicas within the bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::membership::View;
use crate::metrics::{Metrics, Seconds, ShardLabels};

/// How often a replica reports its position when it commits nothing.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// A report older than this is not taken as a replica's position: the replica stopped. Several
/// report intervals, so that a long commit does not make a working replica look gone.
const REPORT_TTL: Duration = Duration::from_secs(10);

/// Acknowledgements a gateway remembers by shard, at most: past this the newest are dropped
/// (the oldest, which the lag is measured by, stay; the shard is refused anyway, its replicas
/// being that far behind).
const ACKS_KEPT: usize = 100_000;

/// Busy time below which a replica's pace is not measured: too little to tell.
const MIN_BUSY: Duration = Duration::from_millis(20);

/// The subject positions are reported on.
pub fn subject(cluster: &str) -> String {
    format!("logbridge.{cluster}.visible")
}

/// A replica's report: its reads see the shard's stream through `through`, and it indexes about
/// `pace` messages a second while it has messages to index (0: not measured yet).
#[derive(Debug, Serialize, Deserialize)]
pub struct Visible {
    pub shard: u32,
    pub node: String,
    pub through: u64,
    #[serde(default)]
    pub pace: f64,
}

/// A gateway's knowledge of how far behind each shard's reads are.
pub struct Freshness {
    max_lag: Duration,
    view: watch::Receiver<View>,
    metrics: Arc<Metrics>,
    shards: Mutex<HashMap<u32, Shard>>,
}

/// How far behind a shard's reads are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// How long the oldest acknowledgement of this gateway not yet visible has waited.
    pub oldest: Duration,
    /// How long an acknowledgement now would wait to be visible: what was acknowledged and is
    /// not visible yet, over the pace its replica indexes at.
    pub expected: Option<Duration>,
    /// Whether a replica of the shard ever reported: without, the shard's indexers do not
    /// report (a version before the bound, during a rolling upgrade), and nothing is refused.
    pub reported: bool,
}

impl Lag {
    fn within(&self, bound: Duration) -> bool {
        !self.reported || (self.oldest <= bound && self.expected.is_none_or(|wait| wait <= bound))
    }
}

/// A replica's last report, as a gateway keeps it.
#[derive(Debug, Clone, Copy)]
struct Report {
    through: u64,
    pace: f64,
    at: Instant,
}

/// What a gateway knows of one shard.
#[derive(Default)]
struct Shard {
    /// This gateway's acknowledged publishes not yet seen visible, by sequence.
    acks: BTreeMap<u64, Instant>,
    /// The highest sequence it saw acknowledged.
    newest: u64,
    /// By node: what a replica last reported, and when.
    reports: HashMap<String, Report>,
    /// When the best position any replica reported moved, and to where: as far back as the
    /// bound needs (the last one older than it, and those since).
    best: std::collections::VecDeque<(Instant, u64)>,
}

impl Shard {
    /// How far the reads of `shard` see, and at what pace they advance: the best position a
    /// ready replica reported lately.
    fn visible(&self, shard: u32, view: &View, now: Instant) -> Option<(u64, f64)> {
        let ready = view.replicas.get(&shard)?;
        self.reports
            .iter()
            .filter(|(node, report)| {
                now.duration_since(report.at) < REPORT_TTL
                    && ready.get(*node).is_some_and(|r| r.ready)
            })
            .map(|(_, report)| (report.through, report.pace))
            .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
    }

    /// Whether `node`'s replica reads within `bound`: it reported within the bound (and a report
    /// interval), and its position is at least where the best replica's was the bound ago. A
    /// shard none of whose replicas ever reported tells nothing: every replica counts as fresh.
    fn fresh(&self, node: &str, now: Instant, bound: Duration) -> bool {
        if self.reports.is_empty() {
            return true;
        }
        let Some(report) = self.reports.get(node) else {
            return false;
        };
        let then = now.checked_sub(bound);
        let best_then = self
            .best
            .iter()
            .rev()
            .find(|(at, _)| then.is_some_and(|then| *at <= then))
            .map_or(0, |(_, best)| *best);
        now.duration_since(report.at) <= bound + REPORT_INTERVAL && report.through >= best_then
    }

    /// Takes a replica's report, received at `now`; remembers the best position as far back as
    /// `bound` needs.
    fn report(&mut self, node: String, through: u64, pace: f64, now: Instant, bound: Duration) {
        self.reports.insert(
            node,
            Report {
                through,
                pace,
                at: now,
            },
        );
        if self.best.back().is_none_or(|&(_, best)| through > best) {
            self.best.push_back((now, through));
        }
        // the oldest entry needed is the last one at least the bound old
        while self.best.len() > 1
            && self
                .best
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) >= bound)
        {
            self.best.pop_front();
        }
    }

    /// How far behind the reads of `shard` are at `now`.
    fn lag(&mut self, shard: u32, view: &View, now: Instant) -> Lag {
        let visible = self.visible(shard, view, now);
        // what is visible is forgotten, one acknowledgement at a time: each is removed once
        while let Some(entry) = self.acks.first_entry()
            && visible.is_some_and(|(through, _)| *entry.key() <= through)
        {
            entry.remove();
        }
        let oldest = self
            .acks
            .first_key_value()
            .map_or(Duration::ZERO, |(_, at)| now.duration_since(*at));
        let expected = match visible {
            _ if self.acks.is_empty() => None,
            // a pace below one message in a thousand seconds tells nothing
            Some((through, pace)) if pace.is_finite() && pace >= 1e-3 => Some(
                Duration::try_from_secs_f64(self.newest.saturating_sub(through) as f64 / pace)
                    .unwrap_or(Duration::MAX),
            ),
            _ => None,
        };
        Lag {
            oldest,
            expected,
            reported: !self.reports.is_empty(),
        }
    }
}

impl Freshness {
    pub fn new(max_lag: Duration, view: watch::Receiver<View>, metrics: Arc<Metrics>) -> Self {
        Self {
            max_lag,
            view,
            metrics,
            shards: Mutex::default(),
        }
    }

    /// JetStream acknowledged a publish to `shard` at `seq`.
    pub fn acknowledged(&self, shard: u32, seq: u64) {
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let state = shards.entry(shard).or_default();
        state.acks.insert(seq, Instant::now());
        state.newest = state.newest.max(seq);
        if state.acks.len() > ACKS_KEPT {
            state.acks.pop_last();
        }
    }

    /// How far behind `shard`'s reads are now; the age of the oldest acknowledgement not
    /// visible is set in `/metrics`.
    fn measure(&self, shard: u32) -> Lag {
        let lag = {
            let view = self.view.borrow();
            let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
            shards
                .entry(shard)
                .or_default()
                .lag(shard, &view, Instant::now())
        };
        self.metrics
            .cluster_shard_lag
            .get_or_create(&ShardLabels { shard })
            .set(lag.oldest.as_secs_f64());
        lag
    }

    /// Whether `node`'s replica of `shard` reads within the bound (see [`Shard::fresh`]).
    pub fn fresh(&self, shard: u32, node: &str) -> bool {
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards
            .get(&shard)
            .is_none_or(|state| state.fresh(node, Instant::now(), self.max_lag))
    }

    /// Whether `node`'s replica of `shard` last reported reads through the message `message`.
    pub fn reached(&self, shard: u32, node: &str, message: u64) -> bool {
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards
            .get(&shard)
            .and_then(|state| state.reports.get(node))
            .is_some_and(|report| report.through >= message)
    }

    /// Whether `shard` takes new exports: what this gateway acknowledged has been visible within
    /// the bound, and an export now would be too, at the pace the shard's reads advance.
    /// Otherwise how far behind they are.
    pub fn within_bound(&self, shard: u32) -> Result<(), Lag> {
        let lag = self.measure(shard);
        if !lag.within(self.max_lag) {
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
            {
                let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
                let state = shards.entry(report.shard).or_default();
                let now = Instant::now();
                state.report(report.node, report.through, report.pace, now, self.max_lag);
            }
            // the gauge follows the replicas, exports or not
            self.measure(report.shard);
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
    /// Since the last report: messages indexed, and the time spent waiting for messages.
    indexed: u64,
    waited: Duration,
    /// Messages indexed a second while busy, smoothed over the reports; 0 until measured.
    pace: f64,
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
            indexed: 0,
            waited: Duration::ZERO,
            pace: 0.0,
        }
    }

    /// The replica waited `waited` for a message: idle, unless the stream held more for it
    /// (then the wait was the machine's, starved of CPU, and counts as busy).
    pub fn waited(&mut self, waited: Duration) {
        if self.pending == 0 {
            self.waited += waited;
        }
    }

    /// The position reads see, as it moves.
    pub fn seen(&self) -> Arc<AtomicU64> {
        self.seen.clone()
    }

    /// The message at `seq`, published at `published` (nanoseconds), was delivered, with
    /// `pending` more in the stream after it.
    pub fn delivered(&mut self, seq: u64, pending: u64, published: u64) {
        self.indexed += 1;
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
        let now = Instant::now();
        if let Some((_, since)) = self.reported {
            // the pace while busy: what was indexed over the time not spent waiting for it
            let busy = now.duration_since(since).saturating_sub(self.waited);
            if self.indexed > 0 && busy >= MIN_BUSY {
                let pace = self.indexed as f64 / busy.as_secs_f64();
                self.pace = if self.pace > 0.0 {
                    (self.pace + pace) / 2.0
                } else {
                    pace
                };
            }
        }
        (self.indexed, self.waited) = (0, Duration::ZERO);
        self.reported = Some((through, now));
        let report = Visible {
            shard: self.shard,
            node: self.node.clone(),
            through,
            pace: self.pace,
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

    /// The bound the tests' reports are kept for.
    const BOUND: Duration = Duration::from_secs(3);

    #[test]
    fn a_replica_behind_the_others_or_silent_past_the_bound_is_not_fresh() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let bound = BOUND;
        let mut shard = Shard::default();
        assert!(
            shard.fresh("a", start, bound),
            "nothing reported: nothing known"
        );
        shard.report("a".into(), 10, 1.0, start, BOUND);
        shard.report("b".into(), 10, 1.0, start, BOUND);
        assert!(
            !shard.fresh("c", start, bound),
            "never reported while others did"
        );
        // b falls behind a: fresh for the bound, then not
        shard.report("a".into(), 20, 1.0, start + second, BOUND);
        shard.report("b".into(), 12, 1.0, start + second, BOUND);
        assert!(shard.fresh("b", start + second * 2, bound));
        shard.report("b".into(), 15, 1.0, start + second * 4, BOUND);
        assert!(!shard.fresh("b", start + second * 4, bound));
        // caught up again: fresh again
        shard.report("b".into(), 20, 1.0, start + second * 5, BOUND);
        assert!(shard.fresh("b", start + second * 5, bound));
        // a falls silent (paused): not fresh once its last report is older than the bound and
        // an interval
        assert!(shard.fresh("a", start + second * 4, bound));
        assert!(!shard.fresh("a", start + second * 6, bound));
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_acknowledgement_no_ready_replica_shows() {
        let start = Instant::now();
        let mut shard = Shard::default();
        let view = view(&[(1, "a", true), (1, "b", false)]);
        let second = Duration::from_secs(1);
        for seq in 10..20 {
            shard.acks.insert(seq, start + second * (seq as u32 - 10));
            shard.newest = seq;
        }
        let now = start + second * 12;
        let lag_of = |oldest, expected, reported| Lag {
            oldest,
            expected,
            reported,
        };
        // nothing reported: the oldest acknowledgement's age, and no pace to expect anything by;
        // a shard whose replicas never reported (older indexers) refuses nothing
        let lag = shard.lag(1, &view, now);
        assert_eq!(lag, lag_of(second * 12, None, false));
        assert!(lag.within(second));
        // a ready replica through 14, at two messages a second: from the acknowledgement of 15 on,
        // and five more to go take 2.5 s
        shard.report("a".into(), 14, 2.0, now, BOUND);
        let lag = shard.lag(1, &view, now);
        assert_eq!(lag, lag_of(second * 7, Some(second * 5 / 2), true));
        assert!(lag.within(second * 7));
        assert!(!lag.within(second * 6), "the oldest waited past the bound");
        let paced = lag_of(second, Some(second * 3), true);
        assert!(
            !paced.within(second * 2),
            "an export now would wait past the bound"
        );
        // a pace that tells nothing (a report from elsewhere) expects nothing, and panics nothing
        shard.report("a".into(), 14, 5e-324, now, BOUND);
        assert_eq!(shard.lag(1, &view, now).expected, None);
        shard.report("a".into(), 14, 2.0, now, BOUND);
        // a replica not ready counts for nothing, however far it is
        shard.report("b".into(), 19, 100.0, now, BOUND);
        assert_eq!(shard.lag(1, &view, now).oldest, second * 7);
        // a report that grew old no longer counts; the acknowledgements seen stay forgotten
        let lag = shard.lag(1, &view, now + REPORT_TTL);
        assert_eq!(lag, lag_of(second * 7 + REPORT_TTL, None, true));
        // all seen: no lag, nothing expected
        shard.report("a".into(), 19, 2.0, now, BOUND);
        assert_eq!(shard.lag(1, &view, now), lag_of(Duration::ZERO, None, true));
    }
}
