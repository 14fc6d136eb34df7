//! Which shard a user's logs go to (one, or several from a cut-over time), which indexers serve
//! a shard, and the sequence numbers every replica of a shard gives the same log, unique across
//! shards so that logs of several shards merge in one (timestamp, sequence) order.

use serde::{Deserialize, Serialize};

/// Most logs in one stream message.
pub const LOGS_PER_MESSAGE: usize = crate::ingest::LOGS_PER_CHUNK;

/// Most shards a cluster may have: the shard is part of every sequence number.
pub const MAX_SHARDS: u32 = 4096;

/// A very large user's logs spread over `shards` shards from `from` on (by their timestamps):
/// its home shard and the ones after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spread {
    /// Nanoseconds since the epoch: logs stamped at or after it are spread.
    pub from: u64,
    pub shards: u32,
}

/// The shard of one log of `user_id` stamped `timestamp_nanos` with `message`, given the
/// user's spreads (ordered by `from`): the home shard, or for a log past a cut-over one of the
/// spread's shards, chosen by the log's own content so that a retry goes to the same one.
pub fn shard_for(
    user_id: &str,
    timestamp_nanos: u64,
    message: &str,
    spreads: &[Spread],
    shards: u32,
) -> u32 {
    let home = shard_of(user_id, shards);
    let Some(spread) = spreads.iter().rev().find(|s| s.from <= timestamp_nanos) else {
        return home;
    };
    let mut content = timestamp_nanos.to_be_bytes().to_vec();
    content.extend_from_slice(message.as_bytes());
    let offset = (mix(fnv1a(&content)) % u64::from(spread.shards.min(shards).max(1))) as u32;
    (home + offset) % shards
}

/// Every shard that may hold logs of `user_id`, home first.
pub fn shards_of_user(user_id: &str, spreads: &[Spread], shards: u32) -> Vec<u32> {
    let home = shard_of(user_id, shards);
    let widest = spreads
        .iter()
        .map(|s| s.shards.min(shards))
        .max()
        .unwrap_or(1);
    (0..widest.max(1))
        .map(|offset| (home + offset) % shards)
        .collect()
}

/// The shard of `user_id`'s logs among `shards` (FNV-1a, stable across versions and machines).
pub fn shard_of(user_id: &str, shards: u32) -> u32 {
    (fnv1a(user_id.as_bytes()) % u64::from(shards)) as u32
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The `replicas` indexers (by node id) that own `shard`: those with the highest rendezvous
/// hash of (shard, node). Every node that sees the same indexers computes the same owners, and
/// a joining or leaving indexer moves only the shards it wins or held.
pub fn owners<'a>(shard: u32, indexers: &[&'a str], replicas: usize) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = indexers
        .iter()
        .map(|node| {
            let mut key = shard.to_be_bytes().to_vec();
            key.extend_from_slice(node.as_bytes());
            (mix(fnv1a(&key)), *node)
        })
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked
        .into_iter()
        .take(replicas)
        .map(|(_, node)| node)
        .collect()
}

/// A finalizer that spreads FNV's close hashes of similar keys over the whole range.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Sequence numbers a message spans: one per position, for each shard.
const MESSAGE_SPAN: u64 = LOGS_PER_MESSAGE as u64 * MAX_SHARDS as u64;

/// The sequence number of the log at `position` in the message at `stream_seq` of `shard`:
/// ordered by stream sequence within a shard, and never the same in two shards.
pub fn log_seq(shard: u32, stream_seq: u64, position: usize) -> u64 {
    stream_seq * MESSAGE_SPAN + u64::from(shard) * LOGS_PER_MESSAGE as u64 + position as u64
}

/// The stream sequence of the message that holds the log numbered `seq`.
pub fn message_of(seq: u64) -> u64 {
    seq / MESSAGE_SPAN
}

/// The stream sequence to consume from when the index holds every log up to `committed`.
pub fn resume_from(committed: u64) -> u64 {
    message_of(committed) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_always_lands_on_the_same_shard_and_users_spread() {
        assert_eq!(shard_of("user-acme", 8), shard_of("user-acme", 8));
        let mut counts = [0u32; 8];
        for n in 0..8000 {
            counts[shard_of(&format!("user-{n}"), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_joining_indexer_takes_shards_only_from_others_and_two_own_each() {
        let before = ["a", "b", "c"];
        let after = ["a", "b", "c", "d"];
        let mut moved = 0;
        for shard in 0..64 {
            let old = owners(shard, &before, 2);
            let new = owners(shard, &after, 2);
            assert_eq!(new.len(), 2);
            assert_ne!(new[0], new[1]);
            for node in &new {
                assert!(
                    old.contains(node) || *node == "d",
                    "shard {shard}: {old:?} -> {new:?}"
                );
            }
            moved += usize::from(new.contains(&"d"));
        }
        // d wins about half of the shards' two places
        assert!((16..=48).contains(&moved), "{moved} shards moved");
    }

    #[test]
    fn replay_resumes_after_the_last_whole_message_committed() {
        assert_eq!(resume_from(0), 1);
        let last = log_seq(7, 41, 17);
        assert_eq!(resume_from(last), 42);
        assert_eq!(
            resume_from(log_seq(MAX_SHARDS - 1, 41, LOGS_PER_MESSAGE - 1)),
            42
        );
        assert!(log_seq(7, 42, 0) > last);
        assert_eq!(message_of(last), 41);
        // two shards never share a number
        assert_ne!(log_seq(3, 41, 17), log_seq(4, 41, 17));
    }

    #[test]
    fn a_spread_user_goes_over_its_shards_from_the_cut_over_on() {
        let home = shard_of("big", 8);
        let spreads = [Spread {
            from: 1000,
            shards: 3,
        }];
        let before: Vec<u32> = (0..100)
            .map(|n| shard_for("big", 999, &format!("m{n}"), &spreads, 8))
            .collect();
        assert!(before.iter().all(|&s| s == home));
        let mut after: Vec<u32> = (0..300)
            .map(|n| shard_for("big", 1000 + n, "m", &spreads, 8))
            .collect();
        // the same log always goes to the same shard
        assert_eq!(shard_for("big", 1005, "m", &spreads, 8), after[5]);
        after.sort_unstable();
        after.dedup();
        let expected: Vec<u32> = {
            let mut all = shards_of_user("big", &spreads, 8);
            all.sort_unstable();
            all
        };
        assert_eq!(after, expected);
        assert_eq!(shards_of_user("big", &spreads, 8)[0], home);
        assert_eq!(shards_of_user("small", &[], 8), vec![shard_of("small", 8)]);
    }
}
