//! `DELETE /logs` in cluster mode. An erasure is a message in the stream of each of the caller's
//! shards, after every log published before it and before every log published after it. Each
//! replica applies it at that place: it commits what came before, deletes what the filters select
//! of the caller's logs, and commits with the erasure's sequence as its position. A replica that
//! restarts from any commit, a replay of the stream and a copy of a replica all pass the erasure
//! at the same place, so an erased log never comes back. The gateway answers with the count a
//! replica of each shard recorded as it applied the erasure.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};

use super::copy::peer_authorized;
use super::gateway::Gateway;
use super::indexer::{NOT_HERE, Replicas};
use super::shard::shards_of_user;
use super::stream::subject;
use crate::api::{self, ApiError};
use crate::auth::Scope;
use crate::store::LogQuery;

/// The header that marks a message of a shard's stream as an erasure (a chunk of logs has none).
pub const ERASURE_HEADER: &str = "Logbridge-Erasure";

/// How long a gateway waits for the replicas to apply an erasure and say how many logs it erased.
const COUNT_PATIENCE: Duration = Duration::from_secs(30);

/// How often a gateway asks a replica whether it applied the erasure yet.
const COUNT_POLL: Duration = Duration::from_millis(50);

/// Erasure counts a replica keeps, for the gateways to ask: the newest.
const COUNTS_KEPT: usize = 4096;

/// An erasure as its message holds it: whose logs, and the filters of its `DELETE /logs`, which
/// every replica parses as a single node does.
#[derive(Debug, Serialize, Deserialize)]
pub struct Erasure {
    pub user_id: String,
    pub filters: String,
}

impl Erasure {
    /// The logs it erases.
    pub fn query(&self) -> Result<LogQuery, ApiError> {
        api::erasure_query(Some(&self.filters), &self.user_id)
    }
}

/// What a replica recorded of the erasures it applied: how far it consumed its stream, and how
/// many logs each recent erasure deleted.
#[derive(Default)]
pub struct Erasures(Mutex<Recorded>);

#[derive(Default)]
struct Recorded {
    /// The stream sequence consumed through, in this process.
    through: u64,
    counts: BTreeMap<u64, u64>,
}

/// What a replica knows of the erasure at a stream sequence.
#[derive(Debug, PartialEq, Eq)]
pub enum Count {
    /// Applied: it deleted this many logs.
    Deleted(u64),
    /// Not consumed yet.
    NotYet,
    /// Consumed before this process started (or long ago): the count is not known here.
    Unknown,
}

impl Erasures {
    /// A replica's, which resumes its stream after `through`: the erasures before are applied,
    /// their counts unknown here.
    pub fn resuming_after(through: u64) -> Self {
        let erasures = Self::default();
        erasures.consumed(through);
        erasures
    }

    /// The replica consumed its stream through `seq`.
    pub fn consumed(&self, seq: u64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).through = seq;
    }

    /// The erasure at `seq` deleted `deleted` logs.
    pub fn applied(&self, seq: u64, deleted: u64) {
        let mut recorded = self.0.lock().unwrap_or_else(|e| e.into_inner());
        recorded.through = seq;
        recorded.counts.insert(seq, deleted);
        while recorded.counts.len() > COUNTS_KEPT {
            recorded.counts.pop_first();
        }
    }

    pub fn count(&self, seq: u64) -> Count {
        let recorded = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match recorded.counts.get(&seq) {
            Some(&deleted) => Count::Deleted(deleted),
            None if recorded.through < seq => Count::NotYet,
            None => Count::Unknown,
        }
    }
}

/// The route gateways ask an erasure's count at: `/peer/shards/<n>/erasures/<seq>`, behind the
/// peer token. 200 with `{"deleted": n}`; 404 while the replica has not applied it yet; 410
/// when it cannot tell (it applied it before it last started); 421 when it holds no replica.
pub fn router(replicas: Replicas, token: String) -> Router {
    Router::new()
        .route(
            "/peer/shards/{shard}/erasures/{seq}",
            axum::routing::get(serve_count),
        )
        .with_state((replicas, token))
}

async fn serve_count(
    State((replicas, token)): State<(Replicas, String)>,
    UrlPath((shard, seq)): UrlPath<(u32, u64)>,
    headers: HeaderMap,
) -> Response {
    if !peer_authorized(&headers, &token) {
        return (StatusCode::UNAUTHORIZED, "a peer token is required").into_response();
    }
    match replicas.erasures(shard).map(|erasures| erasures.count(seq)) {
        Some(Count::Deleted(deleted)) => {
            axum::Json(serde_json::json!({ "deleted": deleted })).into_response()
        }
        Some(Count::NotYet) => (StatusCode::NOT_FOUND, "not applied yet").into_response(),
        Some(Count::Unknown) => {
            (StatusCode::GONE, "applied before this replica started").into_response()
        }
        None => (NOT_HERE, "this indexer holds no replica of that shard").into_response(),
    }
}

/// `DELETE /logs` through a gateway: the key and the filters are checked as on a single node,
/// the erasure is published to each of the caller's shards, and the answer comes once a replica
/// of each applied it, with the logs they deleted together.
pub async fn erase(
    gateway: &Gateway,
    headers: &HeaderMap,
    raw_query: Option<String>,
) -> Result<Response, ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let principal = gateway.keys.authorize(authorization, Scope::Delete)?;
    let Some(user_id) = principal.user_id else {
        return Err(ApiError::Internal(format!(
            "delete key {} has no user",
            principal.key_name
        )));
    };
    let erasure = Erasure {
        user_id,
        filters: raw_query.unwrap_or_default(),
    };
    let query = erasure.query()?;
    if let Some(expr) = query.text.as_ref().filter(|_| !gateway.payload_paths) {
        expr.refuse_payloads()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    if let Some(refusal) = gateway.shard_check.borrow().refusal() {
        tracing::warn!(%refusal, "erasure refused");
        return Err(ApiError::Unavailable(
            "the cluster's shard count is not confirmed by etcd: retry later",
        ));
    }
    let Some(cursor_key) = gateway.cursor_key.load_full() else {
        return Err(ApiError::Unavailable(
            "the cluster's shared key is not known yet (is etcd reachable?), retry later",
        ));
    };
    let token = cursor_key.peer_token();
    let shards = {
        let view = gateway.view.borrow();
        shards_of_user(
            &erasure.user_id,
            view.spreads_of(&erasure.user_id),
            gateway.shards,
        )
    };
    let payload = serde_json::to_vec(&erasure)
        .map_err(|e| ApiError::Internal(format!("cannot encode the erasure: {e}")))?;
    let mut published = Vec::with_capacity(shards.len());
    for &shard in &shards {
        let seq = publish(gateway, shard, payload.clone())
            .await
            .map_err(|e| {
                tracing::warn!(shard, error = %format!("{e:#}"), "erasure not published");
                ApiError::Unavailable("the cluster's stream did not take the erasure, retry later")
            })?;
        published.push((shard, seq));
    }
    let mut deleted = 0;
    for (shard, seq) in published {
        deleted += count(gateway, shard, seq, &erasure.user_id, &token).await?;
    }
    tracing::info!(
        key = %principal.key_name,
        user = %erasure.user_id,
        filters = %erasure.filters,
        shards = shards.len(),
        deleted,
        "activity logs erased"
    );
    Ok(api::erased_response(deleted))
}

/// Publishes an erasure to `shard`'s stream: the sequence JetStream stored it at (on a majority
/// of the stream's replicas).
async fn publish(gateway: &Gateway, shard: u32, payload: Vec<u8>) -> anyhow::Result<u64> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ERASURE_HEADER, "1");
    let ack = gateway
        .jetstream
        .publish_with_headers(
            subject(&gateway.cluster_name, shard),
            headers,
            payload.into(),
        )
        .await?
        .await?;
    anyhow::ensure!(ack.sequence > 0, "the stream acknowledged no sequence");
    Ok(ack.sequence)
}

/// A replica's answer: how many logs an erasure deleted.
#[derive(Deserialize)]
struct Counted {
    deleted: u64,
}

/// How many logs the erasure at `seq` of `shard` deleted, once every ready replica of the shard
/// that answers has applied it (so that no read shows the erased logs after the answer); the
/// count is the one a replica recorded as it applied it.
async fn count(
    gateway: &Gateway,
    shard: u32,
    seq: u64,
    user_id: &str,
    token: &str,
) -> Result<u64, ApiError> {
    let deadline = Instant::now() + COUNT_PATIENCE;
    loop {
        let targets = gateway
            .view
            .borrow()
            .read_targets(shard, gateway.replicas, user_id);
        let (mut counted, mut pending, mut applied) = (None, false, false);
        for (_, target) in targets {
            match ask_count(gateway, &target, shard, seq, token).await {
                Some(Count::Deleted(deleted)) => counted = Some(deleted),
                Some(Count::NotYet) => pending = true,
                Some(Count::Unknown) => applied = true,
                // a replica that does not answer serves no read either
                None => {}
            }
        }
        match counted {
            Some(deleted) if !pending => return Ok(deleted),
            None if applied && !pending => {
                return Err(ApiError::Unavailable(
                    "the erasure is applied, but the replicas restarted since and no longer know \
                     how many logs it erased (a retry counts only what is left)",
                ));
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            tracing::warn!(shard, seq, "the replicas did not apply the erasure in time");
            return Err(ApiError::Unavailable(
                "the erasure is stored and every replica will apply it, but not all have yet: \
                 retry to learn it is done (a retry counts only what is left)",
            ));
        }
        tokio::time::sleep(COUNT_POLL).await;
    }
}

/// What the replica at `target` knows of the erasure at `seq` of `shard`; `None` when it does
/// not answer in time.
async fn ask_count(
    gateway: &Gateway,
    target: &str,
    shard: u32,
    seq: u64,
    token: &str,
) -> Option<Count> {
    let request = http::Request::get(format!("{target}/peer/shards/{shard}/erasures/{seq}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .ok()?;
    let asked = async {
        let response = gateway.client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    match tokio::time::timeout(COUNT_POLL * 20, asked).await {
        Ok(Ok((StatusCode::OK, body))) => {
            let counted: Counted = serde_json::from_slice(&body).ok()?;
            Some(Count::Deleted(counted.deleted))
        }
        Ok(Ok((StatusCode::NOT_FOUND, _))) => Some(Count::NotYet),
        Ok(Ok((StatusCode::GONE, _))) => Some(Count::Unknown),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_tells_applied_pending_and_forgotten_erasures_apart() {
        // resumed after sequence 10: what came before was applied by an earlier process
        let erasures = Erasures::resuming_after(10);
        assert_eq!(erasures.count(7), Count::Unknown);
        assert_eq!(erasures.count(12), Count::NotYet);
        erasures.consumed(11);
        erasures.applied(12, 3);
        erasures.consumed(13);
        assert_eq!(erasures.count(12), Count::Deleted(3));
        assert_eq!(
            erasures.count(13),
            Count::Unknown,
            "13 was logs, not an erasure"
        );
        assert_eq!(erasures.count(14), Count::NotYet);
        // only the newest counts are kept
        for seq in 100..100 + COUNTS_KEPT as u64 {
            erasures.applied(seq, 1);
        }
        assert_eq!(erasures.count(12), Count::Unknown);
        assert_eq!(erasures.count(100), Count::Deleted(1));
    }

    #[test]
    fn an_erasure_parses_its_filters_as_a_single_node_does() {
        let erasure = Erasure {
            user_id: "user-1".to_owned(),
            filters: "status=error&activity_type=tool_call".to_owned(),
        };
        let query = erasure.query().unwrap();
        assert_eq!(query.user_id, "user-1");
        let bad = Erasure {
            user_id: "user-1".to_owned(),
            filters: "limit=5".to_owned(),
        };
        assert_eq!(
            bad.query().unwrap_err().to_string(),
            "limit is not accepted by DELETE /logs, which erases every log matching the filters"
        );
    }
}
