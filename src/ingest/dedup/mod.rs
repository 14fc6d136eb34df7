//! Exactly once across client retries on a single node: the logs stored within the dedup
//! window, and which logs of a new export are among them.
//!
//! An OTel SDK or collector that lost the answer to an export sends its records again, whole or
//! in other batches. The writer cuts what it stores into content-defined chunks (as a cluster's
//! gateways do, [`super::chunk`]) and remembers every chunk for the window: each of its logs by
//! 32 bits of its hash (its tag), and some of them, its *anchors*, by 64 more bits in a table: the
//! first, every [`ANCHOR_EVERY`]th and the last. A log of a new export that is an anchor finds
//! its chunk; the logs on either side of it are the chunk's neighbours of that anchor as far as
//! their tags agree, and are duplicates with it. A retry cut into other batches is recognized
//! whole wherever its batches' edges fall, as long as each batch holds an anchor (any
//! [`ANCHOR_EVERY`] logs in a row do) or goes on where a batch of duplicates just before it
//! stopped. What the window holds is written to a journal beside the
//! write-ahead log before every commit, so a restart, even after `kill -9`, still recognizes a
//! retry.
//!
//! Memory: per log its tag (4 bytes); per chunk 24 bytes and a table entry (about 19 bytes) per
//! anchor. Exports of hundreds of logs cost about 7 to 8 bytes a log, exports of one log about
//! 70: a cap on the bytes forgets the oldest chunks early when the window would pass it.

mod journal;
mod tags;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::time::Duration;

use journal::Journal;
use tags::Tags;

use super::chunk::{self, EncodedLog, LogKey};

/// One log in this many of a chunk is an anchor, besides its last.
pub const ANCHOR_EVERY: usize = 8;

/// Whether the log at `position` of a chunk of `len` logs is an anchor.
fn is_anchor(position: usize, len: usize) -> bool {
    position % ANCHOR_EVERY == 0 || position + 1 == len
}

/// How many anchors a chunk of `len` logs has.
fn anchors_of(len: usize) -> usize {
    match len {
        0 => 0,
        len => len.div_ceil(ANCHOR_EVERY) + usize::from((len - 1) % ANCHOR_EVERY != 0),
    }
}

/// Bytes of one anchor in the table: key, value and control byte, at the table's usual load.
const ANCHOR_BYTES: usize = (2 * std::mem::size_of::<u64>() + 1) * 8 / 7;

/// The table key of an anchor: 64 bits of its hash that its tag does not hold.
fn anchor_key(key: &LogKey) -> u64 {
    key.hash as u64
}

/// A chunk stored within the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    /// The number of its first log's tag in [`Window::tags`].
    tags_from: u64,
    len: u32,
    /// When it was stored, in seconds since the epoch.
    at: u64,
}

/// Where an anchor is: its chunk (counted since the window began) and its position in it.
fn pack(chunk: u64, position: usize) -> u64 {
    chunk << 16 | position as u64
}

fn unpack(place: u64) -> (u64, usize) {
    (place >> 16, (place & 0xffff) as usize)
}

/// A point to go back to: what was remembered before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    chunks: u64,
    fresh: usize,
}

/// The chunks stored within the window, oldest first, and their anchors.
pub struct Window {
    window_secs: u64,
    chunks: VecDeque<Stored>,
    /// The number of chunks that ever left the front: `chunks[i]` is chunk `gone + i`.
    gone: u64,
    /// The tags of the chunks' logs, in the chunks' order.
    tags: Tags,
    /// Anchors by key. Those of chunks gone are dropped in bulk once they are many.
    anchors: HashMap<u64, u64>,
    /// Anchors in the table whose chunk is gone.
    stale: usize,
    /// The anchor keys of the chunks not yet in the journal, in order.
    fresh: Vec<u64>,
    /// Where the latest runs of duplicates stopped inside a chunk (chunk, next position), newest
    /// last: the next batch of the same retry may go on from there.
    resumes: VecDeque<(u64, usize)>,
    /// Whether the batch looked at last left the newest of `resumes`.
    last_batch_resumed: bool,
}

/// Places a retry's run of duplicates stopped at that are kept for its next batch.
const RESUMES: usize = 64;

impl Window {
    /// An empty window that remembers chunks for `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window_secs: window.as_secs().max(1),
            chunks: VecDeque::new(),
            gone: 0,
            tags: Tags::default(),
            anchors: HashMap::new(),
            stale: 0,
            fresh: Vec::new(),
            resumes: VecDeque::new(),
            last_batch_resumed: false,
        }
    }

    /// Chunks remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Bytes the window holds, about, with what its tables keep room for.
    pub fn memory_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Stored>()
            + self.tags.memory_bytes()
            + self.anchors.capacity() * ANCHOR_BYTES
            + self.fresh.capacity() * std::mem::size_of::<u64>()
    }

    /// Bytes the chunks remembered take, about, without the room kept for more.
    fn live_bytes(&self) -> usize {
        let tags = self
            .chunks
            .front()
            .map_or(0, |oldest| self.tags.end() - oldest.tags_from) as usize;
        self.chunks.len() * std::mem::size_of::<Stored>()
            + tags * std::mem::size_of::<u32>()
            + self.anchors.len().saturating_sub(self.stale) * ANCHOR_BYTES
    }

    /// When the oldest chunk remembered was stored, in seconds since the epoch.
    pub fn oldest(&self) -> Option<u64> {
        self.chunks.front().map(|c| c.at)
    }

    /// A mark to go back to with [`Window::rollback`].
    pub fn mark(&self) -> Mark {
        Mark {
            chunks: self.end(),
            fresh: self.fresh.len(),
        }
    }

    /// The number of the next chunk.
    fn end(&self) -> u64 {
        self.gone + self.chunks.len() as u64
    }

    fn get(&self, index: u64) -> Option<&Stored> {
        self.chunks
            .get(usize::try_from(index.checked_sub(self.gone)?).ok()?)
    }

    fn tag(&self, stored: &Stored, position: usize) -> u32 {
        self.tags.get(stored.tags_from + position as u64)
    }

    /// The chunk (its number and itself) and position of the anchor `key` is, if it is one.
    fn anchor(&self, key: &LogKey) -> Option<(u64, Stored, usize)> {
        let (chunk, position) = unpack(*self.anchors.get(&anchor_key(key))?);
        let stored = *self.get(chunk)?;
        let found = position < stored.len as usize && self.tag(&stored, position) == key.tag();
        found.then_some((chunk, stored, position))
    }

    /// Which of `keys` (one export's logs, in order) were stored already. A batch too short to
    /// hold an anchor is recognized when it goes on where a run of duplicates of a batch before
    /// it stopped (the next batch of the same retry): two logs at least from any of the last
    /// places, one log only from where the batch just before it stopped.
    pub fn duplicates(&mut self, keys: &[LogKey]) -> Vec<bool> {
        let after_run = std::mem::take(&mut self.last_batch_resumed);
        let mut seen = vec![false; keys.len()];
        if self.chunks.is_empty() {
            return seen;
        }
        let mut i = 0;
        let mut resume = None;
        while i < keys.len() {
            let Some((chunk, stored, position)) = self.anchor(&keys[i]) else {
                i += 1;
                continue;
            };
            // its neighbours in the export are its neighbours in the chunk, as far as tags agree
            let (mut first, mut at) = (i, position);
            while first > 0 && at > 0 && !seen[first - 1] {
                if keys[first - 1].tag() != self.tag(&stored, at - 1) {
                    break;
                }
                (first, at) = (first - 1, at - 1);
            }
            let (last, at) = self.extend(&stored, keys, i, position);
            seen[first..=last].fill(true);
            resume = (last + 1 == keys.len()).then_some((chunk, at + 1));
            i = last + 1;
        }
        if !seen.contains(&true) && !keys.is_empty() {
            self.go_on(keys, &mut seen, after_run);
        }
        if let Some((chunk, next)) = resume {
            self.resume_at(chunk, next);
        }
        seen
    }

    /// Keeps `next` of `chunk` as a place the next batch of a retry may go on from, if the
    /// chunk goes on there.
    fn resume_at(&mut self, chunk: u64, next: usize) {
        if self.get(chunk).is_some_and(|c| next < c.len as usize) {
            self.last_batch_resumed = true;
            self.resumes.push_back((chunk, next));
            if self.resumes.len() > RESUMES {
                self.resumes.pop_front();
            }
        }
    }

    /// How far the logs of `keys` from `i` on are the logs of `stored` from `position` on: the
    /// last of them, and its position.
    fn extend(
        &self,
        stored: &Stored,
        keys: &[LogKey],
        i: usize,
        position: usize,
    ) -> (usize, usize) {
        let (mut last, mut at) = (i, position);
        while last + 1 < keys.len() && at + 1 < stored.len as usize {
            if keys[last + 1].tag() != self.tag(stored, at + 1) {
                break;
            }
            (last, at) = (last + 1, at + 1);
        }
        (last, at)
    }

    /// Marks `keys` from its start as duplicates where they go on from a place a run stopped at:
    /// two logs or more where their first two tags agree at one of the last places, the newest
    /// first (one in 2^64 by chance); one log where its tag agrees at the place the batch just
    /// before it stopped, `after_run` (one in 2^32, as a retried log's neighbour in an export).
    fn go_on(&mut self, keys: &[LogKey], seen: &mut [bool], after_run: bool) {
        let places: Vec<(u64, usize)> = match keys.len() {
            1 => self
                .resumes
                .back()
                .copied()
                .filter(|_| after_run)
                .into_iter()
                .collect(),
            _ => self.resumes.iter().rev().copied().collect(),
        };
        for (chunk, next) in places {
            let Some(stored) = self.get(chunk).copied() else {
                continue;
            };
            let agrees = |k: usize| {
                next + k < stored.len as usize && keys[k].tag() == self.tag(&stored, next + k)
            };
            if (0..keys.len().min(2)).all(agrees) {
                let (last, at) = self.extend(&stored, keys, 0, next);
                seen[..=last].fill(true);
                if last + 1 == keys.len() {
                    self.resume_at(chunk, at + 1);
                }
                return;
            }
        }
    }

    /// Remembers the chunks of `keys` (logs stored together, in order), stored at `at` (seconds
    /// since the epoch).
    pub fn register(&mut self, keys: &[LogKey], at: u64) {
        for range in chunk::ranges(keys) {
            let logs = &keys[range];
            // the same chunk again (a replay of what the journal holds) is remembered once
            let known = |key: &LogKey| self.anchor(key).map(|(_, stored, p)| (stored, p));
            if let (Some((first, 0)), Some((last, p))) =
                (known(&logs[0]), known(&logs[logs.len() - 1]))
            {
                if first == last && p + 1 == logs.len() && first.len as usize == logs.len() {
                    continue;
                }
            }
            let anchors = logs
                .iter()
                .enumerate()
                .filter(|(p, _)| is_anchor(*p, logs.len()))
                .map(|(_, key)| anchor_key(key));
            self.push(at, logs.iter().map(LogKey::tag), anchors);
        }
    }

    /// Remembers a chunk of the tags `tags` whose anchors are `anchors`, in order.
    fn push(
        &mut self,
        at: u64,
        tags: impl ExactSizeIterator<Item = u32>,
        anchors: impl Iterator<Item = u64>,
    ) {
        let index = self.end();
        let len = tags.len();
        let stored = Stored {
            tags_from: self.tags.end(),
            len: len as u32,
            at,
        };
        for tag in tags {
            self.tags.push(tag);
        }
        self.chunks.push_back(stored);
        let positions = (0..len).filter(|&p| is_anchor(p, len));
        for (position, key) in positions.zip(anchors) {
            self.fresh.push(key);
            if let Some(replaced) = self.anchors.insert(key, pack(index, position)) {
                // an older chunk's: it may still be in the window
                if unpack(replaced).0 < self.gone {
                    self.stale = self.stale.saturating_sub(1);
                }
            }
        }
    }

    /// Forgets what was remembered since `mark`: those logs were not stored after all.
    pub fn rollback(&mut self, mark: Mark) {
        // the batches looked at since were not stored: a lone log next goes on from none of them
        self.last_batch_resumed = false;
        if self.end() <= mark.chunks {
            return;
        }
        while self.end() > mark.chunks {
            let Some(stored) = self.chunks.pop_back() else {
                break;
            };
            self.tags.truncate(stored.tags_from);
        }
        self.fresh.truncate(mark.fresh);
        let end = mark.chunks;
        self.anchors.retain(|_, place| unpack(*place).0 < end);
        self.resumes.retain(|(chunk, _)| *chunk < end);
    }

    /// Forgets the chunks stored before the window, as of `now` (seconds since the epoch), and
    /// the oldest others while the window holds more than `max_bytes`.
    pub fn expire(&mut self, now: u64, max_bytes: usize) {
        let oldest = now.saturating_sub(self.window_secs);
        while self.chunks.front().is_some_and(|c| c.at < oldest) {
            self.forget_oldest();
        }
        while self.live_bytes() > max_bytes && !self.chunks.is_empty() {
            self.forget_oldest();
        }
        if self.stale > self.anchors.len() / 4 {
            let gone = self.gone;
            self.anchors.retain(|_, place| unpack(*place).0 >= gone);
            self.stale = 0;
        }
        if self.chunks.capacity() > 2 * self.chunks.len() + 1024 {
            self.chunks.shrink_to_fit();
            self.anchors.shrink_to_fit();
        }
    }

    fn forget_oldest(&mut self) {
        let Some(stored) = self.chunks.pop_front() else {
            return;
        };
        self.gone += 1;
        self.tags
            .forget_before(stored.tags_from + u64::from(stored.len));
        self.stale += anchors_of(stored.len as usize);
    }

    /// The chunks not yet in the journal, oldest first, each with its tags and anchor keys.
    fn fresh_chunks(&self, journaled: u64) -> impl Iterator<Item = (Stored, Vec<u32>, &[u64])> {
        let from = journaled.saturating_sub(self.gone) as usize;
        let mut anchors = self.fresh.as_slice();
        self.chunks
            .range(from.min(self.chunks.len())..)
            .map(move |stored| {
                let len = stored.len as usize;
                let tags = (0..len).map(|p| self.tag(stored, p)).collect();
                let count = anchors_of(len).min(anchors.len());
                let (mine, rest) = anchors.split_at(count);
                anchors = rest;
                (*stored, tags, mine)
            })
    }

    /// Remembers a chunk read back from the journal, unless it is past the window at `now`.
    fn restore(&mut self, at: u64, tags: &[u32], anchors: &[u64], now: u64) {
        if at >= now.saturating_sub(self.window_secs) && anchors.len() == anchors_of(tags.len()) {
            self.push(at, tags.iter().copied(), anchors.iter().copied());
        }
    }
}

/// The window and its journal: what the writer thread keeps.
pub struct Dedup {
    pub window: Window,
    journal: Journal,
    /// The chunks before this one are in the journal.
    journaled: u64,
    /// Most bytes the window holds: past it, the oldest chunks are forgotten early.
    max_bytes: usize,
}

impl Dedup {
    /// The window of `window`, holding at most `max_bytes`, as the journal in `dir` left it at
    /// `now` (seconds since the epoch).
    pub fn open(dir: &Path, window: Duration, max_bytes: usize, now: u64) -> io::Result<Self> {
        let mut remembered = Window::new(window);
        let journal = Journal::open(dir, window, |at, tags, anchors| {
            remembered.restore(at, tags, anchors, now);
        })?;
        remembered.fresh.clear();
        remembered.expire(now, max_bytes);
        let journaled = remembered.end();
        Ok(Self {
            window: remembered,
            journal,
            journaled,
            max_bytes,
        })
    }

    /// Deletes the journal in `dir`: retries are not recognized any more.
    pub fn remove(dir: &Path) {
        Journal::remove(dir);
    }

    /// Drops from each batch the logs stored already, and remembers the rest, batch by batch: a
    /// batch's retry in the same group is dropped too. Returns how many were dropped.
    pub fn drop_duplicates<'a>(
        &mut self,
        batches: impl Iterator<Item = &'a mut Vec<EncodedLog>>,
        now: u64,
    ) -> u64 {
        let mut dropped = 0;
        for logs in batches {
            let keys: Vec<LogKey> = logs.iter().map(|l| l.key).collect();
            let seen = self.window.duplicates(&keys);
            let before = logs.len();
            let mut seen = seen.iter();
            logs.retain(|_| seen.next() == Some(&false));
            dropped += (before - logs.len()) as u64;
            let kept: Vec<LogKey> = logs.iter().map(|l| l.key).collect();
            self.window.register(&kept, now);
        }
        dropped
    }

    /// Writes the chunks remembered since the last time to the journal, durably (after this a
    /// commit may drop the write-ahead log that also holds them), and forgets what the window
    /// is past.
    pub fn persist(&mut self, now: u64) -> io::Result<()> {
        if self.window.end() > self.journaled {
            self.journal
                .append(self.window.fresh_chunks(self.journaled), now)?;
        }
        self.window.fresh.clear();
        self.journaled = self.window.end();
        self.window.expire(now, self.max_bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
