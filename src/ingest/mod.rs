//! The one export path behind both OTLP transports: authorize, map, queue for the writer, and
//! answer with the outcome (full or partial success) or an error.

mod wal;
mod writer;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

pub use writer::{IngestQueue, WriteError, WriterOptions, WriterThread, spawn_writer};

use crate::auth::{AuthError, KeyStore, Scope};
use crate::mapping::{MappedRequest, MappingConfig, map_request};
use crate::metrics::{Metrics, RejectLabels};

/// How many rejection reasons an error message names.
const REASONS_SHOWN: usize = 3;

/// How long a client should wait before retrying an export refused for overload.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A successful export: every record accepted, or some rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOutcome {
    /// Records that could not be mapped; 0 on full success.
    pub rejected: u64,
    /// The first reasons, in English; empty on full success.
    pub error_message: String,
}

/// Why an export failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("logbridge is overloaded, retry later")]
    Overloaded,
    #[error("logbridge is shutting down or its index failed, retry later")]
    Unavailable,
}

/// Exports logs; shared by the gRPC and HTTP receivers.
#[derive(Clone)]
pub struct ExportService {
    keys: KeyStore,
    mapping: Arc<MappingConfig>,
    queue: IngestQueue,
    metrics: Arc<Metrics>,
}

impl ExportService {
    /// An export service writing to `queue`.
    pub fn new(
        keys: KeyStore,
        mapping: MappingConfig,
        queue: IngestQueue,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            keys,
            mapping: Arc::new(mapping),
            queue,
            metrics,
        }
    }

    /// Checks the caller's `Authorization` header for the ingest scope.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<Option<String>, ExportError> {
        Ok(self.keys.authorize(authorization, Scope::Ingest)?.user_id)
    }

    /// Maps and writes the records of an export from a caller whose key is bound to `key_user`.
    pub async fn export(
        &self,
        key_user: Option<&str>,
        request: &ExportLogsServiceRequest,
    ) -> Result<ExportOutcome, ExportError> {
        let received_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let MappedRequest {
            logs,
            rejected,
            records,
        } = map_request(&self.mapping, key_user, received_nanos, request);
        self.metrics.records_received.inc_by(records as u64);
        for (_, reason) in &rejected {
            self.metrics
                .records_rejected
                .get_or_create(&RejectLabels {
                    reason: reason.label(),
                })
                .inc();
        }
        if !logs.is_empty() {
            let accepted = logs.len() as u64;
            self.queue.write(logs).await.map_err(|e| match e {
                WriteError::QueueFull => ExportError::Overloaded,
                WriteError::Closed | WriteError::Store(_) | WriteError::Wal(_) => {
                    ExportError::Unavailable
                }
            })?;
            self.metrics.records_accepted.inc_by(accepted);
        }
        if rejected.is_empty() {
            return Ok(ExportOutcome::default());
        }
        let reasons: Vec<String> = rejected
            .iter()
            .take(REASONS_SHOWN)
            .map(|(index, reason)| format!("record {index}: {reason}"))
            .collect();
        let num_rejected = rejected.len() as u64;
        tracing::debug!(rejected = num_rejected, total = records, "records rejected");
        let more = if rejected.len() > REASONS_SHOWN {
            "; ..."
        } else {
            ""
        };
        Ok(ExportOutcome {
            rejected: num_rejected,
            error_message: format!(
                "{num_rejected} of {records} log records rejected: {}{more}",
                reasons.join("; ")
            ),
        })
    }
}
