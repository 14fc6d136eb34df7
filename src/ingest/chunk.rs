//! Logs as they are stored: each with its JSON encoding (made once, off the runtime) and a key
//! derived from it, and the content-defined chunks an export's logs are cut into.
//!
//! Where a chunk ends depends on the logs themselves (a log whose CRC-32 says so ends one, about
//! one in [`NATURAL_CUT`]), never on their positions, up to the limits of [`MAX_LOGS`] logs and
//! about [`MAX_BYTES`]. The same logs always give the same chunks, and logs sent again in other
//! batches give the same chunks away from the batches' edges. A cluster's gateways publish each
//! chunk as one stream message whose id is derived from its content; a single node remembers the
//! chunks it stored. Both recognize a retry by them.

use xxhash_rust::xxh3::xxh3_128;

use crate::mapping::ActivityLog;

/// Most logs in one chunk.
pub const MAX_LOGS: usize = 256;

/// Most JSON bytes in one chunk `{"logs":[...]}`; a single log larger than this goes alone.
pub const MAX_BYTES: usize = 256 * 1024;

/// A chunk ends after a log whose CRC-32 is 0 modulo this (about one log in this many), or at
/// the count and byte limits.
pub const NATURAL_CUT: u32 = 64;

/// The bytes a chunk's payload spends around its logs: `{"logs":[`, then `]}` after them.
const PAYLOAD_HEAD: usize = 9;

/// What a log is known by: the hash of its JSON encoding, and what chunking needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogKey {
    /// XXH3-128 of the JSON encoding: two logs with the same key are the same log.
    pub hash: u128,
    /// Bytes of the JSON encoding.
    pub len: usize,
    /// Whether the log ends a chunk by its content.
    pub cut: bool,
}

impl LogKey {
    /// The key of a log encoded as `json`.
    pub fn of(json: &[u8]) -> Self {
        Self {
            hash: xxh3_128(json),
            len: json.len(),
            cut: crc32fast::hash(json) % NATURAL_CUT == 0,
        }
    }

    /// The key of `log`, encoded again (as a replay of the write-ahead log does).
    pub fn of_log(log: &ActivityLog) -> Self {
        Self::of(&serde_json::to_vec(log).expect("an activity log serializes to JSON"))
    }

    /// Thirty-two bits of the hash: enough to tell, beside a log known by more of its hash,
    /// whether its neighbours are the ones stored with it.
    pub fn tag(&self) -> u32 {
        (self.hash >> 96) as u32
    }
}

/// A mapped log with its JSON encoding, as the write-ahead log and the stream carry it.
#[derive(Debug, Clone)]
pub struct EncodedLog {
    pub log: ActivityLog,
    pub json: Box<[u8]>,
    pub key: LogKey,
}

impl EncodedLog {
    pub fn new(log: ActivityLog) -> Self {
        let json = serde_json::to_vec(&log).expect("an activity log serializes to JSON");
        let key = LogKey::of(&json);
        Self {
            log,
            json: json.into_boxed_slice(),
            key,
        }
    }
}

/// Where the chunks of a run of logs end (exclusive indexes, the last one the run's length),
/// given each log's encoded length and whether it ends a chunk by its content.
pub fn ends(logs: impl IntoIterator<Item = (usize, bool)>) -> Vec<usize> {
    let mut ends = Vec::new();
    // logs in the current chunk, and the bytes of its payload so far
    let (mut count, mut bytes) = (0usize, PAYLOAD_HEAD);
    let mut index = 0;
    for (len, cut) in logs {
        if count > 0 && bytes + len > MAX_BYTES {
            ends.push(index);
            (count, bytes) = (0, PAYLOAD_HEAD);
        }
        if count > 0 {
            // the comma before it
            bytes += 1;
        }
        bytes += len;
        count += 1;
        index += 1;
        if count == MAX_LOGS || cut {
            ends.push(index);
            (count, bytes) = (0, PAYLOAD_HEAD);
        }
    }
    if count > 0 {
        ends.push(index);
    }
    ends
}

/// The chunks of `keys`, as index ranges.
pub fn ranges(keys: &[LogKey]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let ends = ends(keys.iter().map(|k| (k.len, k.cut)));
    let starts = std::iter::once(0).chain(ends.clone());
    starts.zip(ends).map(|(start, end)| start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::example_log;

    fn keys(messages: impl IntoIterator<Item = String>) -> Vec<LogKey> {
        messages
            .into_iter()
            .map(|m| EncodedLog::new(example_log(&m)).key)
            .collect()
    }

    #[test]
    fn chunks_end_where_the_content_says_and_cover_every_log_once() {
        let keys = keys((0..3000).map(|n| format!("m{n}")));
        let ranges: Vec<_> = ranges(&keys).collect();
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(3000));
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for range in &ranges {
            assert!((1..=MAX_LOGS).contains(&range.len()), "{range:?}");
            let last = &keys[range.end - 1];
            assert!(last.cut || range.len() == MAX_LOGS || range.end == 3000);
        }
        // about one log in NATURAL_CUT ends a chunk
        assert!(
            (25..=100).contains(&ranges.len()),
            "{} chunks",
            ranges.len()
        );
    }

    #[test]
    fn logs_sent_in_other_batches_give_the_same_chunks_past_the_first_cut() {
        let keys = keys((0..3000).map(|n| format!("m{n}")));
        let whole: Vec<_> = ranges(&keys).collect();
        let from = 1234;
        let first_cut = keys[from..].iter().position(|k| k.cut).unwrap() + from + 1;
        let later: Vec<_> = ranges(&keys[from..])
            .map(|r| r.start + from..r.end + from)
            .filter(|r| r.start >= first_cut)
            .collect();
        assert!(!later.is_empty());
        for range in &later {
            assert!(whole.contains(range), "{range:?}");
        }
    }

    #[test]
    fn a_chunk_stays_under_its_byte_limit_unless_one_log_is_larger() {
        assert_eq!(
            ends([(10, false), (MAX_BYTES, false), (10, false)]),
            vec![1, 2, 3]
        );
        // the payload's head counts
        let rest = MAX_BYTES - PAYLOAD_HEAD - 1000;
        assert_eq!(ends([(1000, false), (rest, false)]), vec![2]);
        assert_eq!(ends([(1000, false), (rest + 1, false)]), vec![1, 2]);
        assert_eq!(ends([]), Vec::<usize>::new());
    }

    #[test]
    fn a_decoded_log_encodes_to_the_same_bytes() {
        let mut log = example_log("m");
        log.trace_id = None;
        let encoded = EncodedLog::new(log);
        let decoded: ActivityLog = serde_json::from_slice(&encoded.json).unwrap();
        assert_eq!(EncodedLog::new(decoded).json, encoded.json);
    }
}
