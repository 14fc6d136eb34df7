//! The busiest assistants of a query's matches, in memory bounded whatever their number.
//!
//! A mergeable Misra–Gries summary of [`CAPACITY`] counters finds the candidates: of `N` matches,
//! every assistant with more than `N / (CAPACITY + 1)` is among them, and no count is more than
//! that below its true value. While no counter was ever dropped the summary's counts are exact;
//! otherwise the candidates are counted again, exactly, over the same matches, which the first
//! pass recorded as one bit per document of each segment it visited.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use tantivy::DocId;
use tantivy::columnar::StrColumn;

/// Counters a summary keeps through a reduction; between reductions it holds up to twice as many.
/// Unit tests keep few, so that a small index has more assistants than that.
pub const CAPACITY: usize = if cfg!(test) { 16 } else { 4096 };

/// Largest dictionary a segment counts exactly, with a tally per term (16 bytes each).
pub const DENSE_TERMS: usize = 1 << 16;

/// Words of recorded matches (64 documents each) between two checks for cancellation.
const WORDS_PER_CHECK: usize = 32;

/// Ids looked up in a segment's dictionary between two checks for cancellation.
const IDS_PER_CHECK: usize = 256;

/// One assistant's matches.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AssistantCount {
    pub assistant_id: String,
    pub count: u64,
    pub errors: u64,
}

impl AssistantCount {
    /// The order of the busiest: most matches first, then by id.
    pub fn busiest_first(a: &Self, b: &Self) -> std::cmp::Ordering {
        (b.count, &a.assistant_id).cmp(&(a.count, &b.assistant_id))
    }

    /// The count of `assistant_id`.
    pub fn of((assistant_id, tally): (String, Tally)) -> Self {
        Self {
            assistant_id,
            count: tally.count,
            errors: tally.errors,
        }
    }
}

/// Matches and failed matches, of one assistant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub errors: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.count += other.count;
        self.errors += other.errors;
    }
}

/// A Misra–Gries summary: counts by key in at most `2 * capacity` counters. Past that, every
/// counter drops by the `capacity + 1`-th largest count and those left at zero go, which takes
/// at least `capacity + 1` times that cut from the total; so the cuts add up to at most
/// `N / (capacity + 1)` over `N` counted (merged summaries included), and no count is lower
/// than its true value by more than their sum, the [`Summary::undercount`].
#[derive(Debug)]
pub struct Summary<K> {
    counters: HashMap<K, Tally>,
    capacity: usize,
    undercount: u64,
    /// The counts, for finding the cut without allocating at each reduction.
    scratch: Vec<u64>,
}

impl<K: Hash + Eq> Summary<K> {
    /// An empty summary that keeps `capacity` counters (at least one) through reductions.
    pub fn new(capacity: usize) -> Self {
        Self {
            counters: HashMap::new(),
            capacity: capacity.max(1),
            undercount: 0,
            scratch: Vec::new(),
        }
    }

    /// Counts `tally` for `key`.
    pub fn add(&mut self, key: K, tally: Tally) {
        self.counters.entry(key).or_default().add(tally);
        if self.counters.len() > 2 * self.capacity {
            self.reduce();
        }
    }

    /// Takes on what another summary may have missed, once its counters are added: merged,
    /// the two keep the guarantee over all they counted.
    pub fn add_undercount(&mut self, undercount: u64) {
        self.undercount += undercount;
    }

    /// Most any count may be below its true value: 0 while every count is exact.
    pub fn undercount(&self) -> u64 {
        self.undercount
    }

    /// The counters and the undercount.
    pub fn into_parts(self) -> (HashMap<K, Tally>, u64) {
        (self.counters, self.undercount)
    }

    fn reduce(&mut self) {
        self.scratch.clear();
        self.scratch.extend(self.counters.values().map(|t| t.count));
        if self.scratch.len() <= self.capacity {
            return;
        }
        let (_, &mut cut, _) = self
            .scratch
            .select_nth_unstable_by(self.capacity, |a, b| b.cmp(a));
        self.counters.retain(|_, tally| {
            tally.count = tally.count.saturating_sub(cut);
            // what is left of the errors is no longer exact either; only bounded
            tally.errors = tally.errors.min(tally.count);
            tally.count > 0
        });
        self.undercount += cut;
    }
}

/// Documents of a segment, one bit each.
struct DocBits(Vec<u64>);

impl DocBits {
    fn new(max_doc: DocId) -> Self {
        Self(vec![0; (max_doc as usize).div_ceil(64)])
    }

    fn insert(&mut self, doc: DocId) {
        if let Some(word) = self.0.get_mut(doc as usize / 64) {
            *word |= 1 << (doc % 64);
        }
    }
}

/// Per-segment tallies by term ordinal: exact while the dictionary is small, a summary past it.
enum OrdTallies {
    Dense(Vec<Tally>),
    Summary(Summary<u64>),
}

/// Whether a match of a segment failed.
pub type Failed = Box<dyn Fn(DocId) -> bool>;

/// A segment's matches with an assistant, kept for a second, exact count.
struct Visited {
    column: StrColumn,
    matches: DocBits,
    failed: Failed,
}

struct Current {
    visited: Visited,
    tallies: OrdTallies,
    /// Assistants with a dense tally above zero.
    distinct: usize,
}

/// Why the busiest assistants were not found.
#[derive(Debug)]
pub enum Unfinished {
    Cancelled,
    /// An assistant's id could not be read from a segment's dictionary.
    Read(io::Error),
}

/// Counts the matches of each assistant, segment by segment, for [`Assistants::list`].
pub struct Assistants {
    summary: Summary<String>,
    dense_terms: usize,
    current: Option<Current>,
    visited: Vec<Visited>,
    read_error: Option<io::Error>,
}

impl Assistants {
    /// A count with summaries of `capacity` counters that counts segments of up to
    /// `dense_terms` assistants exactly.
    pub fn new(capacity: usize, dense_terms: usize) -> Self {
        Self {
            summary: Summary::new(capacity),
            dense_terms,
            current: None,
            visited: Vec::new(),
            read_error: None,
        }
    }

    /// A segment of `max_doc` documents begins; `column` holds its assistants (none when no
    /// document has one), `failed` tells its failed matches.
    pub fn enter(&mut self, column: Option<StrColumn>, max_doc: DocId, failed: Failed) {
        self.leave();
        let Some(column) = column else {
            return;
        };
        let terms = column.num_terms();
        let tallies = if terms <= self.dense_terms {
            OrdTallies::Dense(vec![Tally::default(); terms])
        } else {
            OrdTallies::Summary(Summary::new(self.summary.capacity))
        };
        self.current = Some(Current {
            visited: Visited {
                column,
                matches: DocBits::new(max_doc),
                failed,
            },
            tallies,
            distinct: 0,
        });
    }

    /// Counts a match of the current segment.
    pub fn count(&mut self, doc: DocId, failed: bool) {
        let Some(current) = &mut self.current else {
            return;
        };
        let Some(ord) = current.visited.column.term_ords(doc).next() else {
            return;
        };
        current.visited.matches.insert(doc);
        let tally = Tally {
            count: 1,
            errors: u64::from(failed),
        };
        match &mut current.tallies {
            // an ordinal read from the column is below its number of terms
            OrdTallies::Dense(tallies) => {
                let counted = &mut tallies[ord as usize];
                current.distinct += usize::from(counted.count == 0);
                counted.add(tally);
            }
            OrdTallies::Summary(summary) => summary.add(ord, tally),
        }
    }

    /// Whether some count is no longer exact, or will not be once the current segment's
    /// tallies go into the summary: more distinct assistants than it counts exactly.
    pub fn inexact(&self) -> bool {
        let current = self
            .current
            .as_ref()
            .is_some_and(|current| match &current.tallies {
                OrdTallies::Dense(_) => current.distinct > 2 * self.summary.capacity,
                OrdTallies::Summary(summary) => summary.undercount() > 0,
            });
        current || self.summary.undercount() > 0
    }

    /// The current segment is done: its tallies go into the summary under their ids.
    pub fn leave(&mut self) {
        let Some(Current {
            visited, tallies, ..
        }) = self.current.take()
        else {
            return;
        };
        let (mut by_ord, undercount): (Vec<(u64, Tally)>, u64) = match tallies {
            OrdTallies::Dense(tallies) => (
                (0u64..)
                    .zip(tallies)
                    .filter(|(_, tally)| tally.count > 0)
                    .collect(),
                0,
            ),
            OrdTallies::Summary(summary) => {
                let (counters, undercount) = summary.into_parts();
                (counters.into_iter().collect(), undercount)
            }
        };
        by_ord.sort_unstable_by_key(|&(ord, _)| ord);
        let ords: Vec<u64> = by_ord.iter().map(|&(ord, _)| ord).collect();
        let mut tallies = by_ord.into_iter().map(|(_, tally)| tally);
        let summary = &mut self.summary;
        let named = visited
            .column
            .dictionary()
            .sorted_ords_to_term_cb(&ords, |id| {
                if let (Some(tally), Ok(id)) = (tallies.next(), std::str::from_utf8(id)) {
                    summary.add(id.to_owned(), tally);
                }
            });
        summary.add_undercount(undercount);
        match named {
            Ok(true) => {}
            Ok(false) => self.read_error_once(io::Error::other("an ordinal not in the dictionary")),
            Err(e) => self.read_error_once(e),
        }
        self.visited.push(visited);
    }

    fn read_error_once(&mut self, error: io::Error) {
        self.read_error.get_or_insert(error);
    }

    /// Every assistant with matches and its exact counts, in no order; `None` when there were
    /// too many to count each exactly.
    pub fn exact(mut self) -> Result<Option<Vec<AssistantCount>>, Unfinished> {
        self.leave();
        if let Some(error) = self.read_error {
            return Err(Unfinished::Read(error));
        }
        if self.summary.undercount() > 0 {
            return Ok(None);
        }
        let (counters, _) = self.summary.into_parts();
        Ok(Some(counters.into_iter().map(AssistantCount::of).collect()))
    }

    /// The assistants `listed` asks for, with their exact counts, and the most matches any
    /// other may have (see [`Listed::keep`]).
    pub fn list(
        mut self,
        listed: &Listed,
        cancelled: &AtomicBool,
    ) -> Result<(Vec<AssistantCount>, u64), Unfinished> {
        self.leave();
        if let Some(error) = self.read_error {
            return Err(Unfinished::Read(error));
        }
        let (counters, undercount) = self.summary.into_parts();
        if undercount == 0 {
            // every count is exact
            return Ok(listed.keep(counters.into_iter().map(AssistantCount::of).collect()));
        }
        let (mut ids, top, others_at_most) = match listed {
            Listed::Busiest { top, at_least } => {
                let (ids, others_at_most) = candidates(counters, undercount, *top, *at_least);
                (ids, *top, others_at_most)
            }
            Listed::Only(ids) => (ids.clone(), 0, 0),
        };
        let tallies = recount(&self.visited, &mut ids, top, cancelled)?;
        let counted = ids
            .into_iter()
            .zip(tallies)
            .map(AssistantCount::of)
            .collect();
        let (kept, left_out) = listed.keep(counted);
        Ok(match listed {
            // one the summary dropped has at most its undercount
            Listed::Busiest { .. } => (kept, left_out.max(others_at_most).max(undercount)),
            Listed::Only(_) => (kept, left_out),
        })
    }
}

/// Which assistants a count lists, each with its exact matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// The `top` busiest, most first then by id, and after them every other with at least
    /// `at_least` matches.
    Busiest { top: usize, at_least: u64 },
    /// Those of these ids that have matches.
    Only(Vec<String>),
}

impl Listed {
    /// The `top` busiest alone.
    pub fn busiest(top: usize) -> Self {
        Listed::Busiest {
            top,
            at_least: u64::MAX,
        }
    }

    /// What is listed of `all`, which holds every assistant the list may need, counted
    /// exactly: most first then by id; and the most matches one of `all` left out has (0 when
    /// none is, and for [`Listed::Only`]).
    pub fn keep(&self, mut all: Vec<AssistantCount>) -> (Vec<AssistantCount>, u64) {
        match self {
            Listed::Busiest { top, at_least } => {
                all.sort_unstable_by(AssistantCount::busiest_first);
                let kept = (all.iter().enumerate())
                    .take_while(|(i, a)| i < top || a.count >= *at_least)
                    .count();
                let left_out = all.get(kept).map_or(0, |a| a.count);
                all.truncate(kept);
                (all, left_out)
            }
            Listed::Only(ids) => {
                let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
                all.retain(|a| a.count > 0 && ids.contains(a.assistant_id.as_str()));
                all.sort_unstable_by(|a, b| a.assistant_id.cmp(&b.assistant_id));
                (all, 0)
            }
        }
    }
}

/// The ids that may be among the `n` busiest or have at least `at_least` matches, given counts
/// at most `undercount` below the truth: the `n` highest counts are at least the `n`-th highest,
/// which no other id with a count more than `undercount` below it can reach. And the most
/// matches one of the others may have.
fn candidates(
    counters: HashMap<String, Tally>,
    undercount: u64,
    n: usize,
    at_least: u64,
) -> (Vec<String>, u64) {
    let mut estimates: Vec<(String, u64)> = counters
        .into_iter()
        .map(|(id, tally)| (id, tally.count))
        .collect();
    let nth = match n {
        0 => u64::MAX,
        n if estimates.len() >= n => {
            let (_, nth, _) = estimates.select_nth_unstable_by(n - 1, |a, b| b.1.cmp(&a.1));
            nth.1
        }
        _ => 0,
    };
    let floor = nth.min(at_least);
    let mut others_at_most = 0;
    let ids = estimates
        .into_iter()
        .filter_map(|(id, estimate)| {
            let most = estimate.saturating_add(undercount);
            if most >= floor {
                return Some(id);
            }
            others_at_most = others_at_most.max(most);
            None
        })
        .collect();
    (ids, others_at_most)
}

/// The exact tallies of `ids` over the matches of `visited`. While there are fewer than `n` ids,
/// the first others met join them: met for the first time, they are counted exactly too.
fn recount(
    visited: &[Visited],
    ids: &mut Vec<String>,
    n: usize,
    cancelled: &AtomicBool,
) -> Result<Vec<Tally>, Unfinished> {
    let mut tallies = vec![Tally::default(); ids.len()];
    for segment in visited {
        let column = &segment.column;
        let mut by_ord: HashMap<u64, usize> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            if i % IDS_PER_CHECK == 0 && cancelled.load(Ordering::Relaxed) {
                return Err(Unfinished::Cancelled);
            }
            if let Some(ord) = column.dictionary().term_ord(id).map_err(Unfinished::Read)? {
                by_ord.insert(ord, i);
            }
        }
        if by_ord.is_empty() && ids.len() >= n {
            continue;
        }
        for (w, &word) in segment.matches.0.iter().enumerate() {
            if w % WORDS_PER_CHECK == 0 && cancelled.load(Ordering::Relaxed) {
                return Err(Unfinished::Cancelled);
            }
            let mut bits = word;
            while bits != 0 {
                let doc = (w * 64) as DocId + bits.trailing_zeros();
                bits &= bits - 1;
                let Some(ord) = column.term_ords(doc).next() else {
                    continue;
                };
                let i = match by_ord.get(&ord) {
                    Some(&i) => i,
                    None if ids.len() < n => {
                        let mut id = String::new();
                        if !column.ord_to_str(ord, &mut id).map_err(Unfinished::Read)? {
                            continue;
                        }
                        ids.push(id);
                        tallies.push(Tally::default());
                        by_ord.insert(ord, ids.len() - 1);
                        ids.len() - 1
                    }
                    None => continue,
                };
                tallies[i].add(Tally {
                    count: 1,
                    errors: u64::from((segment.failed)(doc)),
                });
            }
        }
    }
    Ok(tallies)
}

#[cfg(test)]
mod tests;
