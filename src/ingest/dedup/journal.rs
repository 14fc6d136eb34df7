//! The dedup window's journal: the chunks stored since the last commit, appended and fsync'd
//! before every commit of the index, so that the write-ahead log that also holds them can be
//! emptied after it.
//!
//! Files `dedup-<seconds since the epoch>.log` beside the write-ahead log hold frames
//! `[len: u32 LE][crc32: u32 LE][payload]`; a payload is chunks, each `[at: u64][len: u32]
//! [tags: u32 × len][anchor keys: u64 × its anchors]`, little-endian. A new file is started every
//! [`FILE_SPAN`], after an append that failed, and by each process (never one a crashed process
//! may have left torn); a file is deleted once the next one started before the window. A torn or
//! corrupt frame ends the reading of its file: what it held is still in the write-ahead log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Stored, anchors_of};
use crate::ingest::chunk::MAX_LOGS;

/// How long one journal file takes appends.
const FILE_SPAN: u64 = 60;

const FRAME_HEADER: usize = 8;

/// Bytes of a chunk before its tags.
const CHUNK_HEAD: usize = 8 + 4;

/// The open journal.
pub(super) struct Journal {
    dir: PathBuf,
    window_secs: u64,
    /// The file appended to, when it was started, and its length.
    current: Option<(File, u64, u64)>,
}

fn file_path(dir: &Path, started: u64) -> PathBuf {
    dir.join(format!("dedup-{started:020}.log"))
}

/// The journal's files in `dir` with when each was started, oldest first.
fn files(dir: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    let mut found: Vec<(PathBuf, u64)> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter_map(|path| {
            let started = path
                .file_name()?
                .to_str()?
                .strip_prefix("dedup-")?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((path, started))
        })
        .collect();
    found.sort_by_key(|(_, started)| *started);
    Ok(found)
}

impl Journal {
    /// Opens the journal in `dir`, calling `restore` for every chunk it holds, oldest first. A
    /// file that cannot be read is left out, with a warning: its chunks are not recognized.
    pub(super) fn open(
        dir: &Path,
        window: Duration,
        mut restore: impl FnMut(u64, &[u32], &[u64]),
    ) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        for (path, _) in files(dir)? {
            let mut bytes = Vec::new();
            match File::open(&path).and_then(|mut file| file.read_to_end(&mut bytes)) {
                Ok(_) => read_frames(&bytes, &mut restore),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read a dedup journal file; the retries it would recognize are not");
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            window_secs: window.as_secs().max(1),
            current: None,
        })
    }

    /// Deletes the journal in `dir`, when retries are no longer recognized.
    pub(super) fn remove(dir: &Path) {
        for (path, _) in files(dir).unwrap_or_default() {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot delete a dedup journal file");
            }
        }
    }

    /// Appends `chunks` as one frame and fsyncs it. An append that fails is cut off again, and
    /// the next goes to a new file.
    pub(super) fn append<'a>(
        &mut self,
        chunks: impl Iterator<Item = (Stored, Vec<u32>, &'a [u64])>,
        now: u64,
    ) -> io::Result<()> {
        let mut frame = vec![0u8; FRAME_HEADER];
        for (stored, tags, anchors) in chunks {
            frame.extend_from_slice(&stored.at.to_le_bytes());
            frame.extend_from_slice(&stored.len.to_le_bytes());
            for tag in tags {
                frame.extend_from_slice(&tag.to_le_bytes());
            }
            for anchor in anchors {
                frame.extend_from_slice(&anchor.to_le_bytes());
            }
        }
        let payload = &frame[FRAME_HEADER..];
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::other("a dedup journal frame over 4 GiB"))?;
        let crc = crc32fast::hash(payload);
        frame[..4].copy_from_slice(&len.to_le_bytes());
        frame[4..FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());

        let (mut file, started, length) = match self.current.take() {
            Some((file, started, length)) if started + FILE_SPAN > now => (file, started, length),
            _ => {
                let (file, started) = self.create(now)?;
                self.delete_expired(now);
                (file, started, 0)
            }
        };
        let written = file.write_all(&frame).and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                self.current = Some((file, started, length + frame.len() as u64));
                Ok(())
            }
            Err(e) => {
                // a torn frame would hide what comes after it: cut it off, and go on elsewhere
                let _ = file.set_len(length).and_then(|()| file.sync_data());
                Err(e)
            }
        }
    }

    /// A new file, started at `now` or, should one of that name exist, the next free second.
    fn create(&self, now: u64) -> io::Result<(File, u64)> {
        for started in now..now + 1000 {
            let created = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(file_path(&self.dir, started));
            match created {
                Ok(file) => {
                    File::open(&self.dir)?.sync_all()?;
                    return Ok((file, started));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free name for a dedup journal file"))
    }

    /// Deletes every file whose successor started before the window: all it holds is older.
    /// One that cannot be deleted stays, with a warning, and is tried again later.
    fn delete_expired(&self, now: u64) {
        let oldest = now.saturating_sub(self.window_secs);
        let found = files(&self.dir).unwrap_or_default();
        for pair in found.windows(2) {
            if pair[1].1 <= oldest {
                if let Err(e) = fs::remove_file(&pair[0].0) {
                    tracing::warn!(file = %pair[0].0.display(), error = %e, "cannot delete an expired dedup journal file");
                }
            }
        }
    }
}

/// Calls `restore` for every chunk of the intact frames of `bytes`, up to a torn or corrupt one.
fn read_frames(mut bytes: &[u8], restore: &mut impl FnMut(u64, &[u32], &[u64])) {
    let (mut tags, mut anchors) = (Vec::new(), Vec::new());
    while bytes.len() >= FRAME_HEADER {
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        let Some(mut payload) = bytes.get(FRAME_HEADER..FRAME_HEADER + len) else {
            return;
        };
        if crc32fast::hash(payload) != crc {
            return;
        }
        bytes = &bytes[FRAME_HEADER + len..];
        while payload.len() >= CHUNK_HEAD {
            let (head, rest) = payload.split_at(CHUNK_HEAD);
            let at = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
            let count = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) as usize;
            if count == 0 || count > MAX_LOGS {
                return;
            }
            let body = 4 * count + 8 * anchors_of(count);
            let Some(encoded) = rest.get(..body) else {
                return;
            };
            let (encoded_tags, encoded_anchors) = encoded.split_at(4 * count);
            tags.clear();
            tags.extend(
                encoded_tags
                    .chunks_exact(4)
                    .map(|t| u32::from_le_bytes(t.try_into().expect("4 bytes"))),
            );
            anchors.clear();
            anchors.extend(
                encoded_anchors
                    .chunks_exact(8)
                    .map(|a| u64::from_le_bytes(a.try_into().expect("8 bytes"))),
            );
            restore(at, &tags, &anchors);
            payload = &rest[body..];
        }
    }
}
