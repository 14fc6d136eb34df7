//! Per-user ingest limits: a token bucket of records per user.
//!
//! Each user's bucket holds up to `burst` records and refills at `records_per_second`. An export
//! is taken whole or refused whole: all its users must have room, else nothing is taken. An
//! export larger than a user's burst is taken when that user's bucket is full, leaving it in
//! debt, so that no export is refused forever and the long-run rate still holds. (The `governor`
//! crate has one quota per limiter and refuses batches over the burst for good, so it fits
//! neither per-user overrides nor that.)
//!
//! A limit is the user's across every node that takes its exports: of `n` such nodes (the
//! cluster's live gateways), each enforces `1/n` of the rate and of the burst, its
//! [`LimitShare`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Buckets kept before full ones (which hold no state) are forgotten: the map is pruned when it
/// has grown to this, and then whenever it has doubled since.
const PRUNE_AT: usize = 10_000;

/// Most buckets kept whatever they hold: past it (a platform key sending a million made-up
/// users), every bucket is forgotten, debts included, rather than memory growing without bound.
const MAX_BUCKETS: usize = 1_000_000;

/// The limit of one user; a rate of 0 is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rate {
    pub records_per_second: u64,
    /// Records a user may send at once after a pause; 0 is one second's worth.
    pub burst: u64,
}

impl Rate {
    fn capacity(self) -> f64 {
        if self.burst == 0 {
            self.records_per_second as f64
        } else {
            self.burst as f64
        }
    }
}

/// Among how many nodes every user's limit is shared: each enforces its part of the rate and
/// the burst. 1 on a single node; a cluster's gateways set it to the live gateways they see.
#[derive(Debug, Clone)]
pub struct LimitShare(Arc<AtomicU32>);

impl Default for LimitShare {
    fn default() -> Self {
        Self(Arc::new(AtomicU32::new(1)))
    }
}

impl LimitShare {
    /// Shares the limits among `nodes` (at least one).
    pub fn set(&self, nodes: u32) {
        self.0.store(nodes.max(1), Ordering::Relaxed);
    }

    fn nodes(&self) -> f64 {
        f64::from(self.0.load(Ordering::Relaxed).max(1))
    }
}

/// What this node allows a user: its part of the user's [`Rate`].
#[derive(Debug, Clone, Copy)]
struct Allowance {
    /// The user's whole limit, as configured (what a refusal names).
    records_per_second: u64,
    /// This node's part of it.
    per_second: f64,
    capacity: f64,
}

impl Allowance {
    fn unlimited(self) -> bool {
        self.records_per_second == 0
    }
}

/// Ingest limits of every user: a default and per-user overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitsConfig {
    pub default: Rate,
    pub users: BTreeMap<String, Rate>,
}

/// An export refused because a user is over its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "user {user:?} is over its ingest limit of {records_per_second} records per second; \
     retry in {:.1} s",
    retry_after.as_secs_f64()
)]
pub struct Throttled {
    pub user: String,
    pub records_per_second: u64,
    /// When the user has room again.
    pub retry_after: Duration,
}

/// Room held in a user's bucket for an export being read; given back when dropped.
#[derive(Debug)]
pub struct Hold {
    limits: Arc<UserLimits>,
    user: String,
    records: f64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.limits.release(&self.user, self.records);
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// What the user's last export needed (its records, up to the burst): what the check before
    /// the body asks for, since the next export is likely of the same size.
    last_wanted: f64,
}

/// The buckets of every user.
#[derive(Debug)]
pub struct UserLimits {
    config: LimitsConfig,
    /// Whether no user is ever limited, from `config`.
    unlimited: bool,
    share: LimitShare,
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    by_user: HashMap<String, Bucket>,
    /// Size at which the map is pruned next.
    prune_at: usize,
}

impl UserLimits {
    /// The limits of `config`, of which this node enforces its `share`.
    pub fn new(config: LimitsConfig, share: LimitShare) -> Self {
        let limited = |rate: &Rate| rate.records_per_second > 0;
        Self {
            unlimited: !limited(&config.default) && !config.users.values().any(limited),
            config,
            share,
            buckets: Mutex::new(Buckets {
                by_user: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        }
    }

    /// Whether no user is ever limited.
    pub fn unlimited(&self) -> bool {
        self.unlimited
    }

    fn allowance(&self, user: &str) -> Allowance {
        let rate = self
            .config
            .users
            .get(user)
            .copied()
            .unwrap_or(self.config.default);
        let nodes = self.share.nodes();
        Allowance {
            records_per_second: rate.records_per_second,
            per_second: rate.records_per_second as f64 / nodes,
            capacity: rate.capacity() / nodes,
        }
    }

    /// Whether `user` has room now for an export of the size it sent last: a cheap check before
    /// an export's body is read, so that a user far over its limit costs little. The room is
    /// held for the export until [`UserLimits::take`] charges it (or the hold is dropped), so
    /// that of many exports arriving at once only as many as fit are read and decoded.
    pub fn check(self: &Arc<Self>, user: &str) -> Result<Option<Hold>, Throttled> {
        let rate = self.allowance(user);
        if rate.unlimited() {
            return Ok(None);
        }
        let now = Instant::now();
        let mut buckets = self.lock();
        let bucket = bucket(&mut buckets.by_user, user, rate, now);
        let held = bucket.last_wanted;
        need(user, bucket, rate, held)?;
        bucket.tokens -= held;
        Ok(Some(Hold {
            limits: self.clone(),
            user: user.to_owned(),
            records: held,
        }))
    }

    /// Gives back `records` to `user`'s bucket.
    fn release(&self, user: &str, records: f64) {
        let rate = self.allowance(user);
        if let Some(bucket) = self.lock().by_user.get_mut(user) {
            bucket.tokens = (bucket.tokens + records).min(rate.capacity);
        }
    }

    /// Takes `records` (per user) from the users' buckets, all or nothing, in place of what
    /// `hold` held for them.
    pub fn take(
        &self,
        records: &HashMap<String, u64>,
        hold: Option<Hold>,
    ) -> Result<(), Throttled> {
        drop(hold);
        let now = Instant::now();
        let mut guard = self.lock();
        if guard.by_user.len() >= guard.prune_at {
            self.prune(&mut guard, now);
        }
        let buckets = &mut guard.by_user;
        let mut refused: Option<Throttled> = None;
        for (user, &count) in records {
            let rate = self.allowance(user);
            if rate.unlimited() {
                continue;
            }
            let bucket = bucket(buckets, user, rate, now);
            // an export over the burst needs a full bucket, and leaves it in debt
            let wanted = (count as f64).min(rate.capacity);
            bucket.last_wanted = wanted;
            if let Err(throttled) = need(user, bucket, rate, wanted) {
                refused = Some(match refused {
                    Some(other) if other.retry_after >= throttled.retry_after => other,
                    _ => throttled,
                });
            }
        }
        if let Some(throttled) = refused {
            return Err(throttled);
        }
        for (user, &count) in records {
            let rate = self.allowance(user);
            if !rate.unlimited() {
                bucket(buckets, user, rate, now).tokens -= count as f64;
            }
        }
        Ok(())
    }

    /// Forgets the buckets that are full (they hold nothing a new one would not); past
    /// [`MAX_BUCKETS`], all of them.
    fn prune(&self, buckets: &mut Buckets, now: Instant) {
        buckets.by_user.retain(|user, bucket| {
            let rate = self.allowance(user);
            refill(bucket, rate, now);
            bucket.tokens < rate.capacity
        });
        if buckets.by_user.len() > MAX_BUCKETS {
            tracing::warn!(
                buckets = buckets.by_user.len(),
                "too many users with ingest limits in use; their buckets start over"
            );
            buckets.by_user.clear();
        }
        buckets.prune_at = (2 * buckets.by_user.len()).max(PRUNE_AT);
    }

    /// Gives back what [`UserLimits::take`] took for records that were not stored after all.
    pub fn give_back(&self, records: &HashMap<String, u64>) {
        for (user, &count) in records {
            self.release(user, count as f64);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buckets> {
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn bucket<'a>(
    buckets: &'a mut HashMap<String, Bucket>,
    user: &str,
    rate: Allowance,
    now: Instant,
) -> &'a mut Bucket {
    let bucket = buckets.entry(user.to_owned()).or_insert(Bucket {
        tokens: rate.capacity,
        at: now,
        last_wanted: 1.0,
    });
    refill(bucket, rate, now);
    bucket
}

fn refill(bucket: &mut Bucket, rate: Allowance, now: Instant) {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.capacity);
    bucket.at = now;
}

/// Whether the bucket holds `wanted` records; else when it will.
fn need(user: &str, bucket: &Bucket, rate: Allowance, wanted: f64) -> Result<(), Throttled> {
    if bucket.tokens >= wanted {
        return Ok(());
    }
    let missing = wanted - bucket.tokens;
    Err(Throttled {
        user: user.to_owned(),
        records_per_second: rate.records_per_second,
        retry_after: Duration::from_secs_f64(missing / rate.per_second),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Arc<UserLimits> {
        shared_limits(LimitShare::default())
    }

    fn shared_limits(share: LimitShare) -> Arc<UserLimits> {
        Arc::new(UserLimits::new(
            LimitsConfig {
                default: Rate {
                    records_per_second: 10,
                    burst: 20,
                },
                users: BTreeMap::from([(
                    "free".to_owned(),
                    Rate {
                        records_per_second: 0,
                        burst: 0,
                    },
                )]),
            },
            share,
        ))
    }

    fn records(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|&(u, n)| (u.to_owned(), n)).collect()
    }

    #[test]
    fn exports_are_taken_whole_or_not_at_all() {
        let limits = limits();
        assert_eq!(limits.take(&records(&[("a", 15)]), None), Ok(()));
        // five left: ten more for a are refused, and b's records with them
        let err = limits
            .take(&records(&[("a", 10), ("b", 1)]), None)
            .unwrap_err();
        assert_eq!(err.user, "a");
        assert!(
            (0.45..=0.5).contains(&err.retry_after.as_secs_f64()),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "user \"a\" is over its ingest limit of 10 records per second; retry in 0.5 s"
        );
        // until then, a's exports are refused before their body is read
        let err = limits.check("a").unwrap_err();
        assert!(
            (0.45..=0.5).contains(&err.retry_after.as_secs_f64()),
            "{err:?}"
        );
        // b was not charged for the refused export
        assert_eq!(limits.take(&records(&[("b", 20)]), None), Ok(()));
        assert!(limits.check("b").is_err());
        // unlimited users pass whatever the others do
        assert_eq!(limits.take(&records(&[("free", 1_000_000)]), None), Ok(()));
        assert!(limits.check("free").is_ok());
    }

    #[test]
    fn the_check_before_the_body_holds_room_until_the_export_is_charged() {
        let limits = limits();
        limits.take(&records(&[("a", 10)]), None).unwrap();
        // ten left, the last export was ten: one export may be read, the next waits for it
        let hold = limits.check("a").unwrap().expect("a hold");
        assert!(limits.check("a").is_err());
        // charged for what it held: 10 in place of the hold's 10
        limits.take(&records(&[("a", 10)]), Some(hold)).unwrap();
        assert!(limits.check("a").is_err());
        // a hold dropped without a charge (the export failed to decode) gives its room back
        limits.give_back(&records(&[("a", 10)]));
        let hold = limits.check("a").unwrap();
        drop(hold);
        assert!(limits.check("a").unwrap().is_some());
        assert!(limits.check("free").unwrap().is_none());
    }

    #[test]
    fn full_buckets_are_forgotten_and_debts_kept() {
        let limits = limits();
        limits.take(&records(&[("in debt", 30)]), None).unwrap();
        for i in 1..PRUNE_AT {
            limits
                .take(&records(&[(&format!("u{i}"), 0)]), None)
                .unwrap();
        }
        assert_eq!(limits.lock().by_user.len(), PRUNE_AT);
        // the next export prunes: what is full holds nothing worth keeping
        limits.take(&records(&[("b", 1)]), None).unwrap();
        assert_eq!(limits.lock().by_user.len(), 2);
        assert!(limits.check("in debt").is_err());
    }

    #[test]
    fn an_export_over_the_burst_takes_a_full_bucket_into_debt() {
        let limits = limits();
        assert_eq!(limits.take(&records(&[("a", 50)]), None), Ok(()));
        // 30 records of debt: five seconds before an export as large as the burst fits again
        let err = limits.check("a").unwrap_err();
        assert!(
            (4.9..=5.0).contains(&err.retry_after.as_secs_f64()),
            "{err:?}"
        );
        limits.give_back(&records(&[("a", 50)]));
        assert!(limits.check("a").is_ok());
    }

    #[test]
    fn each_node_enforces_its_share_of_the_rate_and_the_burst() {
        let share = LimitShare::default();
        share.set(2);
        let limits = shared_limits(share.clone());
        // half the burst of 20
        assert_eq!(limits.take(&records(&[("a", 10)]), None), Ok(()));
        let err = limits.take(&records(&[("a", 5)]), None).unwrap_err();
        // at half the rate of 10 a second: five records come back in a second
        assert!(
            (0.95..=1.0).contains(&err.retry_after.as_secs_f64()),
            "{err:?}"
        );
        // the refusal names the user's whole limit
        assert_eq!(err.records_per_second, 10);
        // unlimited users stay unlimited whatever the share
        assert_eq!(limits.take(&records(&[("free", 1_000_000)]), None), Ok(()));
        // a node left alone enforces the whole limit: a new user's bucket holds the whole burst
        share.set(0);
        assert_eq!(limits.take(&records(&[("b", 20)]), None), Ok(()));
        assert!(limits.take(&records(&[("b", 1)]), None).is_err());
    }
}
