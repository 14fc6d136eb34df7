//! Per-segment, per-query block statistics: for each fixed-size block of documents, how many
//! match the query and the timestamp bounds of those matches. They let a newest-first query visit
//! only the blocks that can still reach its page, and count a total without iterating every match.
//!
//! Documents of a segment sit in ingest order, so the matches of a block span a short time range,
//! whatever other users' stragglers share the block. A segment changes only by deletes (erasure,
//! retention), each of which gives it a new delete opstamp: the statistics of a query are computed
//! once per segment version (the first time the query runs after it appears) and kept, for the
//! most recent queries, until that version is gone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tantivy::index::SegmentId;
use tantivy::query::Weight;
use tantivy::{DocId, Opstamp, SegmentReader};

use super::schema::TIMESTAMP_FIELD;

/// Documents per block. Unit tests use small blocks, so that a small index has many.
pub const BLOCK_DOCS: u32 = if cfg!(test) { 64 } else { 2048 };

/// Most bytes the statistics of all segments and queries may take, keys included.
const MAX_CACHED_BYTES: usize = 48 << 20;

/// What an entry costs besides its blocks and its key: the map's and the queue's slots, the
/// `Arc` and the vector's header.
const ENTRY_OVERHEAD: usize = 128;

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

/// What one entry of the cache costs, in bytes.
fn entry_bytes(key: &str, stats: &SegmentBlocks) -> usize {
    ENTRY_OVERHEAD + key.len() + stats.blocks.len() * std::mem::size_of::<Block>()
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
        weight.for_each_no_score(segment, &mut |docs| {
            for &doc in docs {
                if !alive.is_none_or(|a| a.is_alive(doc)) {
                    continue;
                }
                let Some(ts) = timestamps.first(doc) else {
                    continue;
                };
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

/// A segment as of its latest deletes.
type SegmentVersion = (SegmentId, Option<Opstamp>);

type Key = (SegmentVersion, String);

fn version(segment: &SegmentReader) -> SegmentVersion {
    (segment.segment_id(), segment.delete_opstamp())
}

/// The statistics of recent queries, by segment and query, within a byte bound.
#[derive(Clone)]
pub struct BlockCache {
    inner: Arc<Mutex<Cached>>,
    max_bytes: usize,
}

impl Default for BlockCache {
    fn default() -> Self {
        Self::with_max_bytes(MAX_CACHED_BYTES)
    }
}

#[derive(Default)]
struct Cached {
    stats: HashMap<Key, Arc<SegmentBlocks>>,
    /// Keys of `stats`, oldest first, for eviction.
    order: VecDeque<Key>,
    /// What the entries cost, keys included.
    bytes: usize,
}

impl BlockCache {
    /// A cache that keeps at most `max_bytes` of statistics and keys.
    pub fn with_max_bytes(max_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            max_bytes,
        }
    }

    /// What the cached entries cost now, in bytes.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The statistics of the query `key` (whose weight is `weight`) in each of `segments`,
    /// computing the missing ones; forgets segment versions no longer searched.
    pub fn for_query(
        &self,
        segments: &[SegmentReader],
        key: &str,
        weight: &dyn Weight,
    ) -> tantivy::Result<Vec<Arc<SegmentBlocks>>> {
        let mut result = Vec::with_capacity(segments.len());
        let mut fresh = Vec::new();
        for segment in segments {
            let id = (version(segment), key.to_owned());
            let known = self.lock().stats.get(&id).cloned();
            let stats = match known {
                Some(stats) => stats,
                None => {
                    let stats = Arc::new(SegmentBlocks::compute(weight, segment)?);
                    fresh.push((id, stats.clone()));
                    stats
                }
            };
            result.push(stats);
        }
        let mut cached = self.lock();
        let live = |id: &SegmentVersion| segments.iter().any(|s| version(s) == *id);
        if cached.order.iter().any(|(id, _)| !live(id)) {
            cached.stats.retain(|(id, _), _| live(id));
            cached.order.retain(|(id, _)| live(id));
            cached.bytes = cached
                .stats
                .iter()
                .map(|((_, key), stats)| entry_bytes(key, stats))
                .sum();
        }
        for (id, stats) in fresh {
            let bytes = entry_bytes(&id.1, &stats);
            // one that alone exceeds the bound is used for this query only
            if bytes > self.max_bytes {
                continue;
            }
            cached.bytes += bytes;
            if let Some(replaced) = cached.stats.insert(id.clone(), stats) {
                cached.bytes -= entry_bytes(&id.1, &replaced);
            } else {
                cached.order.push_back(id);
            }
        }
        while cached.bytes > self.max_bytes {
            let Some(oldest) = cached.order.pop_front() else {
                break;
            };
            if let Some(evicted) = cached.stats.remove(&oldest) {
                cached.bytes -= entry_bytes(&oldest.1, &evicted);
            }
        }
        Ok(result)
    }

    fn lock(&self) -> MutexGuard<'_, Cached> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
