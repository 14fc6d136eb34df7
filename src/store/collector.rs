//! Newest-first top-k by (timestamp, sequence), with an exact count, a time range and a keyset
//! position, in one pass over the matches.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

use super::schema::{SEQ_FIELD, TIMESTAMP_FIELD};

/// The order of logs: newest timestamp first, then newest ingested first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SortKey {
    /// Nanoseconds since the epoch.
    pub timestamp: u64,
    /// Ingest sequence number.
    pub seq: u64,
}

/// What the collector keeps.
#[derive(Debug, Clone)]
pub struct TopLogs {
    /// How many of the newest eligible matches to keep.
    pub k: usize,
    /// Only matches with `start <= timestamp` count...
    pub start: u64,
    /// ...and, when set, `timestamp < end`.
    pub end: Option<u64>,
    /// Only matches strictly older than this key are eligible for the page.
    pub before: Option<SortKey>,
}

/// The result of a [`TopLogs`] collection.
#[derive(Debug, Default)]
pub struct TopLogsFruit {
    /// Every match in the time range.
    pub total: u64,
    /// The matches in the time range older than `before` (all of them without it).
    pub eligible: u64,
    /// The newest `k` eligible matches, newest first.
    pub top: Vec<(SortKey, DocAddress)>,
}

impl Collector for TopLogs {
    type Fruit = TopLogsFruit;
    type Child = TopLogsSegment;

    fn for_segment(
        &self,
        segment_ord: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<TopLogsSegment> {
        let fast = segment.fast_fields();
        Ok(TopLogsSegment {
            segment_ord,
            timestamps: fast.u64(TIMESTAMP_FIELD)?,
            seqs: fast.u64(SEQ_FIELD)?,
            k: self.k,
            start: self.start,
            end: self.end,
            before: self.before,
            total: 0,
            eligible: 0,
            heap: BinaryHeap::with_capacity(self.k.min(4096) + 1),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<TopLogsFruit>) -> tantivy::Result<TopLogsFruit> {
        let mut merged = TopLogsFruit::default();
        for fruit in fruits {
            merged.total += fruit.total;
            merged.eligible += fruit.eligible;
            merged.top.extend(fruit.top);
        }
        merged.top.sort_unstable_by_key(|&(key, _)| Reverse(key));
        merged.top.truncate(self.k);
        Ok(merged)
    }
}

/// The per-segment half of [`TopLogs`].
pub struct TopLogsSegment {
    segment_ord: SegmentOrdinal,
    timestamps: Column<u64>,
    seqs: Column<u64>,
    k: usize,
    start: u64,
    end: Option<u64>,
    before: Option<SortKey>,
    total: u64,
    eligible: u64,
    /// The newest k so far; the root is the oldest of them.
    heap: BinaryHeap<Reverse<(SortKey, DocId)>>,
}

impl SegmentCollector for TopLogsSegment {
    type Fruit = TopLogsFruit;

    fn collect(&mut self, doc: DocId, _score: Score) {
        let (Some(timestamp), Some(seq)) = (self.timestamps.first(doc), self.seqs.first(doc))
        else {
            return;
        };
        if timestamp < self.start || self.end.is_some_and(|end| timestamp >= end) {
            return;
        }
        self.total += 1;
        let key = SortKey { timestamp, seq };
        if self.before.is_some_and(|before| key >= before) {
            return;
        }
        self.eligible += 1;
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Reverse((key, doc)));
        } else if let Some(mut oldest) = self.heap.peek_mut()
            && key > oldest.0.0
        {
            *oldest = Reverse((key, doc));
        }
    }

    fn harvest(self) -> TopLogsFruit {
        let segment_ord = self.segment_ord;
        let mut top: Vec<(SortKey, DocAddress)> = self
            .heap
            .into_iter()
            .map(|Reverse((key, doc))| (key, DocAddress::new(segment_ord, doc)))
            .collect();
        top.sort_unstable_by_key(|&(key, _)| Reverse(key));
        TopLogsFruit {
            total: self.total,
            eligible: self.eligible,
            top,
        }
    }
}
