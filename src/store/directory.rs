//! The index's directory: tantivy's `MmapDirectory` plus what it leaves out.
//!
//! - `meta.json` is renamed into place without an fsync of the folder, so a commit that returned
//!   could be undone by a power loss; this directory fsyncs the folder after it.
//! - Tantivy reports a failed segment write as "an index writer was killed"; this directory keeps
//!   the I/O error itself (a full disk, a failing device) for the operator.
//! - A merge that fails is only logged by tantivy; this directory counts write failures on merge
//!   threads, for `/metrics`.
//! - Tests make its write points fail on command ([`Faults`]): segment files, `meta.json`, and the
//!   files of a merge.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

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

/// What every write of the directory goes through.
#[derive(Debug)]
struct Watch {
    faults: Faults,
    merge_failures: Counter,
    /// The last error of a write outside merges.
    last_error: Mutex<Option<io::Error>>,
}

impl Watch {
    /// Runs a write at `point`: fails if a fault is armed there, and notes the error if any.
    fn run<T>(&self, point: WritePoint, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let result = self.faults.check(point).and_then(|()| op());
        if let Err(e) = &result {
            self.note(point, e);
        }
        result
    }

    fn note(&self, point: WritePoint, error: &io::Error) {
        if point == WritePoint::Merge {
            self.merge_failures.inc();
        } else {
            *self.lock() = Some(io::Error::new(error.kind(), error.to_string()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<io::Error>> {
        self.last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An `MmapDirectory` that fsyncs after `meta.json`, keeps write errors, counts merge failures
/// and injects faults.
#[derive(Debug, Clone)]
pub struct IndexDirectory {
    inner: MmapDirectory,
    watch: Arc<Watch>,
}

/// The handle that reads what the directory saw go wrong.
#[derive(Debug, Clone)]
pub struct WriteErrors(Arc<Watch>);

impl WriteErrors {
    /// The last error of a write outside merges, forgetting it.
    pub fn take(&self) -> Option<io::Error> {
        self.0.lock().take()
    }
}

impl IndexDirectory {
    /// Opens the directory at `path`.
    pub fn open(
        path: &Path,
        faults: Faults,
        merge_failures: Counter,
    ) -> Result<(Self, WriteErrors), tantivy::directory::error::OpenDirectoryError> {
        let watch = Arc::new(Watch {
            faults,
            merge_failures,
            last_error: Mutex::new(None),
        });
        let directory = Self {
            inner: MmapDirectory::open(path)?,
            watch: watch.clone(),
        };
        Ok((directory, WriteErrors(watch)))
    }
}

/// The write point of a file written by the current thread.
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

/// A file being written, through the directory's [`Watch`].
struct WatchedFile {
    inner: Box<dyn TerminatingWrite + Send + Sync>,
    point: WritePoint,
    watch: Arc<Watch>,
}

impl Write for WatchedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let inner = &mut self.inner;
        self.watch.run(self.point, || inner.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        let inner = &mut self.inner;
        self.watch.run(self.point, || inner.flush())
    }
}

impl TerminatingWrite for WatchedFile {
    fn terminate_ref(&mut self, token: AntiCallToken) -> io::Result<()> {
        let inner = &mut self.inner;
        self.watch.run(self.point, || inner.terminate_ref(token))
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
        let io_error = |e: io::Error| OpenWriteError::wrap_io_error(e, path.to_path_buf());
        self.watch.run(point, || Ok(())).map_err(io_error)?;
        let opened = self.inner.open_write(path);
        if let Err(OpenWriteError::IoError { io_error, .. }) = &opened {
            self.watch.note(point, io_error);
        }
        // the inner writer comes in a buffer of its own, still empty: unwrap it
        let inner = opened?.into_inner().map_err(|e| io_error(e.into_error()))?;
        Ok(BufWriter::new(Box::new(WatchedFile {
            inner,
            point,
            watch: self.watch.clone(),
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
        self.watch.run(point, || {
            self.inner.atomic_write(path, data)?;
            if is_meta {
                // the rename of the commit point is durable only once the folder is
                self.inner.sync_directory()?;
            }
            Ok(())
        })
    }

    fn sync_directory(&self) -> io::Result<()> {
        self.watch
            .run(write_point(), || self.inner.sync_directory())
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}
