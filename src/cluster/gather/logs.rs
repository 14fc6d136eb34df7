//! `GET /logs` of a user spread over several shards: the page a single index would give, in two
//! rounds. Each shard first gives the positions (timestamp, sequence) of its matches through the
//! end of the page, and their total; merged newest first, they say which logs the page holds
//! and which shard holds each. Each shard holding some then gives those logs, read after the
//! position before them (a cursor is valid on every shard: the same filters, signed with the
//! cluster's key, and sequence numbers never repeat across shards). Totals add up (the shards
//! are disjoint), offsets and pages past the end answer as a single node does, and the next
//! cursor is made from the last log of the merged page.

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::super::gateway::Gateway;
use super::super::indexer::INDEXED_HEADER;
use super::{Answer, ask_each, ask_json};
use crate::api::{
    self, ApiError, Cursor, CursorKey, LogsRequest, POSITIONS_HEADER, POSITIONS_ONLY, Positions,
    SEQUENCE_HEADER,
};
use crate::store::{LogQuery, MAX_OFFSET, SortKey};

/// Times a page is read again when a shard's logs changed between the two rounds (a log
/// stamped in the past arrived) before the caller is asked to retry.
const ATTEMPTS: usize = 3;

/// The page of `user_id`'s logs over `shards` that `request` asks for.
pub async fn logs(
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
    let pairs = super::query_pairs(request)?;
    let LogsRequest { query, page } = api::parse_logs_params(&pairs, user_id, &key)?;
    let gather = Gather {
        gateway,
        user_id,
        shards,
        request,
        pairs: &pairs,
        query: &query,
        key: &key,
    };
    for _ in 0..ATTEMPTS {
        match gather.page(page).await? {
            Read::Page(response) | Read::Refused(response) => return Ok(response),
            Read::Changed => continue,
        }
    }
    Err(ApiError::Unavailable(
        "this user's logs kept changing while the page was read, retry later",
    ))
}

/// What one reading of a page came to.
enum Read {
    Page(Response),
    /// A shard refused (a bad parameter, a key gone): its answer is the caller's.
    Refused(Response),
    /// A shard's logs changed between the two rounds.
    Changed,
}

/// One gathered page's request.
struct Gather<'a> {
    gateway: &'a Gateway,
    user_id: &'a str,
    shards: &'a [u32],
    request: &'a http::request::Parts,
    pairs: &'a [(String, String)],
    query: &'a LogQuery,
    key: &'a CursorKey,
}

impl Gather<'_> {
    async fn page(&self, page: u64) -> Result<Read, ApiError> {
        let query = self.query;
        let path = format!("/logs?{}", self.request.uri.query().unwrap_or(""));
        let mut headers = self.request.headers.clone();
        headers.insert(POSITIONS_HEADER, HeaderValue::from_static(POSITIONS_ONLY));
        let found: Vec<Answer<Positions>> =
            match ask_each(self.gateway, self.user_id, self.shards, &path, &headers).await? {
                Ok(found) => found,
                Err(refusal) => return Ok(Read::Refused(refusal)),
            };
        let total: u64 = found.iter().map(|p| p.body.total).sum();
        let positions: Vec<Vec<SortKey>> = found
            .iter()
            .map(|part| {
                let keys = part.body.positions.iter();
                keys.map(|&(timestamp, seq)| SortKey { timestamp, seq })
                    .collect()
            })
            .collect();
        let mut merged: Vec<(SortKey, usize)> = Vec::new();
        if query.offset as u64 >= total {
            // a page past the end: the total only
        } else if query.offset > MAX_OFFSET {
            return Err(api::too_deep(page, query.limit));
        } else {
            for (n, keys) in positions.iter().enumerate() {
                merged.extend(keys.iter().map(|&key| (key, n)));
            }
            merged.sort_unstable_by_key(|&(key, _)| std::cmp::Reverse(key));
        }
        let more = merged.len() > query.offset + query.limit;
        let on_page: Vec<(SortKey, usize)> = merged
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .collect();
        // every shard holding some of the page's logs gives them, all at once
        let mut holding = Vec::new();
        let mut requests = Vec::new();
        for n in 0..positions.len() {
            let wanted: Vec<SortKey> = on_page
                .iter()
                .filter(|(_, shard)| *shard == n)
                .map(|(key, _)| *key)
                .collect();
            if !wanted.is_empty() {
                requests.push((
                    self.shards[n],
                    self.request_of(&wanted)?,
                    self.page_headers(),
                ));
                holding.push((n, wanted));
            }
        }
        let answers: Vec<Answer<ShardAnswer>> =
            match ask_json(self.gateway, self.user_id, requests).await? {
                Ok(answers) => answers,
                Err(refusal) => return Ok(Read::Refused(refusal)),
            };
        let mut read: BTreeMap<usize, std::vec::IntoIter<Box<RawValue>>> = BTreeMap::new();
        let mut indexed = Vec::new();
        for ((n, wanted), answer) in holding.into_iter().zip(answers) {
            let header = |name: &str| {
                answer
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let given: Vec<String> = header(POSITIONS_HEADER)
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            let expected: Vec<String> = wanted.iter().map(SortKey::to_string).collect();
            if given != expected {
                // the shard holds other logs there now
                return Ok(Read::Changed);
            }
            indexed.push(header(INDEXED_HEADER));
            read.insert(n, answer.body.data.logs.into_iter());
        }
        let logs: Vec<Box<RawValue>> = on_page
            .iter()
            .filter_map(|(_, n)| read.get_mut(n).and_then(Iterator::next))
            .collect();
        let next_cursor = match on_page.last() {
            Some((last, _)) if more => {
                Some(Cursor::next(query, *last, page.saturating_add(1)).encode(self.key))
            }
            _ => None,
        };
        let mut data = serde_json::json!({
            "logs": logs,
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
        let response_headers = response.headers_mut();
        // a tail from it follows on from this page in every shard
        let sequences = found
            .iter()
            .map(|part| {
                part.headers
                    .get(SEQUENCE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| {
                        ApiError::Internal("a shard's page says not where it was read".into())
                    })
            })
            .collect::<Result<Vec<u64>, _>>()?;
        let sequence = super::stream_id(self.shards.iter().copied().zip(sequences));
        if let Ok(value) = HeaderValue::from_str(&sequence) {
            response_headers.insert(SEQUENCE_HEADER, value);
        }
        if let Some(words) = api::highlight_header(self.query) {
            response_headers.insert(api::HIGHLIGHT_HEADER, words);
        }
        indexed.sort();
        if let Ok(value) = HeaderValue::from_str(&indexed.join(",")) {
            response_headers.insert(INDEXED_HEADER, value);
        }
        Ok(Read::Page(response))
    }

    /// The path and query reading a shard's logs at `wanted` (newest first): from just above
    /// the first.
    fn request_of(&self, wanted: &[SortKey]) -> Result<String, ApiError> {
        let mut pairs: Vec<(String, String)> = self
            .pairs
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "page" | "limit" | "cursor"))
            .cloned()
            .collect();
        pairs.push(("limit".to_owned(), wanted.len().to_string()));
        // a cursor reads what comes after its position: just above the first log wanted, so
        // that logs committed since the positions were read, newer than the page, change nothing
        let first = wanted[0];
        let above = SortKey {
            timestamp: first.timestamp,
            seq: first.seq.saturating_add(1),
        };
        let cursor = Cursor::next(self.query, above, 1).encode(self.key);
        pairs.push(("cursor".to_owned(), cursor));
        let query = serde_urlencoded::to_string(&pairs)
            .map_err(|e| ApiError::Internal(format!("cannot encode a shard's query: {e}")))?;
        Ok(format!("/logs?{query}"))
    }

    /// The headers of the second round: the page's logs, with their positions.
    fn page_headers(&self) -> http::HeaderMap {
        let mut headers = self.request.headers.clone();
        headers.insert(POSITIONS_HEADER, HeaderValue::from_static("1"));
        headers
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
}
