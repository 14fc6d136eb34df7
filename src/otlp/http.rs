//! OTLP/HTTP: `POST /v1/logs` with protobuf or JSON bodies, optionally gzip-compressed.
//!
//! The body is decoded here and handed to the same [`ExportService`] as gRPC. Responses and
//! errors (a `google.rpc.Status`) come back in the request's encoding.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message as _;

use super::decode::{Compression, Format};
use super::{Encoded, ReceiveLimits, Refusal, discard_body, export_response, read_body, receive};
use crate::auth::AuthError;
use crate::ingest::{ExportError, ExportService, RETRY_AFTER};
use crate::metrics::{ExportLabels, Metrics};

/// The path OTLP exporters send logs to.
pub const LOGS_PATH: &str = "/v1/logs";

#[derive(Clone)]
struct HttpReceiver {
    service: ExportService,
    limits: ReceiveLimits,
}

fn content_type(format: Format) -> &'static str {
    match format {
        Format::Protobuf => "application/x-protobuf",
        Format::Json => "application/json",
    }
}

/// The format of a request from its Content-Type: case-insensitive, parameters allowed.
fn format_of(headers: &HeaderMap) -> Option<Format> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim();
    if essence.eq_ignore_ascii_case("application/x-protobuf") {
        Some(Format::Protobuf)
    } else if essence.eq_ignore_ascii_case("application/json") {
        Some(Format::Json)
    } else {
        None
    }
}

/// An OTLP/HTTP error: its status, a `google.rpc.Status` body and, when retryable, `Retry-After`.
struct OtlpError {
    status: StatusCode,
    message: String,
    format: Format,
    /// When a client may retry, for `Retry-After`.
    retry_after: Option<Duration>,
}

impl OtlpError {
    fn new(status: StatusCode, message: impl Into<String>, format: Format) -> Self {
        Self {
            status,
            message: message.into(),
            format,
            retry_after: None,
        }
    }

    /// The answer to a refusal, in the request's format.
    fn refused(refusal: Refusal, format: Format) -> Self {
        let status = match &refusal {
            Refusal::Auth(AuthError::Missing | AuthError::Unknown | AuthError::Expired(_)) => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::Auth(AuthError::Forbidden(_)) => StatusCode::FORBIDDEN,
            Refusal::TooLarge { .. } | Refusal::Expands { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Refusal::Unavailable(ExportError::Throttled(_)) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Overloaded | Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let retry_after = match &refusal {
            Refusal::Unavailable(ExportError::Throttled(throttled)) => Some(throttled.retry_after),
            Refusal::Overloaded | Refusal::Unavailable(_) => Some(RETRY_AFTER),
            _ => None,
        };
        Self {
            retry_after,
            ..Self::new(status, refusal.to_string(), format)
        }
    }

    /// The gRPC code a `google.rpc.Status` carries for this HTTP status.
    fn grpc_code(&self) -> tonic::Code {
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                tonic::Code::InvalidArgument
            }
            StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
            StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => {
                tonic::Code::ResourceExhausted
            }
            StatusCode::REQUEST_TIMEOUT => tonic::Code::DeadlineExceeded,
            StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        }
    }
}

impl IntoResponse for OtlpError {
    fn into_response(self) -> Response {
        let code = self.grpc_code() as i32;
        let body = match self.format {
            Format::Protobuf => tonic_types::Status {
                code,
                message: self.message,
                details: Vec::new(),
            }
            .encode_to_vec(),
            Format::Json => serde_json::to_vec(&serde_json::json!({
                "code": code,
                "message": self.message,
            }))
            .expect("a code and a string serialize"),
        };
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, content_type(self.format))],
            body,
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(delay) = self.retry_after {
            // whole seconds, rounded up: a client never comes back too early
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The OTLP/HTTP routes.
pub fn router(service: ExportService, limits: ReceiveLimits, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(LOGS_PATH, post(export))
        .with_state(HttpReceiver { service, limits })
        .layer(middleware::map_response_with_state(metrics, count_export))
}

/// Counts every answer by its status.
async fn count_export(State(metrics): State<Arc<Metrics>>, response: Response) -> Response {
    metrics
        .exports
        .get_or_create(&ExportLabels {
            transport: "http",
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

async fn export(
    State(receiver): State<HttpReceiver>,
    headers: HeaderMap,
    mut body: Body,
) -> Result<Response, OtlpError> {
    let limits = receiver.limits;
    let Some(format) = format_of(&headers) else {
        let error = OtlpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/x-protobuf or application/json",
            Format::Json,
        );
        return Err(unread(&mut body, limits, error).await);
    };
    let refused = |refusal: Refusal| OtlpError::refused(refusal, format);
    // the key first: a stranger's body is never decompressed, decoded or kept
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let key_user = match receiver.service.authorize(authorization) {
        Ok(key_user) => key_user,
        Err(e) => return Err(unread(&mut body, limits, refused(e.into())).await),
    };
    let hold = match receiver.service.check_limit(key_user.as_deref()).await {
        Ok(hold) => hold,
        Err(e) => return Err(unread(&mut body, limits, refused(e.into())).await),
    };
    let compression = match headers
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
    {
        None | Some(b"identity") => Compression::Identity,
        Some(v) if v.eq_ignore_ascii_case(b"gzip") => Compression::Gzip,
        Some(other) => {
            return Err(OtlpError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unsupported Content-Encoding {:?} (expected gzip or none)",
                    String::from_utf8_lossy(other)
                ),
                format,
            ));
        }
    };
    let mut reservation = receiver.service.reservation();
    let body = read_body(
        body,
        limits.max_message_bytes,
        limits.body_read_timeout,
        &mut reservation,
        |_| None,
    )
    .await
    .map_err(refused)?;
    let encoded = Encoded {
        body,
        format,
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
    .map_err(refused)?;
    Ok(success(export_response(outcome), format))
}

/// A refusal answered before the body is read. What the client still sends is read and dropped
/// (up to the size limit, within the body timeout), keeping nothing: an HTTP/1.1 client that is
/// cut off mid-body sees a reset connection instead of the answer.
async fn unread(body: &mut Body, limits: ReceiveLimits, error: OtlpError) -> OtlpError {
    let discarded = discard_body(body, limits.max_message_bytes);
    let _ = tokio::time::timeout(limits.body_read_timeout, discarded).await;
    error
}

fn success(response: ExportLogsServiceResponse, format: Format) -> Response {
    let body = match format {
        Format::Protobuf => response.encode_to_vec(),
        Format::Json => {
            let json = match response.partial_success {
                None => serde_json::json!({}),
                Some(partial) => serde_json::json!({
                    "partialSuccess": {
                        // proto3 JSON writes 64-bit integers as strings
                        "rejectedLogRecords": partial.rejected_log_records.to_string(),
                        "errorMessage": partial.error_message,
                    }
                }),
            };
            serde_json::to_vec(&json).expect("a JSON value serializes")
        }
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type(format))],
        body,
    )
        .into_response()
}
