//! `GET /logs/tail`: Server-Sent Events of new logs matching the filters of `GET /logs`, in the
//! order they were acknowledged, as commits make them visible.
//!
//! Each event's id is the log's sequence number: a client that reconnects with `Last-Event-ID`
//! (or `cursor`) gets every matching log after it, none twice. Each stream has a task that reads
//! the index after every commit and hands events to the response through a small channel; a
//! client that takes no event for the stall timeout is cut off with a final `end` event, so a
//! slow reader never makes the server buffer without limit.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::params::Filters;
use super::slots::{Slot, Slots};
use super::{ApiState, Caller, Grant, caller, params};
use crate::auth::Scope;
use crate::store::{LogQuery, Store};

/// Events waiting for a client, at most (one more slot is kept for the final event).
const EVENTS_IN_FLIGHT: usize = 256;

/// Logs read from the index at a time.
const PAGE: usize = 500;

/// Sequence numbers the first read covers at most, so that a client resuming far back pays for
/// its backlog a window at a time rather than all of it on every read. A read that finds less
/// than half a page doubles the stream's window (sequence numbers may be sparse: refused batches
/// leave gaps, and in cluster mode a log's number spans its message and shard); one that fills a
/// page halves it again.
const SEQ_WINDOW: u64 = 100_000;

/// A comment sent when nothing else was for this long, so that proxies keep the stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The parameters of `GET /logs/tail` besides the filters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TailParams<'a> {
    /// The id of the last event received: the stream resumes after it, as with `Last-Event-ID`
    /// (which wins when both are given). Absent, the stream starts with the next new log.
    #[param(schema_with = event_id)]
    cursor: Option<&'a str>,
}

/// An event id: a sequence number.
fn event_id() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::Integer)
        .minimum(Some(0))
        .maximum(Some(u64::MAX as f64))
        .build()
}

/// One event of the stream: an activity log (no `event` field, the id its sequence number), or
/// the final `end` event, whose data says why the stream ends and whether reconnecting with
/// `Last-Event-ID` resumes it (`{"message": "...", "resumable": true}`).
#[derive(ToSchema)]
pub struct TailEvent {
    /// The log's sequence number, a whole number: send it back as `Last-Event-ID` to resume
    /// after it. In cluster mode, for a user spread over several shards, a sequence number per
    /// shard (`<shard>:<seq>` pairs separated by commas), resumed the same way.
    #[schema(value_type = Option<String>, pattern = "^([0-9]+|[0-9]+:[0-9]+(,[0-9]+:[0-9]+)*)$")]
    id: Option<u64>,
    /// Absent for a log; `end` for the final event.
    event: Option<&'static str>,
    /// An activity log as `GET /logs` serves it, or `{"message": "...", "resumable": bool}` for
    /// `end`.
    #[schema(value_type = String, content_media_type = "application/json")]
    data: Bytes,
}

impl TailEvent {
    fn log(seq: u64, json: Vec<u8>) -> Self {
        TailEvent {
            id: Some(seq),
            event: None,
            data: json.into(),
        }
    }

    fn end(message: &str, resumable: bool) -> Self {
        let data = serde_json::json!({ "message": message, "resumable": resumable });
        TailEvent {
            id: None,
            event: Some("end"),
            data: data.to_string().into(),
        }
    }

    /// The event as the stream carries it. The data is one line: served logs are.
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.data.len() + 40);
        if let Some(id) = self.id {
            out.extend_from_slice(format!("id: {id}\n").as_bytes());
        }
        if let Some(event) = self.event {
            out.extend_from_slice(format!("event: {event}\n").as_bytes());
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.data);
        out.push(b'\n');
        out.push(b'\n');
        out.into()
    }
}

/// `GET /logs/tail`: Server-Sent Events of the caller's new logs matching the filters.
#[utoipa::path(get, path = "/logs/tail", tag = "logs",
    params(
        Filters,
        TailParams,
        ("Last-Event-ID" = Option<u64>, Header, description = "The id of the last event received: the stream resumes after it.")),
    responses(
        (status = 200, description = "New matching logs, in the order they were acknowledged, as they become visible.",
            body = TailEvent, content_type = "text/event-stream",
            headers(("Logbridge-Sequence" = String, description = "The event the stream starts after."))),
        ApiError),
    security(("bearer" = [])))]
pub async fn tail(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ApiError> {
    let Caller { user_id, pairs, .. } =
        caller(&state, &headers, raw_query.as_deref(), Scope::Read)?;
    let given = TailParams {
        cursor: params::lookup(&pairs, "cursor"),
    };
    let resume = resumes_after(&headers, given.cursor)?;
    let pairs: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "cursor").collect();
    let query = params::parse_filters_only(&pairs, &user_id, "GET /logs/tail, which streams")?;
    state.check(&query).await?;
    let slot = state.tails.take(&user_id)?;
    let mut visible = state.store.visible();
    let newest = *visible.borrow();
    let after = match resume {
        Some((name, id)) if id > newest => {
            // in cluster mode, a replica a commit behind another (the one the client left, in
            // a failover) shows the event a moment later
            let shown =
                tokio::time::timeout(state.tail_resume_wait, visible.wait_for(|seq| *seq >= id))
                    .await;
            if !matches!(shown, Ok(Ok(_))) {
                return Err(ApiError::BadRequest(format!(
                    "{name} {id} is ahead of the newest event of this stream"
                )));
            }
            id
        }
        Some((_, id)) => id,
        None => newest,
    };
    let (events, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(EVENTS_IN_FLIGHT + 1);
    let follower = Follower {
        store: state.store.clone(),
        searches: state.searches.clone(),
        grant: Grant::new(&state, &headers, &user_id),
        query,
        after,
        visible,
        events,
        last_sent: Instant::now(),
        window: SEQ_WINDOW,
        stall_timeout: state.tail_stall_timeout,
        shutdown: state.shutdown.clone(),
        _slot: slot,
    };
    tokio::spawn(follower.run());
    let mut response = event_stream(Body::from_stream(ReceiverStream::new(body)));
    response
        .headers_mut()
        .insert(super::SEQUENCE_HEADER, HeaderValue::from(after));
    Ok(response)
}

/// A response streaming `body` as Server-Sent Events.
pub fn event_stream(body: Body) -> Response {
    let mut response = body.into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // proxies such as nginx would otherwise hold events back
    response_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The event a stream resumes after, and which of `Last-Event-ID` (which wins) and `cursor`
/// named it; none for a stream that starts with the next new log.
fn resumes_after(
    headers: &HeaderMap,
    cursor: Option<&str>,
) -> Result<Option<(&'static str, u64)>, ApiError> {
    let event_id =
        |name: &'static str, value: Option<&str>| match value.and_then(|v| v.parse::<u64>().ok()) {
            Some(id) => Ok((name, id)),
            None => Err(ApiError::BadRequest(format!(
                "{name} must be the id of an event of this stream, a whole number"
            ))),
        };
    // a bad cursor is refused even where the header wins
    let cursor = cursor.map(|v| event_id("cursor", Some(v))).transpose()?;
    match headers.get("last-event-id") {
        Some(header) => event_id("Last-Event-ID", header.to_str().ok()).map(Some),
        None => Ok(cursor),
    }
}

/// The event a tail request resumes after, from its headers and query string; none when it
/// starts with the next new log or names no valid id (its answer says so).
pub fn tail_resumes_after(headers: &HeaderMap, query: Option<&str>) -> Option<u64> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or("")).ok()?;
    let cursor = params::lookup(&pairs, "cursor");
    resumes_after(headers, cursor)
        .ok()
        .flatten()
        .map(|(_, id)| id)
}

/// One stream's reader of the index.
struct Follower {
    store: Store,
    /// Reads of the index share the searches' bound, and the user's share of it.
    searches: Slots,
    /// The key is checked again as the stream goes on: revoked or expired, it ends the stream.
    grant: Grant,
    query: LogQuery,
    /// The last sequence number the client was given, or passed over.
    after: u64,
    visible: watch::Receiver<u64>,
    events: mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// When the client was last sent anything, for keep-alives.
    last_sent: Instant,
    /// Sequence numbers the next read covers at most.
    window: u64,
    stall_timeout: Duration,
    shutdown: CancellationToken,
    _slot: Slot,
}

/// Why a stream ended.
enum End {
    /// The client went away: nothing more to say.
    Gone,
    /// The server ends the stream, saying why in a final event; the client may reconnect with
    /// `Last-Event-ID` and lose nothing.
    Resumable(String),
    /// The stream's key no longer reads these logs: reconnecting would be refused.
    Final(String),
}

impl Follower {
    async fn run(mut self) {
        // one slot is kept from the start for the final event, whatever the client's pace
        let Ok(last_slot) = self.events.clone().reserve_owned().await else {
            return;
        };
        let end = self.follow().await;
        let (message, resumable) = match end {
            End::Gone => return,
            End::Resumable(message) => (message, true),
            End::Final(message) => (message, false),
        };
        last_slot.send(Ok(TailEvent::end(&message, resumable).encode()));
    }

    async fn follow(&mut self) -> End {
        // a comment first, so that the client sees the stream open before any log
        if let Err(end) = self.send(Bytes::from_static(b": tailing\n\n")).await {
            return end;
        }
        loop {
            if let Err(end) = self.check_key() {
                return end;
            }
            let upto = *self.visible.borrow_and_update();
            if let Err(end) = self.catch_up(upto).await {
                return end;
            }
            let quiet_until = self.last_sent + KEEP_ALIVE;
            tokio::select! {
                changed = self.visible.changed() => {
                    if changed.is_err() {
                        return End::Resumable(shutting_down());
                    }
                }
                () = self.events.closed() => return End::Gone,
                () = self.shutdown.cancelled() => return End::Resumable(shutting_down()),
                () = tokio::time::sleep_until(quiet_until.into()) => {
                    if let Err(end) = self.send(Bytes::from_static(b": keep-alive\n\n")).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Whether the stream's key still reads its user's logs.
    fn check_key(&self) -> Result<(), End> {
        self.grant.check().map_err(End::Final)
    }

    /// Sends every matching log up to sequence number `upto`.
    async fn catch_up(&mut self, upto: u64) -> Result<(), End> {
        while self.after < upto {
            let window_end = upto.min(self.after.saturating_add(self.window));
            let (store, query, after) = (self.store.clone(), self.query.clone(), self.after);
            let permit = tokio::select! {
                permit = self.searches.wait(&self.query.user_id) => permit,
                () = self.shutdown.cancelled() => return Err(End::Resumable(shutting_down())),
                () = self.events.closed() => return Err(End::Gone),
            };
            let page = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                store.since(&query, after, window_end, PAGE)
            })
            .await;
            let page = match page {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "tail failed to read the index");
                    return Err(End::Resumable(
                        "the index failed to answer; reconnect".into(),
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %e, "tail read task failed");
                    return Err(End::Resumable(
                        "the index failed to answer; reconnect".into(),
                    ));
                }
            };
            let full = page.len() == PAGE;
            if full {
                self.window = (self.window / 2).max(SEQ_WINDOW);
            } else if page.len() < PAGE / 2 {
                self.window = self.window.saturating_mul(2);
            }
            for (seq, json) in page {
                self.send(TailEvent::log(seq, json).encode()).await?;
                self.after = seq;
            }
            if !full {
                self.after = window_end;
            }
        }
        Ok(())
    }

    /// Hands one event to the client, waiting up to the stall timeout for room.
    async fn send(&mut self, event: Bytes) -> Result<(), End> {
        self.last_sent = Instant::now();
        tokio::select! {
            reserved = tokio::time::timeout(self.stall_timeout, self.events.reserve()) => {
                match reserved {
                    Ok(Ok(permit)) => {
                        permit.send(Ok(event));
                        Ok(())
                    }
                    Ok(Err(_)) => Err(End::Gone),
                    Err(_) => Err(End::Resumable(format!(
                        "the client took no event for {} ms and fell behind: \
                         reconnect with Last-Event-ID to resume",
                        self.stall_timeout.as_millis()
                    ))),
                }
            }
            () = self.shutdown.cancelled() => Err(End::Resumable(shutting_down())),
        }
    }
}

fn shutting_down() -> String {
    "logbridge is shutting down: reconnect with Last-Event-ID to resume".to_owned()
}

/// The final event of a stream that ends because logbridge shuts down: a cluster's gateway
/// sends it to end a tail it passes on.
pub fn shutting_down_event() -> Bytes {
    end_event(&shutting_down(), true)
}

/// A stream's final event, saying why it ends and whether reconnecting with `Last-Event-ID`
/// resumes it.
pub fn end_event(message: &str, resumable: bool) -> Bytes {
    TailEvent::end(message, resumable).encode()
}
