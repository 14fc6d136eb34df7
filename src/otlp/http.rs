//! OTLP/HTTP: `POST /v1/logs` with protobuf or JSON bodies, optionally gzip-compressed.
//!
//! The body is decoded here and handed to the same [`ExportService`] as gRPC. Responses and
//! errors (a `google.rpc.Status`) come back in the request's encoding.

use std::io::Read as _;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message as _;

use super::{export_response, json};
use crate::auth::AuthError;
use crate::ingest::{ExportError, ExportService, RETRY_AFTER};
use crate::metrics::{ExportLabels, Metrics};

/// The path OTLP exporters send logs to.
pub const LOGS_PATH: &str = "/v1/logs";

#[derive(Clone)]
struct HttpReceiver {
    service: ExportService,
    max_message_bytes: usize,
}

/// The encoding of a request, which its response and errors use too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    /// From a Content-Type header: case-insensitive, parameters allowed.
    fn from_content_type(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let essence = value.split(';').next()?.trim();
        if essence.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Encoding::Protobuf)
        } else if essence.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }
}

/// An OTLP/HTTP error: its status, a `google.rpc.Status` body and, when retryable, `Retry-After`.
struct OtlpError {
    status: StatusCode,
    message: String,
    encoding: Encoding,
}

impl OtlpError {
    fn new(status: StatusCode, message: impl Into<String>, encoding: Encoding) -> Self {
        Self {
            status,
            message: message.into(),
            encoding,
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
            StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::ResourceExhausted,
            StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        }
    }
}

impl IntoResponse for OtlpError {
    fn into_response(self) -> Response {
        let code = self.grpc_code() as i32;
        let body = match self.encoding {
            Encoding::Protobuf => tonic_types::Status {
                code,
                message: self.message,
                details: Vec::new(),
            }
            .encode_to_vec(),
            Encoding::Json => serde_json::to_vec(&serde_json::json!({
                "code": code,
                "message": self.message,
            }))
            .expect("a code and a string serialize"),
        };
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, self.encoding.content_type())],
            body,
        )
            .into_response();
        let headers = response.headers_mut();
        match self.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(RETRY_AFTER.as_secs()),
                );
            }
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// The OTLP/HTTP routes.
pub fn router(service: ExportService, max_message_bytes: usize, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(LOGS_PATH, post(export))
        .with_state(HttpReceiver {
            service,
            max_message_bytes,
        })
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
    body: Body,
) -> Result<Response, OtlpError> {
    let Some(encoding) = Encoding::from_content_type(&headers) else {
        return Err(OtlpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/x-protobuf or application/json",
            Encoding::Json,
        ));
    };
    let fail = |status, message: String| OtlpError::new(status, message, encoding);
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let key_user = receiver
        .service
        .authorize(authorization)
        .map_err(|e| export_error(e, encoding))?;
    let limit = receiver.max_message_bytes;
    let too_large = || {
        fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    };
    let raw = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    let bytes = match headers
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
    {
        None | Some(b"identity") => raw,
        Some(v) if v.eq_ignore_ascii_case(b"gzip") => gunzip(&raw, limit).map_err(|e| match e {
            GunzipError::TooLarge => too_large(),
            GunzipError::Invalid(e) => {
                fail(StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}"))
            }
        })?,
        Some(other) => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!(
                    "unsupported Content-Encoding {:?} (expected gzip or none)",
                    String::from_utf8_lossy(other)
                ),
            ));
        }
    };
    let request = match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(bytes).map_err(|e| {
            fail(
                StatusCode::BAD_REQUEST,
                format!("invalid OTLP protobuf: {e}"),
            )
        })?,
        Encoding::Json => {
            json::decode(&bytes).map_err(|e| fail(StatusCode::BAD_REQUEST, e.to_string()))?
        }
    };
    let outcome = receiver
        .service
        .export(key_user.as_deref(), &request)
        .await
        .map_err(|e| export_error(e, encoding))?;
    Ok(success(export_response(outcome), encoding))
}

fn success(response: ExportLogsServiceResponse, encoding: Encoding) -> Response {
    let body = match encoding {
        Encoding::Protobuf => response.encode_to_vec(),
        Encoding::Json => {
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
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

fn export_error(error: ExportError, encoding: Encoding) -> OtlpError {
    let status = match &error {
        ExportError::Auth(AuthError::Missing | AuthError::Unknown) => StatusCode::UNAUTHORIZED,
        ExportError::Auth(AuthError::Forbidden(_)) => StatusCode::FORBIDDEN,
        ExportError::Overloaded | ExportError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    OtlpError::new(status, error.to_string(), encoding)
}

enum GunzipError {
    TooLarge,
    Invalid(std::io::Error),
}

/// Decompresses a gzip body, refusing to produce more than `limit` bytes.
fn gunzip(compressed: &[u8], limit: usize) -> Result<Bytes, GunzipError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(compressed)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(GunzipError::Invalid)?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge);
    }
    Ok(out.into())
}
