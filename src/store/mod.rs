//! The embedded tantivy index: schema, the single writer, and newest-first queries.
//!
//! One [`LogWriter`] owns the `IndexWriter`; one [`Store`] (cheap to clone) holds the reader and
//! takes a fresh searcher per query. Both are blocking: call them off the async runtime.

mod assistants;
mod bare;
mod blocks;
mod cache;
mod columns;
mod directory;
mod erase;
mod query;
mod reader;
mod schema;
mod search;
mod segment_stats;
mod stats;
mod stored;
mod upgrade;
mod warm;
mod writer;

use std::path::Path;
use std::pin::Pin;
#[cfg(test)]
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::{Deserialize, Serialize};
use tantivy::index::SegmentMeta;
use tantivy::indexer::IndexWriterOptions;
use tantivy::query::{Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{FutureResult, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, Term};
use tokio::sync::watch;

pub use bare::BareIndex;
pub use erase::{Expiry, ExpiryUsers};
pub use query::MAX_PREFIX_TERMS;
pub use schema::{ServedLog, format_timestamp};
pub use search::SortKey;
pub use stats::{
    AUTO_BUCKETS, AssistantCount, Latency, Listed, MAX_BUCKETS, Mismatch, Stats, StatsError,
    StatsParts, TOP_ASSISTANTS, Tally, TimeHistogram, histogram_over,
};
pub use stored::each_served;

use crate::faults::Faults;
use crate::mapping::{LogStatus, LogType};
use crate::search::Expr;
use blocks::BlockCache;
use directory::{IndexDirectory, WriteErrors};
use query::filter_query;
use schema::Fields;
use warm::Warming;
use writer::{durable_seq, explain, new_writer};

/// A failure of the index.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open index folder {path}: {message}")]
    Open { path: String, message: String },
    #[error("index error: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    /// A write of the index failed: a full disk, a failing device.
    #[error("{0}")]
    Write(std::io::Error),
    #[error("corrupt commit payload {0:?}")]
    Payload(String),
    #[error("a stored log cannot be read: {0}")]
    StoredLog(String),
}

/// The file beside the index that holds the secret the API signs cursors with: a snapshot or a
/// copy of the folder carries it, so that cursors stay valid on it.
pub const CURSOR_KEY_FILE: &str = "cursor.key";

/// The file beside the index that holds the users' alert rules and their states: a snapshot
/// carries it too.
pub const ALERT_RULES_FILE: &str = "alerts.json";

/// Most logs a page may skip by offset (`page`): the work and memory of a page grow with its
/// offset, so deeper pages are read with a keyset cursor, which costs what the first page does.
pub const MAX_OFFSET: usize = 100_000;

/// Why a search was not answered.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The page starts past [`MAX_OFFSET`] matches.
    #[error("the page starts past the first {MAX_OFFSET} logs")]
    TooDeep,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a commit records beside the documents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CommitPayload {
    /// The highest sequence number in the commit.
    last_seq: u64,
}

/// A query over one user's logs. Every condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub user_id: String,
    pub log_type: Option<LogType>,
    pub status: Option<LogStatus>,
    pub assistant_id: Option<String>,
    pub room_name: Option<String>,
    /// `q`: words of the message, payload values and fields, with operators.
    pub text: Option<Expr>,
    /// Inclusive, nanoseconds since the epoch.
    pub start: Option<u64>,
    /// Exclusive, nanoseconds since the epoch.
    pub end: Option<u64>,
    /// Keyset position: only logs strictly older than this key.
    pub before: Option<SortKey>,
    /// Eligible logs to skip before the page.
    pub offset: usize,
    /// Size of the page.
    pub limit: usize,
}

impl LogQuery {
    /// A canonical text of what selects logs regardless of time: user, filters and text.
    pub fn selection_key(&self) -> String {
        format!(
            "{:?}\0{:?}\0{:?}\0{:?}\0{:?}\0{:?}",
            self.user_id, self.log_type, self.status, self.assistant_id, self.room_name, self.text,
        )
    }
}

/// One page of logs.
#[derive(Debug)]
pub struct LogPage {
    /// Every log matching the filters (the keyset position aside).
    pub total: u64,
    /// Whether eligible logs follow this page.
    pub has_more: bool,
    /// The page, newest first: each log's sort key and its JSON as served.
    pub logs: Vec<(SortKey, Vec<u8>)>,
}

/// The read side of the index.
#[derive(Clone)]
pub struct Store {
    reader: IndexReader,
    fields: Fields,
    blocks: BlockCache,
    /// The columns of the segments searched, opened once.
    columns: columns::ColumnCache,
    /// The statistics of recent queries over whole segments.
    stats: segment_stats::StatsCache,
    /// The highest sequence number searches see: every log up to it is visible.
    visible: watch::Receiver<u64>,
    /// The generation of the last searcher whose segments were warmed ([`warm`]).
    #[cfg(test)]
    warmed: Arc<watch::Sender<u64>>,
}

/// A walk over every log a query selects, newest first, on one view of the index.
pub struct Scan {
    store: Store,
    searcher: Searcher,
    query: LogQuery,
    done: bool,
}

impl Scan {
    /// The next (at most) `size` logs as served, newest first, each with its sort key; empty
    /// once all were given.
    pub fn next_page(&mut self, size: usize) -> Result<Vec<(SortKey, Vec<u8>)>, StoreError> {
        if self.done {
            return Ok(Vec::new());
        }
        self.query.limit = size;
        let page = match self.store.search_in(&self.searcher, &self.query) {
            Ok(page) => page,
            Err(SearchError::Store(e)) => return Err(e),
            // a keyset page starts at offset 0
            Err(SearchError::TooDeep) => unreachable!("a scan never pages by offset"),
        };
        self.done = !page.has_more;
        self.query.before = page.logs.last().map(|(key, _)| *key);
        Ok(page.logs)
    }
}

/// The one writer of the index.
pub struct LogWriter {
    index: Index,
    options: IndexWriterOptions,
    writer: IndexWriter,
    /// Set when a rollback failed: the writer is unusable and must be made anew.
    writer_lost: bool,
    /// What the directory saw go wrong, behind tantivy's own errors.
    write_errors: WriteErrors,
    reader: IndexReader,
    fields: Fields,
    /// The columns the [`Store`] keeps open, which the highest sequence number is read from.
    columns: columns::ColumnCache,
    committed_seq: u64,
    /// The merge rewriting segments that hold deleted logs, while it runs.
    purging: Option<Pin<Box<FutureResult<Option<SegmentMeta>>>>>,
    /// Whether segments hold erased logs that no purge has taken yet.
    purge_wanted: bool,
    /// Tells the [`Store`] how far searches see.
    visible: watch::Sender<u64>,
    /// Warms the segments each reload brings.
    warming: Warming,
}

/// How the index is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Indexing memory of the writer.
    pub writer_memory_bytes: usize,
    /// Failures to inject into the index's writes (tests).
    pub faults: Faults,
    /// Counts writes that failed during merges.
    pub merge_failures: Counter,
    /// Whether the payloads' values are indexed by path (`[index] payload_paths`).
    pub payloads: bool,
    /// How long each warm-up of new segments took ([`warm`]).
    pub warm_seconds: Histogram,
}

impl StoreOptions {
    /// A writer with `writer_memory_bytes`, no injected faults and a counter of its own.
    pub fn new(writer_memory_bytes: usize) -> Self {
        Self {
            writer_memory_bytes,
            faults: Faults::none(),
            merge_failures: Counter::default(),
            payloads: true,
            warm_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        }
    }
}

/// Opens the index in `path`, creating the folder and the index on first use.
pub fn open(path: &Path, options: &StoreOptions) -> Result<(Store, LogWriter), StoreError> {
    let open_error = |message: String| open_error(path, message);
    std::fs::create_dir_all(path).map_err(|e| open_error(e.to_string()))?;
    upgrade::upgrade(path, options.payloads)?;
    let (directory, write_errors) =
        IndexDirectory::open(path, options.faults.clone(), options.merge_failures.clone())
            .map_err(|e| open_error(e.to_string()))?;
    let (index, fields, writer_options) =
        open_index(directory, options).map_err(|e| open_error(e.to_string()))?;
    let writer = new_writer(&index, &writer_options)?;
    let reader: IndexReader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    let columns = columns::ColumnCache::default();
    let committed_seq = durable_seq(&index, &reader, &columns)?;
    let (visible, visible_rx) = watch::channel(committed_seq);
    let store = Store {
        reader: reader.clone(),
        fields,
        blocks: blocks::block_cache(),
        columns: columns.clone(),
        stats: segment_stats::stats_cache(),
        visible: visible_rx,
        #[cfg(test)]
        warmed: Arc::new(watch::Sender::new(0)),
    };
    let warming = warm::start(store.clone(), options.warm_seconds.clone())
        .map_err(|e| open_error(format!("cannot start warming: {e}")))?;
    Ok((
        store,
        LogWriter {
            index,
            options: writer_options,
            writer,
            writer_lost: false,
            write_errors,
            reader,
            fields,
            columns,
            committed_seq,
            purging: None,
            purge_wanted: false,
            visible,
            warming,
        },
    ))
}

/// Why the index in `path` cannot be opened.
fn open_error(path: &Path, message: String) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        message,
    }
}

/// The index in `directory` (created when there is none) with the schema, analyzers and
/// settings of logbridge, and the options of its writer.
fn open_index<D: tantivy::Directory>(
    directory: D,
    options: &StoreOptions,
) -> tantivy::Result<(Index, Fields, IndexWriterOptions)> {
    let (schema, fields) = Fields::schema(options.payloads);
    let mut index = Index::open_or_create(directory, schema)?;
    schema::compress_stored_documents(&mut index);
    schema::register_analyzers(&index);
    // Merges on a second thread would fight indexing on small machines: one of each.
    let writer_options = IndexWriterOptions::builder()
        .memory_budget_per_thread(options.writer_memory_bytes)
        .num_worker_threads(1)
        .num_merge_threads(1)
        .build();
    Ok((index, fields, writer_options))
}

/// The highest sequence number a commit holds, from its payload.
pub fn payload_last_seq(payload: &str) -> Option<u64> {
    serde_json::from_str::<CommitPayload>(payload)
        .ok()
        .map(|p| p.last_seq)
}

/// The logs whose `field` holds the term `text`.
fn term_query(field: Field, text: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, text),
        IndexRecordOption::Basic,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use std::sync::atomic::AtomicBool;

    use super::writer::DELETED_SHARE_BEFORE_MERGE;
    use super::*;
    use crate::mapping::ActivityLog;
    use crate::mapping::example_log;
    use crate::search::{Term, Text};

    /// The same query answered by brute force over the logs as written.
    fn reference(logs: &[(ActivityLog, u64)], q: &LogQuery) -> (u64, Vec<SortKey>, bool) {
        let mut matching: Vec<SortKey> = logs
            .iter()
            .filter(|(log, _)| {
                log.user_id == q.user_id
                    && q.log_type.is_none_or(|t| t == log.log_type)
                    && q.status.is_none_or(|s| s == log.status)
                    && q.room_name.as_ref().is_none_or(|r| *r == log.room_name)
                    && q.text.as_ref().is_none_or(|text| {
                        let Expr::Term(Term::Message(Text::Word(word)), _) = text else {
                            unreachable!("the test asks for one word")
                        };
                        log.message.split(' ').any(|w| w == word)
                    })
                    && log.timestamp_nanos >= q.start.unwrap_or(0)
                    && q.end.is_none_or(|e| log.timestamp_nanos < e)
            })
            .map(|(log, seq)| SortKey {
                timestamp: log.timestamp_nanos,
                seq: *seq,
            })
            .collect();
        let total = matching.len() as u64;
        matching.sort_unstable_by(|a, b| b.cmp(a));
        let eligible: Vec<SortKey> = matching
            .into_iter()
            .filter(|k| q.before.is_none_or(|b| *k < b))
            .collect();
        let page: Vec<SortKey> = eligible
            .iter()
            .skip(q.offset)
            .take(q.limit)
            .copied()
            .collect();
        let has_more = eligible.len() > q.offset + q.limit;
        (total, page, has_more)
    }

    #[test]
    fn block_skipping_search_matches_brute_force() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let words = ["alpha", "beta", "gamma", "delta"];
        let mut logs = Vec::new();
        let mut clock = 1_000_000_000u64;
        for seq in 1..=12_000u64 {
            // ascending in runs of equal timestamps that cross block boundaries, with
            // stragglers from the past and a few far ahead
            clock += u64::from(rng.random_bool(0.01));
            let timestamp = match rng.random_range(0..100) {
                0..=4 => clock.saturating_sub(rng.random_range(0..50)),
                5 => clock + 100_000,
                _ => clock,
            };
            let mut log = example_log(&format!(
                "{} {}",
                words[rng.random_range(0..4)],
                words[rng.random_range(0..4)]
            ));
            log.user_id = format!("u{}", rng.random_range(0..3));
            log.log_type = LogType::ALL[rng.random_range(0..3)];
            log.status = if rng.random_bool(0.2) {
                LogStatus::Error
            } else {
                LogStatus::Success
            };
            log.room_name = format!("r{}", rng.random_range(0..5));
            log.assistant_id = format!("a{}", rng.random_range(0..15));
            log.latency_ms = rng.random_range(0..6_000);
            log.timestamp_nanos = timestamp;
            writer.add(&log, seq).unwrap();
            logs.push((log, seq));
            if seq % 700 == 0 {
                writer.commit(seq).unwrap();
            }
        }
        writer.commit(12_000).unwrap();
        assert!(store.reader.searcher().segment_readers().len() > 1);

        for round in 0..400 {
            let pick = |rng: &mut StdRng| logs[rng.random_range(0..logs.len())].0.timestamp_nanos;
            let mut q = LogQuery {
                user_id: format!("u{}", rng.random_range(0..3)),
                limit: rng.random_range(1..60),
                offset: if rng.random_bool(0.3) {
                    rng.random_range(0..3_000)
                } else {
                    0
                },
                ..Default::default()
            };
            if rng.random_bool(0.3) {
                q.log_type = Some(LogType::ALL[rng.random_range(0..3)]);
            }
            if rng.random_bool(0.3) {
                q.status = Some(if rng.random_bool(0.5) {
                    LogStatus::Error
                } else {
                    LogStatus::Success
                });
            }
            if rng.random_bool(0.2) {
                q.room_name = Some(format!("r{}", rng.random_range(0..5)));
            }
            if rng.random_bool(0.2) {
                q.text = Some(crate::search::parse(words[rng.random_range(0..4)]).unwrap());
            }
            if rng.random_bool(0.3) {
                let (a, b) = (pick(&mut rng), pick(&mut rng));
                q.start = Some(a.min(b));
                q.end = Some(a.max(b) + 1);
            }
            if rng.random_bool(0.3) {
                let (log, seq) = &logs[rng.random_range(0..logs.len())];
                q.before = Some(SortKey {
                    timestamp: log.timestamp_nanos,
                    seq: *seq,
                });
            }
            let page = store.search(&q).unwrap();
            let (total, keys, has_more) = reference(&logs, &q);
            assert_eq!(page.total, total, "round {round}: {q:?}");
            let got: Vec<SortKey> = page.logs.iter().map(|(k, _)| *k).collect();
            assert_eq!(got, keys, "round {round}: {q:?}");
            assert_eq!(page.has_more, has_more, "round {round}: {q:?}");
            if round % 4 == 0 {
                let interval = rng.random_range(20..20_000);
                let stats = store.stats(&q, Some(interval), &AtomicBool::new(false));
                assert_stats(&stats.unwrap(), &logs, &q, interval);
                let cancelled = store.stats(&q, Some(interval), &AtomicBool::new(true));
                assert!(matches!(cancelled, Err(StatsError::Cancelled)), "{q:?}");
            }
        }
    }

    /// Checks statistics against brute force over the logs as written.
    fn assert_stats(stats: &Stats, logs: &[(ActivityLog, u64)], q: &LogQuery, interval: u64) {
        let q = LogQuery {
            before: None,
            offset: 0,
            limit: usize::MAX,
            ..q.clone()
        };
        let (_, keys, _) = reference(logs, &q);
        let by_key: HashMap<SortKey, &ActivityLog> = logs
            .iter()
            .map(|(log, seq)| {
                let key = SortKey {
                    timestamp: log.timestamp_nanos,
                    seq: *seq,
                };
                (key, log)
            })
            .collect();
        let matched: Vec<&ActivityLog> = keys.iter().map(|k| by_key[k]).collect();
        assert_eq!(stats.total(), matched.len() as u64, "{q:?}");
        for t in LogType::ALL {
            for s in LogStatus::ALL {
                let n = matched
                    .iter()
                    .filter(|l| l.log_type == t && l.status == s)
                    .count();
                assert_eq!(stats.count(t, s), n as u64, "{t:?} {s:?} {q:?}");
            }
            let mut latencies: Vec<u64> = matched
                .iter()
                .filter(|l| l.log_type == t)
                .map(|l| l.latency_ms)
                .collect();
            latencies.sort_unstable();
            let got = stats.latency[LogType::ALL.iter().position(|&x| x == t).unwrap()];
            let Some(got) = got else {
                assert!(latencies.is_empty(), "{q:?}");
                continue;
            };
            let at = |quantile: f64| {
                let rank = (quantile * latencies.len() as f64).ceil().max(1.0) as usize;
                latencies[rank - 1]
            };
            assert_eq!(got.count, latencies.len() as u64);
            assert_eq!(got.max, *latencies.last().unwrap());
            for (value, quantile) in [(got.p50, 0.5), (got.p95, 0.95), (got.p99, 0.99)] {
                let exact = at(quantile);
                assert!(
                    value >= exact && value <= exact + exact / 1000 + 1,
                    "p{quantile} {value} vs {exact}"
                );
            }
        }
        // the histogram: aligned buckets from the first match (or start) to the last (or end)
        let histogram = &stats.histogram;
        assert_eq!(histogram.interval, interval);
        let bucketed: u64 = histogram.buckets.iter().flatten().sum();
        assert_eq!(bucketed, matched.len() as u64);
        for log in &matched {
            let bucket = (log.timestamp_nanos - histogram.start) / interval;
            assert!((bucket as usize) < histogram.buckets.len());
        }
        if let Some(first) = matched.iter().map(|l| l.timestamp_nanos).min() {
            let lo = q.start.unwrap_or(first);
            assert_eq!(histogram.start, lo - lo % interval);
        }
        let mut expected = vec![[0u64; 2]; histogram.buckets.len()];
        for log in &matched {
            let bucket = ((log.timestamp_nanos - histogram.start) / interval) as usize;
            expected[bucket][usize::from(log.status == LogStatus::Error)] += 1;
        }
        assert_eq!(histogram.buckets, expected);
        // the busiest assistants, ties by id
        let mut assistants: HashMap<&str, (u64, u64)> = HashMap::new();
        for log in &matched {
            let entry = assistants.entry(log.assistant_id.as_str()).or_default();
            entry.0 += 1;
            entry.1 += u64::from(log.status == LogStatus::Error);
        }
        let mut top: Vec<AssistantCount> = assistants
            .into_iter()
            .map(|(id, (count, errors))| AssistantCount {
                assistant_id: id.to_owned(),
                count,
                errors,
            })
            .collect();
        top.sort_by(AssistantCount::busiest_first);
        top.truncate(TOP_ASSISTANTS);
        assert_eq!(stats.top_assistants, top);
    }

    #[test]
    fn the_merge_policy_that_reclaims_deletes_survives_a_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        let policy = |writer: &LogWriter| format!("{:?}", writer.writer.get_merge_policy());
        let expected = format!("del_docs_ratio_before_merge: {DELETED_SHARE_BEFORE_MERGE}");
        assert!(policy(&writer).contains(&expected), "{}", policy(&writer));
        writer.add(&example_log("a"), 1).unwrap();
        writer.rollback().unwrap();
        assert!(policy(&writer).contains(&expected), "{}", policy(&writer));
    }

    #[test]
    fn the_statistics_cache_stays_within_its_bytes_keys_included() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        for seq in 1..=3_000u64 {
            let mut log = example_log("cached");
            log.room_name = format!("r{}", seq % 7);
            log.timestamp_nanos = seq;
            writer.add(&log, seq).unwrap();
            if seq % 1_000 == 0 {
                writer.commit(seq).unwrap();
            }
        }
        let bound = 16 * 1024;
        store.blocks = BlockCache::with_max_bytes(bound);
        for round in 0..300 {
            // long, distinct keys (a word of about 100 bytes each) of queries that match, whose
            // statistics are kept
            let text = format!("cached OR w{round}{}", "x".repeat(96));
            let query = LogQuery {
                user_id: "u".into(),
                text: Some(crate::search::parse(&text).unwrap()),
                limit: 10,
                ..Default::default()
            };
            assert_eq!(store.search(&query).unwrap().total, 3_000);
            assert!(
                store.blocks.bytes() <= bound,
                "round {round}: {}",
                store.blocks.bytes()
            );
        }
        // answers stay right whatever was evicted
        let query = LogQuery {
            user_id: "u".into(),
            room_name: Some("r3".into()),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(store.search(&query).unwrap().total, 429);
        assert!(store.blocks.bytes() > 0);
    }

    #[test]
    fn a_query_on_an_older_view_forgets_nothing_a_newer_one_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        let mut add = |from: u64, to: u64| {
            for seq in from..=to {
                let mut log = example_log("kept");
                log.timestamp_nanos = seq;
                writer.add(&log, seq).unwrap();
            }
            writer.commit(to).unwrap();
        };
        add(1, 100);
        store.blocks = blocks::block_cache();
        let query = LogQuery {
            user_id: "u".into(),
            limit: 10,
            ..Default::default()
        };
        // a scan (an export, a warm-up) holds this view while a commit adds a segment
        let older = store.reader.searcher();
        add(101, 200);
        let newer = store.reader.searcher();
        assert_eq!(store.search(&query).unwrap().total, 200);
        let kept = |searcher: &Searcher| {
            let key = query.selection_key();
            let segments = searcher.segment_readers().iter();
            segments
                .map(|s| store.blocks.get(s, &key).is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(&newer), [true, true]);
        assert_eq!(store.search_in(&older, &query).unwrap().total, 100);
        assert_eq!(kept(&newer), [true, true], "the newer segment's are kept");
    }

    #[test]
    fn the_statistics_of_a_query_that_matches_nothing_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        for seq in 1..=200u64 {
            let mut log = example_log(&format!("call {seq}"));
            log.timestamp_nanos = seq;
            writer.add(&log, seq).unwrap();
            if seq % 100 == 0 {
                writer.commit(seq).unwrap();
            }
        }
        store.blocks = blocks::block_cache();
        let search = |text: &str| {
            let query = LogQuery {
                user_id: "u".into(),
                text: Some(crate::search::parse(text).unwrap()),
                limit: 10,
                ..Default::default()
            };
            store.search(&query).unwrap().total
        };
        // polled for a call that is not there yet: nothing kept, however often
        for _ in 0..50 {
            assert_eq!(search("201"), 0);
        }
        assert_eq!(store.blocks.bytes(), 0);
        assert_eq!(search("150"), 1);
        assert!(store.blocks.bytes() > 0);
    }

    #[test]
    fn an_index_without_payload_terms_erases_nothing_by_a_payload_path() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            payloads: false,
            ..StoreOptions::new(16 << 20)
        };
        let (store, mut writer) = open(dir.path(), &options).unwrap();
        for seq in 1..=3u64 {
            writer.add(&example_log("kept"), seq).unwrap();
        }
        writer.commit(3).unwrap();
        let excluded = LogQuery {
            user_id: "u".into(),
            text: Some(crate::search::parse("-request_data.k:1").unwrap()),
            ..Default::default()
        };
        assert_eq!(writer.delete(&excluded).unwrap(), 0);
        writer.commit(3).unwrap();
        let all = LogQuery {
            user_id: "u".into(),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(store.search(&all).unwrap().total, 3);
        assert_eq!(
            store.check(&excluded).unwrap().unwrap_err().to_string(),
            "q names a payload path, and this server does not index them ([index] payload_paths = false) (at character 2)"
        );
    }
}
