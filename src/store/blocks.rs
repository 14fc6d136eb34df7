//! Timestamp bounds of fixed-size blocks of documents, per segment, and per-block match counts of
//! recent queries: what lets a newest-first query visit only the blocks that can still reach its
//! page, and count a total without iterating every match.
//!
//! Documents of a segment sit in ingest order, so a block's timestamps span a short range.
//! Segments never change, so both are computed once per segment and kept until the segment is
//! merged away (counts: for the most recent queries only).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tantivy::index::SegmentId;
use tantivy::{DocId, SegmentReader};

use super::schema::TIMESTAMP_FIELD;

/// Documents per block. Unit tests use small blocks, so that a small index has many.
pub const BLOCK_DOCS: u32 = if cfg!(test) { 64 } else { 2048 };

/// The timestamp bounds of each block of a segment.
#[derive(Debug)]
pub struct SegmentBlocks {
    /// Smallest and largest timestamp of block i (documents i * BLOCK_DOCS ..).
    pub bounds: Vec<(u64, u64)>,
    pub max_doc: DocId,
}

impl SegmentBlocks {
    fn read(segment: &SegmentReader) -> tantivy::Result<Self> {
        let column = segment.fast_fields().u64(TIMESTAMP_FIELD)?;
        let max_doc = segment.max_doc();
        let mut bounds = Vec::with_capacity(max_doc.div_ceil(BLOCK_DOCS) as usize);
        let mut start = 0;
        while start < max_doc {
            let end = (start + BLOCK_DOCS).min(max_doc);
            let (mut min, mut max) = (u64::MAX, 0);
            for doc in start..end {
                if let Some(ts) = column.first(doc) {
                    min = min.min(ts);
                    max = max.max(ts);
                }
            }
            bounds.push((min, max));
            start = end;
        }
        Ok(Self { bounds, max_doc })
    }

    /// The documents of block `i`.
    pub fn docs(&self, i: usize) -> (DocId, DocId) {
        let start = i as DocId * BLOCK_DOCS;
        (start, (start + BLOCK_DOCS).min(self.max_doc))
    }
}

/// Most per-block match counts kept: about 5,000 blocks of 4 bytes each for a 10-million-log
/// segment, so at most some tens of MiB.
const MAX_COUNTS: usize = 2048;

/// Per-segment facts that never change while the segment lives: block bounds, and the number of
/// matches of recent queries in each block.
#[derive(Clone, Default)]
pub struct BlockCache {
    inner: Arc<Mutex<Cached>>,
}

#[derive(Default)]
struct Cached {
    bounds: HashMap<SegmentId, Arc<SegmentBlocks>>,
    counts: HashMap<(SegmentId, String), Arc<Vec<u32>>>,
    /// Keys of `counts`, oldest first, for eviction.
    count_order: VecDeque<(SegmentId, String)>,
}

impl BlockCache {
    /// The bounds of each of `segments`, reading those not seen before; forgets other segments.
    pub fn for_segments(
        &self,
        segments: &[SegmentReader],
    ) -> tantivy::Result<Vec<Arc<SegmentBlocks>>> {
        let mut result = Vec::with_capacity(segments.len());
        let mut fresh = Vec::new();
        for segment in segments {
            let known = self.lock().bounds.get(&segment.segment_id()).cloned();
            let blocks = match known {
                Some(blocks) => blocks,
                None => {
                    let blocks = Arc::new(SegmentBlocks::read(segment)?);
                    fresh.push((segment.segment_id(), blocks.clone()));
                    blocks
                }
            };
            result.push(blocks);
        }
        let mut cached = self.lock();
        let live = |id: &SegmentId| segments.iter().any(|s| s.segment_id() == *id);
        cached.bounds.retain(|id, _| live(id));
        cached.counts.retain(|(id, _), _| live(id));
        cached.count_order.retain(|(id, _)| live(id));
        cached.bounds.extend(fresh);
        Ok(result)
    }

    /// The matches of the query `key` in each block of `segment`, from `compute` the first time.
    pub fn counts(
        &self,
        segment: &SegmentReader,
        key: &str,
        compute: impl FnOnce() -> tantivy::Result<Vec<u32>>,
    ) -> tantivy::Result<Arc<Vec<u32>>> {
        let id = (segment.segment_id(), key.to_owned());
        if let Some(counts) = self.lock().counts.get(&id) {
            return Ok(counts.clone());
        }
        let counts = Arc::new(compute()?);
        let mut cached = self.lock();
        if cached.counts.insert(id.clone(), counts.clone()).is_none() {
            cached.count_order.push_back(id);
        }
        while cached.count_order.len() > MAX_COUNTS {
            if let Some(oldest) = cached.count_order.pop_front() {
                cached.counts.remove(&oldest);
            }
        }
        Ok(counts)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
