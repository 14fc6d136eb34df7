//! The REST error envelope: `{"success": false, "message": "...", "data": null}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;

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
    /// Details go to the server log, never to the client.
    #[error("internal server error")]
    Internal(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Unknown => ApiError::Unauthorized(e),
            AuthError::Forbidden(_) => ApiError::Forbidden(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let body = serde_json::json!({
            "success": false,
            "message": self.to_string(),
            "data": null,
        });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
