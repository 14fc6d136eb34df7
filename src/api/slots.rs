//! Places for one kind of work (tail streams, exports, searches): a bound on all of them and a
//! share of it per user, so that no single user (or key) can take every place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::error::ApiError;

/// The places of one kind of work, and what a refusal says.
#[derive(Clone)]
pub struct Slots {
    max: usize,
    per_user: usize,
    /// Said when every place is taken.
    full: &'static str,
    /// Said when the user's share is taken.
    user_full: &'static str,
    taken: Arc<Taken>,
}

/// The places taken, and who waits for one.
#[derive(Default)]
struct Taken {
    counts: Mutex<Counts>,
    /// Woken whenever a place is freed.
    freed: Notify,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Per user with at least one place.
    by_user: HashMap<String, usize>,
}

/// A place taken: freed when dropped.
pub struct Slot {
    taken: Arc<Taken>,
    user: String,
}

impl Slots {
    /// At most `max` places, `per_user` of one user's: never all of them while there are two
    /// or more (a larger share is cut to one less than `max`). A refusal says `full`, or
    /// `user_full` for the user's share.
    pub fn new(max: usize, per_user: usize, full: &'static str, user_full: &'static str) -> Self {
        Self {
            max,
            per_user: per_user.min(max.saturating_sub(1)).max(1),
            full,
            user_full,
            taken: Arc::default(),
        }
    }

    /// The places of `GET /logs/tail` streams.
    pub fn tails(max: usize, per_user: usize) -> Self {
        Self::new(
            max,
            per_user,
            "too many tail subscribers, retry later",
            "too many tail streams for this user, close one first",
        )
    }

    /// The places of `GET /logs/export` walks.
    pub fn exports(max: usize, per_user: usize) -> Self {
        Self::new(
            max,
            per_user,
            "too many exports in progress, retry later",
            "too many exports in progress for this user, retry later",
        )
    }

    /// The places of searches: `GET /logs`, `/logs/stats` and each read of a tail.
    pub fn searches(max: usize, per_user: usize) -> Self {
        Self::new(
            max,
            per_user,
            "too many searches in progress, retry later",
            "too many searches in progress for this user, retry later",
        )
    }

    /// A place for `user` now, or a 503 saying which bound is reached.
    pub fn take(&self, user: &str) -> Result<Slot, ApiError> {
        let mut counts = self.taken.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max {
            return Err(ApiError::Unavailable(self.full));
        }
        let mine = counts.by_user.entry(user.to_owned()).or_default();
        if *mine >= self.per_user {
            return Err(ApiError::Unavailable(self.user_full));
        }
        *mine += 1;
        counts.total += 1;
        Ok(Slot {
            taken: self.taken.clone(),
            user: user.to_owned(),
        })
    }

    /// A place for `user`, waiting for one when the bound or the user's share is reached.
    pub async fn wait(&self, user: &str) -> Slot {
        loop {
            // registered before trying, so that a place freed in between wakes this wait
            let freed = self.taken.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Ok(slot) = self.take(user) {
                return slot;
            }
            freed.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.taken.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(mine) = counts.by_user.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                counts.by_user.remove(&self.user);
            }
        }
        drop(counts);
        self.taken.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn refusal(taken: Result<Slot, ApiError>) -> String {
        match taken {
            Err(ApiError::Unavailable(message)) => message.to_owned(),
            Err(other) => panic!("unexpected refusal {other:?}"),
            Ok(_) => panic!("a place was given"),
        }
    }

    #[test]
    fn one_user_takes_its_share_and_no_more_while_others_get_the_rest() {
        let slots = Slots::searches(3, 2);
        let a = [slots.take("a").unwrap(), slots.take("a").unwrap()];
        assert_eq!(
            refusal(slots.take("a")),
            "too many searches in progress for this user, retry later"
        );
        let b = slots.take("b").unwrap();
        // the bound on all is checked first
        assert_eq!(
            refusal(slots.take("c")),
            "too many searches in progress, retry later"
        );
        drop(b);
        let _c = slots.take("c").unwrap();
        drop(a);
        let _a = [slots.take("a").unwrap(), slots.take("a").unwrap()];
        assert_eq!(slots.taken.counts.lock().unwrap().total, 3);
    }

    #[test]
    fn a_share_as_large_as_the_bound_still_leaves_a_place_to_others() {
        let slots = Slots::exports(3, 8);
        let _a = [slots.take("a").unwrap(), slots.take("a").unwrap()];
        assert_eq!(
            refusal(slots.take("a")),
            "too many exports in progress for this user, retry later"
        );
        let _b = slots.take("b").unwrap();
        // a single place is one user's at a time
        let slots = Slots::exports(1, 4);
        let _a = slots.take("a").unwrap();
        assert_eq!(
            refusal(slots.take("a")),
            "too many exports in progress, retry later"
        );
    }

    #[test]
    fn freed_places_forget_their_user() {
        let slots = Slots::tails(2, 1);
        drop(slots.take("a").unwrap());
        let counts = slots.taken.counts.lock().unwrap();
        assert_eq!((counts.total, counts.by_user.len()), (0, 0));
    }

    #[tokio::test]
    async fn a_wait_ends_when_a_place_of_its_user_is_freed() {
        let slots = Slots::searches(4, 1);
        let held = slots.take("a").unwrap();
        let _other = slots.take("b").unwrap();
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.wait("a").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the user's share is taken");
        drop(held);
        let slot = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the wait ends once the place is freed")
            .unwrap();
        assert_eq!(slot.user, "a");
    }
}
