//! `GET /logs` of a user spread over several shards: the page a single index would give.

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::super::gateway::{Gateway, ask};
use super::super::indexer::INDEXED_HEADER;
use crate::api::{self, ApiError, Cursor, LogsRequest, POSITIONS_HEADER};
use crate::store::SortKey;

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
