//! `GET /logs/export?format=ndjson|csv`: every log matching the filters of `GET /logs`, newest
//! first, streamed. A task walks the index a page at a time (each read and its encoding on a
//! blocking thread) and hands encoded chunks to the response through a small channel, so memory
//! stays bounded whatever the size, and a client that goes away stops the walk.
//!
//! An export lasts as long as its client reads. It is cut off, the response ending with an
//! error rather than cleanly, when the client takes nothing for the stall timeout or the key is
//! revoked or expires (it is checked again before every page), so that a client sees a cut
//! transfer rather than a short file. CSV cells a spreadsheet would run as a formula are
//! neutralised.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;

use super::error::ApiError;
use super::params::Filters;
use super::slots::Slot;
use super::{ApiState, Caller, ConnectionCut, Grant, caller, params};
use crate::auth::Scope;
use crate::store::{Scan, SortKey};

/// Logs read from the index at a time.
const PAGE: usize = 1000;

/// Encoded pages waiting for a slow client, at most (one more place is kept for the error that
/// cuts an export off).
const CHUNKS_IN_FLIGHT: usize = 4;

/// The first characters of a CSV cell that a spreadsheet reads as a formula (OWASP, "CSV
/// Injection"): such a cell gets a leading `'`.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

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

/// The formats a caller may ask for.
fn format_names() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["ndjson", "csv"]))
        .build()
}

/// How an export is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
    /// NDJSON with each line's sort key before it (`<timestamp>:<seq> {...}`): what a gateway
    /// merges the exports of a spread user's shards from. Asked for with the
    /// [`super::POSITIONS_HEADER`], never by `format`.
    Positioned,
}

impl Format {
    /// The `format` parameter of `pairs`.
    pub fn of(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let given = ExportParams {
            format: params::lookup(pairs, "format"),
        };
        match given.format {
            None | Some("ndjson") => Ok(Format::Ndjson),
            Some("csv") => Ok(Format::Csv),
            Some(_) => Err(ApiError::BadRequest("format must be ndjson or csv".into())),
        }
    }

    /// Logs as this format has them; the CSV header row first when `first`. `None` when there
    /// is nothing to send.
    pub fn encode(self, page: &[(SortKey, Vec<u8>)], first: bool) -> Option<Bytes> {
        match self {
            Format::Csv if page.is_empty() && !first => None,
            Format::Csv => Some(csv(page, first)),
            _ if page.is_empty() => None,
            Format::Ndjson => Some(ndjson(page, false)),
            Format::Positioned => Some(ndjson(page, true)),
        }
    }

    /// The answer streaming `body` as an export of this format.
    pub fn response(self, body: Body) -> Response {
        let (content_type, file) = match self {
            Format::Ndjson | Format::Positioned => ("application/x-ndjson", "logs.ndjson"),
            Format::Csv => ("text/csv; charset=utf-8", "logs.csv"),
        };
        let mut response = body.into_response();
        let response_headers = response.headers_mut();
        response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        let disposition = format!("attachment; filename=\"{file}\"");
        if let Ok(value) = HeaderValue::from_str(&disposition) {
            response_headers.insert(header::CONTENT_DISPOSITION, value);
        }
        response
    }
}

/// The parameters of `GET /logs/export` besides the filters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams<'a> {
    /// `ndjson` (the default): one log per line as `GET /logs` serves it; or `csv`.
    #[param(schema_with = format_names)]
    format: Option<&'a str>,
}

/// `GET /logs/export`: every log of the caller's matching the filters, newest first, streamed.
#[utoipa::path(get, path = "/logs/export", tag = "logs", params(Filters, ExportParams),
    responses(
        (status = 200, description = "Every matching log, newest first. An export cut off (its client took nothing for the stall timeout, or its key was revoked or expired) ends with a broken transfer, never a clean end.",
            content((String = "application/x-ndjson"), (String = "text/csv"))),
        ApiError),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<ApiState>,
    connection: Option<Extension<ConnectionCut>>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ApiError> {
    let Caller { user_id, pairs, .. } =
        caller(&state, &headers, raw_query.as_deref(), Scope::Read)?;
    let format = match Format::of(&pairs)? {
        _ if headers.contains_key(super::POSITIONS_HEADER) => Format::Positioned,
        format => format,
    };
    let query = params::parse_filters_only(&pairs, &user_id, "GET /logs/export, which exports")?;
    state.check(&query).await?;
    let slot = state.exports.take(&user_id)?;
    let (chunks, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT + 1);
    let walk = Walk {
        scan: Some(state.store.scan(&query)),
        format,
        grant: Grant::new(&state, &headers, &user_id),
        chunks,
        stall_timeout: state.export_stall_timeout,
        connection: connection.map(|Extension(cut)| cut).unwrap_or_default(),
    };
    tokio::spawn(walk.run());
    // the place is the body's: what a cut export left to send is freed with it, not before
    let body = Holding {
        stream: ReceiverStream::new(body),
        _slot: slot,
    };
    Ok(format.response(Body::from_stream(body)))
}

/// One export's walk of the index.
struct Walk {
    /// Away on a blocking thread while a page is read.
    scan: Option<Scan>,
    format: Format,
    /// The key, checked again before every page.
    grant: Grant,
    chunks: mpsc::Sender<Result<Bytes, std::io::Error>>,
    stall_timeout: Duration,
    /// Dropped when the export is cut off: what it still had to send goes with it.
    connection: ConnectionCut,
}

/// A response body's stream that holds the export's place until the body is dropped.
struct Holding<S> {
    stream: S,
    _slot: Slot,
}

impl<S: Stream + Unpin> Stream for Holding<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}

/// Why a walk ended before the last page.
enum Cut {
    /// The client went away: nobody to tell.
    Gone,
    /// The server cuts the export off, for this reason.
    Off(String),
}

impl Walk {
    async fn run(mut self) {
        // kept from the start for the error that cuts the export off, whatever the client's pace
        let Ok(last_place) = self.chunks.clone().reserve_owned().await else {
            return;
        };
        match self.walk().await {
            Ok(()) | Err(Cut::Gone) => {}
            Err(Cut::Off(reason)) => {
                tracing::info!(user = %self.grant.user_id, %reason, "export cut off");
                // an error, not the end: the client sees the transfer was cut, at once
                last_place.send(Err(std::io::Error::other(reason)));
                self.connection.0.cancel();
            }
        }
    }

    /// Every page, header row first for CSV.
    async fn walk(&mut self) -> Result<(), Cut> {
        let mut first = true;
        loop {
            self.grant.check().map_err(|reason| {
                Cut::Off(format!("the export's key no longer reads: {reason}"))
            })?;
            let (chunk, last) = self.next_chunk(first).await?;
            first = false;
            if let Some(chunk) = chunk {
                self.send(chunk).await?;
            }
            if last {
                return Ok(());
            }
        }
    }

    /// The next page, encoded (`None` when it holds nothing to send), and whether it is the
    /// last.
    async fn next_chunk(&mut self, first: bool) -> Result<(Option<Bytes>, bool), Cut> {
        let Some(mut scan) = self.scan.take() else {
            return Ok((None, true));
        };
        let format = self.format;
        let read = tokio::task::spawn_blocking(move || {
            let page = scan
                .next_page(PAGE)
                .map(|page| (format.encode(&page, first), page.is_empty()));
            (scan, page)
        })
        .await;
        let (scan, page) = read.map_err(|e| {
            tracing::error!(error = %e, "export read task failed");
            Cut::Off(format!("the export failed: {e}"))
        })?;
        let (chunk, empty) = page.map_err(|e| {
            tracing::error!(error = %e, "export failed; the response is cut short");
            Cut::Off(format!("the export failed: {e}"))
        })?;
        self.scan = Some(scan);
        Ok((chunk, empty))
    }

    /// Hands one chunk to the client, waiting up to the stall timeout for room.
    async fn send(&mut self, chunk: Bytes) -> Result<(), Cut> {
        match tokio::time::timeout(self.stall_timeout, self.chunks.reserve()).await {
            Ok(Ok(place)) => {
                place.send(Ok(chunk));
                Ok(())
            }
            Ok(Err(_)) => Err(Cut::Gone),
            Err(_) => Err(Cut::Off(format!(
                "the client took nothing for {} ms",
                self.stall_timeout.as_millis()
            ))),
        }
    }
}

/// One log per line, as `GET /logs` serves it; after its sort key when `positioned`.
fn ndjson(page: &[(SortKey, Vec<u8>)], positioned: bool) -> Bytes {
    let mut out = Vec::with_capacity(page.iter().map(|(_, json)| json.len() + 40).sum());
    for (key, json) in page {
        if positioned {
            out.extend_from_slice(format!("{key} ").as_bytes());
        }
        out.extend_from_slice(json);
        out.push(b'\n');
    }
    out.into()
}

/// The page as CSV rows (after the header row, on the first page): strings as they are, nested
/// data as JSON text, nulls empty. As OWASP advises against CSV injection, every cell is quoted
/// (so that no separator a spreadsheet's locale splits on, such as `;`, starts a cell of its
/// own) and a cell that a spreadsheet would run as a formula starts with `'` (numbers stay
/// numbers: none is a formula).
fn csv(page: &[(SortKey, Vec<u8>)], header: bool) -> Bytes {
    let mut writer = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(Vec::new());
    // writing to a Vec cannot fail: only the I/O of the writer can
    let mut write = |record: &[String]| {
        writer
            .write_record(record)
            .expect("CSV rows are written to memory");
    };
    if header {
        write(&CSV_COLUMNS.map(str::to_owned));
    }
    for (_, json) in page {
        let log: Map<String, Value> = serde_json::from_slice(json).unwrap_or_default();
        let row = CSV_COLUMNS.map(|column| match log.get(column) {
            None | Some(Value::Null) => String::new(),
            Some(Value::Number(number)) => number.to_string(),
            Some(Value::String(text)) => inert(text.clone()),
            Some(other) => inert(other.to_string()),
        });
        write(&row);
    }
    writer
        .into_inner()
        .expect("CSV rows are written to memory")
        .into()
}

/// `cell`, with a leading `'` when a spreadsheet would run it as a formula.
fn inert(cell: String) -> String {
    if cell.starts_with(FORMULA_STARTS) {
        format!("'{cell}")
    } else {
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_a_spreadsheet_would_run_start_with_a_quote() {
        for (cell, expected) in [
            ("=1+2", "'=1+2"),
            ("+1 555 0100", "'+1 555 0100"),
            ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
            ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("plain", "plain"),
            ("a=b", "a=b"),
            (" =1", " =1"),
            ("", ""),
            ("'=already", "'=already"),
        ] {
            assert_eq!(inert(cell.to_owned()), expected, "{cell:?}");
        }
    }

    #[test]
    fn csv_rows_neutralise_text_but_keep_numbers() {
        let log = serde_json::json!({
            "log_type": "tool_call",
            "message": "=HYPERLINK(\"http://x\")",
            "room_name": "@room",
            "latency_ms": -5,
            "request_data": {"a": 1},
        });
        let key = SortKey {
            timestamp: 0,
            seq: 0,
        };
        let page = vec![(key, serde_json::to_vec(&log).unwrap())];
        let text = String::from_utf8(csv(&page, false).to_vec()).unwrap();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        let row = reader.records().next().unwrap().unwrap();
        let cell =
            |column: &str| row[CSV_COLUMNS.iter().position(|c| *c == column).unwrap()].to_owned();
        assert_eq!(cell("message"), "'=HYPERLINK(\"http://x\")");
        assert_eq!(cell("room_name"), "'@room");
        assert_eq!(cell("latency_ms"), "-5");
        assert_eq!(cell("request_data"), r#"{"a":1}"#);
        assert_eq!(cell("log_type"), "tool_call");
    }
}
