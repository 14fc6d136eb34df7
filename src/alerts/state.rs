//! Where a rule's alert stands, and how one evaluation moves it: `inactive` → `pending` (the
//! comparison holds, for less than the rule's `for`) → `firing` → `resolved` (it no longer
//! holds). Pure: the time is given.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::time;

/// Where a rule's alert stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never active since the rule was written.
    #[default]
    Inactive,
    /// Active for less than the rule's `for`.
    Pending,
    /// Active for the rule's `for` or longer: delivered.
    Firing,
    /// Fired, then stopped holding: delivered as resolved.
    Resolved,
}

/// A rule's state: its alert's status and what the evaluations and deliveries found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RuleState {
    pub status: Status,
    /// The measure at the last evaluation; null when there was nothing to measure.
    pub value: Option<f64>,
    #[serde(with = "time::optional")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub evaluated_at: Option<u64>,
    /// Since when the comparison holds (pending or firing).
    #[serde(with = "time::optional")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub active_since: Option<u64>,
    /// When the alert last fired, and the measure that made it fire.
    #[serde(with = "time::optional")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub fired_at: Option<u64>,
    pub fired_value: Option<f64>,
    /// When it last stopped firing.
    #[serde(with = "time::optional")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub resolved_at: Option<u64>,
    /// Why the last evaluation failed; null when it did not.
    pub error: Option<String>,
    /// How the alert's deliveries go, by receiver (`alertmanager`, `webhook`).
    pub deliveries: BTreeMap<String, DeliveryState>,
}

/// How one receiver takes a rule's alerts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryState {
    #[serde(with = "time::optional")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<u64>,
    #[serde(with = "time::optional")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub failed_at: Option<u64>,
    /// Why the last attempt failed, while it is the latest news.
    pub error: Option<String>,
    /// Attempts that failed since the last that did not.
    pub failures: u64,
}

/// What an evaluation's outcome asks to be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Fired,
    Resolved,
}

impl RuleState {
    /// Moves the state by an evaluation at `now` (nanoseconds) that measured `value`, where
    /// `holds` says whether the comparison holds and `hold` is the rule's `for`.
    pub fn evaluated(
        &mut self,
        now: u64,
        value: Option<f64>,
        holds: bool,
        hold: Duration,
    ) -> Option<Change> {
        self.value = value;
        self.evaluated_at = Some(now);
        self.error = None;
        let hold = u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX);
        match (self.status, holds) {
            (Status::Firing, true) => None,
            (Status::Firing, false) => {
                self.status = Status::Resolved;
                self.active_since = None;
                self.resolved_at = Some(now);
                Some(Change::Resolved)
            }
            (Status::Pending, false) => {
                self.status = match self.fired_at {
                    Some(_) => Status::Resolved,
                    None => Status::Inactive,
                };
                self.active_since = None;
                None
            }
            (_, true) => {
                let since = *self.active_since.get_or_insert(now);
                if now.saturating_sub(since) >= hold {
                    self.status = Status::Firing;
                    self.fired_at = Some(now);
                    self.fired_value = value;
                    Some(Change::Fired)
                } else {
                    self.status = Status::Pending;
                    None
                }
            }
            (Status::Inactive | Status::Resolved, false) => None,
        }
    }

    /// Records an evaluation at `now` that failed: the alert stays where it was.
    pub fn failed(&mut self, now: u64, error: String) {
        self.evaluated_at = Some(now);
        self.error = Some(error);
    }

    /// Records an attempt to deliver to `receiver` at `now`.
    pub fn delivered(&mut self, receiver: &str, now: u64, outcome: Result<(), String>) {
        let state = self.deliveries.entry(receiver.to_owned()).or_default();
        match outcome {
            Ok(()) => {
                state.delivered_at = Some(now);
                state.error = None;
                state.failures = 0;
            }
            Err(error) => {
                state.failed_at = Some(now);
                state.error = Some(error);
                state.failures += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn an_alert_waits_for_its_hold_then_fires_once_and_resolves() {
        let mut state = RuleState::default();
        let hold = Duration::from_secs(60);
        assert_eq!(state.evaluated(100 * S, Some(3.0), false, hold), None);
        assert_eq!(state.status, Status::Inactive);
        assert_eq!(state.evaluated(110 * S, Some(12.0), true, hold), None);
        assert_eq!(state.status, Status::Pending);
        assert_eq!(state.active_since, Some(110 * S));
        assert_eq!(state.evaluated(169 * S, Some(13.0), true, hold), None);
        assert_eq!(state.status, Status::Pending);
        assert_eq!(
            state.evaluated(170 * S, Some(14.0), true, hold),
            Some(Change::Fired)
        );
        assert_eq!(state.status, Status::Firing);
        assert_eq!(
            (state.fired_at, state.fired_value),
            (Some(170 * S), Some(14.0))
        );
        assert_eq!(state.evaluated(180 * S, Some(20.0), true, hold), None);
        assert_eq!(state.fired_value, Some(14.0));
        assert_eq!(
            state.evaluated(190 * S, Some(1.0), false, hold),
            Some(Change::Resolved)
        );
        assert_eq!(state.status, Status::Resolved);
        assert_eq!(state.resolved_at, Some(190 * S));
        assert_eq!(state.value, Some(1.0));
    }

    #[test]
    fn a_pending_alert_that_stops_holding_never_fires() {
        let mut state = RuleState::default();
        let hold = Duration::from_secs(60);
        state.evaluated(0, Some(12.0), true, hold);
        assert_eq!(state.evaluated(30 * S, None, false, hold), None);
        assert_eq!((state.status, state.active_since), (Status::Inactive, None));
        // held again: the wait starts over
        state.evaluated(40 * S, Some(12.0), true, hold);
        assert_eq!(state.evaluated(90 * S, Some(12.0), true, hold), None);
        assert_eq!(
            state.evaluated(100 * S, Some(12.0), true, hold),
            Some(Change::Fired)
        );
    }

    #[test]
    fn no_hold_fires_at_the_first_evaluation_and_failures_keep_the_status() {
        let mut state = RuleState::default();
        assert_eq!(
            state.evaluated(5 * S, Some(1.0), true, Duration::ZERO),
            Some(Change::Fired)
        );
        state.failed(6 * S, "the index is failing".into());
        assert_eq!(state.status, Status::Firing);
        assert_eq!(state.error.as_deref(), Some("the index is failing"));
        state.delivered("webhook", 7 * S, Err("connection refused".into()));
        state.delivered("webhook", 8 * S, Err("connection refused".into()));
        assert_eq!(state.deliveries["webhook"].failures, 2);
        state.delivered("webhook", 9 * S, Ok(()));
        let webhook = &state.deliveries["webhook"];
        assert_eq!((webhook.failures, webhook.error.as_deref()), (0, None));
        assert_eq!(webhook.delivered_at, Some(9 * S));
        assert_eq!(webhook.failed_at, Some(8 * S));
    }
}
