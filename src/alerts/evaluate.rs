//! Evaluation: every interval, each rule's measure is taken from the statistics `/logs/stats`
//! computes, over its window, and its state moved. One rule at a time, on a blocking thread,
//! users in turn (one rule of each, then the next of each), within a time budget: what the
//! budget leaves is evaluated first in the next round, so that no user's rules, however many,
//! keep another's from being evaluated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deliver::{Alert, Deliveries};
use super::rule::Rule;
use super::state::{Change, Status};
use super::{AlertsConfig, book::Book, now};
use crate::metrics::Metrics;
use crate::store::{StatsError, Store};

/// Where the statistics of a rule's window come from: a single node's index, or the shards of
/// a cluster.
pub trait Source: Send + Sync + 'static {
    /// The measure of `rule` at `at` (nanoseconds), given up after `timeout`; an error says
    /// why there is none.
    fn measure(&self, rule: &Rule, at: u64, timeout: Duration) -> Measuring;
}

/// A [`Source`] at work.
pub type Measuring = Pin<Box<dyn Future<Output = Result<Option<f64>, String>> + Send>>;

impl Source for Store {
    /// [`measure`] on a blocking thread, cancelled after `timeout`.
    fn measure(&self, rule: &Rule, at: u64, timeout: Duration) -> Measuring {
        let (store, rule) = (self.clone(), rule.clone());
        Box::pin(async move {
            let cancelled = Arc::new(AtomicBool::new(false));
            let flag = cancelled.clone();
            let timer = tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                flag.store(true, Ordering::Relaxed);
            });
            let measured =
                tokio::task::spawn_blocking(move || measure(&store, &rule, at, &cancelled)).await;
            timer.abort();
            match measured {
                Ok(Err(StatsError::Cancelled)) => Err(cancelled_after(timeout)),
                Ok(measured) => measured.map_err(|e| e.to_string()),
                Err(e) => Err(format!("the evaluation failed: {e}")),
            }
        })
    }
}

/// Why an evaluation cancelled after `timeout` has no measure.
pub fn cancelled_after(timeout: Duration) -> String {
    format!(
        "the evaluation took longer than {} ms and was cancelled",
        timeout.as_millis()
    )
}

/// The evaluation loop's state: where each user's turn stopped, and when each firing alert was
/// last sent to Alertmanager.
pub struct Evaluator {
    book: Book,
    source: Arc<dyn Source>,
    deliveries: Deliveries,
    metrics: Arc<Metrics>,
    config: AlertsConfig,
    /// Per user, the index of the rule its next turn starts with.
    turns: HashMap<String, usize>,
    /// Rounds so far: which user goes first after a round that evaluated every rule.
    rounds: usize,
    /// The user whose rule a round's budget stopped at: the next round starts with it.
    resume_at: Option<String>,
    last_sent: HashMap<String, Instant>,
}

impl Evaluator {
    pub fn new(
        book: Book,
        source: Arc<dyn Source>,
        deliveries: Deliveries,
        metrics: Arc<Metrics>,
        config: AlertsConfig,
    ) -> Self {
        Self {
            book,
            source,
            deliveries,
            metrics,
            config,
            turns: HashMap::new(),
            rounds: 0,
            resume_at: None,
            last_sent: HashMap::new(),
        }
    }

    /// Evaluates every interval until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.config.evaluation_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            self.round(&shutdown).await;
        }
        self.save().await;
    }

    /// One round: the rules in their order, until they are all done, the budget is spent or
    /// the server shuts down.
    pub async fn round(&mut self, shutdown: &CancellationToken) {
        let started = Instant::now();
        let budget = self
            .config
            .evaluation_budget
            .min(self.config.evaluation_interval);
        let order = self.order();
        let mut done = 0;
        for (user, id) in &order {
            if started.elapsed() >= budget || shutdown.is_cancelled() {
                break;
            }
            self.evaluate(id).await;
            *self.turns.entry(user.clone()).or_default() += 1;
            done += 1;
        }
        self.resume_at = order.get(done).map(|(user, _)| user.clone());
        let metrics = &self.metrics;
        metrics
            .alert_evaluations_deferred
            .inc_by((order.len() - done) as u64);
        metrics
            .alert_round_seconds
            .observe(started.elapsed().as_secs_f64());
        {
            let rules = self.book.lock();
            metrics.alert_rules.set(rules.entries.len() as i64);
            let firing = rules
                .entries
                .values()
                .filter(|e| e.state.status == Status::Firing)
                .count();
            metrics.alerts_firing.set(firing as i64);
        }
        self.save().await;
        self.rounds += 1;
    }

    /// This round's order of the rules that can be evaluated.
    fn order(&mut self) -> Vec<(String, String)> {
        let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in self.book.lock().entries.values() {
            if entry.rule.is_some() {
                by_user
                    .entry(entry.user_id.clone())
                    .or_default()
                    .push(entry.id.clone());
            }
        }
        let kept: HashSet<&String> = by_user.values().flatten().collect();
        self.last_sent.retain(|id, _| kept.contains(id));
        let first = self.resume_at.take();
        order(by_user, &mut self.turns, first.as_deref(), self.rounds)
    }

    /// Evaluates rule `id`, if it is still there, and delivers what its state's move asks for.
    async fn evaluate(&mut self, id: &str) {
        let Some(rule) = self
            .book
            .lock()
            .entries
            .get(id)
            .and_then(|e| e.rule.clone())
        else {
            return;
        };
        let at = now();
        let started = Instant::now();
        let measured = self
            .source
            .measure(&rule, at, self.config.rule_timeout)
            .await;
        self.metrics
            .alert_evaluation_seconds
            .inc_by(started.elapsed().as_secs_f64());
        self.metrics.alert_evaluations.inc();
        let mut rules = self.book.lock();
        let Some(entry) = rules.entries.get_mut(id) else {
            return;
        };
        // the rule was replaced while it was evaluated: the next round evaluates the new one
        if entry.spec != rule.spec {
            return;
        }
        let change = match measured {
            Ok(value) => {
                let holds =
                    value.is_some_and(|v| rule.spec.comparison.holds(v, rule.spec.threshold));
                entry.state.evaluated(at, value, holds, rule.hold)
            }
            Err(error) => {
                self.metrics.alert_evaluation_failures.inc();
                tracing::warn!(rule = %id, user = %entry.user_id, %error, "alert rule not evaluated");
                entry.state.failed(at, error);
                None
            }
        };
        let status = entry.state.status;
        let alert = alert_of(&entry.id, &entry.user_id, &rule, &entry.state);
        rules.changed();
        // sent while the book is held: a deletion or replacement of the rule, which resolves
        // its alert, comes before or after, never between the state's move and its alert
        match change {
            Some(change) => {
                tracing::info!(rule = %id, name = %rule.spec.name, status = alert.status, value = ?alert.value, "alert {}", if change == Change::Fired { "firing" } else { "resolved" });
                self.deliveries.send(&alert, false);
                self.last_sent.insert(id.to_owned(), Instant::now());
            }
            None if status == Status::Firing => {
                let resend = self
                    .last_sent
                    .get(id)
                    .is_none_or(|sent| sent.elapsed() >= self.config.resend_interval);
                if resend {
                    self.deliveries.send(&alert, true);
                    self.last_sent.insert(id.to_owned(), Instant::now());
                }
            }
            None => {
                self.last_sent.remove(id);
            }
        }
        drop(rules);
    }

    async fn save(&self) {
        if let Err(e) = self.book.save().await {
            tracing::error!(error = %e, "alert states not saved");
        }
    }
}

/// The measure of `rule` at `at` (nanoseconds), from the statistics of its window over `store`:
/// what an evaluation computes. Stops early, cancelled, once `cancelled` is set.
pub fn measure(
    store: &Store,
    rule: &Rule,
    at: u64,
    cancelled: &AtomicBool,
) -> Result<Option<f64>, StatsError> {
    let interval = u64::try_from(rule.window.as_nanos()).unwrap_or(u64::MAX);
    let stats = store.stats(&rule.query_at(at), Some(interval), cancelled)?;
    Ok(rule.measure(&stats))
}

/// The order of round `round` over the rule ids of each user: users in turn, one rule of each
/// at a time, each user's from where its last turn stopped (`turns`); the first user is
/// `first`, the one the last round's budget stopped at, else another each round.
fn order(
    by_user: BTreeMap<String, Vec<String>>,
    turns: &mut HashMap<String, usize>,
    first: Option<&str>,
    round: usize,
) -> Vec<(String, String)> {
    turns.retain(|user, _| by_user.contains_key(user));
    let mut queues: Vec<(String, Vec<String>)> = by_user
        .into_iter()
        .map(|(user, mut ids)| {
            let turn = turns.entry(user.clone()).or_default();
            *turn %= ids.len();
            ids.rotate_left(*turn);
            (user, ids)
        })
        .collect();
    if !queues.is_empty() {
        let start = first
            .and_then(|first| queues.iter().position(|(user, _)| user == first))
            .unwrap_or(round % queues.len());
        queues.rotate_left(start);
    }
    let longest = queues.iter().map(|(_, ids)| ids.len()).max().unwrap_or(0);
    let mut order = Vec::new();
    for i in 0..longest {
        for (user, ids) in &queues {
            if let Some(id) = ids.get(i) {
                order.push((user.clone(), id.clone()));
            }
        }
    }
    order
}

/// The alert of rule `id` of `user_id` as its state says it.
pub fn alert_of(id: &str, user_id: &str, rule: &Rule, state: &super::state::RuleState) -> Alert {
    let spec = &rule.spec;
    let mut labels = spec.labels.clone();
    labels.insert("alertname".to_owned(), spec.name.clone());
    labels.insert("user_id".to_owned(), user_id.to_owned());
    labels.insert("rule_id".to_owned(), id.to_owned());
    let mut annotations = spec.annotations.clone();
    let value = state.value;
    let shown = |v: Option<f64>| v.map_or_else(|| "none".to_owned(), |v| format!("{v}"));
    annotations.entry("summary".to_owned()).or_insert_with(|| {
        format!(
            "{} over {} is {} ({} {})",
            spec.measure.as_str(),
            spec.window,
            shown(value),
            spec.comparison.as_str(),
            spec.threshold
        )
    });
    annotations.insert("value".to_owned(), shown(value));
    annotations.insert("threshold".to_owned(), format!("{}", spec.threshold));
    let firing = state.status == Status::Firing;
    Alert {
        rule_id: id.to_owned(),
        status: if firing { "firing" } else { "resolved" },
        labels,
        annotations,
        value,
        threshold: spec.threshold,
        starts_at: state.fired_at.unwrap_or_default(),
        ends_at: (!firing).then(|| state.resolved_at.unwrap_or_else(now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(order: &[(String, String)]) -> Vec<&str> {
        order.iter().map(|(_, id)| id.as_str()).collect()
    }

    #[test]
    fn users_take_turns_and_a_round_cut_short_goes_on_where_it_stopped() {
        let by_user = || {
            BTreeMap::from([
                (
                    "busy".to_owned(),
                    (1..=5).map(|i| format!("b{i}")).collect(),
                ),
                ("quiet".to_owned(), vec!["q1".to_owned()]),
            ])
        };
        let mut turns = HashMap::new();
        let first = order(by_user(), &mut turns, None, 0);
        assert_eq!(ids(&first), ["b1", "q1", "b2", "b3", "b4", "b5"]);
        // after a whole round the next starts with the other user
        assert_eq!(
            ids(&order(by_user(), &mut turns, None, 1)),
            ["q1", "b1", "b2", "b3", "b4", "b5"]
        );
        // the budget let three be evaluated: b1, q1, b2; the next round starts where it
        // stopped, with the busy user's b3
        *turns.entry("busy".to_owned()).or_default() += 2;
        *turns.entry("quiet".to_owned()).or_default() += 1;
        assert_eq!(
            ids(&order(by_user(), &mut turns, Some("busy"), 2)),
            ["b3", "q1", "b4", "b5", "b1", "b2"]
        );
        // a user whose rules are gone is forgotten
        let mut only_quiet = by_user();
        only_quiet.remove("busy");
        assert_eq!(ids(&order(only_quiet, &mut turns, Some("busy"), 3)), ["q1"]);
        assert!(!turns.contains_key("busy"));
    }

    #[test]
    fn a_budget_that_takes_some_users_a_round_serves_every_user_in_turn() {
        // ten users of one rule each, a budget of three evaluations a round
        let by_user = || -> BTreeMap<String, Vec<String>> {
            (0..10)
                .map(|u| (format!("u{u}"), vec![format!("r{u}")]))
                .collect()
        };
        let (mut turns, mut resume_at) = (HashMap::new(), None);
        let mut evaluated = Vec::new();
        for round in 0..4 {
            let order = order(by_user(), &mut turns, resume_at.as_deref(), round);
            for (user, id) in order.iter().take(3) {
                *turns.entry(user.clone()).or_default() += 1;
                evaluated.push(id.clone());
            }
            resume_at = order.get(3).map(|(user, _)| user.clone());
        }
        assert_eq!(
            evaluated,
            [
                "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r0", "r1"
            ]
        );
    }
}
