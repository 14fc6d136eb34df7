//! Who calls: the bearer key, the scope it needs, the user it is bound to, and the query string.

use axum::http::{HeaderMap, HeaderValue, header};

use super::{ApiError, ApiState};
use crate::auth::{KeyStore, Scope};

/// Who calls, for what, as the request says it.
pub(super) struct Caller {
    pub(super) key_name: String,
    pub(super) user_id: String,
    /// The decoded query-string pairs.
    pub(super) pairs: Vec<(String, String)>,
}

/// The caller's key (with `scope`), its user and the decoded query-string pairs.
pub(super) fn caller(
    state: &ApiState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
    scope: Scope,
) -> Result<Caller, ApiError> {
    let (key_name, user_id) = authorized_user(&state.keys, headers, scope)?;
    let pairs = query_pairs(raw_query)?;
    Ok(Caller {
        key_name,
        user_id,
        pairs,
    })
}

/// The name of the caller's key, which must have `scope`, and the user it is bound to.
pub fn authorized_user(
    keys: &KeyStore,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<(String, String), ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let principal = keys.authorize(authorization, scope)?;
    match principal.user_id {
        Some(user_id) => Ok((principal.key_name, user_id)),
        // the keys file refuses such a key: only ingest keys may have no user
        None => Err(ApiError::Internal(format!(
            "{} key {} has no user",
            scope.as_str(),
            principal.key_name
        ))),
    }
}

/// The decoded pairs of a query string.
pub(super) fn query_pairs(raw_query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(raw_query.unwrap_or(""))
        .map_err(|_| ApiError::BadRequest("the query string is malformed".to_owned()))
}

/// What a stream (a tail, an export) was granted on: its key, checked again as the stream goes
/// on, so that a key revoked or expired meanwhile ends it.
pub(super) struct Grant {
    keys: KeyStore,
    authorization: Option<HeaderValue>,
    pub(super) user_id: String,
}

impl Grant {
    pub(super) fn new(state: &ApiState, headers: &HeaderMap, user_id: &str) -> Self {
        Self {
            keys: state.keys.clone(),
            authorization: headers.get(header::AUTHORIZATION).cloned(),
            user_id: user_id.to_owned(),
        }
    }

    /// Whether the key still reads its user's logs; why not, when it does not.
    pub(super) fn check(&self) -> Result<(), String> {
        let authorization = self.authorization.as_ref().map(HeaderValue::as_bytes);
        match self.keys.authorize(authorization, Scope::Read) {
            Ok(principal) if principal.user_id.as_deref() == Some(&self.user_id) => Ok(()),
            Ok(_) => Err("the key now belongs to another user".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }
}
