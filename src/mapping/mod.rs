//! OTLP LogRecord to activity log: a pure function, no I/O.
//!
//! Each field is read from the first of its configured [`Source`]s that is present (SPEC section 3).
//! A record that cannot be mapped is rejected with a [`RejectReason`], never dropped silently.

mod sources;
mod value;

use std::fmt;
use std::str::FromStr;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use sources::{FieldSources, Found, MappingConfig, ResourceAttributes, Source};
pub use value::{for_each_structural_byte, to_json};

/// What an activity log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogType {
    ToolCall,
    EndCallWebhook,
    InboundContextLookup,
}

impl LogType {
    /// Every log type, in documentation order.
    pub const ALL: [LogType; 3] = [
        LogType::ToolCall,
        LogType::EndCallWebhook,
        LogType::InboundContextLookup,
    ];

    /// The wire name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            LogType::ToolCall => "tool_call",
            LogType::EndCallWebhook => "end_call_webhook",
            LogType::InboundContextLookup => "inbound_context_lookup",
        }
    }
}

impl FromStr for LogType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        LogType::ALL.into_iter().find(|t| t.as_str() == s).ok_or(())
    }
}

/// Whether the audited action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStatus {
    Success,
    Error,
}

impl LogStatus {
    /// Every status, in documentation order.
    pub const ALL: [LogStatus; 2] = [LogStatus::Success, LogStatus::Error];

    /// The wire name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStatus::Success => "success",
            LogStatus::Error => "error",
        }
    }
}

impl FromStr for LogStatus {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "success" => Ok(LogStatus::Success),
            "error" => Ok(LogStatus::Error),
            _ => Err(()),
        }
    }
}

/// OTLP `SEVERITY_NUMBER_ERROR`: this and above derive `status = error`.
const SEVERITY_ERROR: i32 = 17;

/// Longest message kept, in bytes: a longer one is cut here and marked as truncated.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Largest `request_data` or `response_data`, in bytes of JSON: a larger one rejects the record.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// Deepest nesting of `request_data` or `response_data`: a deeper one rejects the record.
pub const MAX_DATA_DEPTH: usize = 32;
/// Longest `assistant_id`, `room_name` or user, in bytes: a longer one rejects the record.
/// `severity_text` is cut to it.
pub const MAX_NAME_BYTES: usize = 256;

/// One activity log, as stored and served.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActivityLog {
    /// The tenant: reads are always scoped to it.
    pub user_id: String,
    pub log_type: LogType,
    pub status: LogStatus,
    pub assistant_id: String,
    pub room_name: String,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_nanos: u64,
    pub message: String,
    /// A JSON object, as text.
    pub request_data: Box<RawValue>,
    /// A JSON object, as text.
    pub response_data: Box<RawValue>,
    pub latency_ms: u64,
    /// Lower-case hex, when the record carried a valid trace id.
    pub trace_id: Option<String>,
    /// Lower-case hex, when the record carried a valid span id.
    pub span_id: Option<String>,
    pub severity_text: Option<String>,
}

impl ActivityLog {
    /// The memory the log holds, in bytes: the structure and the text it owns.
    pub fn memory_bytes(&self) -> usize {
        let optional = |text: &Option<String>| text.as_ref().map_or(0, String::len);
        std::mem::size_of::<Self>()
            + self.user_id.len()
            + self.assistant_id.len()
            + self.room_name.len()
            + self.message.len()
            + self.request_data.get().len()
            + self.response_data.get().len()
            + optional(&self.trace_id)
            + optional(&self.span_id)
            + optional(&self.severity_text)
    }
}

/// Why a record could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    MissingLogType,
    UnknownLogType(String),
    InvalidStatus(String),
    MissingUser,
    UserMismatch,
    InvalidField {
        field: &'static str,
        source: String,
        expected: &'static str,
    },
    TooLong {
        field: &'static str,
        limit: usize,
    },
    TooDeep {
        field: &'static str,
        limit: usize,
    },
    /// Older than its user's retention: it would be deleted at once.
    Expired {
        days: u32,
    },
}

impl RejectReason {
    /// A short, stable label for counting rejections by reason.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::MissingLogType => "missing_log_type",
            RejectReason::UnknownLogType(_) => "unknown_log_type",
            RejectReason::InvalidStatus(_) => "invalid_status",
            RejectReason::MissingUser => "missing_user",
            RejectReason::UserMismatch => "user_mismatch",
            RejectReason::InvalidField { .. } => "invalid_field",
            RejectReason::TooLong { .. } => "too_long",
            RejectReason::TooDeep { .. } => "too_deep",
            RejectReason::Expired { .. } => "expired",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::MissingLogType => f.write_str("no log_type"),
            RejectReason::UnknownLogType(found) => write!(
                f,
                "unknown log_type {found:?} (expected tool_call, end_call_webhook or inbound_context_lookup)"
            ),
            RejectReason::InvalidStatus(found) => {
                write!(f, "invalid status {found:?} (expected success or error)")
            }
            RejectReason::MissingUser => {
                f.write_str("no user: the key has no user_id and the record no user.id")
            }
            RejectReason::UserMismatch => {
                f.write_str("user.id does not match the user of the ingest key")
            }
            RejectReason::InvalidField {
                field,
                source,
                expected,
            } => write!(f, "{field} from {source} is not {expected}"),
            RejectReason::TooLong { field, limit } => {
                write!(f, "{field} is longer than {limit} bytes")
            }
            RejectReason::TooDeep { field, limit } => {
                write!(f, "{field} nests deeper than {limit} levels")
            }
            RejectReason::Expired { days } => write!(
                f,
                "timestamp is older than the user's retention of {days} days"
            ),
        }
    }
}

/// What a record is mapped in the context of, besides the record itself.
#[derive(Debug, Clone, Copy)]
pub struct RecordContext<'a> {
    /// The attributes of the record's Resource that the mapping reads.
    pub resource: &'a ResourceAttributes<'a>,
    /// The user the ingest key is bound to, if any.
    pub key_user: Option<&'a str>,
    /// When the export arrived, for records with neither time set.
    pub received_nanos: u64,
}

/// The activity logs of an export request, and what could not be mapped.
#[derive(Debug)]
pub struct MappedRequest {
    pub logs: Vec<ActivityLog>,
    /// Each rejected record's position in the request (counting across resources and scopes)
    /// and why it was rejected.
    pub rejected: Vec<(usize, RejectReason)>,
    /// Records in the request.
    pub records: usize,
}

/// What becomes of a mapped log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Keep,
    /// The log is rejected, like a record that cannot be mapped.
    Reject(RejectReason),
    /// The whole request is refused: mapping stops.
    Stop,
}

/// Maps every record of an export request from a key bound to `key_user`, received at
/// `received_nanos`. `admit` is asked before each mapped log is kept (to check its age and
/// account for the memory it holds); when it stops, mapping stops and the answer is `None`.
pub fn map_request(
    config: &MappingConfig,
    key_user: Option<&str>,
    received_nanos: u64,
    request: &ExportLogsServiceRequest,
    mut admit: impl FnMut(&ActivityLog) -> Admission,
) -> Option<MappedRequest> {
    let mut mapped = MappedRequest {
        logs: Vec::new(),
        rejected: Vec::new(),
        records: 0,
    };
    for resource_logs in &request.resource_logs {
        let attributes = resource_logs
            .resource
            .as_ref()
            .map_or(&[][..], |r| &r.attributes[..]);
        let resource = ResourceAttributes::new(config, attributes);
        let ctx = RecordContext {
            resource: &resource,
            key_user,
            received_nanos,
        };
        for record in resource_logs
            .scope_logs
            .iter()
            .flat_map(|scope| &scope.log_records)
        {
            match map_record(config, &ctx, record).map(|log| (admit(&log), log)) {
                Ok((Admission::Keep, log)) => mapped.logs.push(log),
                Ok((Admission::Stop, _)) => return None,
                Ok((Admission::Reject(reason), _)) | Err(reason) => {
                    mapped.rejected.push((mapped.records, reason));
                }
            }
            mapped.records += 1;
        }
    }
    Some(mapped)
}

/// Maps one OTLP LogRecord to an activity log.
pub fn map_record<'c>(
    config: &'c MappingConfig,
    ctx: &RecordContext<'_>,
    record: &LogRecord,
) -> Result<ActivityLog, RejectReason> {
    let first = |sources: &'c [Source]| first_present(sources, record, ctx.resource);
    let text =
        |field: &'static str, sources: &'c [Source]| -> Result<Option<String>, RejectReason> {
            let Some((source, found)) = first(sources) else {
                return Ok(None);
            };
            let text = scalar_text(found).ok_or_else(|| RejectReason::InvalidField {
                field,
                source: source.to_string(),
                expected: "a string",
            })?;
            if text.len() > MAX_NAME_BYTES {
                return Err(RejectReason::TooLong {
                    field,
                    limit: MAX_NAME_BYTES,
                });
            }
            Ok(Some(text))
        };

    let log_type = match text("log_type", &config.log_type)? {
        None => return Err(RejectReason::MissingLogType),
        Some(name) => name
            .parse::<LogType>()
            .map_err(|()| RejectReason::UnknownLogType(name))?,
    };
    let status = match text("status", &config.status)? {
        Some(name) => name
            .parse::<LogStatus>()
            .map_err(|()| RejectReason::InvalidStatus(name))?,
        None if record.severity_number >= SEVERITY_ERROR => LogStatus::Error,
        None => LogStatus::Success,
    };
    let record_user = text("user_id", &config.user_id)?;
    let user_id = match (ctx.key_user, record_user) {
        (Some(key_user), Some(record_user)) if record_user != key_user => {
            return Err(RejectReason::UserMismatch);
        }
        (Some(key_user), _) => key_user.to_owned(),
        (None, Some(record_user)) if !record_user.is_empty() => record_user,
        (None, _) => return Err(RejectReason::MissingUser),
    };
    let message = match first(&config.message).map(|(_, found)| found) {
        None => String::new(),
        Some(Found::Any(value)) if !matches!(value, Value::StringValue(_)) => {
            truncated_message(&to_json(value).to_string())
        }
        Some(found) => truncated_message(found.as_str().unwrap_or_default()),
    };
    let object = |field: &'static str, sources: &'c [Source]| match first(sources) {
        None => Ok(empty_object()),
        Some((source, found)) => {
            let object = json_object(found).ok_or_else(|| RejectReason::InvalidField {
                field,
                source: source.to_string(),
                expected: "a kvlist or a string holding a JSON object",
            })?;
            if object.get().len() > MAX_DATA_BYTES {
                return Err(RejectReason::TooLong {
                    field,
                    limit: MAX_DATA_BYTES,
                });
            }
            if json_depth(object.get()) > MAX_DATA_DEPTH {
                return Err(RejectReason::TooDeep {
                    field,
                    limit: MAX_DATA_DEPTH,
                });
            }
            Ok(object)
        }
    };
    let latency_ms = match first(&config.latency_ms) {
        None => 0,
        Some((source, found)) => latency(found).ok_or_else(|| RejectReason::InvalidField {
            field: "latency_ms",
            source: source.to_string(),
            expected: "a non-negative number",
        })?,
    };

    Ok(ActivityLog {
        user_id,
        log_type,
        status,
        assistant_id: text("assistant_id", &config.assistant_id)?.unwrap_or_default(),
        room_name: text("room_name", &config.room_name)?.unwrap_or_default(),
        timestamp_nanos: [record.time_unix_nano, record.observed_time_unix_nano]
            .into_iter()
            .find(|&t| t != 0)
            .unwrap_or(ctx.received_nanos),
        message,
        request_data: object("request_data", &config.request_data)?,
        response_data: object("response_data", &config.response_data)?,
        latency_ms,
        trace_id: hex_id(&record.trace_id, 16),
        span_id: hex_id(&record.span_id, 8),
        severity_text: Some(record.severity_text.as_str())
            .filter(|s| !s.is_empty())
            .map(|s| truncate_utf8(s, MAX_NAME_BYTES).to_owned()),
    })
}

/// The first source that has a value, and the value.
fn first_present<'s, 'a>(
    sources: &'s [Source],
    record: &'a LogRecord,
    resource: &ResourceAttributes<'a>,
) -> Option<(&'s Source, Found<'a>)> {
    sources
        .iter()
        .find_map(|s| s.find(record, resource).map(|found| (s, found)))
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

/// A message within [`MAX_MESSAGE_BYTES`], marked when cut.
fn truncated_message(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_owned();
    }
    format!(
        "{}... [truncated from {} bytes]",
        truncate_utf8(text, MAX_MESSAGE_BYTES),
        text.len()
    )
}

/// How deeply the objects and arrays of a valid JSON text nest.
fn json_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for_each_structural_byte(json.as_bytes(), |byte| match byte {
        b'{' | b'[' => {
            depth += 1;
            deepest = deepest.max(depth);
        }
        b'}' | b']' => depth = depth.saturating_sub(1),
        _ => {}
    });
    deepest
}

/// A scalar as text: strings as they are, numbers and booleans printed.
fn scalar_text(found: Found<'_>) -> Option<String> {
    match found {
        Found::Any(Value::IntValue(i)) => Some(i.to_string()),
        Found::Any(Value::BoolValue(b)) => Some(b.to_string()),
        Found::Any(Value::DoubleValue(d)) => Some(d.to_string()),
        _ => found.as_str().map(str::to_owned),
    }
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("{} is valid JSON")
}

/// A kvlist as a JSON object, or a string that holds one (kept as sent, nulls included).
fn json_object(found: Found<'_>) -> Option<Box<RawValue>> {
    if let Found::Any(value @ Value::KvlistValue(_)) = found {
        return serde_json::value::to_raw_value(&to_json(value)).ok();
    }
    let text = found.as_str()?.trim();
    if !text.starts_with('{') {
        return None;
    }
    serde_json::from_str::<Box<RawValue>>(text).ok()
}

fn latency(found: Found<'_>) -> Option<u64> {
    let from_f64 = |d: f64| (d.is_finite() && d >= 0.0).then(|| d.round() as u64);
    match found {
        Found::Any(Value::IntValue(i)) => u64::try_from(*i).ok(),
        Found::Any(Value::DoubleValue(d)) => from_f64(*d),
        _ => {
            let s = found.as_str()?.trim();
            s.parse::<u64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(from_f64))
        }
    }
}

/// Lower-case hex of a trace or span id of the right length that is not all zeros.
fn hex_id(bytes: &[u8], len: usize) -> Option<String> {
    (bytes.len() == len && bytes.iter().any(|&b| b != 0)).then(|| hex::encode(bytes))
}

/// A tool-call log with `message`, for tests of later stages.
#[cfg(test)]
pub(crate) fn example_log(message: &str) -> ActivityLog {
    ActivityLog {
        user_id: "u".into(),
        log_type: LogType::ToolCall,
        status: LogStatus::Success,
        assistant_id: "a".into(),
        room_name: "r".into(),
        timestamp_nanos: 1,
        message: message.into(),
        request_data: RawValue::from_string(r#"{"k": null}"#.into()).expect("valid JSON"),
        response_data: empty_object(),
        latency_ms: 5,
        trace_id: None,
        span_id: None,
        severity_text: Some("INFO".into()),
    }
}

#[cfg(test)]
mod tests;
