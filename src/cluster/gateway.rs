//! The gateway's REST API: reads are authorized here, then forwarded to a ready replica of the
//! caller's shard, whose answer (a page, statistics, an export or a tail) streams back as it
//! is, or gathered from every shard of a spread user ([`super::gather`]). `/alerts` goes to the
//! gateway that keeps the alert rules ([`super::alerting`]). The explorer and the OpenAPI
//! document are served here.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get};
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use arc_swap::ArcSwapOption;

use super::alerting::Alerting;
use super::indexer::NOT_HERE;
use super::lag::Freshness;
use super::membership::{ShardCheck, View};
use super::shard::{message_of, shards_of_user};
use super::tls::HttpClient;
use crate::api::{self, ApiError, CursorKey, POSITIONS_HEADER, STATS_PARTS_HEADER};
use crate::auth::{KeyStore, Scope};
use crate::metrics::Metrics;

/// The request headers a replica needs; the rest stay at the gateway.
const FORWARDED: [header::HeaderName; 5] = [
    header::AUTHORIZATION,
    header::ACCEPT,
    header::HeaderName::from_static("last-event-id"),
    header::HeaderName::from_static(POSITIONS_HEADER),
    header::HeaderName::from_static(STATS_PARTS_HEADER),
];

/// The headers a gateway sets on the reads it gathers, never a client: they are dropped from
/// what clients send.
const GATHERING: [&str; 2] = [POSITIONS_HEADER, STATS_PARTS_HEADER];

/// Longest wait for a replica's answer to begin (its body may then stream for as long as it
/// takes: an export, a tail).
pub(super) const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
pub struct Gateway {
    pub keys: KeyStore,
    /// Erasures are published to the shards' streams.
    pub jetstream: async_nats::jetstream::Context,
    /// The cluster's name, in its streams' subjects.
    pub cluster_name: String,
    pub view: watch::Receiver<View>,
    pub shards: u32,
    pub replicas: usize,
    pub metrics: Arc<Metrics>,
    /// How far behind each replica's reads are: reads go to those within the lag bound first.
    pub freshness: Arc<Freshness>,
    /// Nothing is published (erasures) before etcd confirmed the shard count.
    pub shard_check: watch::Receiver<ShardCheck>,
    /// Reaches the indexers: over HTTPS only when the cluster's listeners serve TLS.
    pub client: HttpClient<Body>,
    /// The cluster's cursor key, once read from etcd: gathered pages make cursors.
    pub cursor_key: Arc<ArcSwapOption<CursorKey>>,
    /// Cancelled when the node begins to shut down: tails passed on end then.
    pub shutdown: CancellationToken,
    /// Whether the indexers index the payloads by path (`[index] payload_paths`): erasures
    /// naming a path are refused here otherwise, as a single node refuses them.
    pub payload_paths: bool,
    /// The cluster's alert rules, kept by one gateway ([`super::alerting`]).
    pub alerting: Alerting,
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
        .route("/alerts", any(super::alerting::serve))
        .route("/alerts/{id}", any(super::alerting::serve))
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

/// `DELETE /logs`: an erasure through the caller's shards' streams (see [`super::erasure`]).
async fn erase(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ApiError> {
    super::erasure::erase(&gateway, &headers, raw_query).await
}

/// Forwards a read to a ready replica of the caller's shard and streams its answer back. The
/// reads of a user spread over several shards are gathered from each ([`super::gather`]).
async fn forward(State(gateway): State<Gateway>, request: Request) -> Result<Response, ApiError> {
    // a read has no body; what is held across the awaits is the request's head
    let (mut request, _) = request.into_parts();
    for name in GATHERING {
        request.headers.remove(name);
    }
    let authorization = request
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let principal = gateway.keys.authorize(authorization, Scope::Read)?;
    let Some(user_id) = principal.user_id else {
        return Err(ApiError::Internal(format!(
            "read key {} has no user",
            principal.key_name
        )));
    };
    let shards = {
        let view = gateway.view.borrow();
        shards_of_user(&user_id, view.spreads_of(&user_id), gateway.shards)
    };
    if let [shard] = shards.as_slice() {
        let path_and_query = request
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let response = ask(
            &gateway,
            *shard,
            &user_id,
            &path_and_query,
            &request.headers,
        )
        .await?;
        if request.uri.path() == "/logs/tail" && response.status().is_success() {
            let end = tail_ends(&gateway, &user_id, &shards);
            return Ok(response.map(|body| Body::new(EndsWith::new(body, end))));
        }
        return Ok(response.map(Body::new));
    }
    match request.uri.path() {
        "/logs" => super::gather::logs(&gateway, &user_id, &shards, &request).await,
        "/logs/stats" => super::gather::stats(&gateway, &user_id, &shards, &request).await,
        "/logs/export" => super::gather::export(&gateway, &user_id, &shards, &request).await,
        _ => super::gather::tail(&gateway, &user_id, &shards, &request).await,
    }
}

/// Sends a read to a ready replica of `shard`, trying the next one when a replica cannot be
/// reached, no longer holds the shard, is busy or does not answer in time.
pub(super) async fn ask(
    gateway: &Gateway,
    shard: u32,
    user_id: &str,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Result<http::Response<hyper::body::Incoming>, ApiError> {
    let mut targets = gateway
        .view
        .borrow()
        .read_targets(shard, gateway.replicas, user_id);
    // a tail resumed after an event goes first to the replicas that reported showing it (it may
    // come from one a commit ahead); a replica whose reads are past the lag bound is asked only
    // when no other answers
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(path, query)| (path, Some(query)));
    let resumed = (path == "/logs/tail")
        .then(|| api::tail_resumes_after(headers, query))
        .flatten()
        .map(message_of);
    targets.sort_by_key(|(node, _)| {
        let shows = resumed.is_none_or(|message| gateway.freshness.reached(shard, node, message));
        (!shows, !gateway.freshness.fresh(shard, node))
    });
    // the last replica that answered 503 (busy), passed on when no other answers
    let mut busy = None;
    for (_, target) in targets {
        let mut upstream = http::Request::get(format!("{target}/shards/{shard}{path_and_query}"));
        for name in &FORWARDED {
            if let Some(value) = headers.get(name) {
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
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(e)) => {
                tracing::warn!(shard, %target, error = %e, "replica unreachable; trying the next");
            }
            Err(_) => {
                tracing::warn!(shard, %target, "replica did not answer in time; trying the next");
            }
        }
    }
    busy.ok_or(ApiError::Unavailable(
        "no caught-up replica of this user's shard answers now, retry later",
    ))
}

/// What ends a tail the gateway passes on, resumably: the node's shutdown, or the user's logs
/// going to other shards than those the tail follows (a spread: the tail would miss the new
/// shards' logs; reconnecting, the client follows all of them). Its final event.
pub(super) fn tail_ends(gateway: &Gateway, user_id: &str, shards: &[u32]) -> TailEnd {
    let shutdown = gateway.shutdown.clone().cancelled_owned();
    let (mut view, user_id, shards) = (gateway.view.clone(), user_id.to_owned(), shards.to_vec());
    let total = gateway.shards;
    Box::pin(async move {
        let moved = async {
            loop {
                let now = shards_of_user(&user_id, view.borrow().spreads_of(&user_id), total);
                if now != shards {
                    return;
                }
                if view.changed().await.is_err() {
                    // no view any more: the node stops, and says so
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = shutdown => api::tail_shutting_down_event(),
            () = moved => api::tail_end_event(
                "this user's logs now go to more shards: reconnect with Last-Event-ID to resume",
                true,
            ),
        }
    })
}

/// The final event of a tail the gateway passes on, once it is due.
pub(super) type TailEnd = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// A tail passed on from a replica that ends, as a single node's does, with a final `end` event
/// once [`tail_ends`] says so: at the first boundary between events after that, so that no event
/// is cut.
struct EndsWith {
    body: Incoming,
    end: TailEnd,
    /// The line ends (up to two) that what was passed on so far ends with: two end an event.
    trailing_newlines: usize,
    /// The final event, once due; whether it was sent.
    ending: Option<Bytes>,
    ended: bool,
}

impl EndsWith {
    fn new(body: Incoming, end: TailEnd) -> Self {
        Self {
            body,
            end,
            trailing_newlines: 2,
            ending: None,
            ended: false,
        }
    }
}

impl HttpBody for EndsWith {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.ending.is_none()
            && let Poll::Ready(event) = this.end.as_mut().poll(cx)
        {
            this.ending = Some(event);
        }
        if this.trailing_newlines == 2
            && let Some(event) = this.ending.take()
        {
            this.ended = true;
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let ends = data
                    .iter()
                    .rev()
                    .take(2)
                    .take_while(|&&b| b == b'\n')
                    .count();
                this.trailing_newlines = if ends == data.len() {
                    // a frame of line ends only continues what came before
                    (this.trailing_newlines + ends).min(2)
                } else {
                    ends
                };
                // the replica's own final event ends the stream: no second one follows it
                if data.windows(11).any(|w| w == b"event: end\n") {
                    this.ended = true;
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
