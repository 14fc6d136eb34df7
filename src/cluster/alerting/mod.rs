//! Alerts of a cluster: one gateway, the live one of the lowest id, keeps every user's rules
//! and evaluates them, so that each rule is evaluated once however many nodes there are. The
//! rules and their states are in etcd ([`keep`]), so that the next gateway takes over where the
//! last stopped; a rule is measured on ready replicas of its user's shards, every shard of a
//! spread user added up ([`measure`]); any gateway's `/alerts` is passed on to the keeper.

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
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub use measure::router as peer_router;

use super::etcd::Etcd;
use super::gateway::{Gateway, RESPONSE_TIMEOUT};
use super::membership::{Keys, View};
use crate::alerts::{Alerts, AlertsConfig, Book};
use crate::api::{self, AlertsState, ApiError};
use crate::auth::KeyStore;
use crate::metrics::Metrics;

/// The header of a request passed on to the keeper: a gateway that gets one and does not keep
/// the rules (it just lost them) refuses it rather than passing it on again.
const PASSED_ON: &str = "logbridge-alerts-passed-on";

/// How soon a keeper that could not load the rules from etcd tries again.
const RETRY: Duration = Duration::from_secs(1);

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

/// Keeps the rules and evaluates them while the view names this gateway the keeper, until
/// `shutdown`; the evaluation then saves the states.
pub async fn run(
    alerting: Alerting,
    keeping: Keeping,
    gateway: Gateway,
    shutdown: CancellationToken,
) {
    let mut view = gateway.view.clone();
    let source = Arc::new(measure::Shards {
        view: gateway.view.clone(),
        shards: gateway.shards,
        replicas: gateway.replicas,
        client: gateway.client.clone(),
        cursor_key: gateway.cursor_key.clone(),
    });
    let mut held: Option<(CancellationToken, Vec<JoinHandle<()>>)> = None;
    loop {
        let keeper = keeps(&view.borrow_and_update(), &alerting.node_id);
        if keeper && held.is_none() {
            match keeping.begin(&alerting, source.clone(), &shutdown).await {
                Ok(term) => held = Some(term),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the alert rules could not be loaded from etcd; retrying");
                }
            }
        } else if !keeper && let Some(term) = held.take() {
            tracing::info!("another gateway keeps the cluster's alert rules now");
            end(&alerting, term).await;
        }
        let retry = keeper && held.is_none();
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = view.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(RETRY), if retry => {}
        }
    }
    if let Some(term) = held {
        end(&alerting, term).await;
    }
}

/// Whether `view` names the gateway `node_id` the keeper of the rules.
fn keeps(view: &View, node_id: &str) -> bool {
    view.alerts_keeper().is_some_and(|(id, _)| id == node_id)
}

impl Keeping {
    /// Loads the rules from etcd and starts evaluating them and serving `/alerts`, until the
    /// token it returns (a child of `shutdown`) is cancelled.
    async fn begin(
        &self,
        alerting: &Alerting,
        source: Arc<measure::Shards>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<(CancellationToken, Vec<JoinHandle<()>>)> {
        let (entries, keeper) = keep::load(&self.etcd, &self.keys, &alerting.node_id).await?;
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
        tracing::info!("this gateway keeps the cluster's alert rules and evaluates them");
        Ok((stop, tasks))
    }
}

/// Stops serving and evaluating the rules; the evaluation saves its states on the way out
/// (refused by etcd when another gateway keeps them already).
async fn end(alerting: &Alerting, (stop, tasks): (CancellationToken, Vec<JoinHandle<()>>)) {
    alerting.local.store(None);
    stop.cancel();
    for task in tasks {
        let _ = task.await;
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
    let keeper = {
        let view = gateway.view.borrow();
        view.alerts_keeper()
            .map(|(id, node)| (id.to_owned(), node.api.clone()))
    };
    let moving = ApiError::Unavailable("the alert rules are moving to another gateway, retry");
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
