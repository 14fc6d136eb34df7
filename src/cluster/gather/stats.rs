//! `GET /logs/stats` of a user spread over several shards. Two rounds: each shard says the time
//! its matches span, the gateway cuts the whole span into the buckets a single index would, and
//! each shard counts its matches into those buckets ([`StatsParts`]). Counts and buckets add up;
//! latency percentiles come from the shards' latency histograms added bucket by bucket, with
//! the single node's precision; the busiest assistants are exact (see [`Busiest`]).

use axum::response::Response;
use http::HeaderValue;

use super::super::gateway::Gateway;
use super::busiest::{Busiest, Step};
use super::{Answer, ask_each, ask_json};
use crate::api::{self, ApiError, STATS_PARTS_HEADER, STATS_PARTS_TOP, StatsRequest};
use crate::store::{self, AssistantCount, Listed, StatsParts, TOP_ASSISTANTS, TimeHistogram};

/// The statistics of `user_id`'s logs over `shards`, as `request` asks for them.
pub async fn stats(
    gateway: &Gateway,
    user_id: &str,
    shards: &[u32],
    request: &http::request::Parts,
) -> Result<Response, ApiError> {
    let pairs = super::query_pairs(request)?;
    let StatsRequest { query, interval } = api::parse_stats_params(&pairs, user_id)?;
    let path = format!("/logs/stats?{}", request.uri.query().unwrap_or(""));
    let mut headers = request.headers.clone();
    headers.insert(STATS_PARTS_HEADER, HeaderValue::from_static("span"));
    let spans: Vec<Answer<Option<(u64, u64)>>> =
        match ask_each(gateway, user_id, shards, &path, &headers).await? {
            Ok(spans) => spans,
            Err(refusal) => return Ok(refusal),
        };
    let span = spans
        .into_iter()
        .filter_map(|answer| answer.body)
        .reduce(|(first, last), (f, l)| (first.min(f), last.max(l)));
    let histogram = store::histogram_over(span, &query, interval).map_err(api::stats_error)?;
    let Some(within) = span else {
        // nothing matched: no log arriving since changes that answer
        let none = StatsParts::empty(histogram);
        return Ok(api::stats_response(&none.finish(TOP_ASSISTANTS)));
    };
    let parts: Vec<StatsParts> = match ask_each::<StatsParts>(
        gateway,
        user_id,
        shards,
        &path,
        &over(
            &request.headers,
            &histogram,
            within,
            &Listed::busiest(STATS_PARTS_TOP),
        )?,
    )
    .await?
    {
        Ok(parts) => parts.into_iter().map(|answer| answer.body).collect(),
        Err(refusal) => return Ok(refusal),
    };
    let asked = Asked {
        gateway,
        user_id,
        shards,
        path: &path,
        headers: &request.headers,
        within,
    };
    let assistants = match busiest(&asked, &parts).await? {
        Ok(assistants) => assistants,
        Err(refusal) => return Ok(refusal),
    };
    let mut parts = parts.into_iter();
    let mut merged = parts
        .next()
        .ok_or_else(|| ApiError::Internal("a spread user has no shard".to_owned()))?;
    for part in parts {
        merged
            .add(&part)
            .map_err(|e| ApiError::Internal(format!("a shard's statistics do not add up: {e}")))?;
    }
    merged.assistants = assistants;
    Ok(api::stats_response(&merged.finish(TOP_ASSISTANTS)))
}

/// What the statistics asked the shards: the caller, its request, the span the first round
/// found.
struct Asked<'a> {
    gateway: &'a Gateway,
    user_id: &'a str,
    shards: &'a [u32],
    /// The statistics' path and query, as the caller asked for them.
    path: &'a str,
    headers: &'a http::HeaderMap,
    within: (u64, u64),
}

/// `headers` asking for a shard's parts of the statistics over `histogram`'s buckets, of the
/// matches `within` the span the first round found, listing the assistants `listed` asks for.
fn over(
    headers: &http::HeaderMap,
    histogram: &TimeHistogram,
    within: (u64, u64),
    listed: &Listed,
) -> Result<http::HeaderMap, ApiError> {
    let mut headers = headers.clone();
    let value = HeaderValue::from_str(&api::stats_parts_over(histogram, within, listed))
        .map_err(|e| ApiError::Internal(format!("cannot ask for a shard's statistics: {e}")))?;
    headers.insert(STATS_PARTS_HEADER, value);
    Ok(headers)
}

/// The busiest assistants of all `parts`, most matches first, each counted exactly: see
/// [`Busiest`] for the rounds that may take.
async fn busiest(
    asked: &Asked<'_>,
    parts: &[StatsParts],
) -> Result<Result<Vec<AssistantCount>, Response>, ApiError> {
    let none = TimeHistogram {
        interval: 1,
        start: 0,
        buckets: Vec::new(),
    };
    let mut busiest = Busiest::new(parts);
    loop {
        let (requests, places): (Vec<_>, Vec<Place>) = match busiest.next() {
            Step::Done { busiest, exact } => {
                if !exact {
                    tracing::warn!(
                        user = asked.user_id,
                        "the busiest assistants of a spread user may miss one: a shard has more \
                         assistants than it counts exactly"
                    );
                }
                return Ok(Ok(busiest));
            }
            Step::AtLeast { shards, at_least } => {
                let listed = Listed::Busiest {
                    top: STATS_PARTS_TOP,
                    at_least,
                };
                let headers = over(asked.headers, &none, asked.within, &listed)?;
                (shards.into_iter())
                    .map(|n| {
                        (
                            (asked.shards[n], asked.path.to_owned(), headers.clone()),
                            (n, None),
                        )
                    })
                    .unzip()
            }
            Step::Count(by_shard) => {
                let mut requests = Vec::new();
                for (n, ids) in by_shard {
                    for ids in in_headers(ids) {
                        let listed = Listed::Only(ids.clone());
                        let headers = over(asked.headers, &none, asked.within, &listed)?;
                        requests.push((
                            (asked.shards[n], asked.path.to_owned(), headers),
                            (n, Some(ids)),
                        ));
                    }
                }
                requests.into_iter().unzip()
            }
        };
        let answers: Vec<Answer<StatsParts>> =
            match ask_json(asked.gateway, asked.user_id, requests).await? {
                Ok(answers) => answers,
                Err(refusal) => return Ok(Err(refusal)),
            };
        for ((n, ids), Answer { body: part, .. }) in places.into_iter().zip(answers) {
            match ids {
                None => busiest.relisted(n, &part),
                Some(ids) => busiest.counted(n, &ids, &part),
            }
        }
    }
}

/// A request's shard, by its place among the parts, and the assistants it counts (none: it lists
/// the busiest, [`Step::AtLeast`]).
type Place = (usize, Option<Vec<String>>);

/// Bytes of form-encoded assistant ids one request asks to count, at most: well within what
/// HTTP servers take in a header.
const IDS_PER_HEADER: usize = 4_096;

/// `ids` in groups whose form-encoding fits in a header ([`IDS_PER_HEADER`]).
fn in_headers(ids: Vec<String>) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut bytes = IDS_PER_HEADER;
    for id in ids {
        // `assistant=` and `&`, and up to three bytes for each of the id's
        let encoded = 11 + 3 * id.len();
        if bytes + encoded > IDS_PER_HEADER {
            groups.push(Vec::new());
            bytes = 0;
        }
        bytes += encoded;
        groups.last_mut().expect("a group was just pushed").push(id);
    }
    groups
}
