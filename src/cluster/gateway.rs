//! The gateway's REST API: reads are authorized here, then forwarded to a ready replica of the
//! caller's shard, whose answer (a page, statistics, an export or a tail) streams back as it
//! is. The explorer and the OpenAPI document are served here.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use arc_swap::ArcSwapOption;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::indexer::{INDEXED_HEADER, NOT_HERE};
use super::lag::Freshness;
use super::membership::{ShardCheck, View};
use super::shard::{message_of, shards_of_user};
use super::tls::HttpClient;
use crate::api::{self, ApiError, Cursor, CursorKey, LogsRequest, POSITIONS_HEADER};
use crate::auth::{KeyStore, Scope};
use crate::metrics::Metrics;
use crate::store::SortKey;

/// The request headers a replica needs; the rest stay at the gateway.
const FORWARDED: [header::HeaderName; 4] = [
    header::AUTHORIZATION,
    header::ACCEPT,
    header::HeaderName::from_static("last-event-id"),
    header::HeaderName::from_static(POSITIONS_HEADER),
];

/// Longest wait for a replica's answer to begin (its body may then stream for as long as it
/// takes: an export, a tail).
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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

/// `DELETE /logs`: an erasure through the caller's shards' streams (see [`super::erasure`]).
async fn erase(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ApiError> {
    super::erasure::erase(&gateway, &headers, raw_query).await
}

/// Forwards a read to a ready replica of the caller's shard and streams its answer back. The
/// logs of a user spread over several shards are gathered from each (`GET /logs`).
async fn forward(State(gateway): State<Gateway>, request: Request) -> Result<Response, ApiError> {
    // a read has no body; what is held across the awaits is the request's head
    let (request, _) = request.into_parts();
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
    let gathered = request.uri.path() == "/logs";
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
            let shutdown = gateway.shutdown.clone().cancelled_owned();
            return Ok(response.map(|body| Body::new(EndsOnShutdown::new(body, shutdown))));
        }
        return Ok(response.map(Body::new));
    }
    if !gathered {
        return Err(ApiError::NotImplemented(
            "this user's logs are spread over several shards: GET /logs gathers them, but \
             /logs/stats, /logs/tail and /logs/export do not yet",
        ));
    }
    gather_logs(&gateway, &user_id, &shards, &request).await
}

/// Sends a read to a ready replica of `shard`, trying the next one when a replica cannot be
/// reached, no longer holds the shard, is busy or does not answer in time.
async fn ask(
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

/// Deepest offset (`page`) a gathered `GET /logs` reads to: each shard is walked that far.
const MAX_GATHERED_OFFSET: usize = 1_000;

/// One shard's part of a gathered page.
struct ShardPage {
    total: u64,
    /// Newest first, each with its sort key.
    logs: Vec<(SortKey, Box<RawValue>)>,
    /// Whether the shard holds more matching logs past these.
    more: bool,
    /// How fresh its replica's reads were (the [`INDEXED_HEADER`] it answered).
    indexed: Option<String>,
}

/// `GET /logs` of a user spread over several shards: the same page a single index would give.
/// Every shard is asked for the logs after the same position (the cursor is valid on each: the
/// same filters, signed with the cluster's key, and sequence numbers never repeat across
/// shards); the answers merge newest first by (timestamp, sequence), totals add up (the shards
/// are disjoint), and the next cursor is made from the last log of the merged page.
async fn gather_logs(
    gateway: &Gateway,
    user_id: &str,
    shards: &[u32],
    request: &http::request::Parts,
) -> Result<Response, ApiError> {
    let Some(key) = gateway.cursor_key.load_full() else {
        return Err(ApiError::Unavailable(
            "the cluster's cursor key is not known yet (is etcd reachable?), retry later",
        ));
    };
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(request.uri.query().unwrap_or(""))
            .map_err(|_| ApiError::BadRequest("the query string is malformed".to_owned()))?;
    let LogsRequest { query, page } = api::parse_logs_params(&pairs, user_id, &key)?;
    if query.offset > MAX_GATHERED_OFFSET {
        return Err(ApiError::BadRequest(format!(
            "page {page} with limit {} starts past the first {MAX_GATHERED_OFFSET} logs of a user spread over several shards; \
             follow data.next_cursor to read further",
            query.limit
        )));
    }
    let wanted = query.offset + query.limit;
    let cursor = pairs
        .iter()
        .find(|(name, value)| name == "cursor" && !value.is_empty())
        .map(|(_, value)| value.clone());
    let filters: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(name, _)| !matches!(name.as_str(), "cursor" | "page" | "limit"))
        .collect();
    let mut headers = request.headers.clone();
    headers.insert(POSITIONS_HEADER, http::HeaderValue::from_static("1"));
    let mut pages = tokio::task::JoinSet::new();
    for &shard in shards {
        let (gateway, user_id, headers) = (gateway.clone(), user_id.to_owned(), headers.clone());
        let (filters, cursor) = (filters.clone(), cursor.clone());
        pages.spawn(async move {
            shard_page(&gateway, shard, &user_id, &headers, filters, cursor, wanted).await
        });
    }
    let (mut total, mut more, mut merged) = (0, false, Vec::new());
    let mut indexed = Vec::new();
    while let Some(joined) = pages.join_next().await {
        let part = joined.map_err(|e| ApiError::Internal(format!("gather task failed: {e}")))??;
        let part = match part {
            Ok(part) => part,
            // a refusal of one shard (a bad parameter, a key gone) is the answer
            Err(response) => return Ok(response),
        };
        total += part.total;
        more |= part.more;
        indexed.extend(part.indexed);
        merged.extend(part.logs);
    }
    merged.sort_unstable_by_key(|(key, _)| std::cmp::Reverse(*key));
    more |= merged.len() > wanted;
    let logs: Vec<(SortKey, Box<RawValue>)> = merged
        .into_iter()
        .skip(query.offset)
        .take(query.limit)
        .collect();
    let next_cursor = match logs.last() {
        Some((last, _)) if more => {
            Some(Cursor::next(&query, *last, page.saturating_add(1)).encode(&key))
        }
        _ => None,
    };
    let mut data = serde_json::json!({
        "logs": logs.iter().map(|(_, log)| log.as_ref()).collect::<Vec<&RawValue>>(),
        "total": total,
        "page": page,
        "limit": query.limit,
    });
    if let Some(next_cursor) = next_cursor {
        data["next_cursor"] = next_cursor.into();
    }
    let body = serde_json::json!({
        "success": true,
        "message": "Activity logs fetched successfully",
        "data": data,
    });
    let mut response = axum::Json(body).into_response();
    indexed.sort();
    if let Ok(value) = http::HeaderValue::from_str(&indexed.join(",")) {
        response.headers_mut().insert(INDEXED_HEADER, value);
    }
    Ok(response)
}

/// Up to `wanted` of the logs of `shard` after `cursor`, walking its pages.
async fn shard_page(
    gateway: &Gateway,
    shard: u32,
    user_id: &str,
    headers: &HeaderMap,
    filters: Vec<(String, String)>,
    mut cursor: Option<String>,
    wanted: usize,
) -> Result<Result<ShardPage, Response>, ApiError> {
    let mut part = ShardPage {
        total: 0,
        logs: Vec::new(),
        more: false,
        indexed: None,
    };
    loop {
        let mut pairs = filters.clone();
        pairs.push((
            "limit".to_owned(),
            (wanted - part.logs.len()).min(api::MAX_LIMIT).to_string(),
        ));
        if let Some(cursor) = &cursor {
            pairs.push(("cursor".to_owned(), cursor.clone()));
        }
        let query = serde_urlencoded::to_string(&pairs)
            .map_err(|e| ApiError::Internal(format!("cannot encode a shard's query: {e}")))?;
        let response = ask(gateway, shard, user_id, &format!("/logs?{query}"), headers).await?;
        if response.status() != http::StatusCode::OK {
            return Ok(Err(response.map(Body::new)));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let positions = header(POSITIONS_HEADER);
        // the first page read of the shard: it shows at least that much
        part.indexed.get_or_insert_with(|| header(INDEXED_HEADER));
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::Internal(format!("a shard's answer broke off: {e}")))?
            .to_bytes();
        let answer: ShardAnswer = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Internal(format!("a shard's answer is not a page: {e}")))?;
        let keys: Vec<SortKey> = positions
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (timestamp, seq) = p.split_once(':')?;
                Some(SortKey {
                    timestamp: timestamp.parse().ok()?,
                    seq: seq.parse().ok()?,
                })
            })
            .collect();
        if keys.len() != answer.data.logs.len() {
            return Err(ApiError::Internal(format!(
                "shard {shard} gave {} positions for {} logs",
                keys.len(),
                answer.data.logs.len()
            )));
        }
        part.total = answer.data.total;
        part.logs.extend(keys.into_iter().zip(answer.data.logs));
        match answer.data.next_cursor {
            Some(next) if part.logs.len() < wanted => cursor = Some(next),
            Some(_) => {
                part.more = true;
                return Ok(Ok(part));
            }
            None => return Ok(Ok(part)),
        }
    }
}

/// What a shard answers to `GET /logs`, as far as a gathered page needs it.
#[derive(Deserialize)]
struct ShardAnswer {
    data: ShardData,
}

#[derive(Deserialize)]
struct ShardData {
    logs: Vec<Box<RawValue>>,
    total: u64,
    next_cursor: Option<String>,
}

/// A tail passed on from a replica that ends, as a single node's does, with a final `end` event
/// once the node begins to shut down: at the first boundary between events after that, so that
/// no event is cut.
struct EndsOnShutdown {
    body: Incoming,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The line ends (up to two) that what was passed on so far ends with: two end an event.
    trailing_newlines: usize,
    /// Whether the final event is due (shutdown began), and whether it was sent.
    ending: bool,
    ended: bool,
}

impl EndsOnShutdown {
    fn new(body: Incoming, shutdown: WaitForCancellationFutureOwned) -> Self {
        Self {
            body,
            shutdown: Box::pin(shutdown),
            trailing_newlines: 2,
            ending: false,
            ended: false,
        }
    }
}

impl HttpBody for EndsOnShutdown {
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
        if !this.ending && this.shutdown.as_mut().poll(cx).is_ready() {
            this.ending = true;
        }
        if this.ending && this.trailing_newlines == 2 {
            this.ended = true;
            return Poll::Ready(Some(Ok(Frame::data(api::tail_shutting_down_event()))));
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
