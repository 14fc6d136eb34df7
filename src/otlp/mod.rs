//! OTLP receivers: gRPC and HTTP (protobuf and JSON), both in front of one export service.

pub mod grpc;
pub mod http;
mod json;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};

pub use json::{JsonError, decode as decode_json};

use crate::ingest::ExportOutcome;

/// The OTLP response for an outcome: `partial_success` set only when records were rejected.
fn export_response(outcome: ExportOutcome) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: (outcome.rejected > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: i64::try_from(outcome.rejected).unwrap_or(i64::MAX),
            error_message: outcome.error_message,
        }),
    }
}
