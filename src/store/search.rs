//! Newest-first pages with exact totals, without visiting every match.
//!
//! The page: blocks of documents that hold matches are visited newest first (by the largest
//! timestamp of their matches, across all segments), and the visit stops as soon as the next
//! block cannot beat the oldest log kept. The total: the sum of the query's per-block match
//! counts, iterating only the blocks a time range cuts through.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use tantivy::columnar::Column;
use tantivy::query::{EnableScoring, Query, Scorer, Weight};
use tantivy::{DocAddress, DocId, DocSet, Searcher, SegmentReader};

use super::StoreError;
use super::blocks::{self, BlockCache, SegmentBlocks};
use super::columns::ColumnCache;

/// The order of logs: newest timestamp first, then newest ingested first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SortKey {
    /// Nanoseconds since the epoch.
    pub timestamp: u64,
    /// Ingest sequence number.
    pub seq: u64,
}

/// A log's position as text, `<timestamp>:<seq>`: how the shards of a spread user tell the
/// gateway where each of their logs sorts.
impl std::fmt::Display for SortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.timestamp, self.seq)
    }
}

impl std::str::FromStr for SortKey {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (timestamp, seq) = text.split_once(':').ok_or(())?;
        Ok(SortKey {
            timestamp: timestamp.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// Which matches a search counts and keeps.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Inclusive lower bound of the timestamp.
    pub start: u64,
    /// Exclusive upper bound of the timestamp, if any.
    pub end: Option<u64>,
    /// Only matches strictly older than this key go on the page.
    pub before: Option<SortKey>,
}

impl Window {
    fn in_range(&self, timestamp: u64) -> bool {
        timestamp >= self.start && self.end.is_none_or(|end| timestamp < end)
    }

    /// Whether a block with these timestamp bounds holds no match in the range.
    pub fn misses(&self, (min, max): (u64, u64)) -> bool {
        max < self.start || self.end.is_some_and(|end| min >= end)
    }

    /// Whether every timestamp of a block with these bounds is in the range.
    pub fn covers(&self, (min, max): (u64, u64)) -> bool {
        min >= self.start && self.end.is_none_or(|end| max < end)
    }
}

/// What [`Prepared::visit`] shows matches to.
pub trait Visitor {
    /// A segment with matches begins: its matches follow.
    fn enter(&mut self, segment: &SegmentReader) -> tantivy::Result<()>;
    /// A match of the current segment and its timestamp.
    fn visit(&mut self, doc: DocId, timestamp: u64);
    /// The current segment is done.
    fn leave(&mut self);
    /// Whether to stop: checked before each block.
    fn cancelled(&self) -> bool;
}

struct Segment<'a> {
    reader: &'a SegmentReader,
    /// The query's matches in each block.
    stats: Arc<SegmentBlocks>,
    timestamps: Column<u64>,
    seqs: Column<u64>,
}

/// A query ready to run over one searcher: its weight and the block statistics of every segment.
pub struct Prepared<'a> {
    weight: Box<dyn Weight>,
    segments: Vec<Segment<'a>>,
    /// The generation of the searcher it runs over.
    generation: u64,
}

/// Prepares `query` over `searcher`. `key` names the query (not its window) for the cache of
/// block statistics.
pub fn prepare<'a>(
    searcher: &'a Searcher,
    query: &dyn Query,
    key: &str,
    cache: &BlockCache,
    columns: &ColumnCache,
) -> Result<Prepared<'a>, StoreError> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let readers = searcher.segment_readers();
    let generation = searcher.generation().generation_id();
    let stats = blocks::for_query(cache, readers, generation, key, weight.as_ref())?;
    let segments = readers
        .iter()
        .zip(stats)
        .enumerate()
        .map(|(ord, (reader, stats))| {
            let columns = columns.get(searcher, ord as u32)?;
            Ok(Segment {
                reader,
                stats,
                timestamps: columns.timestamps.clone(),
                seqs: columns.seqs.clone(),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Prepared {
        weight,
        segments,
        generation,
    })
}

impl Prepared<'_> {
    /// Every match in the window's time range (the keyset position aside).
    pub fn count(&self, window: &Window) -> tantivy::Result<u64> {
        count(self.weight.as_ref(), &self.segments, window)
    }

    /// The first and last timestamp of the matches in the window's time range, if any.
    pub fn time_bounds(&self, window: &Window) -> tantivy::Result<Option<(u64, u64)>> {
        let mut bounds: Option<(u64, u64)> = None;
        let mut widen = |(min, max): (u64, u64)| {
            bounds = Some(bounds.map_or((min, max), |(lo, hi)| (lo.min(min), hi.max(max))));
        };
        for segment in &self.segments {
            let mut scorer: Option<Box<dyn Scorer>> = None;
            for (i, block) in segment.stats.blocks.iter().enumerate() {
                let block_bounds = (block.min, block.max);
                if block.matches == 0 || window.misses(block_bounds) {
                    continue;
                }
                if window.covers(block_bounds) {
                    widen(block_bounds);
                    continue;
                }
                let scorer = match &mut scorer {
                    Some(scorer) => scorer,
                    None => scorer.insert(self.weight.scorer(segment.reader, 1.0)?),
                };
                for_each_match(scorer.as_mut(), segment, segment.stats.docs(i), |doc| {
                    if let Some(t) = segment.timestamps.first(doc)
                        && window.in_range(t)
                    {
                        widen((t, t));
                    }
                });
            }
        }
        Ok(bounds)
    }

    /// Shows `visitor` every match in the window's time range (the keyset position aside),
    /// segment by segment, in document order, until it says it is cancelled.
    pub fn visit(&self, window: &Window, visitor: &mut impl Visitor) -> tantivy::Result<()> {
        for segment in 0..self.segments.len() {
            self.visit_segment(segment, window, visitor)?;
        }
        Ok(())
    }

    /// The generation of the searcher it runs over.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The segments the query runs over.
    pub fn segments(&self) -> impl Iterator<Item = &SegmentReader> {
        self.segments.iter().map(|segment| segment.reader)
    }

    /// The first and last timestamp of the matches of the `segment`-th segment, if any.
    pub fn segment_bounds(&self, segment: usize) -> Option<(u64, u64)> {
        let blocks = self.segments[segment].stats.blocks.iter();
        blocks
            .filter(|block| block.matches > 0)
            .map(|block| (block.min, block.max))
            .reduce(|(lo, hi), (min, max)| (lo.min(min), hi.max(max)))
    }

    /// [`Prepared::visit`] over the `segment`-th segment only.
    pub fn visit_segment(
        &self,
        segment: usize,
        window: &Window,
        visitor: &mut impl Visitor,
    ) -> tantivy::Result<()> {
        let segment = &self.segments[segment];
        let mut scorer: Option<Box<dyn Scorer>> = None;
        for (i, block) in segment.stats.blocks.iter().enumerate() {
            let bounds = (block.min, block.max);
            if block.matches == 0 || window.misses(bounds) {
                continue;
            }
            if visitor.cancelled() {
                return Ok(());
            }
            let scorer = match &mut scorer {
                Some(scorer) => scorer,
                None => {
                    visitor.enter(segment.reader)?;
                    scorer.insert(self.weight.scorer(segment.reader, 1.0)?)
                }
            };
            let covered = window.covers(bounds);
            for_each_match(scorer.as_mut(), segment, segment.stats.docs(i), |doc| {
                if let Some(t) = segment.timestamps.first(doc)
                    && (covered || window.in_range(t))
                {
                    visitor.visit(doc, t);
                }
            });
        }
        if scorer.is_some() {
            visitor.leave();
        }
        Ok(())
    }

    /// The newest `k` eligible matches, newest first.
    pub fn top_k(&self, window: &Window, k: usize) -> tantivy::Result<Vec<(SortKey, DocAddress)>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        top_k(self.weight.as_ref(), &self.segments, window, k)
    }
}

/// Calls `visit` for every live match among the documents `start..end` of a segment, moving
/// `scorer` forward to them.
fn for_each_match(
    scorer: &mut dyn DocSet,
    segment: &Segment<'_>,
    (start, end): (DocId, DocId),
    mut visit: impl FnMut(DocId),
) {
    let alive = segment.reader.alive_bitset();
    let mut doc = scorer.doc();
    if doc < start {
        doc = scorer.seek(start);
    }
    while doc < end {
        if alive.is_none_or(|a| a.is_alive(doc)) {
            visit(doc);
        }
        doc = scorer.advance();
    }
}

fn count(weight: &dyn Weight, segments: &[Segment<'_>], window: &Window) -> tantivy::Result<u64> {
    let mut total = 0u64;
    for segment in segments {
        // blocks in ascending order: one scorer moves forward through the partial ones
        let mut scorer: Option<Box<dyn Scorer>> = None;
        for (i, block) in segment.stats.blocks.iter().enumerate() {
            let bounds = (block.min, block.max);
            if block.matches == 0 || window.misses(bounds) {
                continue;
            }
            if window.covers(bounds) {
                total += u64::from(block.matches);
                continue;
            }
            let scorer = match &mut scorer {
                Some(scorer) => scorer,
                None => scorer.insert(weight.scorer(segment.reader, 1.0)?),
            };
            for_each_match(scorer.as_mut(), segment, segment.stats.docs(i), |doc| {
                if segment
                    .timestamps
                    .first(doc)
                    .is_some_and(|t| window.in_range(t))
                {
                    total += 1;
                }
            });
        }
    }
    Ok(total)
}

fn top_k(
    weight: &dyn Weight,
    segments: &[Segment<'_>],
    window: &Window,
    k: usize,
) -> tantivy::Result<Vec<(SortKey, DocAddress)>> {
    // every block that may hold an eligible match, newest first: (max, segment, block, matches)
    let mut order: Vec<(u64, u32, usize, u32)> = Vec::new();
    for (ord, segment) in segments.iter().enumerate() {
        for (i, block) in segment.stats.blocks.iter().enumerate() {
            let newer_than_cursor = window.before.is_some_and(|b| block.min > b.timestamp);
            if block.matches > 0 && !window.misses((block.min, block.max)) && !newer_than_cursor {
                order.push((block.max, ord as u32, i, block.matches));
            }
        }
    }
    order.sort_unstable_by_key(|&(max, ord, i, _)| Reverse((max, ord, i)));

    let mut heap: BinaryHeap<Reverse<(SortKey, u32, DocId)>> = BinaryHeap::new();
    let mut next = 0;
    while next < order.len() {
        let oldest = heap.peek().map(|Reverse((key, _, _))| key.timestamp);
        if heap.len() == k && oldest.is_some_and(|oldest| order[next].0 < oldest) {
            break;
        }
        // A round: the next blocks until they hold enough matches to fill the heap (one block
        // once it is full), visited in document order so that one scorer per segment only
        // moves forward, however deep the page.
        let wanted = (k - heap.len()).max(1) as u64;
        let mut round = Vec::new();
        let mut matches = 0u64;
        while next < order.len() && matches < wanted {
            let (_, ord, i, count) = order[next];
            round.push((ord, i));
            matches += u64::from(count);
            next += 1;
        }
        round.sort_unstable();
        let mut scorer: Option<(u32, Box<dyn Scorer>)> = None;
        for (ord, i) in round {
            let segment = &segments[ord as usize];
            let scorer = match &mut scorer {
                Some((current, scorer)) if *current == ord => scorer,
                _ => &mut scorer.insert((ord, weight.scorer(segment.reader, 1.0)?)).1,
            };
            for_each_match(scorer.as_mut(), segment, segment.stats.docs(i), |doc| {
                let (Some(timestamp), Some(seq)) =
                    (segment.timestamps.first(doc), segment.seqs.first(doc))
                else {
                    return;
                };
                let key = SortKey { timestamp, seq };
                if !window.in_range(timestamp) || window.before.is_some_and(|b| key >= b) {
                    return;
                }
                if heap.len() < k {
                    heap.push(Reverse((key, ord, doc)));
                } else if let Some(mut oldest) = heap.peek_mut()
                    && key > oldest.0.0
                {
                    *oldest = Reverse((key, ord, doc));
                }
            });
        }
    }
    let mut top: Vec<(SortKey, DocAddress)> = heap
        .into_iter()
        .map(|Reverse((key, ord, doc))| (key, DocAddress::new(ord, doc)))
        .collect();
    top.sort_unstable_by_key(|&(key, _)| Reverse(key));
    Ok(top)
}
