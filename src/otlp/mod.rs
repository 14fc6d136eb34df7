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

/// What an export whose length is known reserves before its body is read, per byte: about what
/// real traffic holds at its peak (decoding and mapping, with each log's JSON encoding, take it
/// to about 7 to 8 times its size).
/// Under a flood, exports are thereby admitted or refused whole, up front, instead of all
/// starting and then starving each other halfway; one that needs more reserves it as it goes.
pub const ADMISSION_PER_BYTE: usize = 8;
pub use json::{JsonError, decode as decode_json};

use crate::auth::AuthError;
use crate::ingest::{ExportError, ExportOutcome, ExportService, MapError, Reservation};
use crate::lifecycle::Hold;
use decode::{Compression, Format};

/// Why an export was refused, as both receivers answer it (each in its own terms, in one place).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// A body within the limit whose decoded or mapped form would take more than `limit`.
    #[error("the export {what} to more than {limit} bytes")]
    Expands { what: &'static str, limit: usize },
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
    hold: Option<Hold>,
    encoded: Encoded,
    mut reservation: Reservation,
    limits: ReceiveLimits,
) -> Result<ExportOutcome, Refusal> {
    let worker = service.clone();
    let (mapped, reservation) = tokio::task::spawn_blocking(move || {
        let (request, decoded) = decode::decode(
            encoded.body,
            encoded.format,
            encoded.compression,
            limits.max_message_bytes,
            &mut reservation,
        )?;
        let (mapped, held) = worker
            .map(key_user.as_deref(), &request, &mut reservation, decoded)
            .map_err(|e| match e {
                MapError::TooLarge { limit } => Refusal::Expands {
                    what: "maps",
                    limit,
                },
                MapError::Budget(_) => Refusal::Overloaded,
            })?;
        // the decoded request is gone: what is held now is the logs, until they are written
        drop(request);
        reservation.release_to(held);
        Ok::<_, Refusal>((mapped, reservation))
    })
    .await
    .map_err(|e| {
        Refusal::Unavailable(ExportError::Storage(format!("decoding task failed: {e}")))
    })??;
    Ok(service.submit(mapped, reservation, hold).await?)
}

/// Reads a request body of at most `limit` bytes within `timeout`, holding what it takes in
/// `reservation`. A body whose length is known up front (its `Content-Length`, or what
/// `declared` reads from its first bytes) is admitted or refused whole, before it is read.
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
        reservation.release_to(0);
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
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        admit(&mut bytes, len, limit, reservation)?;
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
            admit(&mut bytes, len, limit, reservation)?;
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

/// Admits a body of `len` bytes: holds what an export of that size holds at its peak, and makes
/// room for the whole body.
fn admit(
    bytes: &mut BytesMut,
    len: usize,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<(), Refusal> {
    make_room(bytes, len, limit, reservation)?;
    reservation
        .reserve_to(len.saturating_mul(ADMISSION_PER_BYTE))
        .map_err(|_| Refusal::Overloaded)
}

/// Makes room for `len` bytes in `bytes`, holding the memory that takes.
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
        bytes.reserve(len - bytes.len());
        reservation
            .reserve_to(bytes.capacity())
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
