//! `GET /logs/stats` segment by segment. A query's statistics over a whole segment, every
//! assistant counted exactly, are kept while the segment lives (per histogram interval), so
//! that asking again adds up a few hundred buckets instead of visiting every match: the
//! dashboard of a user with millions of logs in merged segments answers in milliseconds, and
//! under live ingest only the new, small segments are visited. A segment whose matches the time
//! window cuts through is visited each time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tantivy::SegmentReader;

use super::StoreError;
use super::assistants::{AssistantCount, CAPACITY, Summary, Tally};
use super::cache::SegmentCache;
use super::search::{Prepared, Window};
use super::stats::{StatsError, StatsParts, StatsVisitor, TimeHistogram, buckets};

/// Most bytes the statistics of all segments and queries may take, keys included.
const MAX_CACHED_BYTES: usize = 32 << 20;

/// The statistics of recent queries over whole segments, by segment, query and interval.
pub type StatsCache = SegmentCache<StatsParts>;

/// A cache of segments' statistics within [`MAX_CACHED_BYTES`].
pub fn stats_cache() -> StatsCache {
    SegmentCache::with_max_bytes(MAX_CACHED_BYTES)
}

/// The first and last nanosecond `histogram`'s buckets cover; none without buckets.
fn covered_by(histogram: &TimeHistogram) -> Option<(u64, u64)> {
    let buckets = histogram.buckets.len() as u64;
    let last = histogram
        .start
        .saturating_add((buckets.checked_sub(1)?).saturating_mul(histogram.interval))
        .saturating_add(histogram.interval - 1);
    Some((histogram.start, last))
}

/// The statistics of `prepared`'s matches in `window` over `histogram`'s buckets, with every
/// assistant counted exactly, added up segment by segment (`key` names the query, not its
/// window); `None` when there are more assistants than a summary of [`CAPACITY`] counts exactly,
/// in a segment or in all, for [`StatsVisitor::finish`] to find the busiest in bounded memory.
pub fn by_segment(
    prepared: &Prepared<'_>,
    window: &Window,
    histogram: TimeHistogram,
    key: &str,
    cache: &StatsCache,
    cancelled: &AtomicBool,
) -> Result<Option<StatsParts>, StatsError> {
    let key = format!("{key}\0{}", histogram.interval);
    let interval = histogram.interval;
    let span = covered_by(&histogram);
    let mut total = StatsParts::empty(histogram);
    let mut assistants = Summary::new(CAPACITY);
    let segments: Vec<&SegmentReader> = prepared.segments().collect();
    let mut fresh = Vec::new();
    for (i, &segment) in segments.iter().enumerate() {
        if cancelled.load(Ordering::Relaxed) {
            return Err(StatsError::Cancelled);
        }
        let Some(bounds) = prepared.segment_bounds(i) else {
            continue;
        };
        if window.misses(bounds) {
            continue;
        }
        // the segment's matches in the window, and those of them the histogram has buckets for
        let first = bounds.0.max(window.start);
        let last = (window.end).map_or(bounds.1, |end| bounds.1.min(end.saturating_sub(1)));
        let bucketed = span
            .map(|(start, end)| (first.max(start), last.min(end)))
            .filter(|(first, last)| first <= last);
        // the whole segment's statistics, which any query of this interval can add up
        let whole = (first, last) == bounds && bucketed == Some(bounds);
        let part = match whole.then(|| cache.get(segment, &key)).flatten() {
            Some(part) => part,
            None => {
                let histogram = match bucketed {
                    Some((first, last)) => buckets(first, last, interval)?,
                    // matches outside the histogram's span are counted all the same
                    None => TimeHistogram {
                        interval,
                        start: 0,
                        buckets: Vec::new(),
                    },
                };
                let mut visitor = StatsVisitor::exact(histogram, cancelled);
                prepared
                    .visit_segment(i, window, &mut visitor)
                    .map_err(StoreError::from)?;
                let Some(part) = visitor.finish_exact()? else {
                    cache.keep(&segments, prepared.generation(), &key, fresh);
                    return Ok(None);
                };
                let part = Arc::new(part);
                if whole {
                    fresh.push((segment, part.clone()));
                }
                part
            }
        };
        total.add_within(&part);
        for added in &part.assistants {
            let tally = Tally {
                count: added.count,
                errors: added.errors,
            };
            assistants.add(added.assistant_id.clone(), tally);
        }
        if assistants.undercount() > 0 {
            // memory that grows with the assistants: a summary finds the busiest instead
            cache.keep(&segments, prepared.generation(), &key, fresh);
            return Ok(None);
        }
    }
    cache.keep(&segments, prepared.generation(), &key, fresh);
    let (assistants, _) = assistants.into_parts();
    total.assistants = assistants.into_iter().map(AssistantCount::of).collect();
    total.merge_latencies();
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::stats::{Listed, Stats, TOP_ASSISTANTS};
    use super::super::{LogQuery, Store, StoreOptions, open};
    use super::*;
    use crate::mapping::{LogStatus, LogType, example_log};

    /// The statistics of `query` from one visit of every match, as without the segments' parts.
    fn visiting_every_match(store: &Store, query: &LogQuery, interval: u64) -> Stats {
        let searcher = store.reader.searcher();
        let (prepared, window) = store.prepare(&searcher, query).unwrap();
        let span = store.stats_span(query).unwrap();
        let histogram = super::super::histogram_over(span, query, Some(interval)).unwrap();
        let not_cancelled = AtomicBool::new(false);
        let mut visitor = StatsVisitor::new(histogram, &not_cancelled);
        prepared.visit(&window, &mut visitor).unwrap();
        visitor
            .finish(&Listed::busiest(TOP_ASSISTANTS))
            .unwrap()
            .finish(TOP_ASSISTANTS)
    }

    fn by_segment_of(store: &Store, query: &LogQuery, interval: u64) -> Option<StatsParts> {
        let searcher = store.reader.searcher();
        let (prepared, window) = store.prepare(&searcher, query).unwrap();
        let span = store.stats_span(query).unwrap();
        let histogram = super::super::histogram_over(span, query, Some(interval)).unwrap();
        let key = query.selection_key();
        let not_cancelled = AtomicBool::new(false);
        by_segment(
            &prepared,
            &window,
            histogram,
            &key,
            &store.stats,
            &not_cancelled,
        )
        .unwrap()
    }

    #[test]
    fn statistics_kept_per_segment_are_those_of_every_match_and_follow_erasures() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        for seq in 1..=3_000u64 {
            let mut log = example_log("kept");
            log.user_id = if seq % 3 == 0 { "other" } else { "u" }.to_owned();
            log.log_type = LogType::ALL[rng.random_range(0..3)];
            if rng.random_bool(0.2) {
                log.status = LogStatus::Error;
            }
            log.assistant_id = format!("a{}", rng.random_range(0..12));
            log.room_name = format!("r{}", seq % 2);
            log.latency_ms = rng.random_range(0..5_000);
            log.timestamp_nanos = seq * 1_000;
            writer.add(&log, seq).unwrap();
            // three segments
            if seq % 1_000 == 0 {
                writer.commit(seq).unwrap();
            }
        }
        let user = LogQuery {
            user_id: "u".into(),
            ..LogQuery::default()
        };
        let not_cancelled = AtomicBool::new(false);
        let interval = 70_000;
        let expected = visiting_every_match(&store, &user, interval);
        assert_eq!(expected.total(), 2_000);
        assert_eq!(
            store.stats(&user, Some(interval), &not_cancelled).unwrap(),
            expected
        );
        let kept = store.stats.bytes();
        assert!(kept > 0);
        // asked again: from the parts kept, nothing more kept, the same answer
        assert_eq!(
            store.stats(&user, Some(interval), &not_cancelled).unwrap(),
            expected
        );
        assert_eq!(store.stats.bytes(), kept);
        let cancelled = store.stats(&user, Some(interval), &AtomicBool::new(true));
        assert!(matches!(cancelled, Err(StatsError::Cancelled)));
        // buckets over a part of the matches, or none (what a gateway's further rounds for the
        // busiest assistants ask for): every match is counted all the same
        let none = TimeHistogram {
            interval: 1_000,
            start: 0,
            buckets: Vec::new(),
        };
        for histogram in [none, buckets(0, 500_000, interval).unwrap()] {
            let listed = Listed::busiest(TOP_ASSISTANTS);
            let parts = store.stats_parts(&user, histogram, &listed, &not_cancelled);
            assert_eq!(parts.unwrap().counts, expected.counts);
        }

        // a window through the middle of the first and the last segment, and one within the
        // second; another interval
        for (start, end, interval) in [(500_000, 2_500_001, 70_000), (1_200_000, 1_800_000, 30_000)]
        {
            let window = LogQuery {
                start: Some(start),
                end: Some(end),
                ..user.clone()
            };
            let expected = visiting_every_match(&store, &window, interval);
            let got = store
                .stats(&window, Some(interval), &not_cancelled)
                .unwrap();
            assert_eq!(got, expected, "{start}..{end}");
        }

        // an erasure gives the segments new versions: their parts are computed again
        let erased = LogQuery {
            room_name: Some("r1".into()),
            ..user.clone()
        };
        assert_eq!(writer.delete(&erased).unwrap(), 1_000);
        writer.commit(3_000).unwrap();
        let expected = visiting_every_match(&store, &user, interval);
        assert_eq!(expected.total(), 1_000);
        assert_eq!(
            store.stats(&user, Some(interval), &not_cancelled).unwrap(),
            expected
        );
    }

    #[test]
    fn a_segment_of_more_assistants_than_counted_exactly_is_left_to_the_visit_of_every_match() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        // more distinct assistants than twice the summary's counters (in unit tests)
        let assistants = 3 * super::super::assistants::CAPACITY as u64;
        for seq in 1..=4 * assistants {
            let mut log = example_log("many");
            // every one, and five of them four times as busy
            let id = if seq % 4 == 0 {
                seq % 5
            } else {
                seq % assistants
            };
            log.assistant_id = format!("a{id}");
            log.timestamp_nanos = seq;
            writer.add(&log, seq).unwrap();
        }
        writer.commit(4 * assistants).unwrap();
        let user = LogQuery {
            user_id: "u".into(),
            ..LogQuery::default()
        };
        assert!(by_segment_of(&store, &user, 10).is_none());
        // which gave up within a block of documents of meeting too many assistants
        let searcher = store.reader.searcher();
        let (prepared, window) = store.prepare(&searcher, &user).unwrap();
        let not_cancelled = AtomicBool::new(false);
        let histogram = buckets(0, 4 * assistants, 10).unwrap();
        let mut visitor = StatsVisitor::exact(histogram, &not_cancelled);
        prepared.visit(&window, &mut visitor).unwrap();
        assert_eq!(
            visitor.visited(),
            u64::from(super::super::blocks::BLOCK_DOCS)
        );
        assert!(visitor.finish_exact().unwrap().is_none());
        let expected = visiting_every_match(&store, &user, 10);
        assert_eq!(
            store.stats(&user, Some(10), &not_cancelled).unwrap(),
            expected
        );
        assert_eq!(store.stats.bytes(), 0);
        // a few assistants: added up by segment
        let few = LogQuery {
            assistant_id: Some("a1".into()),
            ..user
        };
        assert!(by_segment_of(&store, &few, 10).is_some());

        // segments of few assistants each, but more than counted exactly in all
        let half = assistants / 2;
        let first = 4 * assistants + 1;
        for seq in first..first + 4 * assistants {
            let mut log = example_log("segments");
            log.user_id = "v".into();
            let segment = u64::from(seq >= first + 2 * assistants);
            log.assistant_id = format!("s{segment}-{}", seq % half);
            log.timestamp_nanos = seq;
            writer.add(&log, seq).unwrap();
            if seq == first + 2 * assistants - 1 {
                writer.commit(seq).unwrap();
            }
        }
        writer.commit(first + 4 * assistants - 1).unwrap();
        let user = LogQuery {
            user_id: "v".into(),
            ..LogQuery::default()
        };
        assert!(by_segment_of(&store, &user, 10).is_none());
        let expected = visiting_every_match(&store, &user, 10);
        assert_eq!(expected.total(), 4 * assistants);
        assert_eq!(
            store.stats(&user, Some(10), &not_cancelled).unwrap(),
            expected
        );
        let one_segment = LogQuery {
            end: Some(first + 2 * assistants),
            ..user
        };
        assert!(by_segment_of(&store, &one_segment, 10).is_some());
    }
}
