//! OTLP/gRPC: `opentelemetry.proto.collector.logs.v1.LogsService/Export`.
//!
//! A unary gRPC call is served here directly on HTTP/2 rather than through tonic's generated
//! server, whose key check could only run after tonic has read, decompressed and decoded the
//! whole message on the async runtime. Here the key is checked from the headers before a byte of
//! the body is read; the body is read under the limits and the memory budget; the one message is
//! unframed and handed to the shared export path, which decompresses and decodes it off the
//! runtime. Answers are standard gRPC: a data frame and `grpc-status` trailers on success, a
//! trailers-only response on error (tonic's `Status`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use axum::routing::post;
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::decode::{Compression, Format};
use super::{Encoded, ReceiveLimits, Refusal, export_response, read_body, receive};
use crate::auth::AuthError;
use crate::ingest::{ExportError, ExportService, RETRY_AFTER};
use crate::metrics::{ExportLabels, Metrics};

/// The path of the Export method.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// The gRPC message prefix: a compressed flag and a 32-bit big-endian length.
const PREFIX: usize = 5;

#[derive(Clone)]
struct GrpcReceiver {
    service: ExportService,
    limits: ReceiveLimits,
    metrics: Arc<Metrics>,
}

/// The OTLP/gRPC routes; anything but Export is UNIMPLEMENTED.
pub fn router(service: ExportService, limits: ReceiveLimits, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(EXPORT_PATH, post(export))
        .fallback(|| async { trailers_only(Status::unimplemented("unknown gRPC method")) })
        .with_state(GrpcReceiver {
            service,
            limits,
            metrics,
        })
}

async fn export(State(receiver): State<GrpcReceiver>, headers: HeaderMap, body: Body) -> Response {
    let result = handle(&receiver, &headers, body).await;
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    receiver
        .metrics
        .exports
        .get_or_create(&ExportLabels {
            transport: "grpc",
            status: code_name(code).to_owned(),
        })
        .inc();
    match result {
        Ok(response) => response,
        Err(status) => trailers_only(status),
    }
}

async fn handle(
    receiver: &GrpcReceiver,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Status> {
    // protobuf only: not gRPC-Web, not `+json`
    let is_grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "application/grpc" || v == "application/grpc+proto");
    if !is_grpc {
        return Err(Status::invalid_argument(
            "content-type must be application/grpc",
        ));
    }
    // the key first: a stranger's body is never read
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let key_user = receiver
        .service
        .authorize(authorization)
        .map_err(|e| to_status(Refusal::Auth(e)))?;
    let hold = receiver
        .service
        .check_limit(key_user.as_deref())
        .await
        .map_err(|e| to_status(e.into()))?;
    let compression = match headers.get("grpc-encoding").map(HeaderValue::as_bytes) {
        None | Some(b"identity") => Compression::Identity,
        Some(b"gzip") => Compression::Gzip,
        Some(other) => {
            let mut status = Status::unimplemented(format!(
                "grpc-encoding {:?} is not supported (gzip or identity)",
                String::from_utf8_lossy(other)
            ));
            status.metadata_mut().insert(
                "grpc-accept-encoding",
                MetadataValue::from_static("gzip,identity"),
            );
            return Err(status);
        }
    };
    let limits = receiver.limits;
    let mut reservation = receiver.service.reservation();
    // a compressed message is at most as long as the limit (gzip does not pay off otherwise)
    let framed = read_body(
        body,
        PREFIX + limits.max_message_bytes,
        limits.body_read_timeout,
        &mut reservation,
        |first| Some(PREFIX + message_len(first)?),
    )
    .await
    .map_err(to_status)?;
    let (message, compression) =
        unframe(framed, compression, limits.max_message_bytes).map_err(to_status)?;
    let encoded = Encoded {
        body: message,
        format: Format::Protobuf,
        compression,
    };
    let outcome = receive(
        &receiver.service,
        key_user,
        hold,
        encoded,
        reservation,
        limits,
    )
    .await
    .map_err(to_status)?;
    Ok(ok_response(export_response(outcome).encode_to_vec()))
}

/// The length of the message a body starts with, once its prefix has arrived.
fn message_len(body: &[u8]) -> Option<usize> {
    let prefix = body.get(1..PREFIX)?;
    Some(u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize)
}

/// The one message of a unary call, and how it is compressed: a call that announced gzip may
/// still send a message uncompressed (its flag says which).
fn unframe(
    mut framed: Bytes,
    encoding: Compression,
    limit: usize,
) -> Result<(Bytes, Compression), Refusal> {
    let malformed = |what: &str| Refusal::Malformed(format!("invalid gRPC request: {what}"));
    if framed.len() < PREFIX {
        return Err(malformed("no message"));
    }
    let flag = framed[0];
    let len = message_len(&framed).expect("a whole prefix");
    if len > limit {
        return Err(Refusal::TooLarge { limit });
    }
    let compression = match (flag, encoding) {
        (0, _) => Compression::Identity,
        (1, Compression::Gzip) => Compression::Gzip,
        (1, Compression::Identity) => {
            return Err(malformed("a compressed message without grpc-encoding"));
        }
        _ => return Err(malformed("unknown compressed flag")),
    };
    if framed.len() != PREFIX + len {
        return Err(malformed("the body is not exactly one message"));
    }
    Ok((framed.split_off(PREFIX), compression))
}

fn to_status(refusal: Refusal) -> Status {
    let message = refusal.to_string();
    match refusal {
        Refusal::Auth(AuthError::Missing | AuthError::Unknown | AuthError::Expired(_)) => {
            Status::unauthenticated(message)
        }
        Refusal::Auth(AuthError::Forbidden(_)) => Status::permission_denied(message),
        Refusal::TooLarge { .. } | Refusal::Expands { .. } => Status::resource_exhausted(message),
        Refusal::Malformed(_) => Status::invalid_argument(message),
        Refusal::BodyTimeout(_) => Status::deadline_exceeded(message),
        Refusal::Unavailable(ExportError::Throttled(throttled)) => {
            retryable(Code::ResourceExhausted, message, throttled.retry_after)
        }
        Refusal::Overloaded | Refusal::Unavailable(_) => {
            retryable(Code::Unavailable, message, RETRY_AFTER)
        }
    }
}

/// A refusal to retry after `delay`: RetryInfo in the standard details and in the trailer the
/// Python exporter reads.
fn retryable(code: Code, message: String, delay: Duration) -> Status {
    let mut status =
        Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(delay)));
    let retry_info = tonic_types::pb::RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
        }),
    };
    status.metadata_mut().insert_bin(
        "google.rpc.retryinfo-bin",
        MetadataValue::from_bytes(&retry_info.encode_to_vec()),
    );
    status
}

/// A successful unary answer: the message in one uncompressed frame, then `grpc-status: 0`.
fn ok_response(message: Vec<u8>) -> Response {
    let mut frame = Vec::with_capacity(PREFIX + message.len());
    frame.push(0);
    frame.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body =
        Full::new(Bytes::from(frame))
            .with_trailers(std::future::ready(Some(Ok::<_, Infallible>(trailers))));
    let mut response = Response::new(Body::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// An error answer: the status in the headers, no body.
fn trailers_only(status: Status) -> Response {
    status.into_http::<Body>()
}

/// The canonical name of a gRPC code, as in the gRPC specification.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
