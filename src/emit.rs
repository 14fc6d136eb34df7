//! `logbridge emit`: a voice-agent worker simulator that sends activity logs through the Rust
//! OpenTelemetry SDK, exactly as an instrumented worker does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use opentelemetry::logs::{AnyValue, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_otlp::{
    Compression, LogExporter, Protocol, RetryPolicy, WithExportConfig as _, WithHttpConfig as _,
    WithTonicConfig as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, SdkLoggerProvider};
use serde_json::Value;

use crate::mapping::LogStatus;
use crate::workload::{Activity, Workload};

/// Records handed to the SDK between two flushes; below the batch processor's queue size (2048),
/// so none is dropped.
const CHUNK: usize = 2000;

/// Longest wait for the SDK to export one chunk, retries included.
const FLUSH_PATIENCE: Duration = Duration::from_secs(120);

/// Longest time the SDK spends on one export: its retries share this budget with the export
/// itself, so it is what bounds waiting out an overloaded server, not the count of retries.
const EXPORT_PATIENCE: Duration = Duration::from_secs(60);

/// How an export is retried: a server refusing with overload asks for a second (`Retry-After`),
/// and the SDK waits just that; its own policy gives up after three retries, which a busy server
/// outlasts. Sixty retries, at most 5 s apart, last the whole [`EXPORT_PATIENCE`].
fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(60)
        .with_max_delay(Duration::from_secs(5))
}

/// How the simulator sends.
#[derive(Debug, Clone)]
pub struct EmitOptions {
    /// `grpc`, `http/protobuf` or `http/json`.
    pub protocol: Protocol,
    /// Base URL of logbridge's OTLP receiver; `None` leaves it to `OTEL_EXPORTER_OTLP_*`.
    pub endpoint: Option<String>,
    /// The API key; `None` leaves it to `OTEL_EXPORTER_OTLP_HEADERS`.
    pub key: Option<String>,
    /// How many activity logs to send.
    pub count: usize,
    /// Sets the `user.id` attribute, for platform keys that are not bound to a user.
    pub user: Option<String>,
    /// Seed of the workload: the same seed sends the same activities.
    pub seed: u64,
    /// Compress with gzip.
    pub gzip: bool,
}

/// Builds the SDK exporter for the options. Must run inside a tokio runtime (gRPC).
pub fn exporter(options: &EmitOptions) -> anyhow::Result<LogExporter> {
    let exporter = match options.protocol {
        Protocol::Grpc => {
            let mut builder = LogExporter::builder()
                .with_tonic()
                .with_protocol(Protocol::Grpc)
                .with_timeout(EXPORT_PATIENCE)
                .with_retry_policy(retry_policy());
            if let Some(endpoint) = &options.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            if let Some(key) = &options.key {
                let mut metadata = tonic::metadata::MetadataMap::new();
                metadata.insert(
                    "authorization",
                    format!("Bearer {key}")
                        .parse()
                        .context("the key is not a valid header value")?,
                );
                builder = builder.with_metadata(metadata);
            }
            if options.gzip {
                builder = builder.with_compression(Compression::Gzip);
            }
            builder.build()?
        }
        protocol => {
            let mut builder = LogExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .with_timeout(EXPORT_PATIENCE)
                .with_retry_policy(retry_policy());
            if let Some(endpoint) = &options.endpoint {
                let base = endpoint.trim_end_matches('/');
                builder = builder.with_endpoint(format!("{base}/v1/logs"));
            }
            if let Some(key) = &options.key {
                builder = builder.with_headers(HashMap::from([(
                    "authorization".to_owned(),
                    format!("Bearer {key}"),
                )]));
            }
            if options.gzip {
                builder = builder.with_compression(Compression::Gzip);
            }
            builder.build()?
        }
    };
    Ok(exporter)
}

/// Sends `options.count` activity logs and waits until the SDK has exported them all.
pub async fn emit(options: &EmitOptions) -> anyhow::Result<()> {
    send(exporter(options)?, options).await
}

/// Sends `options.count` activity logs through `exporter` (built by the caller, e.g. with TLS
/// settings of its own) and waits until the SDK has exported them all. Fails when the SDK gave
/// up on any of them.
pub async fn send(exporter: LogExporter, options: &EmitOptions) -> anyhow::Result<()> {
    let undelivered = Arc::new(AtomicU64::new(0));
    let exporter = Counted {
        inner: exporter,
        undelivered: undelivered.clone(),
    };
    let provider = SdkLoggerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("logbridge-emit")
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let logger = provider.logger("logbridge.emit");
    let mut activities = Workload::new(options.seed).take(options.count).peekable();
    while activities.peek().is_some() {
        for activity in activities.by_ref().take(CHUNK) {
            let mut record = logger.create_log_record();
            fill_record(&mut record, &activity, options.user.as_deref());
            logger.emit(record);
        }
        flush(&provider).await?;
    }
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await?
        .context("shutting down the exporter failed")?;
    match undelivered.load(Ordering::Relaxed) {
        0 => Ok(()),
        n => {
            anyhow::bail!("{n} activity logs were not delivered: the SDK gave up on their exports")
        }
    }
}

/// The exporter, counting the logs of exports it gave up on: the SDK drops such a batch and says
/// so only in its own diagnostics.
#[derive(Debug)]
struct Counted {
    inner: LogExporter,
    undelivered: Arc<AtomicU64>,
}

impl opentelemetry_sdk::logs::LogExporter for Counted {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let logs = batch.iter().count() as u64;
        let exported = self.inner.export(batch).await;
        if exported.is_err() {
            self.undelivered.fetch_add(logs, Ordering::Relaxed);
        }
        exported
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Waits until the SDK has exported everything handed to it. The SDK gives up waiting on a flush
/// after 5 s while its exports go on (retrying an overloaded server takes longer): such a flush
/// is asked again, for up to [`FLUSH_PATIENCE`] in all.
async fn flush(provider: &SdkLoggerProvider) -> anyhow::Result<()> {
    let deadline = Instant::now() + FLUSH_PATIENCE;
    loop {
        let flushing = provider.clone();
        match tokio::task::spawn_blocking(move || flushing.force_flush()).await? {
            Ok(()) => return Ok(()),
            Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
            Err(e) => return Err(e).context("exporting to logbridge failed"),
        }
    }
}

/// Whether a flush only gave up waiting. The provider reports its processor's `Timeout` inside
/// the text of an `InternalFailure`.
fn is_timeout(error: &OTelSdkError) -> bool {
    match error {
        OTelSdkError::Timeout(_) => true,
        OTelSdkError::InternalFailure(message) => message.contains("Timeout("),
        _ => false,
    }
}

/// Fills an SDK log record the way an instrumented worker does.
pub fn fill_record(
    record: &mut impl opentelemetry::logs::LogRecord,
    activity: &Activity,
    user: Option<&str>,
) {
    let now = SystemTime::now();
    record.set_timestamp(now);
    record.set_observed_timestamp(now);
    record.set_event_name(activity.log_type.as_str());
    match activity.status {
        LogStatus::Success => {
            record.set_severity_number(Severity::Info);
            record.set_severity_text("INFO");
        }
        LogStatus::Error => {
            record.set_severity_number(Severity::Error);
            record.set_severity_text("ERROR");
        }
    }
    record.set_body(AnyValue::from(activity.message.clone()));
    record.add_attribute("activity.log_type", activity.log_type.as_str());
    record.add_attribute("activity.status", activity.status.as_str());
    record.add_attribute("activity.assistant_id", activity.assistant_id.clone());
    record.add_attribute("activity.room_name", activity.room_name.clone());
    record.add_attribute("activity.latency_ms", activity.latency_ms as i64);
    record.add_attribute("activity.request_data", to_any(&activity.request_data));
    record.add_attribute("activity.response_data", to_any(&activity.response_data));
    if let Some(user) = user {
        record.add_attribute("user.id", user.to_owned());
    }
}

/// JSON to an OpenTelemetry value: objects become maps (kvlists on the wire).
fn to_any(value: &Value) -> AnyValue {
    match value {
        Value::Null => AnyValue::from(""),
        Value::Bool(b) => AnyValue::from(*b),
        Value::Number(n) => n
            .as_i64()
            .map(AnyValue::from)
            .unwrap_or_else(|| AnyValue::from(n.as_f64().unwrap_or_default())),
        Value::String(s) => AnyValue::from(s.clone()),
        Value::Array(items) => AnyValue::ListAny(Box::new(items.iter().map(to_any).collect())),
        Value::Object(map) => AnyValue::Map(Box::new(
            map.iter()
                .map(|(k, v)| (k.clone().into(), to_any(v)))
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_timeouts_are_recognized_however_reported() {
        assert!(is_timeout(&OTelSdkError::Timeout(Duration::from_secs(5))));
        // what SdkLoggerProvider::force_flush reports for a processor that timed out
        assert!(is_timeout(&OTelSdkError::InternalFailure(
            "errs: [Err(Timeout(5s))]".to_owned()
        )));
        assert!(!is_timeout(&OTelSdkError::InternalFailure(
            "errs: [Err(InternalFailure(\"connection refused\"))]".to_owned()
        )));
        assert!(!is_timeout(&OTelSdkError::AlreadyShutdown));
    }
}
