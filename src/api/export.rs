//! `GET /logs/export?format=ndjson|csv`: every log matching the filters of `GET /logs`, newest
//! first, streamed. A blocking task walks the index a page at a time and hands encoded chunks to
//! the response through a small channel, so memory stays bounded whatever the size, and a client
//! that goes away stops the walk.

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::params::Filters;
use super::{ApiState, Caller, caller, params};
use crate::auth::Scope;

/// Logs read from the index at a time.
const PAGE: usize = 1000;

/// Encoded pages waiting for a slow client, at most.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The columns of a CSV export: the fields of a log as `GET /logs` serves it, in its order.
pub const CSV_COLUMNS: [&str; 12] = [
    "log_type",
    "status",
    "assistant_id",
    "room_name",
    "timestamp",
    "message",
    "request_data",
    "response_data",
    "latency_ms",
    "trace_id",
    "span_id",
    "severity_text",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "lowercase")]
enum Format {
    Ndjson,
    Csv,
}

/// The parameters of `GET /logs/export` besides the filters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams<'a> {
    /// `ndjson` (the default): one log per line as `GET /logs` serves it; or `csv`.
    #[param(value_type = Option<Format>, inline)]
    format: Option<&'a str>,
}

/// `GET /logs/export`: every log of the caller's matching the filters, newest first, streamed.
#[utoipa::path(get, path = "/logs/export", tag = "logs", params(Filters, ExportParams),
    responses(
        (status = 200, description = "Every matching log, newest first.",
            content((String = "application/x-ndjson"), (String = "text/csv"))),
        ApiError,
        (status = 501, description = "Cluster mode: the caller's logs are spread over several shards, which this endpoint does not gather yet.", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ApiError> {
    let Caller { user_id, pairs, .. } =
        caller(&state, &headers, raw_query.as_deref(), Scope::Read)?;
    let given = ExportParams {
        format: params::lookup(&pairs, "format"),
    };
    let format = match given.format {
        None | Some("ndjson") => Format::Ndjson,
        Some("csv") => Format::Csv,
        Some(_) => return Err(ApiError::BadRequest("format must be ndjson or csv".into())),
    };
    let query = params::parse_filters_only(&pairs, &user_id, "GET /logs/export, which exports")?;
    let permit = state
        .exports
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable("too many exports in progress, retry later"))?;
    let (chunks, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut scan = store.scan(&query);
        let mut first = true;
        loop {
            let page = match scan.next_page(PAGE) {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "export failed; the response is cut short");
                    let _ = chunks.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            if page.is_empty() && !first {
                return;
            }
            let chunk = match format {
                Format::Ndjson => ndjson(&page),
                Format::Csv => csv(&page, first),
            };
            first = false;
            // a client that went away ends the walk
            if chunks.blocking_send(Ok(chunk)).is_err() || page.is_empty() {
                return;
            }
        }
    });
    let (content_type, file) = match format {
        Format::Ndjson => ("application/x-ndjson", "logs.ndjson"),
        Format::Csv => ("text/csv; charset=utf-8", "logs.csv"),
    };
    let mut response = Body::from_stream(ReceiverStream::new(body)).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let disposition = format!("attachment; filename=\"{file}\"");
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response_headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// One log per line, as `GET /logs` serves it.
fn ndjson(page: &[Vec<u8>]) -> Bytes {
    let mut out = Vec::with_capacity(page.iter().map(|json| json.len() + 1).sum());
    for json in page {
        out.extend_from_slice(json);
        out.push(b'\n');
    }
    out.into()
}

/// The page as CSV rows (after the header row, on the first page): strings as they are, nested
/// data as JSON text, nulls empty; quoted where a field needs it.
fn csv(page: &[Vec<u8>], header: bool) -> Bytes {
    let mut writer = csv::Writer::from_writer(Vec::new());
    // writing to a Vec cannot fail: only the I/O of the writer can
    let mut write = |record: &[String]| {
        writer
            .write_record(record)
            .expect("CSV rows are written to memory");
    };
    if header {
        write(&CSV_COLUMNS.map(str::to_owned));
    }
    for json in page {
        let log: Map<String, Value> = serde_json::from_slice(json).unwrap_or_default();
        let row = CSV_COLUMNS.map(|column| match log.get(column) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        });
        write(&row);
    }
    writer
        .into_inner()
        .expect("CSV rows are written to memory")
        .into()
}
