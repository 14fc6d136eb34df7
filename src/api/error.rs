//! The REST error envelope: `{"success": false, "message": "...", "data": null}`.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Type};

use crate::auth::AuthError;
use crate::ingest::RETRY_AFTER;

/// An error answered by the REST API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A bad parameter; the message names it.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("{0}")]
    Forbidden(AuthError),
    #[error("no such endpoint")]
    NotFound,
    /// No such thing of the caller's at an endpoint that exists; the message names it.
    #[error("{0}")]
    Missing(String),
    /// A method the endpoint does not take; `allow` lists those it does.
    #[error("method not allowed: this endpoint takes {allow}")]
    MethodNotAllowed { allow: &'static str },
    /// Busy or not ready: the client should retry after [`RETRY_AFTER`].
    #[error("{0}")]
    Unavailable(&'static str),
    /// Not offered by this kind of node (erasure in cluster mode).
    #[error("{0}")]
    NotImplemented(&'static str),
    /// Details go to the server log, never to the client.
    #[error("internal server error")]
    Internal(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Unknown | AuthError::Expired(_) => {
                ApiError::Unauthorized(e)
            }
            AuthError::Forbidden(_) => ApiError::Forbidden(e),
        }
    }
}

/// The body of every error the REST API answers.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always false.
    success: bool,
    /// What went wrong; a bad parameter is named.
    message: String,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    data: Option<()>,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::Missing(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The errors of the endpoints that take a key, for the OpenAPI document.
impl utoipa::IntoResponses for ApiError {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let header = |description: &str, schema: Type| {
            HeaderBuilder::new()
                .schema(utoipa::openapi::ObjectBuilder::new().schema_type(schema))
                .description(Some(description))
                .build()
        };
        let error = |status: StatusCode, description: &str| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", content);
            (status.as_u16().to_string(), response)
        };
        [
            error(
                StatusCode::BAD_REQUEST,
                "A parameter is invalid; the message names it.",
            ),
            {
                let (status, response) = error(
                    StatusCode::UNAUTHORIZED,
                    "The key is missing, unknown or expired.",
                );
                let challenge = header("Always `Bearer`.", Type::String);
                (status, response.header("WWW-Authenticate", challenge))
            },
            error(StatusCode::FORBIDDEN, "The key lacks the scope this needs."),
            {
                let (status, response) = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Busy (too many searches, exports or tails at once, in all or of this user) or storage is failing.",
                );
                let retry = header("Seconds to wait before retrying.", Type::Integer);
                (status, response.header("Retry-After", retry))
            },
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "A fault of the server; details are in its log.",
            ),
        ]
        .into_iter()
        .map(|(status, response)| (status, RefOr::T(response.build())))
        .collect()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        let body = ErrorBody {
            success: false,
            message: self.to_string(),
            data: None,
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unavailable(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(RETRY_AFTER.as_secs()),
                );
            }
            _ => {}
        }
        response
    }
}
