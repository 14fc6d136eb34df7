//! An alert rule as its owner writes it, and what it means: the filters of `GET /logs`, a
//! window, a measure of the matching logs, a comparison with a threshold, how long it must hold
//! before the alert fires, and the labels its alerts carry.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::mapping::{LogStatus, LogType};
use crate::store::{LogQuery, Stats};

/// The shortest window: what fewer seconds hold is noise, and a rule is evaluated at most every
/// second.
const MIN_WINDOW: Duration = Duration::from_secs(10);
/// The longest window and the longest `for`.
const MAX_WINDOW: Duration = Duration::from_secs(7 * 86_400);
/// Bounds of the texts of a rule.
const MAX_NAME_BYTES: usize = 256;
const MAX_LABELS: usize = 32;
const MAX_LABEL_NAME_BYTES: usize = 64;
const MAX_LABEL_VALUE_BYTES: usize = 1024;
/// The filters a rule takes: those of `GET /logs` but for the time range, which is the window.
const FILTERS: [&str; 5] = ["log_type", "status", "assistant_id", "room_name", "q"];
/// Labels every alert carries, set by logbridge: a rule cannot claim another user's alerts.
const RESERVED_LABELS: [&str; 3] = ["alertname", "user_id", "rule_id"];

/// An alert rule, as `POST /alerts` and `PUT /alerts/{id}` take it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// What the alert is called: its `alertname` in Alertmanager. 1 to 256 bytes.
    pub name: String,
    /// The filters of `GET /logs` the counted logs match (`log_type`, `status`, `assistant_id`,
    /// `room_name`, `q`), as their values; none counts every log of the user.
    #[serde(default)]
    pub filters: BTreeMap<String, String>,
    /// How far back from each evaluation logs are counted, by their timestamps: a whole number
    /// of seconds, minutes, hours or days (`30s`, `5m`, `1h`, `1d`), from 10 s to 7 d.
    pub window: String,
    pub measure: Measure,
    pub comparison: Comparison,
    /// What the measure is compared with: a count, a ratio from 0 to 1 or milliseconds.
    pub threshold: f64,
    /// How long the comparison must hold before the alert fires (`pending` until then), as
    /// `window` is written; `0s` (the default) fires at once. At most 7 d.
    #[serde(default = "no_wait", rename = "for")]
    pub hold: String,
    /// Labels of its alerts, for Alertmanager's routing, grouping and silences: names of
    /// letters, digits and `_` (not starting with a digit), other than `alertname`, `user_id` and
    /// `rule_id`, which logbridge sets. At most 32.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations of its alerts (`summary`, `description`, `runbook_url`...), named as labels
    /// are. At most 32.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

fn no_wait() -> String {
    "0s".to_owned()
}

/// What a rule measures of the logs in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// The matching logs.
    Count,
    /// Those of them with status `error`.
    ErrorCount,
    /// Errors over all matching logs, from 0 to 1; no value without a log.
    ErrorRatio,
    /// Latency percentiles in milliseconds, of logs of the one `log_type` the filters name; no
    /// value without a log.
    LatencyP50,
    LatencyP95,
    LatencyP99,
}

impl Measure {
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Count => "count",
            Measure::ErrorCount => "error_count",
            Measure::ErrorRatio => "error_ratio",
            Measure::LatencyP50 => "latency_p50",
            Measure::LatencyP95 => "latency_p95",
            Measure::LatencyP99 => "latency_p99",
        }
    }

    fn is_latency(self) -> bool {
        matches!(
            self,
            Measure::LatencyP50 | Measure::LatencyP95 | Measure::LatencyP99
        )
    }

    /// The measure of `stats`, the statistics of the logs a rule of `log_type` counts; none
    /// when there is nothing to measure (a ratio or a percentile of no log).
    pub fn of(self, stats: &Stats, log_type: Option<LogType>) -> Option<f64> {
        let errors = || -> u64 {
            LogType::ALL
                .iter()
                .map(|t| stats.count(*t, LogStatus::Error))
                .sum()
        };
        match self {
            Measure::Count => Some(stats.total() as f64),
            Measure::ErrorCount => Some(errors() as f64),
            Measure::ErrorRatio => {
                let total = stats.total();
                (total > 0).then(|| errors() as f64 / total as f64)
            }
            Measure::LatencyP50 | Measure::LatencyP95 | Measure::LatencyP99 => {
                let index = LogType::ALL.iter().position(|t| Some(*t) == log_type)?;
                let latency = stats.latency[index]?;
                Some(match self {
                    Measure::LatencyP50 => latency.p50,
                    Measure::LatencyP95 => latency.p95,
                    _ => latency.p99,
                } as f64)
            }
        }
    }
}

/// How the measure is compared with the threshold: the alert is active while this holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Comparison {
    #[serde(rename = ">")]
    Above,
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "<=")]
    AtMost,
}

impl Comparison {
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Above => ">",
            Comparison::AtLeast => ">=",
            Comparison::Below => "<",
            Comparison::AtMost => "<=",
        }
    }

    /// Whether `value` compared with `threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value > threshold,
            Comparison::AtLeast => value >= threshold,
            Comparison::Below => value < threshold,
            Comparison::AtMost => value <= threshold,
        }
    }
}

/// A rule checked for its user: what evaluations run.
#[derive(Debug, Clone)]
pub struct Rule {
    pub spec: RuleSpec,
    /// The filters, with no time range.
    pub query: LogQuery,
    pub window: Duration,
    pub hold: Duration,
}

impl Rule {
    /// `spec` checked as a rule whose filters select `query` (made of [`filter_pairs`] by the
    /// API's parser, for the rule's user): errors name the field.
    pub fn new(spec: RuleSpec, query: LogQuery) -> Result<Self, String> {
        if spec.name.trim().is_empty() || spec.name.len() > MAX_NAME_BYTES {
            return Err(format!(
                "name must be 1 to {MAX_NAME_BYTES} bytes, not blank"
            ));
        }
        if spec.measure.is_latency() && query.log_type.is_none() {
            return Err(format!(
                "measure {} needs filters.log_type: latencies are kept per type",
                spec.measure.as_str()
            ));
        }
        if !spec.threshold.is_finite() {
            return Err("threshold must be a finite number".to_owned());
        }
        let window = duration("window", &spec.window)?;
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
            return Err("window must be from 10s to 7d".to_owned());
        }
        let hold = duration("for", &spec.hold)?;
        if hold > MAX_WINDOW {
            return Err("for must be at most 7d".to_owned());
        }
        texts("labels", &spec.labels)?;
        texts("annotations", &spec.annotations)?;
        if let Some(name) = spec
            .labels
            .keys()
            .find(|k| RESERVED_LABELS.contains(&k.as_str()))
        {
            return Err(format!("labels.{name} is set by logbridge"));
        }
        for (field, texts) in [("labels", &spec.labels), ("annotations", &spec.annotations)] {
            if let Some(name) = texts.keys().find(|k| !label_name(k)) {
                return Err(format!(
                    "{field}.{name} is not a label name: letters, digits and _, not starting \
                     with a digit"
                ));
            }
        }
        Ok(Rule {
            spec,
            query,
            window,
            hold,
        })
    }

    /// The query of the logs this rule counts in the window that ends at `now` (nanoseconds).
    pub fn query_at(&self, now: u64) -> LogQuery {
        let window = u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX);
        LogQuery {
            start: Some(now.saturating_sub(window)),
            end: Some(now),
            ..self.query.clone()
        }
    }

    /// The measure of `stats`, the statistics of this rule's logs.
    pub fn measure(&self, stats: &Stats) -> Option<f64> {
        self.spec.measure.of(stats, self.query.log_type)
    }
}

/// The filters of `spec` as the query-string pairs of `GET /logs`, for its parser; an error
/// names a filter a rule does not take.
pub fn filter_pairs(spec: &RuleSpec) -> Result<Vec<(String, String)>, String> {
    if let Some(name) = spec.filters.keys().find(|k| !FILTERS.contains(&k.as_str())) {
        let why = match name.as_str() {
            "start_time" | "end_time" => "the rule's window sets the time".to_owned(),
            _ => format!("filters take {}", FILTERS.join(", ")),
        };
        return Err(format!("filters.{name} is not a filter of a rule: {why}"));
    }
    Ok(spec
        .filters
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

/// `text` as a duration: a whole number and one of `s`, `m`, `h`, `d`; errors name `field`.
pub fn duration(field: &str, text: &str) -> Result<Duration, String> {
    let bad =
        || format!("{field} must be a whole number of s, m, h or d, such as 30s, 5m, 1h or 1d");
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at_checked(split).ok_or_else(bad)?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || number.len() > 9 {
        return Err(bad());
    }
    let seconds: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let count: u64 = number.parse().map_err(|_| bad())?;
    Ok(Duration::from_secs(count * seconds))
}

/// Labels or annotations within their bounds.
fn texts(field: &str, texts: &BTreeMap<String, String>) -> Result<(), String> {
    let bad = |message: String| Err(message);
    if texts.len() > MAX_LABELS {
        return bad(format!("{field} must be at most {MAX_LABELS}"));
    }
    for (name, value) in texts {
        if name.is_empty() || name.len() > MAX_LABEL_NAME_BYTES {
            return bad(format!(
                "{field} names must be 1 to {MAX_LABEL_NAME_BYTES} bytes"
            ));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            return bad(format!(
                "{field}.{name} must be at most {MAX_LABEL_VALUE_BYTES} bytes"
            ));
        }
    }
    Ok(())
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<RuleSpec, serde_json::Error> {
        serde_json::from_value(json)
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "name": "CRM webhooks failing",
            "filters": { "log_type": "end_call_webhook", "status": "error" },
            "window": "5m",
            "measure": "count",
            "comparison": ">",
            "threshold": 10,
        })
    }

    /// What the API's parser makes of the filters the tests use.
    fn query(spec: &RuleSpec, user: &str) -> LogQuery {
        LogQuery {
            user_id: user.to_owned(),
            log_type: spec.filters.get("log_type").map(|t| t.parse().unwrap()),
            ..LogQuery::default()
        }
    }

    fn refused(change: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut json = base();
        change(&mut json);
        let spec = spec(json).unwrap();
        let checked = filter_pairs(&spec).and_then(|_| Rule::new(spec.clone(), query(&spec, "u")));
        checked.expect_err("refused")
    }

    #[test]
    fn a_rule_reads_its_filters_window_and_hold() {
        let spec = spec(base()).unwrap();
        assert_eq!(
            filter_pairs(&spec).unwrap(),
            [
                ("log_type".to_owned(), "end_call_webhook".to_owned()),
                ("status".to_owned(), "error".to_owned())
            ]
        );
        let rule = Rule::new(spec.clone(), query(&spec, "user-a")).unwrap();
        assert_eq!(rule.window, Duration::from_secs(300));
        assert_eq!(rule.hold, Duration::ZERO);
        assert_eq!(rule.query.user_id, "user-a");
        let query = rule.query_at(1_000_000_000_000);
        assert_eq!(query.start, Some(700_000_000_000));
        assert_eq!(query.end, Some(1_000_000_000_000));
        assert_eq!(duration("for", "2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(duration("for", "0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn every_bad_field_is_named() {
        use serde_json::json;
        let whole_number = "must be a whole number of s, m, h or d, such as 30s, 5m, 1h or 1d";
        let cases = [
            (
                json!({ "name": " " }),
                "name must be 1 to 256 bytes, not blank".to_owned(),
            ),
            (
                json!({ "filters": { "start_time": "2026-01-01T00:00:00Z" } }),
                "filters.start_time is not a filter of a rule: the rule's window sets the time"
                    .to_owned(),
            ),
            (
                json!({ "filters": { "page": "2" } }),
                "filters.page is not a filter of a rule: filters take log_type, status, \
                 assistant_id, room_name, q"
                    .to_owned(),
            ),
            (json!({ "window": "5" }), format!("window {whole_number}")),
            (json!({ "window": "5w" }), format!("window {whole_number}")),
            (json!({ "window": "-5m" }), format!("window {whole_number}")),
            (
                json!({ "window": "9s" }),
                "window must be from 10s to 7d".to_owned(),
            ),
            (
                json!({ "window": "8d" }),
                "window must be from 10s to 7d".to_owned(),
            ),
            (json!({ "for": "8d" }), "for must be at most 7d".to_owned()),
            (json!({ "for": "" }), format!("for {whole_number}")),
            (
                json!({ "measure": "latency_p95", "filters": {} }),
                "measure latency_p95 needs filters.log_type: latencies are kept per type"
                    .to_owned(),
            ),
            (
                json!({ "labels": { "user_id": "user-b" } }),
                "labels.user_id is set by logbridge".to_owned(),
            ),
            (
                json!({ "labels": { "team-a": "x" } }),
                "labels.team-a is not a label name: letters, digits and _, not starting with a \
                 digit"
                    .to_owned(),
            ),
            (
                json!({ "annotations": { "summary": "x".repeat(1025) } }),
                "annotations.summary must be at most 1024 bytes".to_owned(),
            ),
            (
                json!({ "annotations": { "runbook url": "https://wiki" } }),
                "annotations.runbook url is not a label name: letters, digits and _, not \
                 starting with a digit"
                    .to_owned(),
            ),
        ];
        for (change, message) in cases {
            let got = refused(|json| {
                for (key, value) in change.as_object().unwrap() {
                    json[key] = value.clone();
                }
            });
            assert_eq!(got, message, "{change}");
        }
    }

    #[test]
    fn unknown_fields_and_values_are_named_by_the_decoder() {
        let mut json = base();
        json["severity"] = "page".into();
        let error = spec(json).unwrap_err().to_string();
        assert!(error.starts_with("unknown field `severity`"), "{error}");
        let mut json = base();
        json["comparison"] = "==".into();
        let error = spec(json).unwrap_err().to_string();
        assert!(error.starts_with("unknown variant `==`"), "{error}");
    }

    #[test]
    fn measures_take_their_numbers_from_the_statistics() {
        let mut stats = Stats {
            counts: [[6, 2], [1, 3], [0, 0]],
            histogram: crate::store::TimeHistogram {
                interval: 1,
                start: 0,
                buckets: Vec::new(),
            },
            latency: [None, None, None],
            top_assistants: Vec::new(),
        };
        stats.latency[1] = Some(crate::store::Latency {
            count: 4,
            p50: 120,
            p95: 900,
            p99: 1500,
            max: 1600,
        });
        let webhook = Some(LogType::EndCallWebhook);
        assert_eq!(Measure::Count.of(&stats, None), Some(12.0));
        assert_eq!(Measure::ErrorCount.of(&stats, None), Some(5.0));
        assert_eq!(Measure::ErrorRatio.of(&stats, None), Some(5.0 / 12.0));
        assert_eq!(Measure::LatencyP95.of(&stats, webhook), Some(900.0));
        assert_eq!(
            Measure::LatencyP99.of(&stats, Some(LogType::ToolCall)),
            None
        );
        stats.counts = [[0; 2]; 3];
        assert_eq!(Measure::ErrorRatio.of(&stats, None), None);
        assert_eq!(Measure::Count.of(&stats, None), Some(0.0));
        assert!(Comparison::AtLeast.holds(10.0, 10.0));
        assert!(!Comparison::Above.holds(10.0, 10.0));
        assert!(Comparison::Below.holds(0.0, 1.0));
    }
}
