//! Snapshots: a consistent copy of the committed index, taken while a server writes to it.
//!
//! Tantivy never changes a file once written; a commit is the atomic replacement of
//! `meta.json`, which names the segments (and their delete files) that make up the index. A
//! snapshot copies one `meta.json` and hard-links the files it names (copying where links are
//! not possible). A merge may delete the files of a segment it replaced while they are being
//! linked; so, once linked, the segments are checked against the index's current `meta.json`:
//! a segment still named there, with the same deletes, was never deleted. Else the snapshot
//! starts over.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tantivy::Index;
use tantivy::index::{SegmentId, SegmentMeta};

use crate::store::{ALERT_RULES_FILE, CURSOR_KEY_FILE, payload_last_seq};

/// Attempts before giving up on an index whose segments keep being merged away.
const ATTEMPTS: usize = 20;

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotReport {
    /// Logs in the snapshot.
    pub logs: u64,
    /// The highest sequence number of the commit (0 for an empty index).
    pub last_seq: u64,
    /// Files hard-linked and files copied.
    pub linked: usize,
    pub copied: usize,
}

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path} exists and is not empty: a snapshot goes to a new folder")]
    NotEmpty { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot read the index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("the index changed under every one of {ATTEMPTS} attempts; try again")]
    Busy,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Copies the committed state of the index in `index` to the new folder `to`.
pub fn snapshot(index: &Path, to: &Path) -> Result<SnapshotReport, SnapshotError> {
    match fs::read_dir(to) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SnapshotError::NotEmpty {
                    path: to.to_owned(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // the logs of every user: readable by the owner only, like the index
            let mut folder = fs::DirBuilder::new();
            folder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
            folder.create(to).map_err(io_error(to))?;
        }
        Err(e) => return Err(io_error(to)(e)),
    }
    for _ in 0..ATTEMPTS {
        match attempt(index, to) {
            Ok(Some(report)) => return Ok(report),
            Ok(None) => empty(to)?,
            Err(e) => {
                // no half snapshot that looks like an index is left behind
                let _ = empty(to);
                return Err(e);
            }
        }
    }
    empty(to)?;
    Err(SnapshotError::Busy)
}

/// One try: the report, or `None` when a segment was merged away meanwhile.
fn attempt(index: &Path, to: &Path) -> Result<Option<SnapshotReport>, SnapshotError> {
    let meta = Path::new("meta.json");
    let copied_meta = fs::read(index.join(meta)).map_err(io_error(&index.join(meta)))?;
    write_synced(&to.join(meta), &copied_meta)?;
    let metas = Index::open_in_dir(to)?.load_metas()?;
    let (mut linked, mut copied) = (0, 0);
    let mut files = vec![meta.to_owned()];
    for file in metas.list_segment_files() {
        let from = index.join(&file);
        match fs::hard_link(&from, to.join(&file)) {
            Ok(()) => linked += 1,
            // a candidate name the segment never had
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            // another file system: copy from an open handle, which a deletion cannot take away
            Err(_) => match fs::File::open(&from) {
                Ok(mut source) => {
                    let target = to.join(&file);
                    let mut copy = owner_only().open(&target).map_err(io_error(&target))?;
                    io::copy(&mut source, &mut copy).map_err(io_error(&from))?;
                    copy.sync_all().map_err(io_error(&target))?;
                    copied += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&from)(e)),
            },
        }
        files.push(file);
    }
    let current = Index::open_in_dir(index)?.load_metas()?;
    let versions = |segments: &[SegmentMeta]| -> HashSet<(SegmentId, Option<u64>)> {
        segments
            .iter()
            .map(|s| (s.id(), s.delete_opstamp()))
            .collect()
    };
    if !versions(&metas.segments).is_subset(&versions(&current.segments)) {
        return Ok(None);
    }
    // the files the snapshot's own writer may delete once they are merged away
    let managed = serde_json::to_vec(&files).map_err(|e| io_error(to)(e.into()))?;
    write_synced(&to.join(".managed.json"), &managed)?;
    // cursors handed out before the snapshot stay valid on a server started from it, and its
    // users' alert rules come along
    for name in [CURSOR_KEY_FILE, ALERT_RULES_FILE] {
        let file = index.join(name);
        match fs::read(&file) {
            Ok(bytes) => write_synced(&to.join(name), &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&file)(e)),
        }
    }
    fs::File::open(to)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(to))?;
    let logs = Index::open_in_dir(to)?.reader()?.searcher().num_docs();
    Ok(Some(SnapshotReport {
        logs,
        last_seq: metas
            .payload
            .as_deref()
            .and_then(payload_last_seq)
            .unwrap_or(0),
        linked,
        copied,
    }))
}

/// Options that create a file readable and writable by its owner only.
fn owner_only() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.create(true).write(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let mut file = owner_only().open(path).map_err(io_error(path))?;
    io::Write::write_all(&mut file, bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn empty(dir: &Path) -> Result<(), SnapshotError> {
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        fs::remove_file(&path).map_err(io_error(&path))?;
    }
    Ok(())
}
