//! Which shard a user's logs go to, which indexers serve a shard, and the sequence numbers
//! every replica of a shard gives the same log.

/// Most logs in one stream message; a log's sequence number is its message's stream sequence
/// times this, plus its position in the message.
pub const LOGS_PER_MESSAGE: usize = 256;

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

/// The sequence number of the log at `position` in the message at `stream_seq`.
pub fn log_seq(stream_seq: u64, position: usize) -> u64 {
    stream_seq * LOGS_PER_MESSAGE as u64 + position as u64
}

/// The stream sequence to consume from when the index holds every log up to `committed`.
pub fn resume_from(committed: u64) -> u64 {
    committed / LOGS_PER_MESSAGE as u64 + 1
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
        let last = log_seq(41, 17);
        assert_eq!(resume_from(last), 42);
        assert!(log_seq(42, 0) > last);
    }
}
