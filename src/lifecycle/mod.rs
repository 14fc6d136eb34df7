//! Running logbridge for years: retention, per-user ingest limits, files watched for changes
//! (keys, certificates) and snapshots of the index.

mod retention;

pub use retention::{MAX_DAYS, Retention};
