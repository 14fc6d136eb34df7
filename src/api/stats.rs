//! `GET /logs/stats`: counts per type and status, a histogram over time by status, latency
//! percentiles per type and the busiest assistants of the logs matching the filters of `GET /logs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::params::Filters;
use super::{ApiState, Caller, caller, params};
use crate::auth::Scope;
use crate::mapping::{LogStatus, LogType};
use crate::store::{
    Latency, Listed, LogQuery, MAX_BUCKETS, Stats, StatsError, TimeHistogram, format_timestamp,
};

/// The intervals a caller may ask for, by name, in seconds.
const INTERVALS: [(&str, u64); 4] = [("1m", 60), ("5m", 300), ("1h", 3600), ("1d", 86_400)];

#[derive(Serialize, ToSchema)]
struct StatsBody {
    success: bool,
    message: &'static str,
    data: StatsData,
}

#[derive(Serialize, ToSchema)]
struct StatsData {
    total: u64,
    by_type_status: PerType<StatusCounts>,
    histogram: HistogramData,
    latency_ms: PerType<LatencyData>,
    top_assistants: Vec<AssistantData>,
}

/// One value per log type.
#[derive(Serialize, ToSchema)]
struct PerType<T> {
    tool_call: T,
    end_call_webhook: T,
    inbound_context_lookup: T,
}

impl<T> PerType<T> {
    fn new(mut value: impl FnMut(usize, LogType) -> T) -> Self {
        let [tool_call, end_call_webhook, inbound_context_lookup] = LogType::ALL;
        Self {
            tool_call: value(0, tool_call),
            end_call_webhook: value(1, end_call_webhook),
            inbound_context_lookup: value(2, inbound_context_lookup),
        }
    }
}

#[derive(Serialize, ToSchema)]
struct StatusCounts {
    success: u64,
    error: u64,
}

#[derive(Serialize, ToSchema)]
struct HistogramData {
    interval: String,
    interval_seconds: f64,
    buckets: Vec<BucketData>,
}

#[derive(Serialize, ToSchema)]
struct BucketData {
    start: String,
    success: u64,
    error: u64,
}

/// Percentiles in milliseconds; null when the type has no log.
#[derive(Serialize, ToSchema)]
struct LatencyData {
    count: u64,
    p50: Option<u64>,
    p95: Option<u64>,
    p99: Option<u64>,
    max: Option<u64>,
}

impl From<Option<Latency>> for LatencyData {
    fn from(latency: Option<Latency>) -> Self {
        LatencyData {
            count: latency.map_or(0, |l| l.count),
            p50: latency.map(|l| l.p50),
            p95: latency.map(|l| l.p95),
            p99: latency.map(|l| l.p99),
            max: latency.map(|l| l.max),
        }
    }
}

#[derive(Serialize, ToSchema)]
struct AssistantData {
    assistant_id: String,
    count: u64,
    errors: u64,
}

/// The parameters of `GET /logs/stats` besides the filters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsParams<'a> {
    /// Width of the histogram's buckets; absent, one for about 60 buckets over the time range.
    #[param(value_type = Option<String>, pattern = "^(1m|5m|1h|1d)$")]
    interval: Option<&'a str>,
}

/// `GET /logs/stats`: what the caller's logs matching the filters hold, in numbers.
#[utoipa::path(get, path = "/logs/stats", tag = "logs", params(Filters, StatsParams),
    responses((status = 200, description = "Statistics of the matching logs.", body = StatsBody), ApiError),
    security(("bearer" = [])))]
pub async fn stats(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ApiError> {
    let Caller { user_id, pairs, .. } =
        caller(&state, &headers, raw_query.as_deref(), Scope::Read)?;
    let StatsRequest { query, interval } = parse(&pairs, &user_id)?;
    state.check(&query).await?;
    let part = headers
        .get(PARTS_HEADER)
        .map(|value| Part::parse(value.to_str().unwrap_or("")))
        .transpose()?;
    // a client that goes away (a new filter in the explorer) stops the work it asked for
    let cancel = CancelOnDrop::default();
    let cancelled = cancel.0.clone();
    let answer = state
        .search(&user_id, move |store| match part {
            None => store
                .stats(&query, interval, &cancelled)
                .map(|stats| axum::Json(body(&stats)).into_response()),
            Some(Part::Span) => store
                .stats_span(&query)
                .map(|span| axum::Json(span).into_response())
                .map_err(StatsError::Store),
            Some(Part::Over {
                histogram,
                within,
                listed,
            }) => {
                // what the first round saw: logs arriving since, outside it, are left out of
                // the counts as of the buckets
                let query = LogQuery {
                    start: Some(within.0),
                    end: Some(within.1.saturating_add(1)),
                    ..query
                };
                store
                    .stats_parts(&query, histogram, &listed, &cancelled)
                    .map(|parts| axum::Json(parts).into_response())
            }
        })
        .await?
        .map_err(stats_error)?;
    drop(cancel);
    Ok(answer)
}

/// A peer's request for its part of the statistics of a user spread over several shards: the
/// time its matches span, or the parts of its statistics over given buckets.
pub const PARTS_HEADER: &str = "logbridge-stats-parts";

/// Busiest assistants a part lists unless asked for another number, so that those of all parts
/// can be told exactly.
pub const PARTS_TOP: usize = 1_000;

/// Assistants a part may be asked to count by id, at most.
pub const PARTS_MAX_IDS: usize = 4_096;

/// What a [`PARTS_HEADER`] asks for.
enum Part {
    /// `span`: the first and the last nanosecond of the matches (JSON `[first, last]` or null).
    Span,
    /// `<start>,<interval>,<buckets>,<first>,<last>` (nanoseconds but for the count of
    /// buckets), then optionally `;` and which assistants to list, form-encoded (`top=<n>`
    /// and `at_least=<matches>`, or `assistant=<id>` repeated; by default the [`PARTS_TOP`]
    /// busiest): the statistics over those buckets of the matches stamped from `first` to
    /// `last` (the span the first round found), before percentiles are taken
    /// ([`crate::store::StatsParts`]).
    Over {
        histogram: TimeHistogram,
        within: (u64, u64),
        listed: Listed,
    },
}

impl Part {
    fn parse(value: &str) -> Result<Self, ApiError> {
        if value == "span" {
            return Ok(Part::Span);
        }
        let bad = || {
            ApiError::BadRequest(format!(
                "{PARTS_HEADER} must be span or start,interval,buckets,first,last \
                 then optionally ;top=&at_least= or ;assistant=&assistant= (up to \
                 {PARTS_MAX_IDS} of them)"
            ))
        };
        let (numbers, listed) = value.split_once(';').unwrap_or((value, ""));
        let numbers: Vec<u64> = numbers
            .split(',')
            .map(|n| n.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let [start, interval, buckets, first, last] = numbers[..] else {
            return Err(bad());
        };
        if interval == 0 || start % interval != 0 || buckets > MAX_BUCKETS || first > last {
            return Err(bad());
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(listed).map_err(|_| bad())?;
        let number = |name: &str| -> Result<Option<u64>, ApiError> {
            params::lookup(&pairs, name)
                .map(|n| n.parse().map_err(|_| bad()))
                .transpose()
        };
        let ids: Vec<String> = (pairs.iter())
            .filter(|(name, _)| name == "assistant")
            .map(|(_, id)| id.clone())
            .collect();
        if pairs
            .iter()
            .any(|(name, _)| !LISTED.contains(&name.as_str()))
        {
            return Err(bad());
        }
        let listed = match (number("top")?, number("at_least")?, ids.is_empty()) {
            (None, None, false) if ids.len() <= PARTS_MAX_IDS => Listed::Only(ids),
            (top, at_least, true) => Listed::Busiest {
                top: top.map_or(PARTS_TOP, |top| top.min(PARTS_TOP as u64) as usize),
                at_least: at_least.unwrap_or(u64::MAX),
            },
            _ => return Err(bad()),
        };
        Ok(Part::Over {
            histogram: TimeHistogram {
                interval,
                start,
                buckets: vec![[0; 2]; buckets as usize],
            },
            within: (first, last),
            listed,
        })
    }
}

/// The names a [`PARTS_HEADER`] may give after `;`.
const LISTED: [&str; 3] = ["top", "at_least", "assistant"];

/// The [`PARTS_HEADER`] that asks for a shard's parts of the statistics over `histogram`'s
/// buckets, of the matches stamped from `first` to `last` (`within`), listing the assistants
/// `listed` asks for (at most [`PARTS_TOP`] busiest).
pub fn parts_over(histogram: &TimeHistogram, within: (u64, u64), listed: &Listed) -> String {
    let numbers = format!(
        "{},{},{},{},{}",
        histogram.start,
        histogram.interval,
        histogram.buckets.len(),
        within.0,
        within.1
    );
    let pairs: Vec<(&str, String)> = match listed {
        Listed::Busiest {
            top: PARTS_TOP,
            at_least: u64::MAX,
        } => return numbers,
        Listed::Busiest { top, at_least } => [("top", top.to_string())]
            .into_iter()
            .chain((*at_least < u64::MAX).then(|| ("at_least", at_least.to_string())))
            .collect(),
        Listed::Only(ids) => ids.iter().map(|id| ("assistant", id.clone())).collect(),
    };
    // form-encoding makes every byte of an id a visible character
    let listed = serde_urlencoded::to_string(pairs).expect("pairs of strings always encode");
    format!("{numbers};{listed}")
}

/// What `GET /logs/stats` asks for.
pub struct StatsRequest {
    /// The filters.
    pub query: LogQuery,
    /// The histogram's interval in nanoseconds; none for about [`crate::store::AUTO_BUCKETS`].
    pub interval: Option<u64>,
}

/// The parameters of `GET /logs/stats` of `user_id`, or the error that names the bad one.
pub fn parse(pairs: &[(String, String)], user_id: &str) -> Result<StatsRequest, ApiError> {
    let given = StatsParams {
        interval: params::lookup(pairs, "interval"),
    };
    let interval = match given.interval {
        None => None,
        Some(name) => {
            let seconds = INTERVALS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, seconds)| seconds)
                .ok_or_else(|| ApiError::BadRequest("interval must be 1m, 5m, 1h or 1d".into()))?;
            Some(seconds * 1_000_000_000)
        }
    };
    let query = params::parse_filters_only(pairs, user_id, "GET /logs/stats, which counts")?;
    Ok(StatsRequest { query, interval })
}

/// The answer of statistics that could not be computed.
pub fn stats_error(e: StatsError) -> ApiError {
    match e {
        StatsError::TooManyBuckets { buckets } => ApiError::BadRequest(format!(
            "interval cuts the time range into {buckets} buckets, more than {MAX_BUCKETS}: \
             choose a wider interval or a narrower start_time and end_time"
        )),
        StatsError::Store(e) => ApiError::Internal(e.to_string()),
        // only a request that is gone is cancelled: nobody reads this
        StatsError::Cancelled => ApiError::Unavailable("the statistics were cancelled"),
    }
}

/// The answer of `GET /logs/stats` with `stats`.
pub fn stats_response(stats: &Stats) -> Response {
    axum::Json(body(stats)).into_response()
}

fn body(stats: &Stats) -> StatsBody {
    StatsBody {
        success: true,
        message: "Activity log statistics fetched successfully",
        data: data(stats),
    }
}

/// Set when dropped: when the request's future is dropped because its client left, or when the
/// answer is ready.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn data(stats: &Stats) -> StatsData {
    let by_type_status = PerType::new(|_, t| StatusCounts {
        success: stats.count(t, LogStatus::Success),
        error: stats.count(t, LogStatus::Error),
    });
    let latency_ms = PerType::new(|i, _| LatencyData::from(stats.latency[i]));
    let histogram = &stats.histogram;
    let buckets = histogram
        .buckets
        .iter()
        .enumerate()
        .map(|(i, [success, error])| BucketData {
            start: format_timestamp(
                histogram
                    .start
                    .saturating_add(histogram.interval.saturating_mul(i as u64)),
            ),
            success: *success,
            error: *error,
        })
        .collect();
    StatsData {
        total: stats.total(),
        by_type_status,
        histogram: HistogramData {
            interval: interval_name(histogram.interval),
            interval_seconds: histogram.interval as f64 / 1e9,
            buckets,
        },
        latency_ms,
        top_assistants: stats
            .top_assistants
            .iter()
            .map(|a| AssistantData {
                assistant_id: a.assistant_id.clone(),
                count: a.count,
                errors: a.errors,
            })
            .collect(),
    }
}

/// An interval (whole seconds) as a number of the largest unit it is a whole number of: `90s`,
/// `5m`, `3h`, `7d`.
fn interval_name(nanos: u64) -> String {
    let seconds = nanos / 1_000_000_000;
    let (count, unit) = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")]
        .into_iter()
        .find(|(unit, _)| seconds % unit == 0)
        .map(|(unit, name)| (seconds / unit, name))
        .expect("every number of seconds is a whole number of seconds");
    format!("{count}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_a_gateway_asks_for_are_read_back_as_asked() {
        let histogram = TimeHistogram {
            interval: 60,
            start: 120,
            buckets: vec![[0; 2]; 3],
        };
        for listed in [
            Listed::busiest(PARTS_TOP),
            Listed::Busiest {
                top: 10,
                at_least: 4,
            },
            Listed::Only(vec!["a&b=c".to_owned(), "ünï code;,".to_owned()]),
        ] {
            let header = parts_over(&histogram, (130, 300), &listed);
            assert!(http::HeaderValue::from_str(&header).is_ok(), "{header}");
            let Ok(Part::Over {
                histogram: read,
                within,
                listed: read_listed,
            }) = Part::parse(&header)
            else {
                panic!("{header} is not read back");
            };
            assert_eq!(
                (read, within, read_listed),
                (histogram.clone(), (130, 300), listed)
            );
        }
        // the default needs no list: what every version of a node reads
        assert_eq!(
            parts_over(&histogram, (130, 300), &Listed::busiest(PARTS_TOP)),
            "120,60,3,130,300"
        );
        // more than a part lists is as many as it lists
        let Ok(Part::Over { listed, .. }) = Part::parse("120,60,3,130,300;top=5000") else {
            panic!("top=5000 is not read");
        };
        assert_eq!(listed, Listed::busiest(PARTS_TOP));
    }

    #[test]
    fn a_malformed_parts_header_is_named() {
        for header in [
            "120,60,3,130",
            "120,60,3,130,300;top=x",
            "120,60,3,130,300;top=3&assistant=a",
            "120,60,3,130,300;at_least=2&assistant=a",
            "120,60,3,130,300;colour=red",
            "120,60,3,300,130",
        ]
        .map(str::to_owned)
        .into_iter()
        .chain([format!(
            "120,60,3,130,300;{}",
            vec!["assistant=a"; PARTS_MAX_IDS + 1].join("&")
        )]) {
            let header = header.as_str();
            let Err(ApiError::BadRequest(message)) = Part::parse(header) else {
                panic!("{header} was taken");
            };
            assert!(message.starts_with(PARTS_HEADER), "{header}: {message}");
        }
    }

    #[test]
    fn interval_names_use_the_largest_whole_unit() {
        let s = 1_000_000_000;
        assert_eq!(interval_name(s), "1s");
        assert_eq!(interval_name(90 * s), "90s");
        assert_eq!(interval_name(300 * s), "5m");
        assert_eq!(interval_name(10_800 * s), "3h");
        assert_eq!(interval_name(7 * 86_400 * s), "7d");
    }
}
