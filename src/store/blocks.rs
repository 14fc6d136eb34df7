//! Per-segment, per-query block statistics: for each fixed-size block of documents, how many
//! match the query and the timestamp bounds of those matches. They let a newest-first query visit
//! only the blocks that can still reach its page, and count a total without iterating every match.
//!
//! Documents of a segment sit in ingest order, so the matches of a block span a short time range,
//! whatever other users' stragglers share the block. The statistics of a query are computed
//! once per segment version (the first time the query runs after it appears) and kept in a
//! [`SegmentCache`], for the most recent queries.

use std::sync::Arc;

use tantivy::query::Weight;
use tantivy::{DocId, SegmentReader};

use super::cache::{SegmentCache, Weighed};
use super::schema::TIMESTAMP_FIELD;

/// Documents per block. Unit tests use small blocks, so that a small index has many.
pub const BLOCK_DOCS: u32 = if cfg!(test) { 64 } else { 2048 };

/// Most bytes the statistics of all segments and queries may take, keys included.
const MAX_CACHED_BYTES: usize = 48 << 20;

/// Matches a segment's statistics must count to be kept: fewer are visited again in well under
/// a millisecond, and a query with few matches in many segments (a search for one call's id,
/// polled until it shows) would otherwise fill the cache with them. Unit tests keep any.
const KEEP_MIN_MATCHES: u64 = if cfg!(test) { 1 } else { 4096 };

/// The matches of a query in one block.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    pub matches: u32,
    /// Smallest and largest timestamp of the matches (meaningless when there are none).
    pub min: u64,
    pub max: u64,
}

/// The statistics of one query over the blocks of one segment.
#[derive(Debug)]
pub struct SegmentBlocks {
    pub blocks: Vec<Block>,
    max_doc: DocId,
}

impl SegmentBlocks {
    /// Visits every match of `weight` in `segment` once.
    fn compute(weight: &dyn Weight, segment: &SegmentReader) -> tantivy::Result<Self> {
        let timestamps = segment.fast_fields().u64(TIMESTAMP_FIELD)?;
        let max_doc = segment.max_doc();
        let empty = Block {
            matches: 0,
            min: u64::MAX,
            max: 0,
        };
        let mut blocks = vec![empty; max_doc.div_ceil(BLOCK_DOCS) as usize];
        let alive = segment.alive_bitset();
        // the timestamps of each batch of matches read at once, as their column decodes them
        let mut batch: Vec<Option<u64>> = Vec::new();
        weight.for_each_no_score(segment, &mut |docs| {
            batch.clear();
            batch.resize(docs.len(), None);
            timestamps.first_vals(docs, &mut batch);
            for (&doc, &ts) in docs.iter().zip(&batch) {
                let Some(ts) = ts else {
                    continue;
                };
                if !alive.is_none_or(|a| a.is_alive(doc)) {
                    continue;
                }
                let block = &mut blocks[(doc / BLOCK_DOCS) as usize];
                block.matches += 1;
                block.min = block.min.min(ts);
                block.max = block.max.max(ts);
            }
        })?;
        Ok(Self { blocks, max_doc })
    }

    /// The documents of block `i`.
    pub fn docs(&self, i: usize) -> (DocId, DocId) {
        let start = i as DocId * BLOCK_DOCS;
        (start, (start + BLOCK_DOCS).min(self.max_doc))
    }
}

impl Weighed for SegmentBlocks {
    fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block>()
    }

    fn worth_keeping(&self) -> bool {
        let matches = self.blocks.iter().map(|b| u64::from(b.matches));
        matches.sum::<u64>() >= KEEP_MIN_MATCHES
    }
}

/// The block statistics of recent queries, by segment and query.
pub type BlockCache = SegmentCache<SegmentBlocks>;

/// A cache of block statistics within [`MAX_CACHED_BYTES`].
pub fn block_cache() -> BlockCache {
    SegmentCache::with_max_bytes(MAX_CACHED_BYTES)
}

/// The statistics of the query `key` (whose weight is `weight`) in each of `segments` (those of
/// a searcher of `generation`), computing the missing ones.
pub fn for_query(
    cache: &BlockCache,
    segments: &[SegmentReader],
    generation: u64,
    key: &str,
    weight: &dyn Weight,
) -> tantivy::Result<Vec<Arc<SegmentBlocks>>> {
    cache.for_each_segment(segments, generation, key, |segment| {
        SegmentBlocks::compute(weight, segment)
    })
}
