//! The statistics an alert rule measures, counted where its user's logs are: each of the user's
//! shards (one, or each of a spread user's) counts its part of the rule's window on a ready
//! replica, through a peer route, and the keeper adds the parts up as a gathered `/logs/stats`
//! does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, Limited};
use tokio::sync::watch;

use crate::alerts::evaluate::cancelled_after;
use crate::alerts::{Measuring, Rule, Source, rule};
use crate::api::{self, CursorKey};
use crate::cluster::copy::peer_authorized;
use crate::cluster::indexer::{NOT_HERE, Replicas};
use crate::cluster::membership::View;
use crate::cluster::shard::shards_of_user;
use crate::cluster::tls::HttpClient;
use crate::store::{Listed, LogQuery, Stats, StatsError, StatsParts, histogram_over};

/// The largest part a shard sends: statistics without assistants are a few kilobytes.
const MAX_PART_BYTES: usize = 1 << 20;

/// The parameters of a part besides the rule's filters.
const OWN: [&str; 4] = ["user_id", "start", "end", "timeout_ms"];

/// The route the keeper of the alert rules asks a shard's part at:
/// `/peer/shards/<n>/alert-stats`, behind the peer token, with the rule's filters, `user_id`,
/// the window (`start`, `end`: nanoseconds, the end excluded) and `timeout_ms`. 200 with the
/// statistics' parts; 421 when this node holds no caught-up replica of the shard.
pub fn router(replicas: Replicas, token: String) -> Router {
    Router::new()
        .route(
            "/peer/shards/{shard}/alert-stats",
            axum::routing::get(serve_part),
        )
        .with_state((replicas, token))
}

/// What a part is asked for, read from its query string.
struct Asked {
    query: LogQuery,
    timeout: Duration,
}

impl Asked {
    fn parse(raw_query: Option<&str>) -> Result<Self, String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw_query.unwrap_or(""))
            .map_err(|_| "the query string is malformed".to_owned())?;
        let value = |name: &str| -> Result<&str, String> {
            let found = pairs.iter().find(|(k, _)| k == name);
            found
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| format!("{name} is required"))
        };
        let number = |name: &str| -> Result<u64, String> {
            value(name)?
                .parse()
                .map_err(|_| format!("{name} must be a whole number"))
        };
        let filters: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| !OWN.contains(&k.as_str()))
            .cloned()
            .collect();
        let query = api::rule_query(&filters, value("user_id")?)?;
        Ok(Self {
            query: LogQuery {
                start: Some(number("start")?),
                end: Some(number("end")?),
                ..query
            },
            timeout: Duration::from_millis(number("timeout_ms")?),
        })
    }
}

async fn serve_part(
    State((replicas, token)): State<(Replicas, String)>,
    UrlPath(shard): UrlPath<u32>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Response {
    if !peer_authorized(&headers, &token) {
        return (StatusCode::UNAUTHORIZED, "a peer token is required").into_response();
    }
    let Some(store) = replicas.store(shard) else {
        return (
            NOT_HERE,
            "this indexer holds no caught-up replica of that shard",
        )
            .into_response();
    };
    let Asked { query, timeout } = match Asked::parse(raw_query.as_deref()) {
        Ok(asked) => asked,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        flag.store(true, Ordering::Relaxed);
    });
    let counted = tokio::task::spawn_blocking(move || {
        let (start, end) = (query.start.unwrap_or(0), query.end.unwrap_or(0));
        let last = end.saturating_sub(1).max(start);
        let interval = last - start + 1;
        let histogram = histogram_over(Some((start, last)), &query, Some(interval))?;
        store.stats_parts(&query, histogram, &Listed::busiest(0), &cancelled)
    })
    .await;
    timer.abort();
    match counted {
        Ok(Ok(parts)) => axum::Json(parts).into_response(),
        Ok(Err(StatsError::Cancelled)) => {
            (StatusCode::SERVICE_UNAVAILABLE, cancelled_after(timeout)).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The statistics of a cluster's shards, as the keeper of the alert rules measures them.
#[derive(Clone)]
pub(super) struct Shards {
    pub(super) view: watch::Receiver<View>,
    pub(super) shards: u32,
    pub(super) replicas: usize,
    pub(super) client: HttpClient<Body>,
    /// The cluster's shared key, whose peer token the parts are asked with.
    pub(super) cursor_key: Arc<ArcSwapOption<CursorKey>>,
}

impl Source for Shards {
    fn measure(&self, rule: &Rule, at: u64, timeout: Duration) -> Measuring {
        let (shards, rule) = (self.clone(), rule.clone());
        Box::pin(async move {
            match tokio::time::timeout(timeout, shards.stats(&rule, at, timeout)).await {
                Ok(stats) => stats.map(|stats| rule.measure(&stats)),
                Err(_) => Err(cancelled_after(timeout)),
            }
        })
    }
}

impl Shards {
    /// The statistics of `rule`'s window ending at `at`, every shard of its user added up.
    async fn stats(&self, rule: &Rule, at: u64, timeout: Duration) -> Result<Stats, String> {
        let token = self
            .cursor_key
            .load_full()
            .ok_or("the cluster's shared key is not known yet (is etcd reachable?)")?
            .peer_token();
        let user_id = &rule.query.user_id;
        let shards = {
            let view = self.view.borrow();
            shards_of_user(user_id, view.spreads_of(user_id), self.shards)
        };
        let window = rule.query_at(at);
        let mut pairs = rule::filter_pairs(&rule.spec)?;
        pairs.extend([
            ("user_id".to_owned(), user_id.clone()),
            ("start".to_owned(), window.start.unwrap_or(0).to_string()),
            ("end".to_owned(), window.end.unwrap_or(at).to_string()),
            ("timeout_ms".to_owned(), timeout.as_millis().to_string()),
        ]);
        let query = serde_urlencoded::to_string(&pairs)
            .map_err(|e| format!("cannot encode a shard's query: {e}"))?;
        let mut total: Option<StatsParts> = None;
        for shard in shards {
            let part = self.part(shard, user_id, &query, &token).await?;
            match &mut total {
                None => total = Some(part),
                Some(total) => total
                    .add(&part)
                    .map_err(|e| format!("the shards' statistics do not add up: {e}"))?,
            }
        }
        let total = total.ok_or("the user has no shard")?;
        Ok(total.finish(0))
    }

    /// Shard `shard`'s part, from the first of its ready replicas that gives it.
    async fn part(
        &self,
        shard: u32,
        user_id: &str,
        query: &str,
        token: &str,
    ) -> Result<StatsParts, String> {
        let targets = self
            .view
            .borrow()
            .read_targets(shard, self.replicas, user_id);
        let mut why = format!("no caught-up replica of shard {shard} is known");
        for (_, target) in targets {
            let request =
                http::Request::get(format!("{target}/peer/shards/{shard}/alert-stats?{query}"))
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Body::empty())
                    .map_err(|e| format!("cannot ask shard {shard}: {e}"))?;
            let answer = async {
                let response = self.client.request(request).await?;
                let status = response.status();
                let body = Limited::new(response.into_body(), MAX_PART_BYTES);
                let bytes = body.collect().await.map_err(|e| anyhow::anyhow!(e))?;
                anyhow::Ok((status, bytes.to_bytes()))
            };
            match answer.await {
                Ok((StatusCode::OK, bytes)) => {
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| format!("shard {shard} answered no statistics: {e}"));
                }
                Ok((status, bytes)) => {
                    why = format!(
                        "shard {shard} answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
                Err(e) => why = format!("shard {shard} could not be reached: {e:#}"),
            }
        }
        Err(why)
    }
}
