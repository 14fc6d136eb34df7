//! Delivery: alerts go to Prometheus Alertmanager's v2 API and to a webhook signed with
//! HMAC-SHA256, each receiver on a task of its own, so that a slow or failing receiver holds up
//! neither the other, the evaluation, ingest nor queries. A receiver holds at most one alert per
//! rule, the newest: an attempt that fails is retried with backoff unless a newer alert of the
//! rule replaced it meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::book::Book;
use super::now;
use crate::metrics::{DeliveryLabels, Metrics};
use crate::store::format_timestamp;

/// The header of a webhook's signature: `sha256=` and the hex HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "logbridge-signature";
/// How long one attempt may take, answer included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Webhooks posted at once.
const WEBHOOKS_AT_ONCE: usize = 16;
/// The most of a receiver's answer read, for the log.
const ANSWER_BYTES: usize = 4096;
/// Attempts at one alert before it is given up.
const MAX_ATTEMPTS: u32 = 10;
/// The wait after the first failed attempt, doubled after each next one, up to the longest.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const LONGEST_BACKOFF: Duration = Duration::from_secs(60);

/// An alert as its receivers are told it.
#[derive(Debug, Clone)]
pub struct Alert {
    pub rule_id: String,
    /// `firing` or `resolved`.
    pub status: &'static str,
    /// The rule's labels with `alertname`, `user_id` and `rule_id`.
    pub labels: BTreeMap<String, String>,
    /// The rule's annotations with `summary`, `value` and `threshold` when the rule sets none.
    pub annotations: BTreeMap<String, String>,
    pub value: Option<f64>,
    pub threshold: f64,
    /// When it fired, nanoseconds.
    pub starts_at: u64,
    /// When it resolved; none while firing.
    pub ends_at: Option<u64>,
}

/// Where alerts go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// An Alertmanager, by its base URL: alerts are posted to `/api/v2/alerts`. A firing alert
    /// is told to end `expires_after` after each sending unless sent again, so that one whose
    /// rule is gone meanwhile does not fire forever.
    Alertmanager {
        url: String,
        expires_after: Duration,
    },
    /// A URL each alert is posted to alone, signed with `secret`.
    Webhook { url: String, secret: Vec<u8> },
}

impl Destination {
    /// The receiver's name in the rules' states and the metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Destination::Alertmanager { .. } => "alertmanager",
            Destination::Webhook { .. } => "webhook",
        }
    }
}

/// An alert waiting for its attempt.
struct Pending {
    alert: Alert,
    attempts: u32,
    due: Instant,
}

/// One destination and the alerts it has yet to take.
struct Receiver {
    destination: Destination,
    pending: Mutex<HashMap<String, Pending>>,
    wake: Notify,
}

/// The receivers; cheap to clone.
#[derive(Clone, Default)]
pub struct Deliveries {
    receivers: Vec<Arc<Receiver>>,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

impl Deliveries {
    /// Starts a task for each destination, which records its attempts in `book` and `metrics`,
    /// until `shutdown`.
    pub fn start(
        destinations: Vec<Destination>,
        book: Book,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let client = http_client();
        let receivers: Vec<Arc<Receiver>> = destinations
            .into_iter()
            .map(|destination| {
                Arc::new(Receiver {
                    destination,
                    pending: Mutex::new(HashMap::new()),
                    wake: Notify::new(),
                })
            })
            .collect();
        let tasks = receivers
            .iter()
            .map(|receiver| {
                tokio::spawn(run(
                    receiver.clone(),
                    client.clone(),
                    book.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        (Self { receivers }, tasks)
    }

    /// Hands `alert` to every receiver (or only Alertmanager when `alertmanager_only`, for a
    /// firing alert sent again), replacing what each still held of its rule.
    pub fn send(&self, alert: &Alert, alertmanager_only: bool) {
        for receiver in &self.receivers {
            if alertmanager_only
                && !matches!(receiver.destination, Destination::Alertmanager { .. })
            {
                continue;
            }
            let pending = Pending {
                alert: alert.clone(),
                attempts: 0,
                due: Instant::now(),
            };
            lock(&receiver.pending).insert(alert.rule_id.clone(), pending);
            receiver.wake.notify_one();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client of HTTP and of HTTPS verified against the system's roots.
fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(ATTEMPT_TIMEOUT));
    connector.enforce_http(false);
    let builder = HttpsConnectorBuilder::new();
    let https = match builder.with_native_roots() {
        Ok(builder) => builder.https_or_http(),
        Err(e) => {
            tracing::warn!(error = %e, "no system CA certificates: HTTPS receivers of alerts cannot be verified");
            HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                )
                .https_or_http()
        }
    };
    Client::builder(TokioExecutor::new()).build(https.enable_http1().wrap_connector(connector))
}

/// The task of one receiver: attempts what is due, waits for what comes next.
async fn run(
    receiver: Arc<Receiver>,
    client: HttpClient,
    book: Book,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let name = receiver.destination.name();
    loop {
        let (due, next) = {
            let mut pending = lock(&receiver.pending);
            let now = Instant::now();
            let due_ids: Vec<String> = pending
                .iter()
                .filter(|(_, p)| p.due <= now)
                .map(|(id, _)| id.clone())
                .collect();
            let due: Vec<Pending> = due_ids.iter().filter_map(|id| pending.remove(id)).collect();
            (due, pending.values().map(|p| p.due).min())
        };
        if due.is_empty() {
            let until = next.unwrap_or_else(|| Instant::now() + LONGEST_BACKOFF);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = receiver.wake.notified() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            continue;
        }
        let outcomes = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcomes = attempt(&client, &receiver.destination, &due) => outcomes,
        };
        let at = now();
        let mut rules = book.lock();
        for (pending, outcome) in due.into_iter().zip(outcomes) {
            let outcome_label = match &outcome {
                Ok(()) => "delivered",
                Err(_) if pending.attempts + 1 >= MAX_ATTEMPTS => "dropped",
                Err(_) => "failed",
            };
            metrics
                .alert_deliveries
                .get_or_create(&DeliveryLabels {
                    receiver: name,
                    outcome: outcome_label,
                })
                .inc();
            if let Err(error) = &outcome {
                tracing::warn!(receiver = name, rule = %pending.alert.rule_id, %error, attempts = pending.attempts + 1, "alert not delivered");
            }
            if let Some(entry) = rules.entries.get_mut(&pending.alert.rule_id) {
                let recorded = match (&outcome, outcome_label) {
                    (Err(e), "dropped") => {
                        Err(format!("given up after {MAX_ATTEMPTS} attempts: {e}"))
                    }
                    _ => outcome.clone(),
                };
                entry.state.delivered(name, at, recorded);
            }
            if outcome.is_err() && outcome_label == "failed" {
                retry(&receiver, pending);
            }
        }
        rules.changed();
    }
}

/// Puts a failed alert back with its next attempt due after a backoff, unless a newer alert of
/// its rule came meanwhile.
fn retry(receiver: &Receiver, mut pending: Pending) {
    pending.attempts += 1;
    let backoff = FIRST_BACKOFF
        .saturating_mul(1 << (pending.attempts - 1).min(16))
        .min(LONGEST_BACKOFF);
    pending.due = Instant::now() + backoff;
    lock(&receiver.pending)
        .entry(pending.alert.rule_id.clone())
        .or_insert(pending);
}

/// One attempt at each of `due`: one request for all of them to an Alertmanager, one each to a
/// webhook.
async fn attempt(
    client: &HttpClient,
    destination: &Destination,
    due: &[Pending],
) -> Vec<Result<(), String>> {
    match destination {
        Destination::Alertmanager { url, expires_after } => {
            let sent_at = now();
            let alerts: Vec<PostableAlert> = due
                .iter()
                .map(|p| PostableAlert::new(&p.alert, sent_at, *expires_after))
                .collect();
            let body = serde_json::to_vec(&alerts).expect("alerts serialize");
            let target = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
            let outcome = post(client, &target, body, None).await;
            vec![outcome; due.len()]
        }
        Destination::Webhook { url, secret } => {
            // a few at a time: a webhook that hangs holds up each batch for one timeout
            let mut outcomes = Vec::with_capacity(due.len());
            for batch in due.chunks(WEBHOOKS_AT_ONCE) {
                let mut sending = tokio::task::JoinSet::new();
                for (n, pending) in batch.iter().enumerate() {
                    let body = serde_json::to_vec(&WebhookBody::new(&pending.alert))
                        .expect("alerts serialize");
                    let signature = sign(secret, &body);
                    let (client, url) = (client.clone(), url.clone());
                    sending.spawn(
                        async move { (n, post(&client, &url, body, Some(signature)).await) },
                    );
                }
                let mut answers = vec![Err("not sent".to_owned()); batch.len()];
                while let Some(answer) = sending.join_next().await {
                    if let Ok((n, outcome)) = answer {
                        answers[n] = outcome;
                    }
                }
                outcomes.extend(answers);
            }
            outcomes
        }
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts a JSON `body` to `url`: fine on a 2xx answer, the reason otherwise.
async fn post(
    client: &HttpClient,
    url: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> Result<(), String> {
    let mut request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("logbridge/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad request to {url}: {e}"))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            message
        })?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), ANSWER_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            return Ok(());
        }
        // what the receiver said goes to the log only: an Alertmanager's answer to a batch may
        // quote other users' alerts, and the rules' states are their users' to read
        let said = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        tracing::warn!(%url, %status, answer = said.trim(), "an alert receiver refused");
        Err(format!("answered {status}"))
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())))
}

/// An alert as Alertmanager's `POST /api/v2/alerts` takes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostableAlert<'a> {
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    starts_at: String,
    ends_at: String,
}

impl<'a> PostableAlert<'a> {
    fn new(alert: &'a Alert, sent_at: u64, expires_after: Duration) -> Self {
        let expires = u64::try_from(expires_after.as_nanos()).unwrap_or(u64::MAX);
        Self {
            labels: &alert.labels,
            annotations: &alert.annotations,
            starts_at: format_timestamp(alert.starts_at),
            ends_at: format_timestamp(alert.ends_at.unwrap_or(sent_at.saturating_add(expires))),
        }
    }
}

/// What a webhook is posted: one alert.
#[derive(Serialize)]
struct WebhookBody<'a> {
    status: &'static str,
    rule_id: &'a str,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    value: Option<f64>,
    threshold: f64,
    starts_at: String,
    ends_at: Option<String>,
    /// When this attempt was made: a receiver may refuse old ones (replays).
    sent_at: String,
}

impl<'a> WebhookBody<'a> {
    fn new(alert: &'a Alert) -> Self {
        Self {
            status: alert.status,
            rule_id: &alert.rule_id,
            labels: &alert.labels,
            annotations: &alert.annotations,
            value: alert.value,
            threshold: alert.threshold,
            starts_at: format_timestamp(alert.starts_at),
            ends_at: alert.ends_at.map(format_timestamp),
            sent_at: format_timestamp(now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_firing_alert_expires_unless_sent_again_and_a_resolved_one_ends_when_it_resolved() {
        let mut alert = Alert {
            rule_id: "r".into(),
            status: "firing",
            labels: BTreeMap::from([("alertname".into(), "errors".into())]),
            annotations: BTreeMap::new(),
            value: Some(3.0),
            threshold: 2.0,
            starts_at: 1_000_000_000,
            ends_at: None,
        };
        let s = 1_000_000_000;
        let firing = PostableAlert::new(&alert, 10 * s, Duration::from_secs(240));
        assert_eq!(firing.starts_at, "1970-01-01T00:00:01.000Z");
        assert_eq!(firing.ends_at, "1970-01-01T00:04:10.000Z");
        alert.ends_at = Some(20 * s);
        let resolved = PostableAlert::new(&alert, 30 * s, Duration::from_secs(240));
        assert_eq!(resolved.ends_at, "1970-01-01T00:00:20.000Z");
    }
}
