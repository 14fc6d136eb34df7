//! The one export path behind both OTLP transports: authorize, map, hand the logs to the writer,
//! and answer with the outcome (full or partial success) or an error.

mod budget;
mod chunk;
mod dedup;
mod wal;
mod writer;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

pub use budget::{BudgetSpent, MemoryBudget, Reservation};
pub use chunk::{EncodedLog, LogKey, MAX_LOGS as LOGS_PER_CHUNK, ranges as chunk_ranges};
pub use writer::{Health, IngestQueue, WriteError, WriterOptions, WriterThread, spawn_writer};

use crate::auth::{AuthError, KeyStore, Scope};
use crate::lifecycle::{Hold, LimitShare, LimitsConfig, Retention, Throttled, UserLimits};
use crate::mapping::{Admission, MappedRequest, MappingConfig, RejectReason, map_request};
use crate::metrics::{Metrics, RejectLabels};

/// How many rejection reasons an error message names.
const REASONS_SHOWN: usize = 3;

/// Longest pause before an export over a user's limit is refused.
const THROTTLE_PAUSE: Duration = Duration::from_millis(250);

/// How long a client should wait before retrying an export refused for overload.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why an export's records were not mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("the export maps to more than {limit} bytes of logs")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Budget(#[from] BudgetSpent),
}

/// A successful export: every record accepted, or some rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOutcome {
    /// Records that could not be mapped; 0 on full success.
    pub rejected: u64,
    /// The first reasons, in English; empty on full success.
    pub error_message: String,
}

/// Why an export's logs were not taken; each is worth a retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("logbridge is shutting down, retry later")]
    ShuttingDown,
    #[error("logbridge cannot store logs now ({0}), retry later")]
    Storage(String),
    /// A user of the export is over its ingest limit: nothing of it was taken.
    #[error(transparent)]
    Throttled(#[from] Throttled),
}

/// Now, in nanoseconds since the epoch.
pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Where accepted logs go: the single node's writer ([`IngestQueue`]) or, in cluster mode, the
/// stream; `server` picks one.
pub trait LogSink: Send + Sync + 'static {
    /// Writes `logs`; once this resolves to `Ok` they are durable. `reservation` covers their
    /// memory until then.
    fn write(
        &self,
        logs: Vec<EncodedLog>,
        reservation: Reservation,
    ) -> Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send + '_>>;
}

impl LogSink for IngestQueue {
    fn write(
        &self,
        logs: Vec<EncodedLog>,
        reservation: Reservation,
    ) -> Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send + '_>> {
        Box::pin(IngestQueue::write(self, logs, reservation))
    }
}

/// An export's records mapped: the logs to store, each with its encoding, and the records
/// rejected.
#[derive(Debug)]
pub struct Mapped {
    pub logs: Vec<EncodedLog>,
    /// Each rejected record's position in the request and why it was rejected.
    pub rejected: Vec<(usize, RejectReason)>,
    /// Records in the request.
    pub records: usize,
}

/// What decides which records are taken.
#[derive(Debug, Clone)]
pub struct IngestPolicy {
    pub mapping: MappingConfig,
    pub retention: Retention,
    pub limits: LimitsConfig,
    /// The part of each user's limit this node enforces.
    pub limit_share: LimitShare,
}

/// Exports logs; shared by the gRPC and HTTP receivers.
#[derive(Clone)]
pub struct ExportService {
    keys: KeyStore,
    mapping: Arc<MappingConfig>,
    sink: Arc<dyn LogSink>,
    budget: MemoryBudget,
    metrics: Arc<Metrics>,
    /// Logs already past their retention are rejected.
    retention: Arc<Retention>,
    limits: Arc<UserLimits>,
}

impl ExportService {
    /// An export service writing to `sink`, whose exports in flight hold at most what `budget`
    /// allows.
    pub fn new(
        keys: KeyStore,
        policy: IngestPolicy,
        sink: Arc<dyn LogSink>,
        budget: MemoryBudget,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            keys,
            mapping: Arc::new(policy.mapping),
            sink,
            budget,
            metrics,
            retention: Arc::new(policy.retention),
            limits: Arc::new(UserLimits::new(policy.limits, policy.limit_share)),
        }
    }

    /// Checks the caller's `Authorization` header for the ingest scope; returns the key's user.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<Option<String>, AuthError> {
        Ok(self.keys.authorize(authorization, Scope::Ingest)?.user_id)
    }

    /// Refuses an export of a key bound to `key_user` before its body is read when that user is
    /// over its limit already, so that a flood costs little.
    /// What it returns holds that user's room for the export until [`ExportService::submit`].
    pub async fn check_limit(&self, key_user: Option<&str>) -> Result<Option<Hold>, ExportError> {
        match key_user.map(|user| self.limits.check(user)) {
            Some(Err(throttled)) => Err(self.throttle(throttled).await),
            Some(Ok(hold)) => Ok(hold),
            None => Ok(None),
        }
    }

    /// The refusal of an export over a user's limit, after a pause of at most
    /// [`THROTTLE_PAUSE`] (never longer than the client is told to wait anyway): a client that
    /// ignores the advice and sends again at once is slowed to a few exports a second per
    /// request in flight, and costs the server, and the other users, next to nothing. The pause
    /// is jittered, so that many such requests do not come back all at once.
    async fn throttle(&self, throttled: Throttled) -> ExportError {
        self.metrics.exports_throttled.inc();
        let pause = throttled.retry_after.min(THROTTLE_PAUSE);
        tokio::time::sleep(pause.mul_f64(rand::random_range(0.5..=1.0))).await;
        throttled.into()
    }

    /// Takes the logs' records from their users' limits, all or none; what was taken, if any
    /// limit applies.
    fn charge(
        &self,
        logs: &[EncodedLog],
        hold: Option<Hold>,
    ) -> Result<Option<HashMap<String, u64>>, Throttled> {
        if self.limits.unlimited() {
            return Ok(None);
        }
        let mut per_user: HashMap<String, u64> = HashMap::new();
        for EncodedLog { log, .. } in logs {
            match per_user.get_mut(&log.user_id) {
                Some(count) => *count += 1,
                None => {
                    per_user.insert(log.user_id.clone(), 1);
                }
            }
        }
        self.limits.take(&per_user, hold)?;
        Ok(Some(per_user))
    }

    /// A reservation against the budget of exports in flight, held as the export is read.
    pub fn reservation(&self) -> Reservation {
        self.budget.reservation()
    }

    /// Maps the records of an export from a caller whose key is bound to `key_user`, counting
    /// them. `reservation` holds the decoded request (`decoded` bytes) and, as they are made,
    /// the logs with their encodings and write-ahead log frames; returns the logs, each
    /// encoded, and the bytes they hold.
    /// Logs that would hold more than a stage of the budget may refuse an export built to
    /// expand (a Resource attribute read by every record). Pure CPU work: call it off the async
    /// runtime.
    pub fn map(
        &self,
        key_user: Option<&str>,
        request: &ExportLogsServiceRequest,
        reservation: &mut Reservation,
        decoded: usize,
    ) -> Result<(Mapped, usize), MapError> {
        let received_nanos = now_nanos();
        let limit = reservation.stage_cap();
        let mut held = 0usize;
        let mut refusal = None;
        let retention = &self.retention;
        let mapped = map_request(&self.mapping, key_user, received_nanos, request, |log| {
            if !retention.keeps(&log.user_id, log.timestamp_nanos, received_nanos) {
                let days = retention.days_for(&log.user_id);
                return Admission::Reject(RejectReason::Expired { days });
            }
            // the log, its encoding and its frame of the write-ahead log
            let bytes = 3 * log.memory_bytes();
            held += bytes;
            let admitted = if held > limit {
                Err(MapError::TooLarge { limit })
            } else {
                reservation
                    .reserve_to(decoded + held)
                    .map_err(MapError::from)
            };
            match admitted {
                Ok(()) => Admission::Keep,
                Err(e) => {
                    refusal = Some(e);
                    Admission::Stop
                }
            }
        });
        let Some(mapped) = mapped else {
            return Err(refusal.unwrap_or(MapError::TooLarge { limit }));
        };
        self.metrics.records_received.inc_by(mapped.records as u64);
        for (_, reason) in &mapped.rejected {
            self.metrics
                .records_rejected
                .get_or_create(&RejectLabels {
                    reason: reason.label(),
                })
                .inc();
        }
        let MappedRequest {
            logs,
            rejected,
            records,
        } = mapped;
        let logs = logs.into_iter().map(EncodedLog::new).collect();
        let mapped = Mapped {
            logs,
            rejected,
            records,
        };
        Ok((mapped, held))
    }

    /// Writes the mapped logs (durable and indexed when this returns) and tells what was
    /// rejected. `reservation` covers their memory until the writer is done with them.
    pub async fn submit(
        &self,
        mapped: Mapped,
        reservation: Reservation,
        hold: Option<Hold>,
    ) -> Result<ExportOutcome, ExportError> {
        let Mapped {
            logs,
            rejected,
            records,
        } = mapped;
        if !logs.is_empty() {
            let accepted = logs.len() as u64;
            let charged = match self.charge(&logs, hold) {
                Ok(charged) => charged,
                Err(throttled) => {
                    // the pause holds no memory
                    drop((logs, reservation));
                    return Err(self.throttle(throttled).await);
                }
            };
            let written = self.sink.write(logs, reservation).await;
            if let Err(e) = written {
                if let Some(charged) = &charged {
                    self.limits.give_back(charged);
                }
                return Err(match e {
                    WriteError::Closed => ExportError::ShuttingDown,
                    WriteError::Storage(reason) => ExportError::Storage(reason),
                });
            }
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
