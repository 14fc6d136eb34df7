//! OTLP/gRPC: `opentelemetry.proto.collector.logs.v1.LogsService/Export`.

use std::future::Future;
use std::sync::Arc;

use http::header::HeaderValue;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message as _;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::util::MapResponseLayer;

use super::export_response;
use crate::auth::AuthError;
use crate::ingest::{ExportError, ExportService, RETRY_AFTER};
use crate::metrics::{ExportLabels, Metrics};

/// The gRPC face of the export service.
struct GrpcReceiver {
    service: ExportService,
}

#[tonic::async_trait]
impl LogsService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        let key_user = self.service.authorize(authorization).map_err(to_status)?;
        let outcome = self
            .service
            .export(key_user.as_deref(), request.get_ref())
            .await
            .map_err(to_status)?;
        Ok(Response::new(export_response(outcome)))
    }
}

/// Serves OTLP/gRPC on `listener` until `shutdown` completes, then finishes in-flight exports.
pub async fn serve(
    listener: TcpListener,
    service: ExportService,
    max_message_bytes: usize,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let logs = LogsServiceServer::new(GrpcReceiver { service })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message_bytes);
    // Small responses must not wait for Nagle's algorithm.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .layer(MapResponseLayer::new(move |response| {
            conform_status(response, &metrics)
        }))
        .add_service(logs)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

fn to_status(error: ExportError) -> Status {
    let message = error.to_string();
    match error {
        ExportError::Auth(AuthError::Missing | AuthError::Unknown) => {
            Status::unauthenticated(message)
        }
        ExportError::Auth(AuthError::Forbidden(_)) => Status::permission_denied(message),
        ExportError::Overloaded | ExportError::Unavailable => retryable(message),
    }
}

/// UNAVAILABLE with RetryInfo, in the standard details and in the trailer the Python exporter reads.
fn retryable(message: String) -> Status {
    let mut status = Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    );
    let retry_info = tonic_types::pb::RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: i64::try_from(RETRY_AFTER.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    };
    status.metadata_mut().insert_bin(
        "google.rpc.retryinfo-bin",
        MetadataValue::from_bytes(&retry_info.encode_to_vec()),
    );
    status
}

/// Rewrites tonic's own errors into the codes OTLP clients act on: an oversized message is
/// RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE, which clients retry forever), and a body that does
/// not decode is INVALID_ARGUMENT (tonic says INTERNAL). Counts every answer by its code.
fn conform_status<B>(mut response: http::Response<B>, metrics: &Metrics) -> http::Response<B> {
    let count = |code: Code| {
        metrics
            .exports
            .get_or_create(&ExportLabels {
                transport: "grpc",
                status: code_name(code).to_owned(),
            })
            .inc();
    };
    // An error is answered in the headers; a success carries its status in the trailers.
    let Some(status) = Status::from_header_map(response.headers()) else {
        count(Code::Ok);
        return response;
    };
    let replacement = match status.code() {
        Code::OutOfRange => Some(Code::ResourceExhausted),
        Code::Internal if is_decode_failure(status.message()) => Some(Code::InvalidArgument),
        _ => None,
    };
    if let Some(code) = replacement {
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from(code as i32));
    }
    count(replacement.unwrap_or(status.code()));
    response
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

/// Whether a message is tonic's report of a request it could not decode.
fn is_decode_failure(message: &str) -> bool {
    [
        "failed to decode Protobuf message",
        "Error decompressing",
        "protocol error",
        "Unexpected EOF",
    ]
    .iter()
    .any(|prefix| message.starts_with(prefix))
}
