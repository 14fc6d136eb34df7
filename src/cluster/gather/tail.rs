//! `GET /logs/tail` of a user spread over several shards: a tail of each shard, their events
//! passed on as they arrive, each with an id that holds a position per shard
//! (`<shard>:<seq>,<shard>:<seq>,...`). Reconnecting with it resumes every shard where it was:
//! nothing is missed and nothing repeated, whichever replica of each shard answers.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::HeaderValue;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::super::gateway::{Gateway, TailEnd, tail_ends};
use super::ask_all;
use crate::api::{self, ApiError, SEQUENCE_HEADER};

/// A comment sent when nothing else was for this long, so that proxies keep the stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Longest the merged stream waits for its client to take an event before it gives up on it.
const STALL: Duration = Duration::from_secs(60);

/// Events of the shards waiting to be passed on, at most.
const EVENTS_IN_FLIGHT: usize = 256;

/// Where a merged stream is in each shard: the last event of it passed on, or where its tail
/// started.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Positions(BTreeMap<u32, u64>);

impl Positions {
    /// The positions an event id (or `cursor`) names, for a user whose logs are on `shards`: a
    /// merged stream's id, or a sequence number of the home shard (an id of the user's stream
    /// from before it was spread). A shard it does not name is read from its start: none of its
    /// logs was passed on yet.
    fn parse(name: &str, id: Option<&str>, shards: &[u32]) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::BadRequest(format!(
                "{name} must be the id of an event of this stream: <shard>:<seq> pairs separated by commas"
            ))
        };
        let id = id.ok_or_else(bad)?;
        let mut positions: BTreeMap<u32, u64> = shards.iter().map(|&s| (s, 0)).collect();
        if let Ok(seq) = id.parse::<u64>() {
            positions.insert(shards[0], seq);
            return Ok(Self(positions));
        }
        for pair in id.split(',') {
            let (shard, seq) = pair.split_once(':').ok_or_else(bad)?;
            let (shard, seq) = (
                shard.parse::<u32>().map_err(|_| bad())?,
                seq.parse::<u64>().map_err(|_| bad())?,
            );
            let Some(position) = positions.get_mut(&shard) else {
                return Err(ApiError::BadRequest(format!(
                    "{name} names shard {shard}, which holds none of this user's logs"
                )));
            };
            *position = seq;
        }
        Ok(Self(positions))
    }

    fn id(&self) -> String {
        let pairs: Vec<String> = self
            .0
            .iter()
            .map(|(shard, seq)| format!("{shard}:{seq}"))
            .collect();
        pairs.join(",")
    }
}

/// The id of a merged stream holding `positions` (by shard), as a gathered `GET /logs` page
/// gives it in `Logbridge-Sequence`: a tail from it follows on from the page.
pub fn stream_id(positions: impl IntoIterator<Item = (u32, u64)>) -> String {
    Positions(positions.into_iter().collect()).id()
}

/// What a shard's tail sends.
enum ShardEvent {
    /// A log: its sequence number and its data line.
    Log(u64, Bytes),
    /// The stream's final event, as the shard sent it.
    End(Bytes),
}

/// The merged tail of `user_id`'s logs over `shards`, as `request` asks for it.
pub async fn tail(
    gateway: &Gateway,
    user_id: &str,
    shards: &[u32],
    request: &http::request::Parts,
) -> Result<Response, ApiError> {
    let pairs = super::query_pairs(request)?;
    let cursor = pairs
        .iter()
        .find(|(name, value)| name == "cursor" && !value.is_empty())
        .map(|(_, value)| Positions::parse("cursor", Some(value), shards))
        .transpose()?;
    let resume = match request.headers.get("last-event-id") {
        Some(id) => Some(Positions::parse("Last-Event-ID", id.to_str().ok(), shards)?),
        None => cursor,
    };
    let rest: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "cursor").collect();
    let query = serde_urlencoded::to_string(&rest)
        .map_err(|e| ApiError::Internal(format!("cannot encode a shard's query: {e}")))?;
    let path = format!("/logs/tail?{query}");
    let requests = shards
        .iter()
        .map(|&shard| {
            let mut headers = request.headers.clone();
            headers.remove("last-event-id");
            if let Some(resume) = &resume {
                headers.insert("last-event-id", HeaderValue::from(resume.0[&shard]));
            }
            (shard, path.clone(), headers)
        })
        .collect();
    let responses = match ask_all(gateway, user_id, requests).await? {
        Ok(responses) => responses,
        // a refusal of one shard (a bad filter, too many tails) is the answer
        Err(refusal) => return Ok(refusal),
    };
    let mut positions = Positions(BTreeMap::new());
    let mut tails = Vec::new();
    for (response, &shard) in responses.into_iter().zip(shards) {
        let started = response
            .headers()
            .get(SEQUENCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                ApiError::Internal(format!("shard {shard}'s tail says not where it starts"))
            })?;
        positions.0.insert(shard, started);
        tails.push((shard, response.into_body()));
    }
    let (events, arriving) = mpsc::channel(EVENTS_IN_FLIGHT);
    let stop = tokio_util::sync::CancellationToken::new();
    for (shard, body) in tails {
        tokio::spawn(read_events(shard, body, events.clone(), stop.clone()));
    }
    drop(events);
    let (out, body) = mpsc::channel(EVENTS_IN_FLIGHT);
    let mut response = api::event_stream(Body::from_stream(ReceiverStream::new(body)));
    if let Ok(id) = HeaderValue::from_str(&positions.id()) {
        response.headers_mut().insert(SEQUENCE_HEADER, id);
    }
    let end = tail_ends(gateway, user_id, shards);
    tokio::spawn(async move {
        pass_on(positions, arriving, out, end).await;
        // the shards' tails stop with the merged one
        stop.cancel();
    });
    Ok(response)
}

/// Passes the shards' events on to the client, each log with the id of the positions after it;
/// the first final event of a shard ends the stream, as does `end` (the node's shutdown, the
/// user's logs going to more shards).
async fn pass_on(
    mut positions: Positions,
    mut arriving: mpsc::Receiver<(u32, ShardEvent)>,
    out: mpsc::Sender<Result<Bytes, std::io::Error>>,
    mut end: TailEnd,
) {
    let send = |chunk: Bytes| {
        let out = out.clone();
        async move {
            matches!(
                tokio::time::timeout(STALL, out.send(Ok(chunk))).await,
                Ok(Ok(()))
            )
        }
    };
    if !send(Bytes::from_static(b": tailing\n\n")).await {
        return;
    }
    loop {
        let event = tokio::select! {
            event = arriving.recv() => event,
            event = &mut end => {
                send(event).await;
                return;
            }
            () = tokio::time::sleep(KEEP_ALIVE) => {
                if !send(Bytes::from_static(b": keep-alive\n\n")).await {
                    return;
                }
                continue;
            }
        };
        let chunk = match event {
            Some((shard, ShardEvent::Log(seq, data))) => {
                positions.0.insert(shard, seq);
                let id = positions.id();
                let mut chunk = Vec::with_capacity(data.len() + id.len() + 12);
                chunk.extend_from_slice(b"id: ");
                chunk.extend_from_slice(id.as_bytes());
                chunk.extend_from_slice(b"\n");
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(b"\n\n");
                Bytes::from(chunk)
            }
            Some((_, ShardEvent::End(block))) => {
                send(block).await;
                return;
            }
            None => return,
        };
        if !send(chunk).await {
            return;
        }
    }
}

/// Reads the events of one shard's tail and hands them on, until its final event, its end, or
/// `stop`. A tail that breaks off without a final event ends the merged stream with one that
/// asks the client to resume.
async fn read_events(
    shard: u32,
    mut body: Incoming,
    events: mpsc::Sender<(u32, ShardEvent)>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut buffer: Vec<u8> = Vec::new();
    // how much of the buffer is known to hold no event's end
    let mut scanned = 0;
    loop {
        while let Some(at) = buffer[scanned.min(buffer.len())..]
            .windows(2)
            .position(|w| w == b"\n\n")
        {
            let end = scanned + at;
            scanned = 0;
            let block: Vec<u8> = buffer.drain(..end + 2).collect();
            match parse(&block) {
                Some(event) => {
                    let last = matches!(event, ShardEvent::End(_));
                    if events.send((shard, event)).await.is_err() || last {
                        return;
                    }
                }
                None => continue,
            }
        }
        // an event's end may straddle what was read and what comes next
        scanned = buffer.len().saturating_sub(1);
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = stop.cancelled() => return,
        };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                }
            }
            Some(Err(_)) | None => {
                let end = api::tail_end_event(
                    "a shard's tail broke off: reconnect with Last-Event-ID to resume",
                    true,
                );
                let _ = events.send((shard, ShardEvent::End(end))).await;
                return;
            }
        }
    }
}

/// An event block of a shard's tail: a log (its id and data line) or the final event; none for
/// a comment.
fn parse(block: &[u8]) -> Option<ShardEvent> {
    let text = std::str::from_utf8(block).ok()?;
    if text.lines().any(|line| line == "event: end") {
        return Some(ShardEvent::End(Bytes::copy_from_slice(block)));
    }
    let mut seq = None;
    let mut data = None;
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("id: ") {
            seq = id.parse().ok();
        } else if line.starts_with("data: ") {
            data = Some(Bytes::copy_from_slice(line.as_bytes()));
        }
    }
    Some(ShardEvent::Log(seq?, data?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_a_position_per_shard_and_resume_every_shard() {
        let shards = [4, 5, 0];
        let positions = Positions::parse("Last-Event-ID", Some("4:10,0:7"), &shards).unwrap();
        assert_eq!(positions.id(), "0:7,4:10,5:0");
        assert_eq!(
            Positions::parse("cursor", Some(&positions.id()), &shards).unwrap(),
            positions
        );
        // an id of the user's stream from before it was spread: its home shard's
        let before = Positions::parse("Last-Event-ID", Some("99"), &shards).unwrap();
        assert_eq!(before.id(), "0:0,4:99,5:0");
        for bad in ["", "x", "4:", "4:1;5:2", "4:-1"] {
            let refused = Positions::parse("Last-Event-ID", Some(bad), &shards).unwrap_err();
            assert_eq!(
                refused.to_string(),
                "Last-Event-ID must be the id of an event of this stream: <shard>:<seq> pairs separated by commas",
                "{bad:?}"
            );
        }
        let refused = Positions::parse("cursor", Some("3:1"), &shards).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "cursor names shard 3, which holds none of this user's logs"
        );
    }
}
