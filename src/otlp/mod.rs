//! OTLP receivers: gRPC and HTTP (protobuf and JSON), both in front of one export path.
//!
//! Each receiver checks the key from the request's headers first, so a stranger's body is never
//! read, decompressed or decoded. Then [`receive`] reads the body under a deadline, a size limit
//! and the memory budget, decompresses, decodes and maps it on a blocking thread (so a big export
//! never stalls the async runtime), and hands the logs to the writer.

mod decode;
pub mod grpc;
pub mod http;
mod json;

use std::time::Duration;

use axum::body::{Body, Bytes};
use bytes::BytesMut;
use http_body_util::BodyExt as _;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};

pub use decode::MAX_BYTES_HELD_PER_BYTE;
pub use json::{JsonError, decode as decode_json};

use crate::auth::AuthError;
use crate::ingest::{ExportError, ExportOutcome, ExportService, Reservation};
use decode::{Compression, Format};

/// Why an export was refused, as both receivers answer it (each in its own terms, in one place).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The body does not decode; the message says where.
    #[error("{0}")]
    Malformed(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("logbridge is overloaded, retry later")]
    Overloaded,
    #[error(transparent)]
    Unavailable(#[from] ExportError),
}

/// Limits of reading one export.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveLimits {
    /// Largest export, after decompression.
    pub max_message_bytes: usize,
    /// The whole body must arrive within this.
    pub body_read_timeout: Duration,
}

/// An export body as it arrived.
struct Encoded {
    body: Bytes,
    format: Format,
    compression: Compression,
}

/// The one path of an authorized export: decode and map off the runtime, then write.
async fn receive(
    service: &ExportService,
    key_user: Option<String>,
    encoded: Encoded,
    mut reservation: Reservation,
    limits: ReceiveLimits,
) -> Result<ExportOutcome, Refusal> {
    let worker = service.clone();
    let (mapped, reservation) = tokio::task::spawn_blocking(move || {
        let request = decode::decode(
            encoded.body,
            encoded.format,
            encoded.compression,
            limits.max_message_bytes,
            &mut reservation,
        )?;
        Ok::<_, Refusal>((worker.map(key_user.as_deref(), &request), reservation))
    })
    .await
    .map_err(|e| {
        Refusal::Unavailable(ExportError::Storage(format!("decoding task failed: {e}")))
    })??;
    Ok(service.submit(mapped, reservation).await?)
}

/// Reads a request body of at most `limit` bytes within `timeout`, reserving what it holds.
async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
    reservation: &mut Reservation,
) -> Result<Bytes, Refusal> {
    let read = async {
        let mut body = body;
        let mut bytes = BytesMut::new();
        while let Some(frame) = body.frame().await {
            // a body that breaks off is one that did not arrive
            let frame =
                frame.map_err(|e| Refusal::Malformed(format!("cannot read the body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if bytes.len() + data.len() > limit {
                return Err(Refusal::TooLarge { limit });
            }
            reservation
                .grow(data.len())
                .map_err(|_| Refusal::Overloaded)?;
            bytes.extend_from_slice(&data);
        }
        Ok(bytes.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Refusal::BodyTimeout(timeout))?
}

/// The OTLP response for an outcome: `partial_success` set only when records were rejected.
fn export_response(outcome: ExportOutcome) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: (outcome.rejected > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: i64::try_from(outcome.rejected).unwrap_or(i64::MAX),
            error_message: outcome.error_message,
        }),
    }
}
