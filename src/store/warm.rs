//! Warming: the block statistics ([`super::blocks`]) of each large user's unfiltered query,
//! computed on a thread of their own as soon as a segment is searched (after a commit, a merge
//! or deletes, and when the index opens) rather than by the first page that needs them. A merged
//! segment holds millions of a large user's logs, and computing its statistics visits every one:
//! tens of milliseconds that the user's first page after a merge or a restart would wait for.
//!
//! Until a warm-up ends, a query that finds statistics missing computes them itself, as before.

use std::collections::{BTreeSet, HashSet};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use tantivy::schema::Field;
use tantivy::{Searcher, SegmentReader};
#[cfg(test)]
use tokio::sync::watch;

use super::cache::{SegmentVersion, version};
use super::{LogQuery, Store, StoreError};

/// Logs a user must have in one segment for its statistics there to be computed ahead: below,
/// a first page visits them in about a millisecond. Unit tests warm small users too.
const WARM_MIN_LOGS: u32 = if cfg!(test) { 100 } else { 1 << 16 };

/// Wakes the warming thread; it ends when this is dropped.
pub struct Warming {
    wake: SyncSender<()>,
}

impl Warming {
    /// Asks for the segments searched now to be warmed; wakes made while a warm-up runs are
    /// taken as one, after it.
    pub fn wake(&self) {
        // full: a warm-up is asked for already, and it will search what this one would
        let _ = self.wake.try_send(());
    }
}

/// Starts the thread that warms `store`'s segments, once now and then on every wake; each
/// warm-up that computed statistics is timed into `seconds`.
pub(super) fn start(store: Store, seconds: Histogram) -> std::io::Result<Warming> {
    let (wake, woken) = sync_channel(1);
    std::thread::Builder::new()
        .name("logbridge-warm".into())
        .spawn(move || run(&store, &seconds, &woken))?;
    let warming = Warming { wake };
    warming.wake();
    Ok(warming)
}

fn run(store: &Store, seconds: &Histogram, woken: &Receiver<()>) {
    let mut done = HashSet::new();
    while woken.recv().is_ok() {
        let started = Instant::now();
        let searcher = store.reader.searcher();
        store.columns.keep(&searcher);
        match store.warm(&searcher, &mut done) {
            Ok(0) => {}
            Ok(users) => {
                let took = started.elapsed();
                seconds.observe(took.as_secs_f64());
                tracing::debug!(users, ?took, "block statistics warmed");
            }
            // the first page of these users computes what is missing, as without warming
            Err(e) => tracing::warn!(error = %e, "warming block statistics failed"),
        }
        #[cfg(test)]
        store
            .warmed
            .send_replace(searcher.generation().generation_id());
    }
}

impl Store {
    /// Computes the block statistics of the unfiltered query of every user large in one of
    /// `searcher`'s segments not `done` yet, and then counts them all done; returns for how many
    /// users. Each segment version is looked at once: a user whose statistics are not kept
    /// (most of its logs deleted) or were evicted since is not computed again on every commit.
    fn warm(
        &self,
        searcher: &Searcher,
        done: &mut HashSet<SegmentVersion>,
    ) -> Result<usize, StoreError> {
        let segments = searcher.segment_readers();
        let new: Vec<&SegmentReader> = segments
            .iter()
            .filter(|&s| !done.contains(&version(s)))
            .collect();
        let users = large_users(&new, self.fields.user)?;
        for user_id in &users {
            let query = LogQuery {
                user_id: user_id.clone(),
                ..LogQuery::default()
            };
            // what the user's first page would do: the same statistics, kept the same way
            self.prepare(searcher, &query)?;
        }
        *done = segments.iter().map(version).collect();
        Ok(users.len())
    }

    /// The generation of the last searcher warmed ([`tantivy::Searcher::generation`]).
    #[cfg(test)]
    pub(super) fn warmed(&self) -> watch::Receiver<u64> {
        self.warmed.subscribe()
    }
}

/// The users with at least [`WARM_MIN_LOGS`] logs in one of `segments`.
fn large_users(segments: &[&SegmentReader], user: Field) -> Result<BTreeSet<String>, StoreError> {
    let mut users = BTreeSet::new();
    for segment in segments {
        if segment.max_doc() < WARM_MIN_LOGS {
            continue;
        }
        let index = segment.inverted_index(user)?;
        let mut terms = index
            .terms()
            .stream()
            .map_err(|e| StoreError::Tantivy(e.into()))?;
        while terms.advance() {
            if terms.value().doc_freq >= WARM_MIN_LOGS {
                users.insert(String::from_utf8_lossy(terms.key()).into_owned());
            }
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mapping::example_log;
    use crate::store::{LogWriter, StoreOptions, open};

    fn add(writer: &mut LogWriter, user: &str, logs: u32, seq: &mut u64) {
        for _ in 0..logs {
            *seq += 1;
            let mut log = example_log("warm");
            log.user_id = user.into();
            log.timestamp_nanos = *seq;
            writer.add(&log, *seq).unwrap();
        }
        writer.commit(*seq).unwrap();
    }

    /// Waits for the warming thread to have warmed the segments searched now, and says for each
    /// user how many of its logs each segment holding its block statistics has, fewest first.
    async fn warmed_for(store: &Store, users: &[&str]) -> Vec<Vec<u32>> {
        let searcher = store.reader.searcher();
        let generation = searcher.generation().generation_id();
        let mut warmed = store.warmed();
        tokio::time::timeout(
            Duration::from_secs(60),
            warmed.wait_for(|g| *g >= generation),
        )
        .await
        .expect("the segments are warmed within a minute")
        .expect("the warming thread runs");
        let logs_in = |segment: &SegmentReader, user: &str| {
            let term = tantivy::Term::from_field_text(store.fields.user, user);
            let index = segment.inverted_index(store.fields.user).unwrap();
            index.doc_freq(&term).unwrap()
        };
        users
            .iter()
            .map(|&user_id| {
                let query = LogQuery {
                    user_id: user_id.into(),
                    ..LogQuery::default()
                };
                let key = query.selection_key();
                let segments = searcher.segment_readers().iter();
                let cached = segments.filter(|s| store.blocks.get(s, &key).is_some());
                let mut logs: Vec<u32> = cached.map(|s| logs_in(s, user_id)).collect();
                logs.sort_unstable();
                logs
            })
            .collect()
    }

    #[tokio::test]
    async fn each_commit_warms_the_users_with_many_logs_in_a_segment_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        let mut seq = 0;
        add(&mut writer, "large", WARM_MIN_LOGS, &mut seq);
        add(&mut writer, "small", WARM_MIN_LOGS - 1, &mut seq);
        assert_eq!(
            warmed_for(&store, &["large", "small"]).await,
            [vec![100], vec![]],
            "the large user's statistics where it has logs (none are kept where it has none), \
             the small user's nowhere",
        );

        // deletes make a new version of a segment, which is warmed again
        let older = LogQuery {
            user_id: "large".into(),
            end: Some(10),
            ..LogQuery::default()
        };
        assert_eq!(writer.delete(&older).unwrap(), 9);
        add(&mut writer, "small", 1, &mut seq);
        assert_eq!(
            warmed_for(&store, &["large", "small"]).await,
            [vec![100], vec![]],
            "the segment the deletes changed is warmed again (its deleted logs still counted)",
        );
        add(&mut writer, "small", WARM_MIN_LOGS, &mut seq);
        assert_eq!(warmed_for(&store, &["small"]).await, [vec![1, 99, 100]]);

        // what a warmed query answers is what it answers unwarmed
        let page = store
            .search(&LogQuery {
                user_id: "small".into(),
                limit: 3,
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(page.total, 2 * u64::from(WARM_MIN_LOGS));
        let large = LogQuery {
            user_id: "large".into(),
            ..LogQuery::default()
        };
        assert_eq!(
            store.search(&large).unwrap().total,
            u64::from(WARM_MIN_LOGS) - 9
        );
        let newest: Vec<u64> = page.logs.iter().map(|(key, _)| key.seq).collect();
        assert_eq!(newest, [seq, seq - 1, seq - 2]);
    }
}
