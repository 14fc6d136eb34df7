//! `GET /logs/stats` of a user spread over several shards. Two rounds: each shard says the time
//! its matches span, the gateway cuts the whole span into the buckets a single index would, and
//! each shard counts its matches into those buckets ([`StatsParts`]). Counts and buckets add up;
//! latency percentiles come from the shards' latency histograms added bucket by bucket, with
//! the single node's precision; the busiest assistants are exact (see [`busiest`]).

use std::collections::BTreeMap;

use axum::response::Response;
use http::HeaderValue;

use super::super::gateway::Gateway;
use super::{Answer, ask_each};
use crate::api::{self, ApiError, STATS_PARTS_HEADER, StatsRequest};
use crate::store::{self, AssistantCount, StatsParts, TOP_ASSISTANTS, TimeHistogram};

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
        &over(&request.headers, &histogram, within)?,
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
        pairs: &pairs,
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

/// What the statistics asked the shards: the caller, its parameters, the span the first round
/// found.
struct Asked<'a> {
    gateway: &'a Gateway,
    user_id: &'a str,
    shards: &'a [u32],
    pairs: &'a [(String, String)],
    headers: &'a http::HeaderMap,
    within: (u64, u64),
}

/// `headers` asking for a shard's parts of the statistics over `histogram`'s buckets, of the
/// matches `within` the span the first round found.
fn over(
    headers: &http::HeaderMap,
    histogram: &TimeHistogram,
    within: (u64, u64),
) -> Result<http::HeaderMap, ApiError> {
    let mut headers = headers.clone();
    let value = HeaderValue::from_str(&api::stats_parts_over(histogram, within))
        .map_err(|e| ApiError::Internal(format!("cannot ask for a shard's statistics: {e}")))?;
    headers.insert(STATS_PARTS_HEADER, value);
    Ok(headers)
}

/// An assistant's id and what the shards' lists tell of it.
type Named<'a> = (&'a str, Candidate);

/// One assistant's matches over the shards, as far as their lists tell.
#[derive(Default)]
struct Candidate {
    count: u64,
    errors: u64,
    /// The shards that listed it.
    listed: Vec<bool>,
}

/// The busiest assistants of all `parts`, most matches first, each counted exactly. Each shard
/// lists its [`api::STATS_PARTS_TOP`] busiest and bounds the others' matches; an assistant that
/// could be among the busiest but is not listed by every shard is counted on the shards that
/// left it out.
async fn busiest(
    asked: &Asked<'_>,
    parts: &[StatsParts],
) -> Result<Result<Vec<AssistantCount>, Response>, ApiError> {
    let Asked {
        gateway,
        user_id,
        shards,
        pairs,
        headers,
        within,
    } = *asked;
    let mut candidates: BTreeMap<&str, Candidate> = BTreeMap::new();
    for (n, part) in parts.iter().enumerate() {
        for assistant in &part.assistants {
            let candidate = candidates
                .entry(&assistant.assistant_id)
                .or_insert_with(|| Candidate {
                    listed: vec![false; parts.len()],
                    ..Candidate::default()
                });
            candidate.count += assistant.count;
            candidate.errors += assistant.errors;
            candidate.listed[n] = true;
        }
    }
    // the shards that left each out while they list not all of theirs: there it may have up
    // to their bound
    let missing = |candidate: &Candidate| -> Vec<usize> {
        (0..parts.len())
            .filter(|&n| !candidate.listed[n] && parts[n].unlisted_at_most > 0)
            .collect()
    };
    let most = |candidate: &Candidate| -> u64 {
        let bound: u64 = missing(candidate)
            .iter()
            .map(|&n| parts[n].unlisted_at_most)
            .sum();
        candidate.count + bound
    };
    let (exact, mut uncertain): (Vec<Named>, Vec<Named>) = candidates
        .into_iter()
        .partition(|(_, candidate)| missing(candidate).is_empty());
    let mut busiest: Vec<AssistantCount> = exact
        .into_iter()
        .map(|(id, candidate)| count(id, &candidate))
        .collect();
    // the uncertain ones that could reach furthest first; once the tenth busiest counted
    // exactly has more than the next one could reach, none of the rest can be among them
    uncertain.sort_by(|(a, ca), (b, cb)| most(cb).cmp(&most(ca)).then(a.cmp(b)));
    let mut uncertain = uncertain.into_iter();
    let mut recounted = 0;
    while let Some((assistant_id, mut candidate)) = uncertain.next() {
        let tenth = tenth_busiest(&mut busiest);
        if tenth.is_some_and(|tenth| tenth > most(&candidate)) {
            break;
        }
        if recounted == MAX_RECOUNTS {
            tracing::warn!(
                user = user_id,
                "the busiest assistants of a spread user were not all counted exactly"
            );
            // the rest as far as the lists tell: at least that many
            busiest.push(count(assistant_id, &candidate));
            busiest.extend(uncertain.map(|(id, candidate)| count(id, &candidate)));
            break;
        }
        recounted += 1;
        let mut pairs: Vec<(String, String)> = pairs
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "assistant_id" | "interval"))
            .cloned()
            .collect();
        pairs.push(("assistant_id".to_owned(), assistant_id.to_owned()));
        let query = serde_urlencoded::to_string(&pairs)
            .map_err(|e| ApiError::Internal(format!("cannot encode a shard's query: {e}")))?;
        let none = TimeHistogram {
            interval: 1,
            start: 0,
            buckets: Vec::new(),
        };
        let shards: Vec<u32> = missing(&candidate).iter().map(|&n| shards[n]).collect();
        let counted: Vec<Answer<StatsParts>> = match ask_each(
            gateway,
            user_id,
            &shards,
            &format!("/logs/stats?{query}"),
            &over(headers, &none, within)?,
        )
        .await?
        {
            Ok(counted) => counted,
            Err(refusal) => return Ok(Err(refusal)),
        };
        for Answer { body: part, .. } in counted {
            candidate.count += part.counts.iter().flatten().sum::<u64>();
            candidate.errors += part.counts.iter().map(|c| c[1]).sum::<u64>();
        }
        busiest.push(count(assistant_id, &candidate));
    }
    busiest.sort_unstable_by(|a, b| (b.count, &a.assistant_id).cmp(&(a.count, &b.assistant_id)));
    busiest.truncate(TOP_ASSISTANTS);
    // an assistant no shard listed has at most this many matches
    let unlisted: u64 = parts.iter().map(|p| p.unlisted_at_most).sum();
    if unlisted > 0 && busiest.last().is_none_or(|last| last.count <= unlisted) {
        tracing::warn!(
            user = user_id,
            unlisted,
            "the busiest assistants of a spread user may miss one no shard listed"
        );
    }
    Ok(Ok(busiest))
}

/// Assistants counted again at most, per statistics: each is a request to the shards that left
/// it out.
const MAX_RECOUNTS: usize = 100;

fn count(assistant_id: &str, candidate: &Candidate) -> AssistantCount {
    AssistantCount {
        assistant_id: assistant_id.to_owned(),
        count: candidate.count,
        errors: candidate.errors,
    }
}

/// The matches of the tenth busiest of `counted`, once there are ten.
fn tenth_busiest(counted: &mut [AssistantCount]) -> Option<u64> {
    if counted.len() < TOP_ASSISTANTS {
        return None;
    }
    let (_, tenth, _) =
        counted.select_nth_unstable_by(TOP_ASSISTANTS - 1, |a, b| b.count.cmp(&a.count));
    Some(tenth.count)
}
