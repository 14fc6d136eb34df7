//! Retention: how long each user's logs are kept, as the writer's sweeps and the receivers'
//! admission check read it.

use std::collections::BTreeMap;

use crate::store::{Expiry, ExpiryUsers};

const NANOS_PER_DAY: u64 = 24 * 60 * 60 * 1_000_000_000;

/// Longest retention that can be set: a hundred years.
pub const MAX_DAYS: u32 = 36_500;

/// Days of logs kept, by user; 0 keeps them forever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Everyone without an override.
    pub days: u32,
    /// Per-user overrides.
    pub users: BTreeMap<String, u32>,
}

impl Retention {
    /// The days `user`'s logs are kept; 0 is forever.
    pub fn days_for(&self, user: &str) -> u32 {
        self.users.get(user).copied().unwrap_or(self.days)
    }

    /// Whether no log ever expires.
    pub fn keeps_everything(&self) -> bool {
        self.days == 0 && self.users.values().all(|&days| days == 0)
    }

    /// The oldest timestamp of `user` still kept at `now` (nanoseconds since the epoch), if any
    /// is dropped at all.
    pub fn cutoff(&self, user: &str, now: u64) -> Option<u64> {
        cutoff(self.days_for(user), now)
    }

    /// Whether a log of `user` with `timestamp` is within the user's retention at `now`.
    pub fn keeps(&self, user: &str, timestamp: u64, now: u64) -> bool {
        self.cutoff(user, now)
            .is_none_or(|cutoff| timestamp >= cutoff)
    }

    /// What a sweep at `now` deletes: one expiry for everyone without an override, one per user
    /// with a retention of their own.
    pub fn expiries(&self, now: u64) -> Vec<Expiry> {
        let mut expiries = Vec::new();
        if let Some(before) = cutoff(self.days, now) {
            expiries.push(Expiry {
                users: ExpiryUsers::AllBut(self.users.keys().cloned().collect()),
                before,
            });
        }
        for (user, &days) in &self.users {
            if let Some(before) = cutoff(days, now) {
                expiries.push(Expiry {
                    users: ExpiryUsers::One(user.clone()),
                    before,
                });
            }
        }
        expiries
    }
}

fn cutoff(days: u32, now: u64) -> Option<u64> {
    (days > 0).then(|| now.saturating_sub(u64::from(days) * NANOS_PER_DAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_and_zero_keeps_forever() {
        let retention = Retention {
            days: 7,
            users: BTreeMap::from([("acme".to_owned(), 90), ("keep".to_owned(), 0)]),
        };
        let now = 100 * NANOS_PER_DAY;
        assert_eq!(retention.cutoff("other", now), Some(93 * NANOS_PER_DAY));
        assert_eq!(retention.cutoff("acme", now), Some(10 * NANOS_PER_DAY));
        assert_eq!(retention.cutoff("keep", now), None);
        assert!(retention.keeps("acme", 10 * NANOS_PER_DAY, now));
        assert!(!retention.keeps("acme", 10 * NANOS_PER_DAY - 1, now));
        assert!(retention.keeps("keep", 0, now));
        assert!(!retention.keeps_everything());
        assert_eq!(
            retention.expiries(now),
            vec![
                Expiry {
                    users: ExpiryUsers::AllBut(vec!["acme".to_owned(), "keep".to_owned()]),
                    before: 93 * NANOS_PER_DAY,
                },
                Expiry {
                    users: ExpiryUsers::One("acme".to_owned()),
                    before: 10 * NANOS_PER_DAY,
                },
            ]
        );
        let forever = Retention {
            days: 0,
            users: BTreeMap::from([("keep".to_owned(), 0)]),
        };
        assert!(forever.keeps_everything());
        assert_eq!(forever.expiries(now), vec![]);
        // a retention longer than the clock has run drops nothing it could not hold
        assert_eq!(cutoff(MAX_DAYS, 5), Some(0));
    }
}
