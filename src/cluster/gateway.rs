//! The gateway's REST API: reads are authorized here, then forwarded to a ready replica of the
//! caller's shard, whose answer (a page, statistics, an export or a tail) streams back as it
//! is. The explorer and the OpenAPI document are served here.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use super::indexer::NOT_HERE;
use super::membership::View;
use super::shard::shard_of;
use crate::api::{self, ApiError, ERASURE_NOT_IN_CLUSTER};
use crate::auth::{KeyStore, Scope};
use crate::metrics::Metrics;

/// The request headers a replica needs; the rest stay at the gateway.
const FORWARDED: [header::HeaderName; 3] = [
    header::AUTHORIZATION,
    header::ACCEPT,
    header::HeaderName::from_static("last-event-id"),
];

/// Longest wait for a replica's answer to begin (its body may then stream for as long as it
/// takes: an export, a tail).
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
pub struct Gateway {
    pub keys: KeyStore,
    pub view: watch::Receiver<View>,
    pub shards: u32,
    pub replicas: usize,
    pub metrics: Arc<Metrics>,
    pub client: Client<HttpConnector, Body>,
}

impl Gateway {
    pub fn client() -> Client<HttpConnector, Body> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(connector)
    }
}

/// The REST routes of a gateway.
pub fn router(gateway: Gateway) -> Router {
    let forward_only = || -> MethodRouter<Gateway> {
        get(forward).fallback(|| async { ApiError::MethodNotAllowed { allow: "GET, HEAD" } })
    };
    Router::new()
        .route(
            "/logs",
            get(forward).delete(erase).fallback(|| async {
                ApiError::MethodNotAllowed {
                    allow: "GET, HEAD, DELETE",
                }
            }),
        )
        .route("/logs/export", forward_only())
        .route("/logs/stats", forward_only())
        .route("/logs/tail", forward_only())
        .route("/openapi.json", get(api::openapi_document))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(gateway): State<Gateway>| async move {
                api::metrics_response(&gateway.metrics)
            }),
        )
        .fallback(|| async { ApiError::NotFound })
        .with_state(gateway)
}

/// Ready once the cluster's map is known and names at least one indexer.
async fn readyz(State(gateway): State<Gateway>) -> Response {
    let view = gateway.view.borrow();
    if view.indexers().is_empty() {
        return (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no indexer known yet (is etcd reachable?)",
        )
            .into_response();
    }
    "ready".into_response()
}

/// `DELETE /logs`: the key is checked as on a single node, then the erasure is declined.
async fn erase(State(gateway): State<Gateway>, headers: HeaderMap) -> Result<Response, ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    gateway.keys.authorize(authorization, Scope::Delete)?;
    Err(ERASURE_NOT_IN_CLUSTER)
}

/// Forwards a read to a ready replica of the caller's shard, trying the next one when a
/// replica cannot be reached or no longer holds the shard.
async fn forward(State(gateway): State<Gateway>, request: Request) -> Result<Response, ApiError> {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let principal = gateway.keys.authorize(authorization, Scope::Read)?;
    let Some(user_id) = principal.user_id else {
        return Err(ApiError::Internal(format!(
            "read key {} has no user",
            principal.key_name
        )));
    };
    let shard = shard_of(&user_id, gateway.shards);
    let targets = gateway
        .view
        .borrow()
        .read_targets(shard, gateway.replicas, &user_id);
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    // the last replica that answered 503 (busy), passed on when no other answers
    let mut busy = None;
    for target in targets {
        let mut upstream = http::Request::builder()
            .method(request.method())
            .uri(format!("{target}/shards/{shard}{path_and_query}"));
        for name in &FORWARDED {
            if let Some(value) = request.headers().get(name) {
                upstream = upstream.header(name, value);
            }
        }
        let upstream = upstream
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(format!("cannot build the forwarded request: {e}")))?;
        match tokio::time::timeout(RESPONSE_TIMEOUT, gateway.client.request(upstream)).await {
            Ok(Ok(response)) if response.status() == NOT_HERE => {
                tracing::debug!(shard, %target, "replica moved away; trying the next");
            }
            Ok(Ok(response)) if response.status() == http::StatusCode::SERVICE_UNAVAILABLE => {
                tracing::debug!(shard, %target, "replica busy; trying the next");
                busy = Some(response);
            }
            Ok(Ok(response)) => return Ok(response.map(Body::new)),
            Ok(Err(e)) => {
                tracing::warn!(shard, %target, error = %e, "replica unreachable; trying the next");
            }
            Err(_) => {
                tracing::warn!(shard, %target, "replica did not answer in time; trying the next");
            }
        }
    }
    if let Some(busy) = busy {
        return Ok(busy.map(Body::new));
    }
    Err(ApiError::Unavailable(
        "no caught-up replica of this user's shard answers now, retry later",
    ))
}
