//! Statistics of the logs a query selects: counts per type and status, a histogram over time
//! split by status, latency percentiles per type and the busiest assistants, in one pass over
//! the matches' fast fields (and a second over the busiest candidates' matches when there are
//! too many assistants to count each, see [`super::assistants`]).
//!
//! Counts are exact. Percentiles come from an HDR histogram with three significant digits:
//! exact below 2,048 ms, within 0.1% above; the maximum is exact.

use std::sync::atomic::{AtomicBool, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tantivy::columnar::Column;
use tantivy::{DocId, SegmentReader};

pub use super::assistants::{AssistantCount, Listed, Tally};
use super::assistants::{Assistants, Unfinished};
use super::cache::Weighed;
use super::schema::{ASSISTANT_FIELD, KIND_FIELD, LATENCY_FIELD, kind_parts};
use super::search::Visitor;
use crate::mapping::{LogStatus, LogType};

/// Most buckets a histogram may have.
pub const MAX_BUCKETS: u64 = 10_000;

/// About how many buckets a histogram gets when the caller leaves the interval to the server.
pub const AUTO_BUCKETS: u64 = 60;

/// Assistants listed, at most.
pub const TOP_ASSISTANTS: usize = 10;

const SECOND: u64 = 1_000_000_000;
const DAY: u64 = 86_400 * SECOND;

/// The intervals an automatic histogram chooses from, in seconds; past the last, whole days.
const AUTO_INTERVALS: [u64; 20] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400,
    172_800, 604_800,
];

/// The statistics of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Matches per type and status, indexed like [`LogType::ALL`] and [`LogStatus::ALL`].
    pub counts: [[u64; 2]; 3],
    pub histogram: TimeHistogram,
    /// Per type, indexed like [`LogType::ALL`]; `None` when the type has no match.
    pub latency: [Option<Latency>; 3],
    /// Up to [`TOP_ASSISTANTS`], most logs first, then by id.
    pub top_assistants: Vec<AssistantCount>,
}

impl Stats {
    /// Every match.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// The matches of one type and status.
    pub fn count(&self, log_type: LogType, status: LogStatus) -> u64 {
        self.counts[type_index(log_type)][status_index(status)]
    }
}

/// Matches over time, split by status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeHistogram {
    /// Width of a bucket, in nanoseconds.
    pub interval: u64,
    /// Start of the first bucket, nanoseconds since the epoch: a multiple of the interval.
    pub start: u64,
    /// Per bucket, the matches that succeeded and failed.
    pub buckets: Vec<[u64; 2]>,
}

/// Latency percentiles of one log type, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

/// Why statistics were not computed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The interval cuts the time range into more than [`MAX_BUCKETS`].
    #[error("the interval gives {buckets} buckets over the time range; at most {MAX_BUCKETS}")]
    TooManyBuckets { buckets: u64 },
    /// Whoever asked no longer waits for the answer.
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Store(#[from] super::StoreError),
}

fn type_index(log_type: LogType) -> usize {
    kind_parts(super::schema::kind(log_type, LogStatus::Success)).0
}

fn status_index(status: LogStatus) -> usize {
    kind_parts(super::schema::kind(LogType::ToolCall, status)).1
}

/// The interval for about [`AUTO_BUCKETS`] buckets over `span` nanoseconds.
pub fn auto_interval(span: u64) -> u64 {
    let wanted = span.div_ceil(AUTO_BUCKETS);
    AUTO_INTERVALS
        .iter()
        .map(|s| s * SECOND)
        .find(|&interval| interval >= wanted)
        .unwrap_or_else(|| wanted.div_ceil(DAY) * DAY)
}

/// The buckets from the one holding `first` to the one holding `last` (both inclusive), at
/// `interval`: aligned to multiples of it since the epoch.
pub fn buckets(first: u64, last: u64, interval: u64) -> Result<TimeHistogram, StatsError> {
    let start = first - first % interval;
    let count = (last - start) / interval + 1;
    if count > MAX_BUCKETS {
        return Err(StatsError::TooManyBuckets { buckets: count });
    }
    Ok(TimeHistogram {
        interval,
        start,
        buckets: vec![[0; 2]; count as usize],
    })
}

/// The buckets of a query's histogram over `span` (see [`super::Store::stats_span`]), at
/// `interval`, or one for about [`AUTO_BUCKETS`] buckets.
pub fn histogram_over(
    span: Option<(u64, u64)>,
    query: &super::LogQuery,
    interval: Option<u64>,
) -> Result<TimeHistogram, StatsError> {
    match span {
        Some((first, last)) if first <= last => {
            let interval =
                interval.unwrap_or_else(|| auto_interval((last - first).saturating_add(1)));
            buckets(first, last, interval)
        }
        _ => Ok(TimeHistogram {
            interval: interval.unwrap_or_else(|| auto_interval(0)),
            start: query.start.unwrap_or(0),
            buckets: Vec::new(),
        }),
    }
}

struct SegmentColumns {
    kinds: Column<u64>,
    latencies: Column<u64>,
}

/// Collects [`Stats`] from the matches a [`super::search::Prepared`] visits.
pub struct StatsVisitor<'a> {
    cancelled: &'a AtomicBool,
    counts: [[u64; 2]; 3],
    histogram: TimeHistogram,
    latencies: [Histogram<u64>; 3],
    max_latency: [u64; 3],
    assistants: Assistants,
    segment: Option<SegmentColumns>,
    /// Whether to stop once the assistants cannot all be counted exactly.
    exact_only: bool,
}

impl<'a> StatsVisitor<'a> {
    /// A visitor filling `histogram`, which stops early once `cancelled` is set.
    pub fn new(histogram: TimeHistogram, cancelled: &'a AtomicBool) -> Self {
        let assistants =
            Assistants::new(super::assistants::CAPACITY, super::assistants::DENSE_TERMS);
        Self::with_assistants(histogram, cancelled, assistants)
    }

    /// A visitor like [`StatsVisitor::new`] for [`StatsVisitor::finish_exact`], which stops
    /// early once there are too many assistants to count each exactly.
    pub fn exact(histogram: TimeHistogram, cancelled: &'a AtomicBool) -> Self {
        Self {
            exact_only: true,
            ..Self::new(histogram, cancelled)
        }
    }

    /// The matches visited.
    #[cfg(test)]
    pub fn visited(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// A visitor like [`StatsVisitor::new`] that counts assistants with `assistants`.
    fn with_assistants(
        histogram: TimeHistogram,
        cancelled: &'a AtomicBool,
        assistants: Assistants,
    ) -> Self {
        Self {
            cancelled,
            counts: [[0; 2]; 3],
            histogram,
            latencies: [
                latency_histogram(),
                latency_histogram(),
                latency_histogram(),
            ],
            max_latency: [0; 3],
            assistants,
            segment: None,
            exact_only: false,
        }
    }

    /// What every match visited adds up to, with the assistants `listed` asks for; none when
    /// cancelled.
    pub fn finish(mut self, listed: &Listed) -> Result<StatsParts, StatsError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(StatsError::Cancelled);
        }
        let assistants = std::mem::replace(&mut self.assistants, Assistants::new(0, 0));
        let (assistants, unlisted_at_most) = assistants
            .list(listed, self.cancelled)
            .map_err(unfinished_error)?;
        Ok(self.into_parts(assistants, unlisted_at_most))
    }

    /// What every match visited adds up to, with every assistant counted exactly; `None` when
    /// there were too many assistants to count each exactly ([`StatsVisitor::finish`] finds the
    /// busiest of any number).
    pub fn finish_exact(mut self) -> Result<Option<StatsParts>, StatsError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(StatsError::Cancelled);
        }
        if self.assistants.inexact() {
            return Ok(None);
        }
        let assistants = std::mem::replace(&mut self.assistants, Assistants::new(0, 0));
        let Some(assistants) = assistants.exact().map_err(unfinished_error)? else {
            return Ok(None);
        };
        Ok(Some(self.into_parts(assistants, 0)))
    }

    fn into_parts(self, assistants: Vec<AssistantCount>, unlisted_at_most: u64) -> StatsParts {
        StatsParts {
            counts: self.counts,
            histogram: self.histogram,
            latencies: self.latencies.each_ref().map(|histogram| {
                histogram
                    .iter_recorded()
                    .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
                    .collect()
            }),
            max_latency: self.max_latency,
            assistants,
            unlisted_at_most,
        }
    }
}

fn unfinished_error(unfinished: Unfinished) -> StatsError {
    match unfinished {
        Unfinished::Cancelled => StatsError::Cancelled,
        Unfinished::Read(e) => super::StoreError::from(tantivy::TantivyError::from(e)).into(),
    }
}

/// Statistics before percentiles are taken: what the shards of a user spread over several add
/// up to ([`StatsParts::add`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsParts {
    pub counts: [[u64; 2]; 3],
    pub histogram: TimeHistogram,
    /// Per type: the latency histogram's buckets that hold matches, as (a value of the bucket,
    /// its matches).
    latencies: [Vec<(u64, u64)>; 3],
    max_latency: [u64; 3],
    /// The assistants asked for ([`Listed`]), each counted exactly: the busiest most matches
    /// first then by id, or given ids by id.
    pub assistants: Vec<AssistantCount>,
    /// Of the busiest: most matches any assistant not listed has, 0 when every one is listed.
    /// Always 0 for given ids, where the others were not asked for.
    pub unlisted_at_most: u64,
}

impl Weighed for StatsParts {
    fn bytes(&self) -> usize {
        let latencies: usize = self.latencies.iter().map(Vec::len).sum();
        let assistants: usize = (self.assistants.iter())
            .map(|a| a.assistant_id.len() + std::mem::size_of::<AssistantCount>())
            .sum();
        self.histogram.buckets.len() * 16 + latencies * 16 + assistants
    }
}

/// Why statistics of two parts of the logs cannot be added.
#[derive(Debug, thiserror::Error)]
#[error("the histograms differ: {0}")]
pub struct Mismatch(&'static str);

impl StatsParts {
    /// The statistics of no log, over `histogram`'s buckets.
    pub fn empty(histogram: TimeHistogram) -> Self {
        Self {
            counts: [[0; 2]; 3],
            histogram,
            latencies: Default::default(),
            max_latency: [0; 3],
            assistants: Vec::new(),
            unlisted_at_most: 0,
        }
    }

    /// Adds `other`, of logs disjoint from these, over the same histogram buckets. The
    /// assistants are left to the caller, who knows how to make them exact
    /// ([`StatsParts::unlisted_at_most`]).
    pub fn add(&mut self, other: &StatsParts) -> Result<(), Mismatch> {
        let (mine, theirs) = (&mut self.histogram, &other.histogram);
        if mine.interval != theirs.interval || mine.start != theirs.start {
            return Err(Mismatch("interval or start"));
        }
        if mine.buckets.len() != theirs.buckets.len() {
            return Err(Mismatch("number of buckets"));
        }
        self.add_within(other);
        Ok(())
    }

    /// Adds `other`, of logs disjoint from these, whose histogram has the same interval and
    /// buckets among these (the same ones, or a segment's within the query's). The assistants
    /// are left to the caller.
    pub fn add_within(&mut self, other: &StatsParts) {
        let (mine, theirs) = (&mut self.histogram, &other.histogram);
        debug_assert_eq!(mine.interval, theirs.interval);
        let first = (theirs.start / theirs.interval).checked_sub(mine.start / mine.interval);
        for (i, added) in theirs.buckets.iter().enumerate() {
            let bucket = first.and_then(|first| mine.buckets.get_mut(first as usize + i));
            if let Some(bucket) = bucket {
                bucket[0] += added[0];
                bucket[1] += added[1];
            }
        }
        for (counts, added) in self.counts.iter_mut().zip(&other.counts) {
            counts[0] += added[0];
            counts[1] += added[1];
        }
        for t in 0..3 {
            self.latencies[t].extend_from_slice(&other.latencies[t]);
            self.max_latency[t] = self.max_latency[t].max(other.max_latency[t]);
        }
    }

    /// Makes one entry of the latency buckets that several parts added hold alike, so that
    /// what a shard sends stays one histogram's worth whatever its number of segments.
    pub fn merge_latencies(&mut self) {
        for latencies in &mut self.latencies {
            latencies.sort_unstable_by_key(|&(value, _)| value);
            latencies.dedup_by(|(value, count), (kept, total)| {
                let same = value == kept;
                if same {
                    *total += *count;
                }
                same
            });
        }
    }

    /// Keeps the assistants `listed` asks for of those listed, which are all counted exactly,
    /// and how many matches the busiest of the others has.
    pub fn keep(&mut self, listed: &Listed) {
        let all = std::mem::take(&mut self.assistants);
        (self.assistants, self.unlisted_at_most) = listed.keep(all);
    }

    /// The statistics, with up to `top` busiest assistants of those listed.
    pub fn finish(mut self, top: usize) -> Stats {
        let latency = std::array::from_fn(|t| {
            let mut histogram = latency_histogram();
            for &(value, count) in &self.latencies[t] {
                // a bucket's value lands in the same bucket of a histogram of the same precision
                if histogram.record_n(value, count).is_err() {
                    histogram.saturating_record_n(value, count);
                }
            }
            let max = self.max_latency[t];
            // a percentile is the top of its bucket, which may pass the largest value
            let at = |quantile| histogram.value_at_quantile(quantile).min(max);
            (!histogram.is_empty()).then(|| Latency {
                count: histogram.len(),
                p50: at(0.50),
                p95: at(0.95),
                p99: at(0.99),
                max,
            })
        });
        self.assistants.truncate(top);
        Stats {
            counts: self.counts,
            histogram: self.histogram,
            latency,
            top_assistants: self.assistants,
        }
    }
}

/// A histogram of latencies: three significant digits (exact below 2,048 ms, within 0.1% above).
fn latency_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits are supported")
}

impl Visitor for StatsVisitor<'_> {
    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || (self.exact_only && self.assistants.inexact())
    }

    fn enter(&mut self, segment: &SegmentReader) -> tantivy::Result<()> {
        let fast = segment.fast_fields();
        let kinds = fast.u64(KIND_FIELD)?;
        let failed = {
            let kinds = kinds.clone();
            Box::new(move |doc| kinds.first(doc).is_some_and(|kind| kind_parts(kind).1 == 1))
        };
        self.assistants
            .enter(fast.str(ASSISTANT_FIELD)?, segment.max_doc(), failed);
        self.segment = Some(SegmentColumns {
            kinds,
            latencies: fast.u64(LATENCY_FIELD)?,
        });
        Ok(())
    }

    fn visit(&mut self, doc: DocId, timestamp: u64) {
        let Some(segment) = &mut self.segment else {
            return;
        };
        let Some(kind) = segment.kinds.first(doc) else {
            return;
        };
        let (t, s) = kind_parts(kind);
        if t >= 3 {
            return;
        }
        self.counts[t][s] += 1;
        let histogram = &mut self.histogram;
        if let Some(bucket) = timestamp.checked_sub(histogram.start).and_then(|offset| {
            histogram
                .buckets
                .get_mut((offset / histogram.interval) as usize)
        }) {
            bucket[s] += 1;
        }
        let latency = segment.latencies.first(doc).unwrap_or(0);
        let histogram = &mut self.latencies[t];
        // it grows to fit, up to values no latency reaches
        if histogram.record(latency).is_err() {
            histogram.saturating_record(latency);
        }
        self.max_latency[t] = self.max_latency[t].max(latency);
        self.assistants.count(doc, s == 1);
    }

    fn leave(&mut self) {
        self.segment = None;
        self.assistants.leave();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::assistants::Assistants;
    use super::super::{LogQuery, StoreOptions};
    use super::*;
    use crate::mapping::example_log;

    #[test]
    fn the_busiest_assistants_are_exact_where_the_summary_drops_counters() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut writer) =
            super::super::open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        // ten busy assistants with about 6% of the logs each, among about 700 others
        let mut rng = StdRng::seed_from_u64(9);
        let mut logs = Vec::new();
        for seq in 1..=3_000u64 {
            let mut log = example_log("m");
            log.assistant_id = if rng.random_bool(0.6) {
                format!("busy-{}", rng.random_range(0..10))
            } else {
                format!("other-{}", rng.random_range(0..1_000))
            };
            if rng.random_bool(0.3) {
                log.status = LogStatus::Error;
            }
            log.timestamp_nanos = seq;
            writer.add(&log, seq).unwrap();
            // three segments
            if seq % 1_000 == 0 {
                writer.commit(seq).unwrap();
            }
            logs.push(log);
        }
        for status in [None, Some(LogStatus::Error)] {
            let mut expected: HashMap<&str, AssistantCount> = HashMap::new();
            for log in logs.iter().filter(|l| status.is_none_or(|s| l.status == s)) {
                let entry = expected
                    .entry(&log.assistant_id)
                    .or_insert_with(|| AssistantCount {
                        assistant_id: log.assistant_id.clone(),
                        count: 0,
                        errors: 0,
                    });
                entry.count += 1;
                entry.errors += u64::from(log.status == LogStatus::Error);
            }
            let mut expected: Vec<AssistantCount> = expected.into_values().collect();
            expected.sort_by(AssistantCount::busiest_first);
            expected.truncate(TOP_ASSISTANTS);

            let query = LogQuery {
                user_id: "u".into(),
                status,
                ..LogQuery::default()
            };
            // 32 counters, dropped every 64 assistants: at most a 33rd of the matches is lost,
            // less than any busy assistant has
            for dense_terms in [0, usize::MAX] {
                let searcher = store.reader.searcher();
                let (prepared, window) = store.prepare(&searcher, &query).unwrap();
                let cancelled = AtomicBool::new(false);
                let histogram = buckets(0, 3_000, 1_000).unwrap();
                let assistants = Assistants::new(32, dense_terms);
                let mut visitor = StatsVisitor::with_assistants(histogram, &cancelled, assistants);
                prepared.visit(&window, &mut visitor).unwrap();
                let stats = visitor
                    .finish(&Listed::busiest(TOP_ASSISTANTS))
                    .unwrap()
                    .finish(TOP_ASSISTANTS);
                assert_eq!(stats.top_assistants, expected, "{status:?} {dense_terms}");
            }
        }
    }

    #[test]
    fn automatic_intervals_give_about_sixty_buckets() {
        assert_eq!(auto_interval(0), SECOND);
        assert_eq!(auto_interval(60 * SECOND), SECOND);
        assert_eq!(auto_interval(61 * SECOND), 2 * SECOND);
        assert_eq!(auto_interval(3600 * SECOND), 60 * SECOND);
        assert_eq!(auto_interval(24 * 3600 * SECOND), 1800 * SECOND);
        assert_eq!(auto_interval(7 * DAY), 3 * 3600 * SECOND);
        assert_eq!(auto_interval(365 * DAY), 7 * DAY);
        assert_eq!(auto_interval(3650 * DAY), 61 * DAY);
        let widest = auto_interval(u64::MAX);
        assert_eq!(widest % DAY, 0);
        assert!(u64::MAX.div_ceil(widest) <= AUTO_BUCKETS);
    }

    #[test]
    fn buckets_are_aligned_and_cover_the_range() {
        let minute = 60 * SECOND;
        let h = buckets(90 * SECOND, 180 * SECOND, minute).unwrap();
        assert_eq!(h.start, minute);
        assert_eq!(h.buckets.len(), 3);
        let h = buckets(0, 0, minute).unwrap();
        assert_eq!((h.start, h.buckets.len()), (0, 1));
        assert!(matches!(
            buckets(0, 10_001 * minute - 1, minute),
            Err(StatsError::TooManyBuckets { buckets: 10_001 })
        ));
        assert_eq!(
            buckets(0, 10_000 * minute - 1, minute)
                .unwrap()
                .buckets
                .len(),
            10_000
        );
        // the last nanosecond there is has a bucket
        let h = buckets(u64::MAX, u64::MAX, minute).unwrap();
        assert_eq!(h.buckets.len(), 1);
        assert!(u64::MAX - h.start < minute);
    }

    #[test]
    fn kinds_round_trip() {
        for t in LogType::ALL {
            for s in LogStatus::ALL {
                let (ti, si) = kind_parts(super::super::schema::kind(t, s));
                assert_eq!((LogType::ALL[ti], LogStatus::ALL[si]), (t, s));
            }
        }
    }
}
