//! `GET /logs/export` of a user spread over several shards: every shard's export, read at once
//! as it streams (each line after its sort key), merged newest first by (timestamp, sequence)
//! and encoded as the caller asked. Memory holds a line per shard and a page being sent; a
//! client that reads slowly slows the shards' exports down, and one that goes away stops them.

use std::collections::BinaryHeap;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::HeaderValue;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::super::gateway::{Gateway, ask};
use crate::api::{ApiError, ExportFormat, POSITIONS_HEADER};
use crate::store::SortKey;

/// Logs encoded and sent at a time.
const PAGE: usize = 1000;

/// Pages waiting for a slow client, at most.
const PAGES_IN_FLIGHT: usize = 4;

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
    let mut opening = tokio::task::JoinSet::new();
    for &shard in shards {
        let (gateway, user_id) = (gateway.clone(), user_id.to_owned());
        let (path, headers) = (path.clone(), headers.clone());
        opening.spawn(async move { ask(&gateway, shard, &user_id, &path, &headers).await });
    }
    let mut exports = Vec::new();
    while let Some(opened) = opening.join_next().await {
        let response =
            opened.map_err(|e| ApiError::Internal(format!("a shard's task failed: {e}")))??;
        if response.status() != http::StatusCode::OK {
            // a refusal of one shard (a bad parameter, too many exports) is the answer
            return Ok(response.map(Body::new));
        }
        exports.push(Lines::new(response.into_body()));
    }
    let (pages, body) = mpsc::channel(PAGES_IN_FLIGHT);
    tokio::spawn(merge(exports, format, pages));
    Ok(format.response(Body::from_stream(ReceiverStream::new(body))))
}

/// Hands the logs of `exports` to the client newest first, a page at a time; a shard's export
/// that breaks off cuts the client's off too (an error, never a clean end).
async fn merge(
    mut exports: Vec<Lines>,
    format: ExportFormat,
    pages: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
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
        let _ = pages.send(Err(e)).await;
    }
}

async fn send(
    pages: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    page: Option<Bytes>,
) -> Result<(), std::io::Error> {
    match page {
        Some(page) => pages
            .send(Ok(page))
            .await
            .map_err(|_| std::io::Error::other("the client went away")),
        None => Ok(()),
    }
}

/// The lines of one shard's positioned export, as they arrive.
struct Lines {
    body: Incoming,
    buffer: Vec<u8>,
    ended: bool,
}

impl Lines {
    fn new(body: Incoming) -> Self {
        Self {
            body,
            buffer: Vec::new(),
            ended: false,
        }
    }

    /// The next log and its sort key; none once the export ended.
    async fn next(&mut self) -> Result<Option<(SortKey, Vec<u8>)>, std::io::Error> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return parse(&line[..end]).map(Some);
            }
            if self.ended {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                return Err(std::io::Error::other("a shard's export ended mid-line"));
            }
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
    let (timestamp, seq) = position.split_once(':').ok_or_else(bad)?;
    let key = SortKey {
        timestamp: timestamp.parse().map_err(|_| bad())?,
        seq: seq.parse().map_err(|_| bad())?,
    };
    Ok((key, line[space + 1..].to_vec()))
}
