//! `GET /logs/export` of a user spread over several shards: every shard's export, read at once
//! as it streams (each line after its sort key), merged newest first by (timestamp, sequence)
//! and encoded as the caller asked. Memory holds a line per shard and a page being sent; a
//! client that reads slowly slows the shards' exports down, and one that goes away stops them.

use std::collections::BinaryHeap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::HeaderValue;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::super::gateway::Gateway;
use super::ask_all;
use crate::api::{ApiError, ConnectionCut, ExportFormat, POSITIONS_HEADER};
use crate::store::SortKey;

/// Logs encoded and sent at a time.
const PAGE: usize = 1000;

/// Pages waiting for a slow client, at most (one more place is kept for the error that cuts an
/// export off).
const PAGES_IN_FLIGHT: usize = 4;

/// An export whose client takes nothing for this long is cut off (the shards' exports, which
/// it stops reading, would be cut off by their own stall timeout).
const STALL: Duration = Duration::from_secs(60);

/// The export of `user_id`'s logs over `shards`, as `request` asks for it.
pub async fn export(
    gateway: &Gateway,
    user_id: &str,
    shards: &[u32],
    request: &http::request::Parts,
) -> Result<Response, ApiError> {
    let pairs = super::query_pairs(request)?;
    let format = ExportFormat::of(&pairs)?;
    // the shards check the filters, and export with each line's position
    let mut headers = request.headers.clone();
    headers.insert(POSITIONS_HEADER, HeaderValue::from_static("1"));
    let path = format!("/logs/export?{}", request.uri.query().unwrap_or(""));
    let requests = shards
        .iter()
        .map(|&shard| (shard, path.clone(), headers.clone()))
        .collect();
    let exports = match ask_all(gateway, user_id, requests).await? {
        Ok(responses) => responses
            .into_iter()
            .map(|response| Lines::new(response.into_body()))
            .collect(),
        // a refusal of one shard (a bad parameter, too many exports) is the answer
        Err(refusal) => return Ok(refusal),
    };
    let (pages, body) = mpsc::channel(PAGES_IN_FLIGHT + 1);
    let connection = request
        .extensions
        .get::<ConnectionCut>()
        .cloned()
        .unwrap_or_default();
    tokio::spawn(merge(exports, format, pages, connection));
    Ok(format.response(Body::from_stream(ReceiverStream::new(body))))
}

/// Hands the logs of `exports` to the client newest first, a page at a time; a shard's export
/// that breaks off cuts the client's off too (an error, never a clean end).
async fn merge(
    mut exports: Vec<Lines>,
    format: ExportFormat,
    pages: mpsc::Sender<Result<Bytes, std::io::Error>>,
    connection: ConnectionCut,
) {
    // kept from the start for the error that cuts the export off, whatever the client's pace
    let Ok(last_place) = pages.clone().reserve_owned().await else {
        return;
    };
    let mut next = BinaryHeap::new();
    let mut waiting: Vec<Option<Vec<u8>>> = vec![None; exports.len()];
    let mut page = Vec::with_capacity(PAGE);
    let mut first = true;
    let merged: Result<(), std::io::Error> = async {
        for (n, export) in exports.iter_mut().enumerate() {
            if let Some((key, json)) = export.next().await? {
                next.push((key, n));
                waiting[n] = Some(json);
            }
        }
        while let Some((key, n)) = next.pop() {
            let json = waiting[n].take().expect("a shard's next line waits");
            page.push((key, json));
            if let Some((key, json)) = exports[n].next().await? {
                next.push((key, n));
                waiting[n] = Some(json);
            }
            if page.len() == PAGE {
                send(&pages, format.encode(&page, first)).await?;
                (first, page) = (false, Vec::with_capacity(PAGE));
            }
        }
        send(&pages, format.encode(&page, first)).await
    }
    .await;
    if let Err(e) = merged {
        tracing::info!(error = %e, "a gathered export was cut off");
        // an error, not the end: the client sees the transfer was cut, at once
        last_place.send(Err(e));
        connection.0.cancel();
    }
}

/// Hands a page to the client, waiting up to [`STALL`] for room.
async fn send(
    pages: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    page: Option<Bytes>,
) -> Result<(), std::io::Error> {
    let Some(page) = page else {
        return Ok(());
    };
    match tokio::time::timeout(STALL, pages.send(Ok(page))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(std::io::Error::other("the client went away")),
        Err(_) => Err(std::io::Error::other(format!(
            "the client took nothing for {} s",
            STALL.as_secs()
        ))),
    }
}

/// The lines of one shard's positioned export, as they arrive.
struct Lines {
    body: Incoming,
    buffer: Vec<u8>,
    /// Where the next line begins in the buffer (what comes before was taken).
    start: usize,
    /// How far past `start` the buffer is known to hold no line end.
    scanned: usize,
    ended: bool,
}

impl Lines {
    fn new(body: Incoming) -> Self {
        Self {
            body,
            buffer: Vec::new(),
            start: 0,
            scanned: 0,
            ended: false,
        }
    }

    /// The next log and its sort key; none once the export ended.
    async fn next(&mut self) -> Result<Option<(SortKey, Vec<u8>)>, std::io::Error> {
        loop {
            let unread = &self.buffer[self.start + self.scanned..];
            if let Some(at) = unread.iter().position(|&b| b == b'\n') {
                let end = self.start + self.scanned + at;
                let line = parse(&self.buffer[self.start..end]);
                (self.start, self.scanned) = (end + 1, 0);
                return line.map(Some);
            }
            self.scanned = self.buffer.len() - self.start;
            if self.ended {
                if self.scanned == 0 {
                    return Ok(None);
                }
                return Err(std::io::Error::other("a shard's export ended mid-line"));
            }
            // what was taken goes before more is read
            self.buffer.drain(..self.start);
            self.start = 0;
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!(
                        "a shard's export broke off: {e}"
                    )));
                }
                None => self.ended = true,
            }
        }
    }
}

/// `<timestamp>:<seq> {...}`: the sort key and the log.
fn parse(line: &[u8]) -> Result<(SortKey, Vec<u8>), std::io::Error> {
    let bad = || std::io::Error::other("a shard's export line has no position");
    let space = line.iter().position(|&b| b == b' ').ok_or_else(bad)?;
    let position = std::str::from_utf8(&line[..space]).map_err(|_| bad())?;
    let key: SortKey = position.parse().map_err(|()| bad())?;
    Ok((key, line[space + 1..].to_vec()))
}
