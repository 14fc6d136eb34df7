//! The write-ahead log: accepted batches are appended and fsync'd before an export is answered.
//!
//! A segment file `wal-<first seq>.log` holds frames `[len: u32 LE][crc32: u32 LE][payload]`,
//! the payload a JSON [`WalBatch`]. After each index commit, which covers every sequence number
//! written so far, the log starts a fresh segment and deletes the older ones, so its size stays
//! bounded by what arrives between two commits. On start, [`Wal::recover`] replays every intact
//! frame; a torn or corrupt tail (a crash mid-write) is cut off, never fatal.
//!
//! A failed append or fsync is never retried and assumed to have worked: whatever was written
//! since the last good fsync is cut off again (and that cut fsync'd) before the batches are
//! refused, so a refused batch cannot come back on replay. While the cut itself fails the log is
//! *poisoned*: nothing is appended until [`Wal::repair`] succeeds.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::chunk::EncodedLog;
use crate::faults::{Faults, WritePoint};
use crate::mapping::ActivityLog;

const FRAME_HEADER: usize = 8;
/// Logs per frame: a batch is split into frames of at most this many, so that a frame stays far
/// below [`MAX_FRAME`] whatever the batch (a log is at most about 200 KB of JSON).
const LOGS_PER_FRAME: usize = 1024;
/// Frames larger than this are corrupt.
const MAX_FRAME: usize = 1 << 30;
/// The encoding buffer is given back after a sync when it grew past this (a group that large is
/// rare; one under it is the common case, and reusing its buffer saves an allocation per group).
const KEPT_BUFFER: usize = 32 << 20;

/// One batch as logged: consecutive sequence numbers from `first_seq`.
#[derive(Debug, Deserialize)]
pub struct WalBatch {
    pub first_seq: u64,
    pub logs: Vec<ActivityLog>,
}

/// The segment being appended to, with the write points that can be made to fail.
struct LogFile {
    file: File,
    faults: Faults,
}

impl LogFile {
    fn create(path: &Path, faults: &Faults) -> io::Result<Self> {
        faults.check(WritePoint::WalRotate)?;
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file,
            faults: faults.clone(),
        })
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.faults.check(WritePoint::WalWrite)?;
        self.file.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.faults.check(WritePoint::WalSync)?;
        self.file.sync_data()
    }

    /// Cuts the file back to `len` bytes and makes the cut durable.
    fn cut(&mut self, len: u64) -> io::Result<()> {
        // a cut fails where a sync would: on a device that fails them
        self.faults.check(WritePoint::WalSync)?;
        self.file.set_len(len)?;
        self.sync()
    }
}

/// The open write-ahead log.
pub struct Wal {
    dir: PathBuf,
    segment: PathBuf,
    file: LogFile,
    /// Bytes of the segment that are intact and durable.
    bytes: u64,
    /// Frames encoded but not yet written.
    pending: Vec<u8>,
    /// Whether bytes past `bytes` may be in the file because cutting them off failed.
    poisoned: bool,
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

/// Calls `replay` for every intact frame of the segment at `path`, in order; returns the length
/// of the intact part and of the whole file. Reads one frame at a time.
fn read_segment(
    path: &Path,
    replay: &mut impl FnMut(WalBatch) -> io::Result<()>,
) -> io::Result<(u64, u64)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let mut intact = 0u64;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let (size, crc) = header.split_at(4);
        let size = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if size > MAX_FRAME || intact + (FRAME_HEADER + size) as u64 > len {
            break;
        }
        payload.resize(size, 0);
        match reader.read_exact(&mut payload) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        if crc32fast::hash(&payload) != crc {
            break;
        }
        let Ok(batch) = serde_json::from_slice(&payload) else {
            break;
        };
        replay(batch)?;
        intact += (FRAME_HEADER + size) as u64;
    }
    Ok((intact, len))
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
            let (intact, len) = read_segment(&path, &mut replay)?;
            if intact < len {
                tracing::warn!(
                    segment = %path.display(),
                    kept_bytes = intact,
                    dropped_bytes = len - intact,
                    "write-ahead log has a torn or corrupt tail; cutting it off"
                );
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(intact)?;
                file.sync_all()?;
            }
        }
        Ok(())
    }

    /// Opens a segment for sequence numbers from `next_seq` on. Older segments stay until
    /// [`Wal::rotate`], after a commit that holds what they carry.
    pub fn start(dir: &Path, next_seq: u64, faults: &Faults) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let segment = segment_path(dir, next_seq);
        let file = LogFile::create(&segment, faults)?;
        let bytes = file.file.metadata()?.len();
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            segment,
            file,
            bytes,
            pending: Vec::new(),
            poisoned: false,
        })
    }

    /// Calls `replay` for every batch in the log, oldest first, while it is open for writing.
    /// Every segment must be intact: a damaged one is an error, never a silent stop.
    pub fn replay(&self, mut replay: impl FnMut(WalBatch) -> io::Result<()>) -> io::Result<()> {
        for path in segments(&self.dir)? {
            let (intact, len) = read_segment(&path, &mut replay)?;
            if intact < len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "write-ahead log segment {} is damaged at byte {intact}",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Encodes a batch whose logs get sequence numbers from `first_seq` on; [`Wal::sync`] writes
    /// and fsyncs everything encoded so far.
    pub fn push(&mut self, first_seq: u64, logs: &[EncodedLog]) {
        for (n, chunk) in logs.chunks(LOGS_PER_FRAME).enumerate() {
            let first_seq = first_seq + (n * LOGS_PER_FRAME) as u64;
            let start = self.pending.len();
            self.pending.extend_from_slice(&[0; FRAME_HEADER]);
            // a WalBatch, from the logs' encodings
            self.pending.extend_from_slice(b"{\"first_seq\":");
            self.pending
                .extend_from_slice(first_seq.to_string().as_bytes());
            self.pending.extend_from_slice(b",\"logs\":[");
            for (i, log) in chunk.iter().enumerate() {
                if i > 0 {
                    self.pending.push(b',');
                }
                self.pending.extend_from_slice(&log.json);
            }
            self.pending.extend_from_slice(b"]}");
            let payload = &self.pending[start + FRAME_HEADER..];
            let len =
                u32::try_from(payload.len()).expect("a frame of 1024 logs is far below 4 GiB");
            let crc = crc32fast::hash(payload);
            self.pending[start..start + 4].copy_from_slice(&len.to_le_bytes());
            self.pending[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        }
    }

    /// Writes the pushed batches and waits until they are on disk (group commit: one fsync).
    /// On failure none of them is in the log: what was written is cut off again.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        if self.poisoned {
            return Err(io::Error::other(
                "the write-ahead log could not be cut back after a failed write",
            ));
        }
        let result = self.file.append(&pending).and_then(|()| self.file.sync());
        match result {
            Ok(()) => self.bytes += pending.len() as u64,
            Err(_) => {
                // never assume a failed fsync wrote anything: cut back to the last good one
                if let Err(e) = self.file.cut(self.bytes) {
                    tracing::error!(error = %e, "cannot cut the write-ahead log back after a failed write");
                    self.poisoned = true;
                }
            }
        }
        if pending.capacity() <= KEPT_BUFFER {
            self.pending = pending;
            self.pending.clear();
        }
        result
    }

    /// Whether a failed write could not be cut off yet; [`Wal::repair`] tries again.
    #[cfg(test)]
    pub(super) fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Cuts off what a failed write may have left; the log takes appends again when it works.
    pub fn repair(&mut self) -> io::Result<()> {
        if self.poisoned {
            self.file.cut(self.bytes)?;
            self.poisoned = false;
        }
        Ok(())
    }

    /// Bytes in the log.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// After an index commit that covers every sequence number below `next_seq`: a fresh
    /// segment, and the older ones deleted. On failure the current segment stays in use.
    pub fn rotate(&mut self, next_seq: u64) -> io::Result<()> {
        if self.poisoned {
            return Ok(());
        }
        if self.bytes > 0 {
            *self = Self::start(&self.dir, next_seq, &self.file.faults)?;
        }
        self.delete_older_segments()
    }

    fn delete_older_segments(&self) -> io::Result<()> {
        for path in segments(&self.dir)? {
            if path != self.segment {
                self.file.faults.check(WritePoint::WalRotate)?;
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Fault;

    fn log(message: &str) -> EncodedLog {
        EncodedLog::new(crate::mapping::example_log(message))
    }

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
        let mut wal = Wal::start(dir.path(), 1, &Faults::none()).unwrap();
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
    fn big_batches_are_split_into_frames_and_replay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::start(dir.path(), 1, &Faults::none()).unwrap();
        let logs: Vec<EncodedLog> = (0..2500).map(|i| log(&format!("m{i}"))).collect();
        wal.push(10, &logs);
        wal.sync().unwrap();
        let seen = replayed(dir.path());
        let firsts: Vec<u64> = seen.iter().map(|(first, _)| *first).collect();
        assert_eq!(firsts, [10, 1034, 2058]);
        let messages: Vec<String> = seen.into_iter().flat_map(|(_, m)| m).collect();
        assert_eq!(messages.len(), 2500);
        assert_eq!(messages[2499], "m2499");
    }

    #[test]
    fn a_damaged_segment_is_an_error_for_a_running_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::start(dir.path(), 1, &Faults::none()).unwrap();
        wal.push(1, &[log("a")]);
        wal.push(2, &[log("b")]);
        wal.sync().unwrap();
        let segment = segments(dir.path()).unwrap().remove(0);
        let mut data = fs::read(&segment).unwrap();
        let last = data.len() - 2;
        data[last] ^= 0x40;
        fs::write(&segment, &data).unwrap();
        let mut seen = 0;
        let err = wal
            .replay(|_| {
                seen += 1;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("is damaged at byte"), "{err}");
        assert_eq!(seen, 1);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_later_writes_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::start(dir.path(), 1, &Faults::none()).unwrap();
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

    #[test]
    fn a_failed_write_or_fsync_leaves_nothing_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::injector();
        let mut wal = Wal::start(dir.path(), 1, &faults).unwrap();
        wal.push(1, &[log("durable")]);
        wal.sync().unwrap();
        let durable = wal.bytes();

        // the append fails: nothing of it stays
        faults.fail_times(WritePoint::WalWrite, Fault::NoSpace, 1);
        wal.push(2, &[log("refused on write")]);
        assert_eq!(wal.sync().unwrap_err().kind(), io::ErrorKind::StorageFull);
        // the fsync fails after the bytes reached the file: they are cut off again
        faults.fail_times(WritePoint::WalSync, Fault::Io, 1);
        wal.push(3, &[log("refused on fsync")]);
        assert_eq!(wal.sync().unwrap_err().raw_os_error(), Some(5));
        assert!(!wal.is_poisoned());
        assert_eq!(wal.bytes(), durable);
        let segment = segments(dir.path()).unwrap().remove(0);
        assert_eq!(fs::metadata(&segment).unwrap().len(), durable);

        wal.push(4, &[log("after")]);
        wal.sync().unwrap();
        assert_eq!(
            replayed(dir.path()),
            vec![(1, vec!["durable".into()]), (4, vec!["after".into()])]
        );
    }

    #[test]
    fn a_log_that_cannot_be_cut_back_takes_nothing_until_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::injector();
        let mut wal = Wal::start(dir.path(), 1, &faults).unwrap();
        // every fsync fails, the one of the cut too
        faults.fail(WritePoint::WalSync, Fault::Io);
        wal.push(1, &[log("refused")]);
        assert!(wal.sync().is_err());
        assert!(wal.is_poisoned());
        wal.push(2, &[log("refused too")]);
        assert!(wal.sync().is_err());
        assert!(wal.repair().is_err());
        assert!(wal.is_poisoned());

        faults.clear(WritePoint::WalSync);
        wal.repair().unwrap();
        assert!(!wal.is_poisoned());
        wal.push(3, &[log("accepted")]);
        wal.sync().unwrap();
        assert_eq!(replayed(dir.path()), vec![(3, vec!["accepted".into()])]);
    }

    #[test]
    fn a_failed_rotation_keeps_the_current_segment() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::injector();
        let mut wal = Wal::start(dir.path(), 1, &faults).unwrap();
        wal.push(1, &[log("a")]);
        wal.sync().unwrap();
        faults.fail(WritePoint::WalRotate, Fault::NoSpace);
        assert!(wal.rotate(2).is_err());
        wal.push(2, &[log("b")]);
        wal.sync().unwrap();
        faults.clear(WritePoint::WalRotate);
        assert_eq!(
            replayed(dir.path()),
            vec![(1, vec!["a".into()]), (2, vec!["b".into()])]
        );
        wal.rotate(3).unwrap();
        assert_eq!(replayed(dir.path()), vec![]);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
    }
}
