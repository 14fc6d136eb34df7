//! `/alerts`: the caller's alert rules, with a key of the `alerts` scope: list and create
//! (`/alerts`), read, replace and delete one (`/alerts/{id}`). A rule's filters are those of
//! `GET /logs` and are checked by the same parser; a rule never counts another user's logs, and
//! another user's rule is as missing as one that never was.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::{authorized_user, params};
use crate::alerts::book::Rules;
use crate::alerts::evaluate::alert_of;
use crate::alerts::{Alerts, Entry, NotKeeper, Rule, RuleSpec, RuleState, Status, now, rule};
use crate::auth::{KeyStore, Scope};
use crate::store::{LogQuery, Store, format_timestamp};

/// The answer while a cluster's rules move from one gateway to another.
pub const MOVING: &str = "the alert rules are moving to another gateway, retry";

/// What the `/alerts` handlers share.
#[derive(Clone)]
pub struct AlertsState {
    pub keys: KeyStore,
    pub alerts: Alerts,
    /// Checks a rule's `q` against the index (a prefix that stands for too many words); a
    /// cluster's gateway has none, and its evaluations say so of a rule whose `q` fails.
    pub store: Option<Store>,
}

/// The `/alerts` routes.
pub fn router(state: AlertsState) -> Router {
    let not_allowed =
        |allow: &'static str| move || async move { ApiError::MethodNotAllowed { allow } };
    Router::new()
        .route(
            "/alerts",
            get(list)
                .post(create)
                .fallback(not_allowed("GET, HEAD, POST")),
        )
        .route(
            "/alerts/{id}",
            get(read)
                .put(replace)
                .delete(remove)
                .fallback(not_allowed("GET, HEAD, PUT, DELETE")),
        )
        .with_state(state)
}

/// `spec` checked as a rule of `user_id`'s: its filters read as those of `GET /logs`; errors
/// name the field.
pub fn alert_rule(spec: RuleSpec, user_id: &str) -> Result<Rule, String> {
    let pairs = rule::filter_pairs(&spec)?;
    Rule::new(spec, rule_query(&pairs, user_id)?)
}

/// The query of a rule's filters as query-string pairs ([`rule::filter_pairs`]), over
/// `user_id`'s logs: what a rule counts, and what a cluster's shards count for it.
pub fn rule_query(pairs: &[(String, String)], user_id: &str) -> Result<LogQuery, String> {
    params::parse_filters_only(pairs, user_id, "an alert rule, which counts")
        .map_err(|e| format!("filters: {e}"))
}

#[derive(Serialize, ToSchema)]
struct RuleData {
    id: String,
    #[serde(flatten)]
    spec: RuleSpec,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    state: RuleState,
}

impl RuleData {
    fn of(entry: &Entry) -> Self {
        Self {
            id: entry.id.clone(),
            spec: entry.spec.clone(),
            created_at: format_timestamp(entry.created_at),
            updated_at: format_timestamp(entry.updated_at),
            state: entry.state.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
struct RuleBody {
    success: bool,
    message: &'static str,
    data: RuleData,
}

#[derive(Serialize, ToSchema)]
struct RulesBody {
    success: bool,
    message: &'static str,
    data: RulesData,
}

#[derive(Serialize, ToSchema)]
struct RulesData {
    /// Oldest first.
    rules: Vec<RuleData>,
}

#[derive(Serialize, ToSchema)]
struct DeletedBody {
    success: bool,
    message: &'static str,
    data: DeletedData,
}

#[derive(Serialize, ToSchema)]
struct DeletedData {
    id: String,
}

fn rule_response(status: StatusCode, message: &'static str, entry: &Entry) -> Response {
    let body = RuleBody {
        success: true,
        message,
        data: RuleData::of(entry),
    };
    (status, axum::Json(body)).into_response()
}

fn no_such_rule(id: &str) -> ApiError {
    ApiError::Missing(format!("no alert rule {id}"))
}

impl AlertsState {
    /// The caller's user: its key must have the `alerts` scope.
    fn user(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        Ok(authorized_user(&self.keys, headers, Scope::Alerts)?.1)
    }

    /// The rule of `body` for `user_id`, checked, its `q` against the index too.
    async fn checked(&self, body: &[u8], user_id: &str) -> Result<Rule, ApiError> {
        let spec: RuleSpec = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not a rule: {e}")))?;
        let rule = alert_rule(spec, user_id).map_err(ApiError::BadRequest)?;
        if let (Some(store), Some(_)) = (&self.store, &rule.query.text) {
            let (store, query) = (store.clone(), rule.query.clone());
            tokio::task::spawn_blocking(move || store.check(&query))
                .await
                .map_err(|e| ApiError::Internal(format!("check task failed: {e}")))?
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| ApiError::BadRequest(format!("filters: {e}")))?;
        }
        Ok(rule)
    }

    /// Writes the rules; the answer waits for them to be durable. When they cannot be written,
    /// `undo` takes the change back, so that what the client is told failed did not happen.
    async fn save_or_undo(&self, undo: impl FnOnce(&mut Rules)) -> Result<(), ApiError> {
        let saved = self.alerts.book.save().await;
        saved.map_err(|e| {
            let mut rules = self.alerts.book.lock();
            undo(&mut rules);
            rules.changed();
            if e.is::<NotKeeper>() {
                return ApiError::Unavailable(MOVING);
            }
            ApiError::Internal(e.to_string())
        })
    }

    /// Tells the receivers that the alert of `entry`, which firing, ends now (its rule is
    /// replaced or deleted).
    fn resolve_if_firing(&self, entry: &Entry) {
        let (Some(rule), Status::Firing) = (&entry.rule, entry.state.status) else {
            return;
        };
        let mut state = entry.state.clone();
        state.status = Status::Resolved;
        state.resolved_at = Some(now());
        let alert = alert_of(&entry.id, &entry.user_id, rule, &state);
        self.alerts.deliveries.send(&alert, false);
    }
}

/// `GET /alerts`: the caller's rules with their states.
#[utoipa::path(get, path = "/alerts", tag = "alerts",
    responses((status = 200, description = "The caller's alert rules, oldest first.", body = RulesBody), ApiError),
    security(("bearer" = [])))]
async fn list(State(state): State<AlertsState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let user_id = state.user(&headers)?;
    let mut rules: Vec<RuleData> = state
        .alerts
        .book
        .lock()
        .entries
        .values()
        .filter(|e| e.user_id == user_id)
        .map(RuleData::of)
        .collect();
    rules.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    let body = RulesBody {
        success: true,
        message: "Alert rules fetched successfully",
        data: RulesData { rules },
    };
    Ok(axum::Json(body).into_response())
}

/// `POST /alerts`: a new rule of the caller's, evaluated from the next round on.
#[utoipa::path(post, path = "/alerts", tag = "alerts", request_body = RuleSpec,
    responses((status = 201, description = "The rule, created.", body = RuleBody), ApiError),
    security(("bearer" = [])))]
async fn create(
    State(state): State<AlertsState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user_id = state.user(&headers)?;
    let rule = state.checked(&body, &user_id).await?;
    let entry = state
        .alerts
        .book
        .lock()
        .add(&user_id, rule, now())
        .map_err(ApiError::BadRequest)?
        .clone();
    state
        .save_or_undo(|rules| {
            rules.entries.remove(&entry.id);
        })
        .await?;
    tracing::info!(user = %user_id, rule = %entry.id, name = %entry.spec.name, "alert rule created");
    Ok(rule_response(
        StatusCode::CREATED,
        "Alert rule created",
        &entry,
    ))
}

/// `GET /alerts/{id}`: one of the caller's rules with its state.
#[utoipa::path(get, path = "/alerts/{id}", tag = "alerts",
    params(("id" = String, Path, description = "The rule's id.")),
    responses((status = 200, description = "The rule.", body = RuleBody),
        (status = 404, description = "The caller has no such rule.", body = super::error::ErrorBody), ApiError),
    security(("bearer" = [])))]
async fn read(
    State(state): State<AlertsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user_id = state.user(&headers)?;
    let mut rules = state.alerts.book.lock();
    let entry = rules
        .of_user(&user_id, &id)
        .ok_or_else(|| no_such_rule(&id))?;
    Ok(rule_response(
        StatusCode::OK,
        "Alert rule fetched successfully",
        entry,
    ))
}

/// `PUT /alerts/{id}`: replaces one of the caller's rules; its alert starts over (a firing one
/// is resolved).
#[utoipa::path(put, path = "/alerts/{id}", tag = "alerts", request_body = RuleSpec,
    params(("id" = String, Path, description = "The rule's id.")),
    responses((status = 200, description = "The rule, replaced.", body = RuleBody),
        (status = 404, description = "The caller has no such rule.", body = super::error::ErrorBody), ApiError),
    security(("bearer" = [])))]
async fn replace(
    State(state): State<AlertsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user_id = state.user(&headers)?;
    if state.alerts.book.lock().of_user(&user_id, &id).is_none() {
        return Err(no_such_rule(&id));
    }
    let rule = state.checked(&body, &user_id).await?;
    let (before, entry) = {
        let mut rules = state.alerts.book.lock();
        let entry = rules
            .of_user(&user_id, &id)
            .ok_or_else(|| no_such_rule(&id))?;
        let before = entry.clone();
        state.resolve_if_firing(entry);
        entry.spec = rule.spec.clone();
        entry.rule = Some(rule);
        entry.state = RuleState::default();
        entry.updated_at = now();
        let entry = entry.clone();
        rules.changed();
        (before, entry)
    };
    state
        .save_or_undo(|rules| {
            rules.entries.insert(before.id.clone(), before);
        })
        .await?;
    tracing::info!(user = %user_id, rule = %id, "alert rule replaced");
    Ok(rule_response(StatusCode::OK, "Alert rule replaced", &entry))
}

/// `DELETE /alerts/{id}`: deletes one of the caller's rules; a firing alert is resolved.
#[utoipa::path(delete, path = "/alerts/{id}", tag = "alerts",
    params(("id" = String, Path, description = "The rule's id.")),
    responses((status = 200, description = "The rule is deleted.", body = DeletedBody),
        (status = 404, description = "The caller has no such rule.", body = super::error::ErrorBody), ApiError),
    security(("bearer" = [])))]
async fn remove(
    State(state): State<AlertsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user_id = state.user(&headers)?;
    let before = {
        let mut rules = state.alerts.book.lock();
        let entry = rules
            .of_user(&user_id, &id)
            .ok_or_else(|| no_such_rule(&id))?;
        state.resolve_if_firing(entry);
        let before = rules.entries.remove(&id);
        rules.changed();
        before
    };
    state
        .save_or_undo(|rules| {
            rules.entries.extend(before.map(|e| (e.id.clone(), e)));
        })
        .await?;
    tracing::info!(user = %user_id, rule = %id, "alert rule deleted");
    let body = DeletedBody {
        success: true,
        message: "Alert rule deleted",
        data: DeletedData { id },
    };
    Ok(axum::Json(body).into_response())
}
