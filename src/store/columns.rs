//! The fast fields (columns) of each segment that pages and stored logs read, opened once while
//! the segment is searched. Opening a timestamp or sequence column reads the metadata of every
//! block of it, and an assistant id read by its ordinal decompresses a block of the column's
//! dictionary: done for every page, the two took about a third of a page's time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tantivy::columnar::{Column, StrColumn};
use tantivy::index::SegmentId;
use tantivy::{DocId, Searcher, SegmentReader};

use super::StoreError;
use super::schema::{ASSISTANT_FIELD, KIND_FIELD, LATENCY_FIELD, SEQ_FIELD, TIMESTAMP_FIELD};

/// Assistant ids kept per segment: a segment of many more (one per log, at worst) reads the
/// others from its dictionary each time.
const MAX_IDS: usize = 4096;

/// The columns of one segment.
pub(super) struct Columns {
    pub timestamps: Column<u64>,
    pub seqs: Column<u64>,
    pub kinds: Column<u64>,
    pub latencies: Column<u64>,
    assistants: StrColumn,
    /// Assistant ids by ordinal, as read so far, up to [`MAX_IDS`].
    ids: Mutex<HashMap<u64, Arc<str>>>,
}

fn missing(name: &str) -> StoreError {
    StoreError::StoredLog(format!("the segment has no {name} column"))
}

impl Columns {
    fn open(segment: &SegmentReader) -> Result<Self, StoreError> {
        let fast = segment.fast_fields();
        let u64_column = |name: &str| fast.column_opt::<u64>(name)?.ok_or_else(|| missing(name));
        Ok(Self {
            timestamps: u64_column(TIMESTAMP_FIELD)?,
            seqs: u64_column(SEQ_FIELD)?,
            kinds: u64_column(KIND_FIELD)?,
            latencies: u64_column(LATENCY_FIELD)?,
            assistants: fast
                .str(ASSISTANT_FIELD)?
                .ok_or_else(|| missing(ASSISTANT_FIELD))?,
            ids: Mutex::default(),
        })
    }

    /// The assistant of log `doc`: empty for a log without one, which the column keeps no value
    /// for.
    pub fn assistant(&self, doc: DocId) -> Result<Arc<str>, StoreError> {
        let Some(ord) = self.assistants.term_ords(doc).next() else {
            return Ok(Arc::from(""));
        };
        if let Some(id) = lock(&self.ids).get(&ord) {
            return Ok(id.clone());
        }
        let mut id = String::new();
        let found = self.assistants.ord_to_str(ord, &mut id);
        if !found.map_err(|e| StoreError::StoredLog(e.to_string()))? {
            return Err(missing(ASSISTANT_FIELD));
        }
        let id: Arc<str> = Arc::from(id);
        let mut ids = lock(&self.ids);
        if ids.len() < MAX_IDS {
            ids.insert(ord, id.clone());
        }
        Ok(id)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // what a panicking holder left is a map of values read correctly: still good
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Columns by segment: those of the segments the newest searcher searches. A query on an older
/// view opens the columns of segments merged away since without keeping them, so that their
/// files are not held open.
#[derive(Clone, Default)]
pub(super) struct ColumnCache {
    inner: Arc<Mutex<Kept>>,
}

#[derive(Default)]
struct Kept {
    by_segment: HashMap<SegmentId, Arc<Columns>>,
    /// The generation of the newest searcher [`ColumnCache::keep`] was told of, and the segments
    /// it searches; until then (a cache for one walk over an index) every segment is kept.
    searched: Option<(u64, HashSet<SegmentId>)>,
}

impl ColumnCache {
    /// The columns of segment `ord` of `searcher`.
    pub fn get(&self, searcher: &Searcher, ord: u32) -> Result<Arc<Columns>, StoreError> {
        let segment = searcher.segment_reader(ord);
        let id = segment.segment_id();
        if let Some(columns) = lock(&self.inner).by_segment.get(&id) {
            return Ok(columns.clone());
        }
        let columns = Arc::new(Columns::open(segment)?);
        let mut kept = lock(&self.inner);
        // a view as new as the last one told of, or newer, searches no segment merged away
        let generation = searcher.generation().generation_id();
        let current = kept
            .searched
            .as_ref()
            .is_none_or(|(newest, ids)| generation >= *newest || ids.contains(&id));
        if current {
            kept.by_segment.insert(id, columns.clone());
        }
        Ok(columns)
    }

    /// Tells the segments the newest searcher searches, `searcher`'s, and forgets the columns
    /// of the others, so that the files of segments merged away are not held open.
    pub fn keep(&self, searcher: &Searcher) {
        let searched: HashSet<SegmentId> = searcher
            .segment_readers()
            .iter()
            .map(SegmentReader::segment_id)
            .collect();
        let mut kept = lock(&self.inner);
        kept.by_segment.retain(|id, _| searched.contains(id));
        kept.searched = Some((searcher.generation().generation_id(), searched));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{StoreOptions, open};
    use super::*;
    use crate::mapping::example_log;

    #[tokio::test]
    async fn columns_are_opened_once_and_let_go_when_their_segment_is_merged_away() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        for seq in 1..=2 {
            writer.add(&example_log("a log"), seq).unwrap();
            writer.commit(seq).unwrap();
        }
        let searcher = store.reader.searcher();
        assert_eq!(searcher.segment_readers().len(), 2);
        let first = store.columns.get(&searcher, 0).unwrap();
        assert!(Arc::ptr_eq(
            &first,
            &store.columns.get(&searcher, 0).unwrap()
        ));
        let before = searcher;

        let segments = writer.index.searchable_segment_ids().unwrap();
        writer.writer.merge(&segments).wait().unwrap();
        writer.commit(2).unwrap();
        let merged = store.reader.searcher();
        assert_eq!(merged.segment_readers().len(), 1);
        // the warming thread lets go of what the newest searcher does not search
        let generation = merged.generation().generation_id();
        tokio::time::timeout(
            Duration::from_secs(60),
            store.warmed().wait_for(|g| *g >= generation),
        )
        .await
        .expect("the warming thread runs within a minute")
        .unwrap();
        assert_eq!(Arc::strong_count(&first), 1, "the cache holds it no more");
        let only_merged = |cache: &ColumnCache| {
            let kept = &lock(&cache.inner).by_segment;
            kept.keys()
                .all(|id| *id == merged.segment_reader(0).segment_id())
        };
        assert!(only_merged(&store.columns));
        let columns = store.columns.get(&merged, 0).unwrap();
        assert_eq!(columns.seqs.max_value(), 2);
        // a query on the view before the merge opens its columns without keeping them
        let again = store.columns.get(&before, 0).unwrap();
        assert!(!Arc::ptr_eq(&again, &first));
        assert!(only_merged(&store.columns));
    }
}
