//! What a query computed about a segment, kept while the segment lives: the block statistics of
//! pages ([`super::blocks`]) and the statistics of `GET /logs/stats` ([`super::stats`]).
//!
//! A segment changes only by deletes (erasure, retention), each of which gives it a new delete
//! opstamp: an entry is kept per segment version and forgotten once that version is no longer
//! searched, or, past a bound on the bytes of all entries, oldest first. What is searched is told
//! by the newest searcher seen (its generation): a query or a scan on an older one keeps its
//! values without forgetting those of newer segments.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tantivy::index::SegmentId;
use tantivy::{Opstamp, SegmentReader};

/// What an entry costs besides what it holds and its key: the map's and the queue's slots, the
/// `Arc` and the value's headers.
const ENTRY_OVERHEAD: usize = 128;

/// A value whose memory the cache bounds.
pub trait Weighed {
    /// The bytes it holds, its headers aside.
    fn bytes(&self) -> usize;

    /// Whether computing it again would cost enough for it to be kept: one that is cheaper to
    /// compute than to find does not take memory or push out a costlier one.
    fn worth_keeping(&self) -> bool {
        true
    }
}

/// A segment as of its latest deletes.
pub(super) type SegmentVersion = (SegmentId, Option<Opstamp>);

type Key = (SegmentVersion, String);

pub(super) fn version(segment: &SegmentReader) -> SegmentVersion {
    (segment.segment_id(), segment.delete_opstamp())
}

fn entry_bytes<V: Weighed>(key: &str, value: &V) -> usize {
    ENTRY_OVERHEAD + key.len() + value.bytes()
}

/// Values by segment version and query, within a byte bound.
pub struct SegmentCache<V> {
    inner: Arc<Mutex<Cached<V>>>,
    max_bytes: usize,
}

impl<V> Clone for SegmentCache<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_bytes: self.max_bytes,
        }
    }
}

struct Cached<V> {
    values: HashMap<Key, Arc<V>>,
    /// Keys of `values`, oldest first, for eviction.
    order: VecDeque<Key>,
    /// What the entries cost, keys included.
    bytes: usize,
    /// The generation of the newest searcher whose segments were kept.
    newest: u64,
}

impl<V: Weighed> SegmentCache<V> {
    /// A cache that keeps at most `max_bytes` of values and keys.
    pub fn with_max_bytes(max_bytes: usize) -> Self {
        let cached = Cached {
            values: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            newest: 0,
        };
        Self {
            inner: Arc::new(Mutex::new(cached)),
            max_bytes,
        }
    }

    /// What the cached entries cost now, in bytes.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The value of the query `key` over `segment`, if kept.
    pub fn get(&self, segment: &SegmentReader, key: &str) -> Option<Arc<V>> {
        let id = (version(segment), key.to_owned());
        self.lock().values.get(&id).cloned()
    }

    /// Keeps `fresh` values (each of a segment and the query `key`) and, when `live` are the
    /// segments of the newest searcher seen (of `generation`), forgets every segment version not
    /// among them.
    pub fn keep(
        &self,
        live: &[&SegmentReader],
        generation: u64,
        key: &str,
        fresh: Vec<(&SegmentReader, Arc<V>)>,
    ) {
        let mut cached = self.lock();
        let newest = generation >= cached.newest;
        cached.newest = cached.newest.max(generation);
        let is_live = |id: &SegmentVersion| live.iter().any(|s| version(s) == *id);
        if newest && cached.order.iter().any(|(id, _)| !is_live(id)) {
            cached.values.retain(|(id, _), _| is_live(id));
            cached.order.retain(|(id, _)| is_live(id));
            cached.bytes = cached
                .values
                .iter()
                .map(|((_, key), value)| entry_bytes(key, value.as_ref()))
                .sum();
        }
        for (segment, value) in fresh {
            let id = (version(segment), key.to_owned());
            let bytes = entry_bytes(key, value.as_ref());
            // one that alone exceeds the bound, or that is cheap to compute again, is used for
            // this query only
            if bytes > self.max_bytes || !value.worth_keeping() {
                continue;
            }
            cached.bytes += bytes;
            if let Some(replaced) = cached.values.insert(id.clone(), value) {
                cached.bytes -= entry_bytes(key, replaced.as_ref());
            } else {
                cached.order.push_back(id);
            }
        }
        while cached.bytes > self.max_bytes {
            let Some(oldest) = cached.order.pop_front() else {
                break;
            };
            if let Some(evicted) = cached.values.remove(&oldest) {
                cached.bytes -= entry_bytes(&oldest.1, evicted.as_ref());
            }
        }
    }

    /// The value of the query `key` over each of `segments` (those of a searcher of
    /// `generation`), computing the missing ones with `compute`; forgets segment versions no
    /// longer searched.
    pub fn for_each_segment<E>(
        &self,
        segments: &[SegmentReader],
        generation: u64,
        key: &str,
        mut compute: impl FnMut(&SegmentReader) -> Result<V, E>,
    ) -> Result<Vec<Arc<V>>, E> {
        let mut result = Vec::with_capacity(segments.len());
        let mut fresh = Vec::new();
        for segment in segments {
            let value = match self.get(segment, key) {
                Some(value) => value,
                None => {
                    let value = Arc::new(compute(segment)?);
                    fresh.push((segment, value.clone()));
                    value
                }
            };
            result.push(value);
        }
        let live: Vec<&SegmentReader> = segments.iter().collect();
        self.keep(&live, generation, key, fresh);
        Ok(result)
    }

    fn lock(&self) -> MutexGuard<'_, Cached<V>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
