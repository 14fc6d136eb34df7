//! The index's directory: tantivy's `MmapDirectory` plus what it leaves out.
//!
//! - `meta.json` is renamed into place without an fsync of the folder, so a commit that returned
//!   could be undone by a power loss; this directory fsyncs the folder after it.
//! - A merge that fails is only logged by tantivy; this directory counts write failures on merge
//!   threads, for `/metrics`.
//! - Tests make its write points fail on command ([`Faults`]): segment files, `meta.json`, and the
//!   files of a merge.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, TerminatingWrite,
    WatchCallback, WatchHandle, WritePtr,
};

use crate::faults::{Faults, WritePoint};

/// The commit point of a tantivy index.
const META_FILE: &str = "meta.json";

/// Tantivy names the threads of its merge pool `merge_thread_<n>`.
const MERGE_THREAD_PREFIX: &str = "merge_thread_";

/// An `MmapDirectory` that fsyncs after `meta.json`, counts merge failures and injects faults.
#[derive(Debug, Clone)]
pub struct IndexDirectory {
    inner: MmapDirectory,
    faults: Faults,
    merge_failures: Counter,
}

impl IndexDirectory {
    /// Opens the directory at `path`.
    pub fn open(
        path: &Path,
        faults: Faults,
        merge_failures: Counter,
    ) -> Result<Self, tantivy::directory::error::OpenDirectoryError> {
        Ok(Self {
            inner: MmapDirectory::open(path)?,
            faults,
            merge_failures,
        })
    }
}

/// The write point of a file opened by the current thread.
fn write_point() -> WritePoint {
    let on_merge_thread = std::thread::current()
        .name()
        .is_some_and(|name| name.starts_with(MERGE_THREAD_PREFIX));
    if on_merge_thread {
        WritePoint::Merge
    } else {
        WritePoint::IndexWrite
    }
}

/// A file being written: fails where its write point is armed, and counts merge failures.
struct WatchedFile {
    inner: Box<dyn TerminatingWrite + Send + Sync>,
    point: WritePoint,
    faults: Faults,
    merge_failures: Counter,
}

impl WatchedFile {
    fn run<T>(&mut self, op: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        let result = self.faults.check(self.point).and_then(|()| op(self));
        if result.is_err() && self.point == WritePoint::Merge {
            self.merge_failures.inc();
        }
        result
    }
}

impl Write for WatchedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.run(|file| file.inner.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.run(|file| file.inner.flush())
    }
}

impl TerminatingWrite for WatchedFile {
    fn terminate_ref(&mut self, token: AntiCallToken) -> io::Result<()> {
        self.run(|file| file.inner.terminate_ref(token))
    }
}

impl Directory for IndexDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let point = write_point();
        let open_error = |e: io::Error| OpenWriteError::wrap_io_error(e, path.to_path_buf());
        if let Err(e) = self.faults.check(point) {
            if point == WritePoint::Merge {
                self.merge_failures.inc();
            }
            return Err(open_error(e));
        }
        let inner = self
            .inner
            .open_write(path)?
            .into_inner()
            .map_err(|e| open_error(e.into_error()))?;
        Ok(BufWriter::new(Box::new(WatchedFile {
            inner,
            point,
            faults: self.faults.clone(),
            merge_failures: self.merge_failures.clone(),
        })))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(path)
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let is_meta = path == Path::new(META_FILE);
        let point = if is_meta {
            WritePoint::IndexMeta
        } else {
            write_point()
        };
        self.faults.check(point)?;
        self.inner.atomic_write(path, data)?;
        if is_meta {
            // the rename of the commit point is durable only once the folder is
            self.inner.sync_directory()?;
        }
        Ok(())
    }

    fn sync_directory(&self) -> io::Result<()> {
        self.faults.check(write_point())?;
        self.inner.sync_directory()
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}
