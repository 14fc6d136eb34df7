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

use axum::body::{Body, Bytes, HttpBody as _};
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

/// Reads a request body of at most `limit` bytes within `timeout`, reserving what it holds. A
/// body whose length is known up front (its `Content-Length`, or what `declared` reads from its
/// first bytes) reserves all of it at once, so that under a flood an export is refused before
/// its body is read rather than halfway through.
async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
    reservation: &mut Reservation,
    declared: impl Fn(&[u8]) -> Option<usize>,
) -> Result<Bytes, Refusal> {
    let mut body = body;
    let deadline = tokio::time::Instant::now() + timeout;
    let read = collect_body(&mut body, limit, reservation, declared);
    let result = match tokio::time::timeout_at(deadline, read).await {
        Ok(result) => result,
        Err(_) => Err(Refusal::BodyTimeout(timeout)),
    };
    if let Err(Refusal::Overloaded | Refusal::TooLarge { .. }) = &result {
        // let a client that is still sending finish, keeping nothing, so that it reads the
        // answer: one that is cut off mid-body sees a broken pipe instead of the retry advice
        let _ = tokio::time::timeout_at(deadline, discard_body(&mut body, limit)).await;
    }
    result
}

async fn collect_body(
    body: &mut Body,
    limit: usize,
    reservation: &mut Reservation,
    declared: impl Fn(&[u8]) -> Option<usize>,
) -> Result<Bytes, Refusal> {
    let mut bytes = BytesMut::new();
    let mut known = body.size_hint().exact();
    if let Some(len) = known {
        make_room(
            &mut bytes,
            usize::try_from(len).unwrap_or(usize::MAX),
            limit,
            reservation,
        )?;
    }
    while let Some(frame) = body.frame().await {
        // a body that breaks off is one that did not arrive
        let frame = frame.map_err(|e| Refusal::Malformed(format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = bytes.len() + data.len();
        make_room(&mut bytes, len, limit, reservation)?;
        bytes.extend_from_slice(&data);
        if known.is_none()
            && let Some(len) = declared(&bytes)
        {
            known = Some(len as u64);
            make_room(&mut bytes, len, limit, reservation)?;
        }
    }
    Ok(bytes.freeze())
}

/// Reads and drops up to `limit` more bytes of a body.
async fn discard_body(body: &mut Body, limit: usize) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit {
                return;
            }
        }
    }
}

/// Makes room for `len` bytes in `bytes`, reserving the memory that takes.
fn make_room(
    bytes: &mut BytesMut,
    len: usize,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<(), Refusal> {
    if len > limit {
        return Err(Refusal::TooLarge { limit });
    }
    if len > bytes.capacity() {
        let before = bytes.capacity();
        bytes.reserve(len - bytes.len());
        reservation
            .grow(bytes.capacity() - before)
            .map_err(|_| Refusal::Overloaded)?;
    }
    Ok(())
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
