//! The REST API: `GET /logs` (the audit API, scoped to the caller's user), `DELETE /logs`
//! (erasure), `GET /logs/stats` (counts, histogram, latency, assistants), `GET /logs/tail` (new
//! logs as Server-Sent Events), `GET /logs/export` (every matching log, streamed),
//! `GET /openapi.json`, `/healthz`, `/readyz` and `/metrics`.

mod alerts;
mod caller;
mod cursor;
mod error;
mod export;
mod openapi;
mod params;
mod slots;
mod stats;
mod tail;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{RawQuery, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

pub use alerts::{
    AlertsState, MOVING as ALERTS_MOVING, alert_rule, router as alerts_router, rule_query,
};
pub use caller::authorized_user;
use caller::{Caller, Grant, caller, query_pairs};
pub use cursor::{Cursor, CursorKey, CursorKeyError};
pub use error::ApiError;
pub use export::{CSV_COLUMNS, Format as ExportFormat};
pub use openapi::document as openapi_document;
use params::{Filters, Paging};
pub use params::{LogsRequest, MAX_LIMIT, parse as parse_logs_params};
pub use slots::Slots;
pub use stats::{
    PARTS_HEADER as STATS_PARTS_HEADER, PARTS_MAX_IDS as STATS_PARTS_MAX_IDS,
    PARTS_TOP as STATS_PARTS_TOP, StatsRequest, parse as parse_stats_params,
    parts_over as stats_parts_over, stats_error, stats_response,
};
pub use tail::{
    end_event as tail_end_event, event_stream, shutting_down_event as tail_shutting_down_event,
    tail_resumes_after,
};

use crate::auth::{KeyStore, Scope};
use crate::ingest::{Health, IngestQueue, WriteError};
use crate::metrics::{Metrics, RequestLabels};
use crate::store::{LogQuery, MAX_OFFSET, SearchError, ServedLog, Store};

/// What the REST handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub keys: KeyStore,
    pub store: Store,
    /// What the writer can do: `/readyz` reports it.
    pub health: watch::Receiver<Health>,
    pub metrics: Arc<Metrics>,
    /// The secret cursors are signed with.
    pub cursor_key: CursorKey,
    /// Searches allowed to run at once, in all and per user; more are answered 503 rather
    /// than queued (a tail's reads wait for theirs).
    pub searches: Slots,
    /// The writer, which erases; none in cluster mode, where erasure is not offered.
    pub writer: Option<IngestQueue>,
    /// Exports allowed to run at once, in all and per user; more are answered 503.
    pub exports: Slots,
    /// An export whose client takes nothing for this long is cut off.
    pub export_stall_timeout: Duration,
    /// Tail streams allowed at once, in all and per user; more are answered 503.
    pub tails: Slots,
    /// A tail whose client takes no event for this long is cut off.
    pub tail_stall_timeout: Duration,
    /// How long a tail resumed after an event its index does not show yet waits for it before
    /// the id is refused as unknown: none on a single node; in cluster mode, another replica
    /// may show the event a commit earlier.
    pub tail_resume_wait: Duration,
    /// Cancelled when the server begins to shut down: tails end then.
    pub shutdown: CancellationToken,
}

/// An [`ApiState`] but for the store and the writer: what the REST APIs of a cluster indexer's
/// replicas share (they have no writer: erasures come to them through their stream).
#[derive(Clone)]
pub struct ApiParts {
    pub keys: KeyStore,
    pub health: watch::Receiver<Health>,
    pub metrics: Arc<Metrics>,
    pub cursor_key: CursorKey,
    pub searches: Slots,
    pub exports: Slots,
    pub export_stall_timeout: Duration,
    pub tails: Slots,
    pub tail_stall_timeout: Duration,
    pub tail_resume_wait: Duration,
    pub shutdown: CancellationToken,
}

impl ApiParts {
    /// The parts for the REST API settings of `config`.
    pub fn new(
        config: &ApiConfig,
        keys: KeyStore,
        health: watch::Receiver<Health>,
        metrics: Arc<Metrics>,
        cursor_key: CursorKey,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            keys,
            health,
            metrics,
            cursor_key,
            searches: Slots::searches(
                config.max_concurrent_searches,
                config.max_concurrent_searches_per_user,
            ),
            exports: Slots::exports(
                config.max_concurrent_exports,
                config.max_concurrent_exports_per_user,
            ),
            export_stall_timeout: config.export_stall_timeout,
            tails: Slots::tails(
                config.max_tail_subscribers,
                config.max_tail_subscribers_per_user,
            ),
            tail_stall_timeout: config.tail_stall_timeout,
            tail_resume_wait: Duration::ZERO,
            shutdown,
        }
    }

    /// The state of the REST API on `store`.
    pub fn with_store(&self, store: Store) -> ApiState {
        ApiState {
            keys: self.keys.clone(),
            store,
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            cursor_key: self.cursor_key.clone(),
            searches: self.searches.clone(),
            writer: None,
            exports: self.exports.clone(),
            export_stall_timeout: self.export_stall_timeout,
            tails: self.tails.clone(),
            tail_stall_timeout: self.tail_stall_timeout,
            tail_resume_wait: self.tail_resume_wait,
            shutdown: self.shutdown.clone(),
        }
    }
}

impl ApiState {
    /// Runs `search` for `user` on a blocking thread within the bound of searches and the
    /// user's share of it; a 503 when either is reached.
    async fn search<T: Send + 'static>(
        &self,
        user: &str,
        search: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self.searches.take(user)?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            search(&store)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("search task failed: {e}")))
    }

    /// Checks `query`'s `q` against the index ([`Store::check`]): a 400 naming the problem.
    async fn check(&self, query: &LogQuery) -> Result<(), ApiError> {
        if query.text.is_none() {
            return Ok(());
        }
        let checked = query.clone();
        self.search(&query.user_id, move |store| store.check(&checked))
            .await?
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    }
}

/// The words a page's logs match `q` by, for the explorer to mark in their messages: each
/// as `w=<word>` (a prefix ends with `*`), form-encoded; none without such words.
pub fn highlight_header(query: &LogQuery) -> Option<HeaderValue> {
    let words = query.text.as_ref()?.highlights();
    if words.is_empty() {
        return None;
    }
    let pairs: Vec<(&str, &str)> = words.iter().map(|w| ("w", w.as_str())).collect();
    let encoded = serde_urlencoded::to_string(pairs).ok()?;
    HeaderValue::from_str(&encoded).ok()
}

/// The header of [`highlight_header`].
pub const HIGHLIGHT_HEADER: &str = "logbridge-highlight";

/// The REST API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Address of the REST listener (`/logs`, `/healthz`, `/readyz`).
    pub listen: String,
    /// Searches that may run at once; more are answered 503 with `Retry-After`.
    pub max_concurrent_searches: usize,
    /// Of which one user's, at most.
    pub max_concurrent_searches_per_user: usize,
    /// `GET /logs/tail` streams that may be open at once; more are answered 503.
    pub max_tail_subscribers: usize,
    /// Of which one user's, at most.
    pub max_tail_subscribers_per_user: usize,
    /// A tail whose client takes no event for this long is cut off.
    pub tail_stall_timeout: Duration,
    /// `GET /logs/export` walks that may run at once; more are answered 503 with `Retry-After`.
    pub max_concurrent_exports: usize,
    /// Of which one user's, at most.
    pub max_concurrent_exports_per_user: usize,
    /// An export whose client takes nothing for this long is cut off.
    pub export_stall_timeout: Duration,
}

/// Asked for by a cluster gateway (a request header, any value): the answer to `GET /logs` then
/// carries each log's sort key in this header, `timestamp:sequence` comma-separated, newest
/// first, so that the pages of several shards merge in one order.
pub const POSITIONS_HEADER: &str = "logbridge-positions";

/// The header of `GET /logs` answers that tells the sequence number the page was read at: a
/// tail given it as `cursor` follows on from the page without a gap.
pub const SEQUENCE_HEADER: &str = "logbridge-sequence";

/// The [`POSITIONS_HEADER`] value that asks `GET /logs` for the positions through the end of
/// the page and their total only, with no log ([`Positions`]).
pub const POSITIONS_ONLY: &str = "only";

/// What `GET /logs` answers with [`POSITIONS_ONLY`]: the sort keys (timestamp, sequence) of the
/// matches through the end of the page and one more, newest first, and their total.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Positions {
    pub total: u64,
    pub positions: Vec<(u64, u64)>,
}

/// The refusal of a page that starts past the deepest offset.
pub fn too_deep(page: u64, limit: usize) -> ApiError {
    ApiError::BadRequest(format!(
        "page {page} with limit {limit} starts past the first {MAX_OFFSET} logs; \
         follow data.next_cursor to read further"
    ))
}

/// The REST routes.
pub fn router(state: ApiState) -> Router {
    let timed_logs = get(logs)
        .delete(erase)
        .fallback(|| async {
            ApiError::MethodNotAllowed {
                allow: "GET, HEAD, DELETE",
            }
        })
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            time_logs_request,
        ));
    Router::new()
        .route("/logs", timed_logs)
        .route("/logs/export", get_only(export::export))
        .route("/logs/stats", get_only(stats::stats))
        .route("/logs/tail", get_only(tail::tail))
        .route("/openapi.json", get_only(openapi::document))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

/// A route that takes GET (and HEAD); other methods are answered 405.
fn get_only<H, T>(handler: H) -> MethodRouter<ApiState>
where
    H: Handler<T, ApiState>,
    T: 'static,
{
    get(handler).fallback(|| async { ApiError::MethodNotAllowed { allow: "GET, HEAD" } })
}

/// Records the latency of a `/logs` request by its status.
async fn time_logs_request(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .logs_request_seconds
        .get_or_create(&RequestLabels {
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Prometheus metrics, in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics.", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
async fn metrics(State(state): State<ApiState>) -> Response {
    metrics_response(&state.metrics)
}

/// What `GET /metrics` answers: the process' metrics, Prometheus/OpenMetrics text.
pub fn metrics_response(metrics: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}

/// Whether the process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive.", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Whether logbridge takes logs: `ready`, or why not.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain"),
        (status = 503, description = "Starting, or storage is failing.", body = String, content_type = "text/plain")))]
async fn readyz(State(state): State<ApiState>) -> Response {
    let health = state.health.borrow().clone();
    let status = if health == Health::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{health}\n")).into_response()
}

#[derive(Serialize, ToSchema)]
struct LogsBody<'a> {
    success: bool,
    message: &'static str,
    data: LogsData<'a>,
}

#[derive(Serialize, ToSchema)]
struct LogsData<'a> {
    /// Newest first.
    #[schema(value_type = Vec<ServedLog>)]
    logs: Vec<&'a RawValue>,
    /// Every log matching the filters.
    total: u64,
    page: u64,
    limit: usize,
    /// Pass as `cursor`, with the same filters, for the next page; absent after the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The logs `DELETE /logs?{raw_query}` erases of `user_id`'s: its filters, validated (errors
/// name the parameter).
pub fn erasure_query(raw_query: Option<&str>, user_id: &str) -> Result<LogQuery, ApiError> {
    params::parse_filters_only(&query_pairs(raw_query)?, user_id, ERASES)
}

/// What `DELETE /logs` does, for the messages of the parameters it refuses.
const ERASES: &str = "DELETE /logs, which erases";

/// The answer to an erasure of `deleted` logs.
pub fn erased_response(deleted: u64) -> Response {
    let body = EraseBody {
        success: true,
        message: "Activity logs deleted",
        data: EraseData { deleted },
    };
    axum::Json(body).into_response()
}

/// A request's handle on its connection, put among its extensions by the listener: cancelled,
/// the connection is dropped at once, with what it still had to send (an export cut off for a
/// client that takes nothing, whose pages would otherwise wait for the idle timeout).
#[derive(Clone, Default)]
pub struct ConnectionCut(pub CancellationToken);

#[derive(Serialize, ToSchema)]
struct EraseBody {
    success: bool,
    message: &'static str,
    data: EraseData,
}

#[derive(Serialize, ToSchema)]
struct EraseData {
    /// Logs erased.
    deleted: u64,
}

/// The answer to `DELETE /logs` asked of one replica of a cluster directly: erasure goes through
/// the shard's stream, so that every replica applies it.
const ERASURE_THROUGH_GATEWAYS: ApiError =
    ApiError::NotImplemented("DELETE /logs of a cluster goes through a gateway");

/// `DELETE /logs`: erases the caller's logs that match the filters, and answers once the
/// erasure is durable.
#[utoipa::path(delete, path = "/logs", tag = "logs", params(Filters),
    responses((status = 200, description = "The matching logs are erased for good.", body = EraseBody), ApiError),
    security(("bearer" = [])))]
async fn erase(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ApiError> {
    let Caller {
        key_name,
        user_id,
        pairs,
    } = caller(&state, &headers, raw_query.as_deref(), Scope::Delete)?;
    let query = params::parse_filters_only(&pairs, &user_id, ERASES)?;
    state.check(&query).await?;
    let Some(writer) = &state.writer else {
        return Err(ERASURE_THROUGH_GATEWAYS);
    };
    let deleted = writer.erase(query).await.map_err(|e| match e {
        WriteError::Closed => ApiError::Unavailable("logbridge is shutting down, retry later"),
        WriteError::Storage(reason) => {
            tracing::warn!(key = %key_name, user = %user_id, %reason, "erasure refused: storage is failing");
            ApiError::Unavailable(
                "storage is failing: retry the erasure later (logs it erased already stay erased)",
            )
        }
    })?;
    tracing::info!(
        key = %key_name,
        user = %user_id,
        filters = raw_query.as_deref().unwrap_or(""),
        deleted,
        "activity logs erased"
    );
    Ok(erased_response(deleted))
}

/// `GET /logs`: a page of the caller's logs matching the filters, newest first.
#[utoipa::path(get, path = "/logs", tag = "logs", params(Filters, Paging),
    responses((status = 200, description = "A page of logs, newest first.", body = LogsBody,
        headers(("Logbridge-Sequence" = String, description = "Where the page was read: `GET /logs/tail?cursor=` it follows on from this page without a gap. A sequence number; in cluster mode, for a user spread over several shards, a sequence number per shard (`<shard>:<seq>` pairs separated by commas)."))),
        ApiError),
    security(("bearer" = [])))]
async fn logs(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ApiError> {
    let Caller { user_id, pairs, .. } =
        caller(&state, &headers, raw_query.as_deref(), Scope::Read)?;
    let LogsRequest { query, page } = params::parse(&pairs, &user_id, &state.cursor_key)?;
    state.check(&query).await?;

    // read before the search: every log up to it is in what the search sees; so is every log
    // up to the highest the search saw, which a commit in between may have put past it
    let visible = *state.store.visible().borrow();
    if headers
        .get(POSITIONS_HEADER)
        .is_some_and(|value| value == POSITIONS_ONLY)
    {
        let (total, keys, seen) = state
            .search(&user_id, move |store| store.positions(&query))
            .await?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let sequence = visible.max(seen);
        let positions = keys.iter().map(|k| (k.timestamp, k.seq)).collect();
        let mut response = axum::Json(Positions { total, positions }).into_response();
        response
            .headers_mut()
            .insert(SEQUENCE_HEADER, HeaderValue::from(sequence));
        return Ok(response);
    }
    let search_query = query.clone();
    let (result, seen) = state
        .search(&user_id, move |store| store.search_seen(&search_query))
        .await?
        .map_err(|e| match e {
            SearchError::TooDeep => too_deep(page, query.limit),
            SearchError::Store(e) => ApiError::Internal(e.to_string()),
        })?;
    let sequence = visible.max(seen);

    let logs = result
        .logs
        .iter()
        .map(|(_, json)| {
            serde_json::from_slice::<&RawValue>(json)
                .map_err(|e| ApiError::Internal(format!("stored log is not JSON: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = match result.logs.last() {
        Some((last, _)) if result.has_more => {
            Some(Cursor::next(&query, *last, page.saturating_add(1)).encode(&state.cursor_key))
        }
        _ => None,
    };
    let body = LogsBody {
        success: true,
        message: "Activity logs fetched successfully",
        data: LogsData {
            logs,
            total: result.total,
            page,
            limit: query.limit,
            next_cursor,
        },
    };
    let positions = headers.contains_key(POSITIONS_HEADER).then(|| {
        let keys: Vec<String> = result.logs.iter().map(|(key, _)| key.to_string()).collect();
        keys.join(",")
    });
    let mut response = axum::Json(body).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(SEQUENCE_HEADER, HeaderValue::from(sequence));
    if let Some(words) = highlight_header(&query) {
        response_headers.insert(HIGHLIGHT_HEADER, words);
    }
    if let Some(positions) = positions.and_then(|p| HeaderValue::from_str(&p).ok()) {
        response_headers.insert(POSITIONS_HEADER, positions);
    }
    Ok(response)
}
