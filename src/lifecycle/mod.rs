//! Running logbridge for years: retention, per-user ingest limits, files re-read while the
//! server runs (keys, certificates) and snapshots of the index.

pub mod keys;
mod limits;
mod retention;
mod snapshot;
pub mod watch;

pub use limits::{Hold, LimitShare, LimitsConfig, Rate, Throttled, UserLimits};
pub use retention::{MAX_DAYS, Retention};
pub use snapshot::{SnapshotError, SnapshotReport, snapshot};
