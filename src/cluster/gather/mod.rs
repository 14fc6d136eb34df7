//! Reads of a user spread over several shards, gathered from a ready replica of each: the
//! answer a single index holding all of the user's logs would give.

mod busiest;
mod export;
mod logs;
mod stats;
mod tail;

pub use export::export;
pub use logs::logs;
pub use stats::stats;
pub use tail::{stream_id, tail};

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use super::gateway::{Gateway, ask};
use crate::api::ApiError;

/// The query string of `request`, decoded.
fn query_pairs(request: &http::request::Parts) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(request.uri.query().unwrap_or(""))
        .map_err(|_| ApiError::BadRequest("the query string is malformed".to_owned()))
}

/// Sends each request (a shard, a path and query, headers) to a ready replica of its shard, all
/// at once: the answers, bodies unread, in the order of the requests; or the first refusal (a
/// bad parameter, a key gone, no room), which is the answer to the caller.
async fn ask_all(
    gateway: &Gateway,
    user_id: &str,
    requests: Vec<(u32, String, HeaderMap)>,
) -> Result<Result<Vec<http::Response<Incoming>>, Response>, ApiError> {
    let count = requests.len();
    let mut asked = tokio::task::JoinSet::new();
    for (n, (shard, path_and_query, headers)) in requests.into_iter().enumerate() {
        let (gateway, user_id) = (gateway.clone(), user_id.to_owned());
        asked.spawn(async move {
            let answer = ask(&gateway, shard, &user_id, &path_and_query, &headers).await;
            (n, answer)
        });
    }
    let mut answers: Vec<Option<http::Response<Incoming>>> = (0..count).map(|_| None).collect();
    while let Some(joined) = asked.join_next().await {
        let (n, answer) =
            joined.map_err(|e| ApiError::Internal(format!("a shard's task failed: {e}")))?;
        let answer = answer?;
        if answer.status() != http::StatusCode::OK {
            return Ok(Err(answer.map(Body::new)));
        }
        answers[n] = Some(answer);
    }
    Ok(Ok(answers.into_iter().flatten().collect()))
}

/// A shard's answer: its JSON body, and its headers.
struct Answer<T> {
    body: T,
    headers: HeaderMap,
}

/// Asks a ready replica of each of `shards`, all at once, for `path_and_query` with `headers`:
/// their JSON answers, in the order of `shards`; or the first refusal, which is the answer to
/// the caller.
async fn ask_each<T: DeserializeOwned>(
    gateway: &Gateway,
    user_id: &str,
    shards: &[u32],
    path_and_query: &str,
    headers: &HeaderMap,
) -> Result<Result<Vec<Answer<T>>, Response>, ApiError> {
    let requests = shards
        .iter()
        .map(|&shard| (shard, path_and_query.to_owned(), headers.clone()))
        .collect();
    ask_json(gateway, user_id, requests).await
}

/// [`ask_all`], with each answer's JSON body read.
async fn ask_json<T: DeserializeOwned>(
    gateway: &Gateway,
    user_id: &str,
    requests: Vec<(u32, String, HeaderMap)>,
) -> Result<Result<Vec<Answer<T>>, Response>, ApiError> {
    let shards: Vec<u32> = requests.iter().map(|(shard, _, _)| *shard).collect();
    let responses = match ask_all(gateway, user_id, requests).await? {
        Ok(responses) => responses,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let mut answers = Vec::with_capacity(responses.len());
    for (response, shard) in responses.into_iter().zip(shards) {
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ApiError::Internal(format!("shard {shard}'s answer broke off: {e}")))?
            .to_bytes();
        let body: T = serde_json::from_slice(&body).map_err(|e| {
            ApiError::Internal(format!("shard {shard}'s answer is not what was asked: {e}"))
        })?;
        answers.push(Answer {
            body,
            headers: parts.headers,
        });
    }
    Ok(Ok(answers))
}
