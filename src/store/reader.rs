//! The read side: pages newest first, logs since a sequence number, scans and statistics.

use std::ops::Bound;
use std::sync::atomic::AtomicBool;

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery};
use tantivy::schema::{Field, Value as _};
use tantivy::{DocAddress, Order, Searcher, TantivyDocument, Term};
use tokio::sync::watch;

use super::columns::ColumnCache;
use super::query::filter_query;
use super::schema::SEQ_FIELD;
use super::search::SortKey;
use super::search::{self, Prepared, Window};
use super::segment_stats;
use super::stats::{self, Listed, Stats, StatsError, StatsParts, TOP_ASSISTANTS, TimeHistogram};
use super::stored;
use super::{LogPage, LogQuery, MAX_OFFSET, Scan, SearchError, Store, StoreError};

impl Store {
    /// Number of logs visible to searches.
    pub fn num_logs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Runs a query: the exact total and one page, newest first.
    pub fn search(&self, query: &LogQuery) -> Result<LogPage, SearchError> {
        self.search_in(&self.reader.searcher(), query)
    }

    /// The highest sequence number searches see, changing as commits make logs visible.
    pub fn visible(&self) -> watch::Receiver<u64> {
        self.visible.clone()
    }

    /// Up to `limit` of the logs `query` selects (its filters and time window) whose sequence
    /// numbers are in `(after, upto]`, in sequence order: each with its number and its JSON as
    /// served.
    pub fn since(
        &self,
        query: &LogQuery,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let searcher = self.reader.searcher();
        let range = |field: Field, lower: Bound<u64>, upper: Bound<u64>| -> Box<dyn Query> {
            let term = |value| Term::from_field_u64(field, value);
            Box::new(RangeQuery::new(lower.map(term), upper.map(term)))
        };
        let mut clauses = vec![
            (
                Occur::Must,
                filter_query(&self.fields, query, Some(&searcher)),
            ),
            (
                Occur::Must,
                range(
                    self.fields.seq,
                    Bound::Excluded(after),
                    Bound::Included(upto),
                ),
            ),
        ];
        if query.start.is_some() || query.end.is_some() {
            let start = query.start.map_or(Bound::Unbounded, Bound::Included);
            let end = query.end.map_or(Bound::Unbounded, Bound::Excluded);
            clauses.push((Occur::Must, range(self.fields.timestamp, start, end)));
        }
        let collector =
            TopDocs::with_limit(limit).order_by_fast_field::<u64>(SEQ_FIELD, Order::Asc);
        let top = searcher.search(&BooleanQuery::new(clauses), &collector)?;
        let logs = self.served(&searcher, top.iter().map(|&(_, address)| address))?;
        Ok(top
            .into_iter()
            .map(|(seq, _)| seq.unwrap_or(0))
            .zip(logs)
            .collect())
    }

    /// The JSON of logs as served, on one line each: `request_data` and `response_data` are kept
    /// as sent, whitespace included, and a line break in them would split an NDJSON line or an
    /// SSE event, so such a log is written compactly.
    fn served(
        &self,
        searcher: &Searcher,
        addresses: impl IntoIterator<Item = DocAddress>,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut logs = Vec::new();
        for address in addresses {
            let doc: TantivyDocument = searcher.doc(address)?;
            let stored = doc
                .get_first(self.fields.doc)
                .and_then(|value| value.as_bytes())
                .unwrap_or(b"{}");
            let columns = || self.columns.get(searcher, address.segment_ord);
            let json = stored::served(stored, address.doc_id, columns)?;
            if !json.iter().any(|&b| b == b'\n' || b == b'\r') {
                logs.push(json);
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_slice(&json).map_err(|e| StoreError::StoredLog(e.to_string()))?;
            logs.push(serde_json::to_vec(&value).expect("a JSON value serializes"));
        }
        Ok(logs)
    }

    /// Every log `query` selects (its filters and time window), newest first, page by page,
    /// all from the index as it is now: logs committed meanwhile are not seen.
    pub fn scan(&self, query: &LogQuery) -> Scan {
        Scan {
            store: self.clone(),
            searcher: self.reader.searcher(),
            query: LogQuery {
                before: None,
                offset: 0,
                ..query.clone()
            },
            done: false,
        }
    }

    /// The statistics of every log `query` selects (its filters and time window). `interval` is
    /// the width of the histogram's buckets in nanoseconds, `None` for about [`AUTO_BUCKETS`];
    /// the histogram spans the time window, or the matches where the window is open. Setting
    /// `cancelled` stops the work early, with [`StatsError::Cancelled`].
    pub fn stats(
        &self,
        query: &LogQuery,
        interval: Option<u64>,
        cancelled: &AtomicBool,
    ) -> Result<Stats, StatsError> {
        let histogram = stats::histogram_over(self.stats_span(query)?, query, interval)?;
        Ok(self
            .stats_parts(
                query,
                histogram,
                &Listed::busiest(TOP_ASSISTANTS),
                cancelled,
            )?
            .finish(TOP_ASSISTANTS))
    }

    /// The first and the last nanosecond the statistics of `query` span: its time window's,
    /// or its matches' where the window is open; none when nothing matches an open window.
    pub fn stats_span(&self, query: &LogQuery) -> Result<Option<(u64, u64)>, StoreError> {
        if let (Some(start), Some(end)) = (query.start, query.end) {
            return Ok(Some((start, end.saturating_sub(1))));
        }
        let searcher = self.reader.searcher();
        let (prepared, window) = self.prepare(&searcher, query)?;
        Ok(prepared.time_bounds(&window)?.map(|(first, last)| {
            let end = query.end.map_or(last, |end| end.saturating_sub(1));
            (query.start.unwrap_or(first), end)
        }))
    }

    /// The statistics of `query` over the buckets of `histogram`, before percentiles are taken,
    /// with the assistants `listed` asks for: what the shards of a spread user add up.
    pub fn stats_parts(
        &self,
        query: &LogQuery,
        histogram: TimeHistogram,
        listed: &Listed,
        cancelled: &AtomicBool,
    ) -> Result<StatsParts, StatsError> {
        let searcher = self.reader.searcher();
        let (prepared, window) = self.prepare(&searcher, query)?;
        let key = query.selection_key();
        let by_segment = segment_stats::by_segment(
            &prepared,
            &window,
            histogram.clone(),
            &key,
            &self.stats,
            cancelled,
        )?;
        if let Some(mut parts) = by_segment {
            parts.keep(listed);
            return Ok(parts);
        }
        let mut visitor = stats::StatsVisitor::new(histogram, cancelled);
        prepared
            .visit(&window, &mut visitor)
            .map_err(StoreError::from)?;
        visitor.finish(listed)
    }

    /// `query`'s filters ready to run over `searcher`, and its window.
    pub(super) fn prepare<'a>(
        &self,
        searcher: &'a Searcher,
        query: &LogQuery,
    ) -> Result<(Prepared<'a>, Window), StoreError> {
        let window = Window {
            start: query.start.unwrap_or(0),
            end: query.end,
            before: query.before,
        };
        let prepared = search::prepare(
            searcher,
            filter_query(&self.fields, query, Some(searcher)).as_ref(),
            &query.selection_key(),
            &self.blocks,
            &self.columns,
        )?;
        Ok((prepared, window))
    }

    /// The sort keys of the logs `query` selects through the end of its page (its offset and
    /// its limit, and one more to tell whether more follow), newest first, and their total:
    /// what the pages of a user spread over several shards are merged from. A page starting
    /// past [`MAX_OFFSET`] gets the total only.
    /// With them, the highest sequence number of the logs searched ([`seen_through`]).
    pub fn positions(&self, query: &LogQuery) -> Result<(u64, Vec<SortKey>, u64), StoreError> {
        let searcher = self.reader.searcher();
        let seen = seen_through(&searcher, &self.columns)?;
        let (prepared, window) = self.prepare(&searcher, query)?;
        let total = prepared.count(&window)?;
        if query.offset > MAX_OFFSET {
            return Ok((total, Vec::new(), seen));
        }
        let top = prepared.top_k(&window, query.offset + query.limit + 1)?;
        Ok((total, top.into_iter().map(|(key, _)| key).collect(), seen))
    }

    /// [`Store::search`], and the highest sequence number of the logs it searched
    /// ([`seen_through`]): where a tail that follows on from the page begins.
    pub fn search_seen(&self, query: &LogQuery) -> Result<(LogPage, u64), SearchError> {
        let searcher = self.reader.searcher();
        let seen = seen_through(&searcher, &self.columns)?;
        Ok((self.search_in(&searcher, query)?, seen))
    }

    pub(super) fn search_in(
        &self,
        searcher: &Searcher,
        query: &LogQuery,
    ) -> Result<LogPage, SearchError> {
        let (prepared, window) = self.prepare(searcher, query)?;
        let total = prepared.count(&window).map_err(StoreError::from)?;
        let offset = query.offset;
        if offset as u64 >= total {
            // a page past the end: the total only
            return Ok(LogPage {
                total,
                has_more: false,
                logs: Vec::new(),
            });
        }
        if offset > MAX_OFFSET {
            return Err(SearchError::TooDeep);
        }
        // one more than the page, to know whether more follow
        let k = offset + query.limit + 1;
        let top = prepared.top_k(&window, k).map_err(StoreError::from)?;
        let has_more = top.len() > offset + query.limit;
        let page = || top.iter().skip(offset).take(query.limit);
        let served = self.served(searcher, page().map(|&(_, address)| address))?;
        let logs = page().map(|&(key, _)| key).zip(served).collect();
        Ok(LogPage {
            total,
            has_more,
            logs,
        })
    }
}

/// The highest sequence number of the logs `searcher` sees, erased ones included: a search with
/// it finds none above it, and every log below it that a later search finds, it finds too (logs
/// are added and made visible in sequence order). 0 for an empty index. `columns` opens the
/// segments' sequence columns.
pub(super) fn seen_through(searcher: &Searcher, columns: &ColumnCache) -> Result<u64, StoreError> {
    let mut highest = 0;
    for (ord, segment) in searcher.segment_readers().iter().enumerate() {
        if segment.max_doc() > 0 {
            highest = highest.max(columns.get(searcher, ord as u32)?.seqs.max_value());
        }
    }
    Ok(highest)
}
