//! Deleting logs: erasure by filters and expiry by age. Deletes are marks that the next commit
//! makes durable and visible; merges then rewrite segments without the deleted logs.

use std::future::Future as _;
use std::ops::Bound;
use std::task::{Context, Waker};

use tantivy::Term;
use tantivy::collector::Count;
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery};

use super::schema::Fields;
use super::{LogQuery, LogWriter, StoreError, explain, filter_query, term_query};

/// Logs past a retention: those of `users` older than `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub users: ExpiryUsers,
    /// Nanoseconds since the epoch: logs with an older timestamp expire.
    pub before: u64,
}

/// Whose logs an [`Expiry`] covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpiryUsers {
    /// One user's.
    One(String),
    /// Everyone's but these users'.
    AllBut(Vec<String>),
}

impl LogWriter {
    /// Marks the logs `query` selects (its filters and time window; paging aside) deleted and
    /// returns how many there were. Only committed logs are counted, so commit first; the
    /// deletes take effect with the next commit.
    pub fn delete(&mut self, query: &LogQuery) -> Result<u64, StoreError> {
        // refused by the API, but an erasure of a cluster's stream could name such a path
        if let Some(Err(refused)) = query.text.as_ref().map(|e| self.fields.answerable(e)) {
            tracing::warn!(user = %query.user_id, %refused, "an erasure names a payload path this index leaves out: nothing erased");
            return Ok(0);
        }
        let selection = selection_query(&self.fields, query);
        self.delete_selected(selection)
    }

    /// Marks the logs past `expiry` deleted and returns how many; as [`LogWriter::delete`].
    pub fn expire(&mut self, expiry: &Expiry) -> Result<u64, StoreError> {
        let term = |user: &str| term_query(self.fields.user, user);
        let mut clauses = vec![(
            Occur::Must,
            time_range(&self.fields, None, Some(expiry.before)),
        )];
        match &expiry.users {
            ExpiryUsers::One(user) => clauses.push((Occur::Must, term(user))),
            ExpiryUsers::AllBut(users) => {
                clauses.extend(users.iter().map(|user| (Occur::MustNot, term(user))));
            }
        }
        self.delete_selected(Box::new(BooleanQuery::new(clauses)))
    }

    /// Asks for every segment that holds deleted logs to be rewritten without them, in the
    /// background: what erasure removed then leaves the disk too. One such merge runs at a time;
    /// asked again meanwhile, the next starts at a commit after it ends.
    pub fn purge_deleted(&mut self) {
        self.purge_wanted = true;
        self.start_purge();
    }

    /// Starts the purge asked for, unless one is running.
    pub(super) fn start_purge(&mut self) {
        if let Some(running) = &mut self.purging {
            let mut context = Context::from_waker(Waker::noop());
            if running.as_mut().poll(&mut context).is_pending() {
                return;
            }
            self.purging = None;
        }
        if !self.purge_wanted {
            return;
        }
        self.purge_wanted = false;
        let segments: Vec<_> = self
            .reader
            .searcher()
            .segment_readers()
            .iter()
            .filter(|segment| segment.has_deletes())
            .map(|segment| segment.segment_id())
            .collect();
        if !segments.is_empty() {
            // on the writer's merge thread; a segment that another merge takes meanwhile is
            // rewritten by that merge, so a refusal is harmless
            self.purging = Some(Box::pin(self.writer.merge(&segments)));
        }
    }

    fn delete_selected(&mut self, selection: Box<dyn Query>) -> Result<u64, StoreError> {
        let matching = self.reader.searcher().search(selection.as_ref(), &Count)?;
        if matching > 0 {
            self.writer
                .delete_query(selection)
                .map_err(|e| explain(&self.write_errors, e))?;
        }
        Ok(matching as u64)
    }
}

/// The logs a query selects: its filters and its time window.
fn selection_query(fields: &Fields, query: &LogQuery) -> Box<dyn Query> {
    // deletes apply to segments to come too: prefixes stay ranges of the term dictionary
    let filters = filter_query(fields, query, None);
    if query.start.is_none() && query.end.is_none() {
        return filters;
    }
    Box::new(BooleanQuery::new(vec![
        (Occur::Must, filters),
        (Occur::Must, time_range(fields, query.start, query.end)),
    ]))
}

/// Timestamps in `[start, end)`.
fn time_range(fields: &Fields, start: Option<u64>, end: Option<u64>) -> Box<dyn Query> {
    let bound = |value: Option<u64>, make: fn(Term) -> Bound<Term>| {
        value.map_or(Bound::Unbounded, |v| {
            make(Term::from_field_u64(fields.timestamp, v))
        })
    };
    Box::new(RangeQuery::new(
        bound(start, Bound::Included),
        bound(end, Bound::Excluded),
    ))
}
