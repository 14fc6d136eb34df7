//! Running logbridge for years: retention, per-user ingest limits, files re-read while the
//! server runs (keys, certificates) and snapshots of the index.

pub mod keys;
mod retention;
pub mod watch;

pub use retention::{MAX_DAYS, Retention};
