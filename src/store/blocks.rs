//! Timestamp bounds of fixed-size blocks of documents, per segment: what lets a newest-first query
//! visit only the blocks that can still reach its page.
//!
//! Documents of a segment sit in ingest order, so a block's timestamps span a short range. The
//! bounds are read from the timestamp fast field once per segment (segments never change) and
//! kept until the segment is merged away.

use std::collections::HashMap;
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

/// Block bounds of every segment seen, by segment id.
#[derive(Clone, Default)]
pub struct BlockCache {
    segments: Arc<Mutex<HashMap<SegmentId, Arc<SegmentBlocks>>>>,
}

impl BlockCache {
    /// The bounds of each of `segments`, reading those not seen before; forgets the others.
    pub fn for_segments(
        &self,
        segments: &[SegmentReader],
    ) -> tantivy::Result<Vec<Arc<SegmentBlocks>>> {
        let known: HashMap<SegmentId, Arc<SegmentBlocks>> = {
            let cache = self.segments.lock().expect("block cache lock");
            segments
                .iter()
                .filter_map(|s| {
                    cache
                        .get(&s.segment_id())
                        .map(|b| (s.segment_id(), b.clone()))
                })
                .collect()
        };
        let mut result = Vec::with_capacity(segments.len());
        let mut fresh = Vec::new();
        for segment in segments {
            let blocks = match known.get(&segment.segment_id()) {
                Some(blocks) => blocks.clone(),
                None => {
                    let blocks = Arc::new(SegmentBlocks::read(segment)?);
                    fresh.push((segment.segment_id(), blocks.clone()));
                    blocks
                }
            };
            result.push(blocks);
        }
        let mut cache = self.segments.lock().expect("block cache lock");
        cache.retain(|id, _| segments.iter().any(|s| s.segment_id() == *id));
        cache.extend(fresh);
        Ok(result)
    }
}
