//! `GET /logs/stats` of a user spread over several shards. Two rounds: each shard says the time
//! its matches span, the gateway cuts the whole span into the buckets a single index would, and
//! each shard counts its matches into those buckets ([`StatsParts`]). Counts and buckets add up;
//! latency percentiles come from the shards' latency histograms added bucket by bucket, with
//! the single node's precision; the busiest assistants are exact, which may take up to two more
//! rounds (see [`Busiest`]).

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
        let batches: Vec<Vec<(usize, Ask)>> = match busiest.next() {
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
                vec![
                    shards
                        .into_iter()
                        .map(|n| (n, Ask::AtLeast(at_least)))
                        .collect(),
                ]
            }
            Step::Count(by_shard) => one_per_shard(by_shard),
        };
        for batch in batches {
            let mut requests = Vec::with_capacity(batch.len());
            for (n, ask) in &batch {
                let listed = match ask {
                    // a shard asked has at least that many past its busiest: they are all in
                    Ask::AtLeast(at_least) => Listed::Busiest {
                        top: 0,
                        at_least: *at_least,
                    },
                    Ask::Count(ids) => Listed::Only(ids.clone()),
                };
                let headers = over(asked.headers, &none, asked.within, &listed)?;
                requests.push((asked.shards[*n], asked.path.to_owned(), headers));
            }
            let answers: Vec<Answer<StatsParts>> =
                match ask_json(asked.gateway, asked.user_id, requests).await? {
                    Ok(answers) => answers,
                    Err(refusal) if refusal.status() == http::StatusCode::BAD_REQUEST => {
                        // the parameters passed the first round: a node of an earlier version,
                        // which lists its busiest alone, during an upgrade
                        tracing::warn!(
                            user = asked.user_id,
                            "a shard does not take the rounds that make the busiest assistants \
                             of a spread user exact: they are as far as the shards listed them"
                        );
                        return Ok(Ok(busiest.as_far_as_known()));
                    }
                    Err(refusal) => return Ok(Err(refusal)),
                };
            for ((n, ask), Answer { body: part, .. }) in batch.into_iter().zip(answers) {
                match ask {
                    Ask::AtLeast(_) => busiest.relisted(n, &part),
                    Ask::Count(ids) => busiest.counted(n, &ids, &part),
                }
            }
        }
    }
}

/// What one request of the further rounds asks a shard (by its place among the parts).
enum Ask {
    /// Every assistant with at least that many matches ([`Step::AtLeast`]).
    AtLeast(u64),
    /// These assistants' matches ([`Step::Count`]).
    Count(Vec<String>),
}

/// Each shard's ids in groups that fit in a request ([`in_headers`]), asked one group of each
/// shard at a time: no shard gets more than one request of these at once, as with every round.
fn one_per_shard(by_shard: Vec<(usize, Vec<String>)>) -> Vec<Vec<(usize, Ask)>> {
    let mut batches: Vec<Vec<(usize, Ask)>> = Vec::new();
    for (n, ids) in by_shard {
        for (i, group) in in_headers(ids).into_iter().enumerate() {
            if batches.len() == i {
                batches.push(Vec::new());
            }
            batches[i].push((n, Ask::Count(group)));
        }
    }
    batches
}

/// Bytes of form-encoded assistant ids one request carries in its header, at most: well within
/// the 400 KiB of headers an HTTP/1 server takes.
const ID_BYTES_PER_REQUEST: usize = 32 * 1024;

// even empty ids (`assistant=&`) are fewer to a request than a shard takes
const _: () = assert!(ID_BYTES_PER_REQUEST / "assistant=&".len() <= api::STATS_PARTS_MAX_IDS);

/// `ids` in groups whose form-encoding fits in a header ([`ID_BYTES_PER_REQUEST`]), in their
/// order.
fn in_headers(ids: Vec<String>) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0;
    for id in ids {
        let encoded = serde_urlencoded::to_string([("assistant", &id)])
            .expect("pairs of strings always encode")
            .len()
            + 1;
        match groups.last_mut() {
            Some(group) if bytes + encoded <= ID_BYTES_PER_REQUEST => {
                bytes += encoded;
                group.push(id);
            }
            _ => {
                bytes = encoded;
                groups.push(vec![id]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_in_groups_that_fit_a_header_and_a_shards_limit() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("a-{i:05}&ü")).collect();
        let groups = in_headers(ids.clone());
        assert_eq!(groups.concat(), ids);
        for group in &groups {
            let header = api::stats_parts_over(
                &TimeHistogram {
                    interval: 1,
                    start: 0,
                    buckets: Vec::new(),
                },
                (1, 2),
                &Listed::Only(group.clone()),
            );
            let (_, listed) = header.split_once(';').unwrap();
            assert!(listed.len() <= ID_BYTES_PER_REQUEST, "{}", listed.len());
        }
        // 27 bytes encoded each, with its `&`
        let each = "assistant=a-00000%26%C3%BC&".len();
        assert_eq!(groups[0].len(), ID_BYTES_PER_REQUEST / each);
        assert_eq!(
            groups.len(),
            10_000usize.div_ceil(ID_BYTES_PER_REQUEST / each)
        );
        // the shortest ids: fewer to a group than a shard takes
        let groups = in_headers(vec![String::new(); 5_000]);
        assert_eq!(groups.len(), 2);
        assert!(
            groups[0].len() <= api::STATS_PARTS_MAX_IDS,
            "{}",
            groups[0].len()
        );
        assert!(in_headers(Vec::new()).is_empty());
    }

    #[test]
    fn each_shard_gets_one_group_of_ids_at_a_time() {
        let ids = |n: usize| {
            (0..n)
                .map(|i| format!("{i:0>1000}"))
                .collect::<Vec<String>>()
        };
        // 32 ids of 1,000 bytes to a group: three groups for shard 4, one for shard 7
        let batches = one_per_shard(vec![(4, ids(70)), (7, ids(5))]);
        let shape: Vec<Vec<(usize, usize)>> = batches
            .iter()
            .map(|batch| {
                (batch.iter())
                    .map(|(n, ask)| match ask {
                        Ask::Count(ids) => (*n, ids.len()),
                        Ask::AtLeast(_) => panic!("a count asks for ids"),
                    })
                    .collect()
            })
            .collect();
        assert_eq!(shape, [vec![(4, 32), (7, 5)], vec![(4, 32)], vec![(4, 6)]]);
    }
}
