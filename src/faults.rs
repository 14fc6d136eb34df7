//! Storage faults on command: the write points of the write-ahead log and of the index fail with
//! a real `ENOSPC` or `EIO` while a test says so, for the faults a full disk does not reach in a
//! fixed order (a failed fsync, a failing merge, `meta.json`, the log's rotation).
//!
//! A [`Faults`] made with [`Faults::none`] (what the server runs with) costs one branch per check.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// A place where logbridge writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WritePoint {
    /// Appending frames to the write-ahead log.
    WalWrite,
    /// The fsync that makes appended frames durable.
    WalSync,
    /// Starting a fresh log segment after a commit, and deleting the old ones.
    WalRotate,
    /// Index files written while indexing and committing: segment files and their fsyncs.
    IndexWrite,
    /// `meta.json`, the commit point of the index.
    IndexMeta,
    /// The files a merge writes.
    Merge,
}

/// How a write point fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `ENOSPC`: the disk is full.
    NoSpace,
    /// `EIO`: the device failed.
    Io,
}

/// Linux's `ENOSPC`.
const ENOSPC: i32 = 28;
/// Linux's `EIO`.
const EIO: i32 = 5;

impl Fault {
    /// The error a failing system call returns.
    pub fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            Fault::NoSpace => ENOSPC,
            Fault::Io => EIO,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Armed {
    fault: Fault,
    /// Failures left; `None` until cleared.
    remaining: Option<u32>,
}

#[derive(Debug, Default)]
struct State {
    armed: HashMap<WritePoint, Armed>,
    /// Failures injected so far, by write point.
    hits: HashMap<WritePoint, u64>,
}

/// The faults armed at each write point; cheap to clone, shared by everything that writes.
#[derive(Debug, Clone, Default)]
pub struct Faults(Option<Arc<Mutex<State>>>);

impl Faults {
    /// No injection: every check passes.
    pub fn none() -> Self {
        Self(None)
    }

    /// An injector that tests arm and clear.
    pub fn injector() -> Self {
        Self(Some(Arc::default()))
    }

    /// Makes `point` fail with `fault` until [`Faults::clear`].
    pub fn fail(&self, point: WritePoint, fault: Fault) {
        self.arm(point, fault, None);
    }

    /// Makes `point` fail with `fault` the next `times` times it is reached.
    pub fn fail_times(&self, point: WritePoint, fault: Fault, times: u32) {
        self.arm(point, fault, Some(times));
    }

    /// Lets `point` work again.
    pub fn clear(&self, point: WritePoint) {
        if let Some(mut state) = self.lock() {
            state.armed.remove(&point);
        }
    }

    /// How many failures `point` has returned.
    pub fn hits(&self, point: WritePoint) -> u64 {
        self.lock()
            .map_or(0, |state| state.hits.get(&point).copied().unwrap_or(0))
    }

    /// The error `point` must return now, if it is armed.
    pub fn check(&self, point: WritePoint) -> io::Result<()> {
        let Some(mut state) = self.lock() else {
            return Ok(());
        };
        let Some(armed) = state.armed.get_mut(&point) else {
            return Ok(());
        };
        let fault = armed.fault;
        match &mut armed.remaining {
            Some(0) => {
                state.armed.remove(&point);
                return Ok(());
            }
            Some(n) => *n -= 1,
            None => {}
        }
        *state.hits.entry(point).or_default() += 1;
        Err(fault.error())
    }

    fn arm(&self, point: WritePoint, fault: Fault, remaining: Option<u32>) {
        let mut state = self
            .lock()
            .expect("faults are armed only on an injector (Faults::injector)");
        state.armed.insert(point, Armed { fault, remaining });
    }

    fn lock(&self) -> Option<MutexGuard<'_, State>> {
        let inner = self.0.as_ref()?;
        Some(
            inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armed_points_fail_with_real_errors_until_cleared_or_spent() {
        let none = Faults::none();
        assert!(none.check(WritePoint::WalSync).is_ok());

        let faults = Faults::injector();
        assert!(faults.check(WritePoint::WalWrite).is_ok());
        faults.fail(WritePoint::WalWrite, Fault::NoSpace);
        for _ in 0..3 {
            let err = faults.check(WritePoint::WalWrite).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        }
        assert!(faults.check(WritePoint::IndexMeta).is_ok());
        faults.clear(WritePoint::WalWrite);
        assert!(faults.check(WritePoint::WalWrite).is_ok());
        assert_eq!(faults.hits(WritePoint::WalWrite), 3);

        faults.fail_times(WritePoint::WalSync, Fault::Io, 2);
        assert_eq!(
            faults
                .check(WritePoint::WalSync)
                .unwrap_err()
                .raw_os_error(),
            Some(EIO)
        );
        assert!(faults.check(WritePoint::WalSync).is_err());
        assert!(faults.check(WritePoint::WalSync).is_ok());
        assert!(faults.check(WritePoint::WalSync).is_ok());
        assert_eq!(faults.hits(WritePoint::WalSync), 2);
    }
}
