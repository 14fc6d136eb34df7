//! The busiest assistants of a user spread over several shards, counted exactly in at most
//! three rounds, after the threshold algorithm of Cao and Wang ("Efficient top-K query
//! calculation in distributed networks", 2004):
//!
//! 1. Each shard lists its busiest with their exact matches, and bounds the matches of any
//!    assistant it did not list (the statistics' parts).
//! 2. Only when an assistant no shard listed could still be among the busiest: with `τ` the
//!    tenth highest of the sums listed (a lower bound of the tenth busiest's matches) and `m`
//!    shards, each shard whose bound reaches `⌈τ / m⌉` lists every assistant with at least that
//!    many. One among the busiest has at least `τ` matches, so at least `τ / m` on some shard,
//!    which lists it; one that no shard lists has fewer than `τ` in all.
//! 3. Each assistant that could reach the tenth (its sum, plus the bound of each shard that did
//!    not list it) is counted on the shards that did not list it, by id, in as few requests as
//!    headers allow.
//!
//! Every assistant left out then has fewer matches than ten counted exactly, ties included.

use std::collections::{BTreeMap, HashMap};

use crate::store::{AssistantCount, StatsParts, TOP_ASSISTANTS, Tally};

/// What the shards told of the assistants so far.
pub struct Busiest {
    shards: Vec<Shard>,
    relisted: bool,
    counted: bool,
}

/// A shard's exact counts of the assistants it listed, and the most matches any other has there.
struct Shard {
    listed: HashMap<String, Tally>,
    unlisted_at_most: u64,
}

/// What to ask the shards next, or the answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask these shards (by their place in the parts) to list every assistant with at least
    /// `at_least` matches, then give each answer to [`Busiest::relisted`].
    AtLeast { shards: Vec<usize>, at_least: u64 },
    /// Ask each of these shards for the exact matches of these assistants, then give each
    /// answer to [`Busiest::counted`].
    Count(Vec<(usize, Vec<String>)>),
    /// The busiest, most matches first then by id; `exact` unless a shard bounded the matches
    /// of those it did not list too loosely (more assistants than it counts exactly).
    Done {
        busiest: Vec<AssistantCount>,
        exact: bool,
    },
}

/// One assistant's matches over the shards, as far as they told.
#[derive(Default)]
struct Candidate {
    count: u64,
    errors: u64,
    /// The shards that did not list it while they may hold some of its matches.
    missing: Vec<usize>,
    /// Its count, plus the bound of each shard in `missing`.
    most: u64,
}

impl Busiest {
    /// What the shards' parts listed, in the order the shards were asked.
    pub fn new(parts: &[StatsParts]) -> Self {
        let shards = parts
            .iter()
            .map(|_| Shard {
                listed: HashMap::new(),
                unlisted_at_most: 0,
            })
            .collect();
        let mut busiest = Self {
            shards,
            relisted: false,
            counted: false,
        };
        for (shard, part) in parts.iter().enumerate() {
            busiest.relisted(shard, part);
        }
        busiest
    }

    fn take(&mut self, shard: usize, assistants: &[AssistantCount]) {
        let listed = &mut self.shards[shard].listed;
        for assistant in assistants {
            let tally = Tally {
                count: assistant.count,
                errors: assistant.errors,
            };
            listed.insert(assistant.assistant_id.clone(), tally);
        }
    }

    /// What a shard lists, and its bound on the others: its part, or its answer to
    /// [`Step::AtLeast`].
    pub fn relisted(&mut self, shard: usize, part: &StatsParts) {
        self.take(shard, &part.assistants);
        self.shards[shard].unlisted_at_most = part.unlisted_at_most;
    }

    /// A shard's answer to [`Step::Count`] of `asked`: those it does not list have no match.
    pub fn counted(&mut self, shard: usize, asked: &[String], part: &StatsParts) {
        let listed = &mut self.shards[shard].listed;
        for id in asked {
            listed.entry(id.clone()).or_default();
        }
        self.take(shard, &part.assistants);
    }

    /// What to ask next, or the busiest.
    pub fn next(&mut self) -> Step {
        let shards = &self.shards;
        let candidates = candidates(shards);
        let tenth = tenth_highest(candidates.values().map(|c| c.count));
        let unlisted = (shards.iter())
            .map(|s| s.unlisted_at_most)
            .fold(0, u64::saturating_add);
        // one no shard listed could reach the tenth
        let unlisted_may_reach = unlisted > 0 && unlisted >= tenth;
        if unlisted_may_reach && !self.relisted {
            self.relisted = true;
            let at_least = tenth.div_ceil(shards.len() as u64).max(1);
            let shards = (0..shards.len())
                .filter(|&n| shards[n].unlisted_at_most >= at_least)
                .collect();
            return Step::AtLeast { shards, at_least };
        }
        if !self.counted {
            self.counted = true;
            let mut by_shard: BTreeMap<usize, Vec<String>> = BTreeMap::new();
            for (id, candidate) in &candidates {
                if candidate.most >= tenth {
                    for &shard in &candidate.missing {
                        by_shard.entry(shard).or_default().push((*id).to_owned());
                    }
                }
            }
            if !by_shard.is_empty() {
                return Step::Count(by_shard.into_iter().collect());
            }
        }
        let exact = !unlisted_may_reach
            && (candidates.values()).all(|c| c.missing.is_empty() || c.most < tenth);
        Step::Done {
            busiest: ranked(candidates),
            exact,
        }
    }

    /// The busiest as far as the shards listed them, which may not be exact: the answer when a
    /// shard does not take the further rounds.
    pub fn as_far_as_known(&self) -> Vec<AssistantCount> {
        ranked(candidates(&self.shards))
    }
}

/// Every assistant some shard listed, with what the shards told of it.
fn candidates(shards: &[Shard]) -> HashMap<&str, Candidate> {
    let mut candidates: HashMap<&str, Candidate> = HashMap::new();
    for shard in shards {
        for (id, tally) in &shard.listed {
            let candidate = candidates.entry(id).or_default();
            // counts come from peers: no sum of theirs panics
            candidate.count = candidate.count.saturating_add(tally.count);
            candidate.errors = candidate.errors.saturating_add(tally.errors);
        }
    }
    for (id, candidate) in &mut candidates {
        candidate.missing = (0..shards.len())
            .filter(|&n| shards[n].unlisted_at_most > 0 && !shards[n].listed.contains_key(*id))
            .collect();
        candidate.most = (candidate.missing.iter())
            .map(|&n| shards[n].unlisted_at_most)
            .fold(candidate.count, u64::saturating_add);
    }
    candidates
}

/// The busiest of `candidates`, by the matches the shards told of.
fn ranked(candidates: HashMap<&str, Candidate>) -> Vec<AssistantCount> {
    let mut busiest: Vec<AssistantCount> = candidates
        .into_iter()
        .map(|(id, candidate)| AssistantCount {
            assistant_id: id.to_owned(),
            count: candidate.count,
            errors: candidate.errors,
        })
        .collect();
    busiest.sort_unstable_by(AssistantCount::busiest_first);
    busiest.truncate(TOP_ASSISTANTS);
    busiest
}

/// The tenth highest of `counts`; 0 when there are fewer.
fn tenth_highest(counts: impl Iterator<Item = u64>) -> u64 {
    let mut counts: Vec<u64> = counts.collect();
    if counts.len() < TOP_ASSISTANTS {
        return 0;
    }
    let (_, tenth, _) = counts.select_nth_unstable_by(TOP_ASSISTANTS - 1, |a, b| b.cmp(a));
    *tenth
}

#[cfg(test)]
mod tests;
