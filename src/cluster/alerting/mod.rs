//! Alerts of a cluster: one gateway keeps every user's rules and evaluates them, so that each
//! rule is evaluated once however many nodes there are. The keeper is the gateway that holds
//! the keeper key in etcd, created under a lease of its own: when it dies its lease expires and
//! another gateway creates the key; one cut off from etcd past its lease's time stops by itself,
//! and its writes, fenced by the key it created, are refused. The rules and their states are in
//! etcd ([`keep`]), so that the next keeper goes on where the last stopped; a rule is measured on
//! ready replicas of its user's shards, every shard of a spread user added up ([`measure`]); any
//! gateway's `/alerts` is passed on to the keeper.

mod keep;
mod measure;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub use measure::router as peer_router;

use super::etcd::Etcd;
use super::gateway::{Gateway, RESPONSE_TIMEOUT};
use super::membership::Keys;
use crate::alerts::{Alerts, AlertsConfig, Book};
use crate::api::{self, AlertsState, ApiError};
use crate::auth::{KeyStore, Scope};
use crate::metrics::Metrics;

/// The header of a request passed on to the keeper: a gateway that gets one and does not keep
/// the rules (it just lost them) refuses it rather than passing it on again.
const PASSED_ON: &str = "logbridge-alerts-passed-on";

/// The keeper key's lease: a keeper that dies is replaced this long after, and one cut off
/// from etcd stops evaluating after this long without renewing it.
const KEEPER_TTL: Duration = Duration::from_secs(5);

/// How often the keeper renews its lease, and a gateway with no keeper in view tries to become it.
const RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// A gateway's part in the cluster's alerts: this node's id, and the `/alerts` API while it
/// keeps the rules.
#[derive(Clone)]
pub struct Alerting {
    node_id: String,
    local: Arc<ArcSwapOption<Router>>,
}

impl Alerting {
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            local: Arc::default(),
        }
    }
}

/// What keeping the rules takes.
pub struct Keeping {
    pub config: AlertsConfig,
    pub etcd: Etcd,
    pub keys: Keys,
    /// The keys the `/alerts` API takes.
    pub api_keys: KeyStore,
    pub metrics: Arc<Metrics>,
}

/// A term of keeping the rules: the lease of the keeper key, when it was last renewed, and the
/// evaluation's and deliveries' tasks, which end with `stop`.
struct Term {
    lease: i64,
    renewed: Instant,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Becomes the keeper of the rules when no gateway is, keeps them (serving `/alerts`,
/// evaluating, renewing the lease) until it can no longer renew its lease, and tries again;
/// until `shutdown`, when a keeper saves the states and gives the key up.
pub async fn run(
    alerting: Alerting,
    keeping: Keeping,
    gateway: Gateway,
    shutdown: CancellationToken,
) {
    let source = Arc::new(measure::Shards {
        view: gateway.view.clone(),
        shards: gateway.shards,
        replicas: gateway.replicas,
        client: gateway.client.clone(),
        cursor_key: gateway.cursor_key.clone(),
    });
    let mut term: Option<Term> = None;
    loop {
        term = match term {
            None if gateway.view.borrow().alerts_keeper.is_none() => {
                match keeping.begin(&alerting, source.clone(), &shutdown).await {
                    Ok(term) => term,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "could not take the alert rules over; trying again");
                        None
                    }
                }
            }
            None => None,
            Some(mut held) => match keeping.etcd.keep_alive(held.lease).await {
                Ok(true) => {
                    held.renewed = Instant::now();
                    Some(held)
                }
                Ok(false) => {
                    tracing::warn!(
                        "the lease of the alert rules expired: another gateway keeps them"
                    );
                    keeping.end(&alerting, held, false).await;
                    None
                }
                Err(e) if held.renewed.elapsed() >= KEEPER_TTL => {
                    tracing::warn!(error = %format!("{e:#}"), "etcd out of reach for the lease's time: no longer keeping the alert rules");
                    keeping.end(&alerting, held, false).await;
                    None
                }
                Err(_) => Some(held),
            },
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(RENEW_INTERVAL) => {}
        }
    }
    if let Some(held) = term {
        keeping.end(&alerting, held, true).await;
    }
}

impl Keeping {
    /// Creates the keeper key under a new lease; once it is this gateway's, loads the rules from
    /// etcd and starts evaluating them and serving `/alerts`. None when another gateway was
    /// quicker.
    async fn begin(
        &self,
        alerting: &Alerting,
        source: Arc<measure::Shards>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Term>> {
        let lease = self.etcd.grant(KEEPER_TTL).await?;
        let key = self.keys.alerts_keeper();
        let created = self
            .etcd
            .create_leased(&key, alerting.node_id.as_bytes(), lease)
            .await;
        let created = match created {
            Ok(Some(created)) => created,
            other => {
                let _ = self.etcd.revoke(lease).await;
                return other.map(|_| None);
            }
        };
        let started = self.start(alerting, source, shutdown, created).await;
        match started {
            Ok((stop, tasks)) => {
                self.metrics.alert_keeper.set(1);
                tracing::info!("this gateway keeps the cluster's alert rules and evaluates them");
                Ok(Some(Term {
                    lease,
                    renewed: Instant::now(),
                    stop,
                    tasks,
                }))
            }
            Err(e) => {
                // another gateway may take them over at once
                let _ = self.etcd.revoke(lease).await;
                Err(e)
            }
        }
    }

    /// Loads the rules and starts their evaluation, deliveries and API for the term whose key
    /// was created at revision `created`.
    async fn start(
        &self,
        alerting: &Alerting,
        source: Arc<measure::Shards>,
        shutdown: &CancellationToken,
        created: i64,
    ) -> anyhow::Result<(CancellationToken, Vec<JoinHandle<()>>)> {
        let (entries, keeper) = keep::load(&self.etcd, &self.keys, created).await?;
        let book = Book::new(
            entries,
            self.config.max_rules_per_user,
            &api::alert_rule,
            Arc::new(keeper),
        );
        let stop = shutdown.child_token();
        let (alerts, tasks) = Alerts::start(
            &self.config,
            book,
            source,
            self.metrics.clone(),
            stop.clone(),
        )?;
        let router = api::alerts_router(AlertsState {
            keys: self.api_keys.clone(),
            alerts,
            store: None,
        });
        alerting.local.store(Some(Arc::new(router)));
        Ok((stop, tasks))
    }

    /// Stops serving and evaluating the rules; the evaluation saves its states on the way out
    /// (refused when the key is no longer this term's). A keeper that shuts down then gives the
    /// key up, so that another gateway takes the rules over at once.
    async fn end(&self, alerting: &Alerting, term: Term, give_up: bool) {
        alerting.local.store(None);
        term.stop.cancel();
        for task in term.tasks {
            let _ = task.await;
        }
        self.metrics.alert_keeper.set(0);
        self.metrics.alert_rules.set(0);
        self.metrics.alerts_firing.set(0);
        if give_up {
            let _ = self.etcd.revoke(term.lease).await;
        }
    }
}

/// `/alerts` and `/alerts/{id}` of a gateway: answered here while it keeps the rules, else
/// passed on to the gateway that does.
pub async fn serve(State(gateway): State<Gateway>, mut request: Request) -> Response {
    let alerting = &gateway.alerting;
    if let Some(router) = alerting.local.load_full() {
        let router = Router::clone(&router);
        // the `/alerts` routes match the path again: without what this route's match left
        request.extensions_mut().clear();
        return match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    // the key checked here too: a gateway passes on no request it would refuse itself
    if let Err(refused) = api::authorized_user(&gateway.keys, request.headers(), Scope::Alerts) {
        return refused.into_response();
    }
    let keeper = {
        let view = gateway.view.borrow();
        view.alerts_keeper()
            .map(|(id, node)| (id.to_owned(), node.api.clone()))
    };
    let moving = ApiError::Unavailable(api::ALERTS_MOVING);
    let Some((keeper, api_url)) = keeper else {
        return moving.into_response();
    };
    if keeper == alerting.node_id || request.headers().contains_key(PASSED_ON) {
        return moving.into_response();
    }
    match pass_on(&gateway, &api_url, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(keeper = %keeper, error = %e, "the keeper of the alert rules did not answer");
            ApiError::Unavailable(
                "the gateway that keeps the alert rules cannot be reached now, retry later",
            )
            .into_response()
        }
    }
}

/// `request` sent to the keeper at `api_url`, its answer passed back as it comes.
async fn pass_on(gateway: &Gateway, api_url: &str, request: Request) -> anyhow::Result<Response> {
    let (parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream = http::Request::builder()
        .method(parts.method.clone())
        .uri(format!("{api_url}{path_and_query}"))
        .header(PASSED_ON, HeaderValue::from_static("1"));
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = parts.headers.get(&name) {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = upstream.body(body)?;
    let response = tokio::time::timeout(RESPONSE_TIMEOUT, gateway.client.request(upstream))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} s", RESPONSE_TIMEOUT.as_secs()))??;
    Ok(response.map(Body::new))
}
