//! The write-ahead log: accepted batches are appended and fsync'd before an export is answered.
//!
//! A segment file `wal-<first seq>.log` holds frames `[len: u32 LE][crc32: u32 LE][payload]`,
//! the payload a JSON [`WalBatch`]. After each index commit, which covers every sequence number
//! written so far, the log starts a fresh segment and deletes the older ones, so its size stays
//! bounded by what arrives between two commits. On start, [`Wal::open`] replays every intact
//! frame; a torn or corrupt tail (a crash mid-write) is cut off, never fatal.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mapping::ActivityLog;

const FRAME_HEADER: usize = 8;
/// Frames larger than this are corrupt: no batch of an export under the message limit gets here.
const MAX_FRAME: usize = 1 << 30;

/// One batch as logged: consecutive sequence numbers from `first_seq`.
#[derive(Debug, Deserialize)]
pub struct WalBatch {
    pub first_seq: u64,
    pub logs: Vec<ActivityLog>,
}

#[derive(Serialize)]
struct WalBatchRef<'a> {
    first_seq: u64,
    logs: &'a [ActivityLog],
}

/// The open write-ahead log.
pub struct Wal {
    dir: PathBuf,
    segment: PathBuf,
    file: File,
    bytes: u64,
    /// Frames encoded but not yet written.
    pending: Vec<u8>,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("wal-{first_seq:020}.log"))
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"))
        })
        .collect();
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Reads the log in `dir`, calling `replay` for every intact batch in order, and cuts off a
    /// damaged tail. Then [`Wal::start`] opens it for writing.
    pub fn recover(
        dir: &Path,
        mut replay: impl FnMut(WalBatch) -> io::Result<()>,
    ) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        for path in segments(dir)? {
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut data = Vec::new();
            file.read_to_end(&mut data)?;
            let mut at = 0usize;
            while let Some((batch, len)) = read_frame(&data[at..]) {
                replay(batch)?;
                at += len;
            }
            if at < data.len() {
                tracing::warn!(
                    segment = %path.display(),
                    kept_bytes = at,
                    dropped_bytes = data.len() - at,
                    "write-ahead log has a torn or corrupt tail; cutting it off"
                );
                file.set_len(at as u64)?;
                file.sync_all()?;
            }
        }
        Ok(())
    }

    /// Starts a fresh segment for sequence numbers from `next_seq` on, deleting the older
    /// segments: the caller has committed everything they held.
    pub fn start(dir: &Path, next_seq: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let segment = segment_path(dir, next_seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&segment)?;
        let bytes = file.metadata()?.len();
        sync_dir(dir)?;
        let wal = Self {
            dir: dir.to_owned(),
            segment,
            file,
            bytes,
            pending: Vec::new(),
        };
        wal.delete_older_segments()?;
        Ok(wal)
    }

    /// Encodes a batch whose logs get sequence numbers from `first_seq` on; [`Wal::sync`] writes
    /// and fsyncs everything encoded so far.
    pub fn push(&mut self, first_seq: u64, logs: &[ActivityLog]) {
        let start = self.pending.len();
        self.pending.extend_from_slice(&[0; FRAME_HEADER]);
        serde_json::to_writer(&mut self.pending, &WalBatchRef { first_seq, logs })
            .expect("an activity log serializes to JSON");
        let payload = &self.pending[start + FRAME_HEADER..];
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(payload);
        self.pending[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.pending[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes the pushed batches and waits until they are on disk (group commit: one fsync).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self
            .file
            .write_all(&self.pending)
            .and_then(|()| self.file.sync_data());
        if result.is_err() {
            // Whatever part was written is a torn frame: cut it off so later frames stay readable.
            let _ = self.file.set_len(self.bytes);
            let _ = self.file.seek(SeekFrom::End(0));
        } else {
            self.bytes += self.pending.len() as u64;
        }
        self.pending.clear();
        result
    }

    /// Bytes in the log.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// After an index commit that covers every sequence number below `next_seq`: a fresh
    /// segment, and the old ones deleted.
    pub fn rotate(&mut self, next_seq: u64) -> io::Result<()> {
        if self.bytes == 0 {
            return Ok(());
        }
        *self = Self::start(&self.dir, next_seq)?;
        Ok(())
    }

    fn delete_older_segments(&self) -> io::Result<()> {
        for path in segments(&self.dir)? {
            if path != self.segment {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

/// The first intact frame of `data` and its length; `None` at the end or at a damaged frame.
fn read_frame(data: &[u8]) -> Option<(WalBatch, usize)> {
    let header = data.get(..FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > MAX_FRAME {
        return None;
    }
    let payload = data.get(FRAME_HEADER..FRAME_HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let batch = serde_json::from_slice(payload).ok()?;
    Some((batch, FRAME_HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::example_log as log;

    fn replayed(dir: &Path) -> Vec<(u64, Vec<String>)> {
        let mut seen = Vec::new();
        Wal::recover(dir, |batch| {
            let messages = batch.logs.iter().map(|l| l.message.clone()).collect();
            seen.push((batch.first_seq, messages));
            Ok(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn batches_replay_in_order_and_rotation_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::start(dir.path(), 1).unwrap();
        wal.push(1, &[log("a"), log("b")]);
        wal.push(3, &[log("c")]);
        wal.sync().unwrap();
        assert!(wal.bytes() > 0);
        let seen = replayed(dir.path());
        assert_eq!(
            seen,
            vec![(1, vec!["a".into(), "b".into()]), (3, vec!["c".into()])]
        );
        // nulls inside request_data survive
        Wal::recover(dir.path(), |batch| {
            assert_eq!(batch.logs[0].request_data.get(), r#"{"k": null}"#);
            Ok(())
        })
        .unwrap();

        wal.rotate(4).unwrap();
        assert_eq!(wal.bytes(), 0);
        assert_eq!(replayed(dir.path()), vec![]);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_later_writes_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::start(dir.path(), 1).unwrap();
        wal.push(1, &[log("kept")]);
        wal.sync().unwrap();
        let intact = wal.bytes();
        drop(wal);
        // a crash in the middle of the next frame
        let segment = segments(dir.path()).unwrap().remove(0);
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"'])
            .unwrap();
        drop(file);

        assert_eq!(replayed(dir.path()), vec![(1, vec!["kept".into()])]);
        assert_eq!(fs::metadata(&segment).unwrap().len(), intact);

        // a flipped bit fails the checksum: that frame and what follows are dropped
        let mut data = fs::read(&segment).unwrap();
        let last = data.len() - 2;
        data[last] ^= 0x40;
        fs::write(&segment, &data).unwrap();
        assert_eq!(replayed(dir.path()), vec![]);
        assert_eq!(fs::metadata(&segment).unwrap().len(), 0);
    }
}
