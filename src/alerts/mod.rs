//! Alerts: rules over a user's activity logs, evaluated on an interval from the statistics of
//! `/logs/stats`, and their alerts delivered to Prometheus Alertmanager and a signed webhook.
//!
//! - [`rule`]: a rule as its owner writes it, checked.
//! - [`state`]: where a rule's alert stands (`inactive`, `pending`, `firing`, `resolved`).
//! - [`book`]: every user's rules and their states, kept in a file beside the index (in etcd
//!   for a cluster, whose alerts are `cluster::alerting`'s).
//! - [`evaluate`]: the loop that measures each rule and moves its state, users in turn.
//! - [`deliver`]: the receivers, each on a task of its own, retrying with backoff.
//!
//! The REST API (`/alerts`) is the API's; it reads and writes the [`Alerts`] started here.

pub mod book;
pub mod deliver;
pub mod evaluate;
pub mod rule;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use book::{Book, CheckRule, Entry, Keeper, Keeping, NotKeeper};
pub use deliver::{Alert, Deliveries, Destination, SIGNATURE_HEADER, sign};
pub use evaluate::{Measuring, Source};
pub use rule::{Comparison, Measure, Rule, RuleSpec};
pub use state::{DeliveryState, RuleState, Status};

use crate::metrics::Metrics;

/// The `[alerts]` settings.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// How often every rule is evaluated.
    pub evaluation_interval: Duration,
    /// The most time one round of evaluations may take (at most the interval): rules it leaves
    /// are evaluated first in the next round.
    pub evaluation_budget: Duration,
    /// One rule's evaluation is cancelled after this.
    pub rule_timeout: Duration,
    /// Rules one user may have.
    pub max_rules_per_user: usize,
    /// Prometheus Alertmanager's base URL, when alerts go there.
    pub alertmanager_url: Option<String>,
    /// How often a firing alert is sent to Alertmanager again.
    pub resend_interval: Duration,
    /// The webhook alerts are posted to, signed, when set.
    pub webhook: Option<WebhookConfig>,
}

/// A webhook and the file of its signing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    pub secret_file: PathBuf,
}

/// The rules and the receivers: what the API changes and the evaluation reads.
#[derive(Clone)]
pub struct Alerts {
    pub book: Book,
    pub deliveries: Deliveries,
}

impl Alerts {
    /// Starts the receivers of `config` and the evaluation of the rules of `book` over the
    /// statistics of `source`; the tasks end with `shutdown`, the evaluation's after saving the
    /// states.
    pub fn start(
        config: &AlertsConfig,
        book: Book,
        source: Arc<dyn Source>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Self, Vec<JoinHandle<()>>)> {
        let mut destinations = Vec::new();
        if let Some(url) = &config.alertmanager_url {
            destinations.push(Destination::Alertmanager {
                url: url.clone(),
                // as Prometheus does: four times the longer of the resend and the interval
                expires_after: 4 * config.resend_interval.max(config.evaluation_interval),
            });
        }
        if let Some(webhook) = &config.webhook {
            let secret = std::fs::read(&webhook.secret_file).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read alerts.webhook_secret_file {}: {e}",
                    webhook.secret_file.display()
                )
            })?;
            let secret = secret.trim_ascii().to_vec();
            anyhow::ensure!(
                !secret.is_empty(),
                "alerts.webhook_secret_file {} is empty",
                webhook.secret_file.display()
            );
            destinations.push(Destination::Webhook {
                url: webhook.url.clone(),
                secret,
            });
        }
        let (deliveries, mut tasks) = Deliveries::start(
            destinations,
            book.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let evaluator = evaluate::Evaluator::new(
            book.clone(),
            source,
            deliveries.clone(),
            metrics,
            config.clone(),
        );
        tasks.push(tokio::spawn(evaluator.run(shutdown)));
        Ok((Self { book, deliveries }, tasks))
    }
}

/// Now, in nanoseconds since the epoch.
pub fn now() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// Times (nanoseconds since the epoch) written as RFC 3339 in JSON.
pub mod time {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::store::format_timestamp;

    fn parse<E: serde::de::Error>(text: &str) -> Result<u64, E> {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| E::custom(format!("{text:?} is not an RFC 3339 time")))
    }

    pub mod required {
        use super::*;

        pub fn serialize<S: Serializer>(nanos: &u64, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&format_timestamp(*nanos))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
            parse(&String::deserialize(d)?)
        }
    }

    pub mod optional {
        use super::*;

        pub fn serialize<S: Serializer>(nanos: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match nanos {
                Some(nanos) => s.serialize_str(&format_timestamp(*nanos)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| parse(&text))
                .transpose()
        }
    }
}
