//! The stored document of a log: what its served JSON needs besides the fast fields.
//!
//! Each log's type and status, timestamp, latency and assistant are in fast fields (columns)
//! already, so its document leaves them out: that takes about a quarter off the compressed
//! documents (BENCHMARKS.md, "Efficiency"). A document is the byte [`FORMAT`], then three parts
//! of the served JSON separated by NUL bytes, which JSON text cannot hold unescaped:
//!
//! ```text
//! "room_name":…  NUL  "message":…,"request_data":…,"response_data":…  NUL  "trace_id":…,"span_id":…,"severity_text":…
//! ```
//!
//! Serving it puts the columns' values around and between the parts, in the order of
//! [`super::ServedLog`], with no parsing. A document of an earlier version is the whole served
//! JSON (it starts with `{`) and is served as it is.

use std::path::Path;
use std::sync::Arc;

use tantivy::columnar::Column;
use tantivy::schema::Value as _;
use tantivy::{DocId, Index, TantivyDocument};

use super::StoreError;
use super::columns::{ColumnCache, Columns};
use super::schema::{KIND_FIELD, LATENCY_FIELD, TIMESTAMP_FIELD, format_timestamp, kind_parts};
use crate::mapping::{ActivityLog, LogStatus, LogType};

/// The first byte of a document in this format.
const FORMAT: u8 = 1;

/// Between the parts of a document.
const SEPARATOR: u8 = 0;

fn json_into(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("strings and options of strings serialize");
}

/// The stored document of `log`.
pub(super) fn document(log: &ActivityLog) -> Vec<u8> {
    let payloads = log.request_data.get().len() + log.response_data.get().len();
    let mut out = Vec::with_capacity(160 + log.room_name.len() + log.message.len() + payloads);
    out.push(FORMAT);
    out.extend_from_slice(b"\"room_name\":");
    json_into(&mut out, &log.room_name);
    out.push(SEPARATOR);
    out.extend_from_slice(b"\"message\":");
    json_into(&mut out, &log.message);
    out.extend_from_slice(b",\"request_data\":");
    out.extend_from_slice(log.request_data.get().as_bytes());
    out.extend_from_slice(b",\"response_data\":");
    out.extend_from_slice(log.response_data.get().as_bytes());
    out.push(SEPARATOR);
    out.extend_from_slice(b"\"trace_id\":");
    json_into(&mut out, &log.trace_id);
    out.extend_from_slice(b",\"span_id\":");
    json_into(&mut out, &log.span_id);
    out.extend_from_slice(b",\"severity_text\":");
    json_into(&mut out, &log.severity_text);
    out
}

/// Calls `each` with the served JSON of every live log of the index in `path`, segment by
/// segment in document order: what the query benchmark compresses as the logs' NDJSON export.
pub fn each_served(path: &Path, mut each: impl FnMut(&[u8])) -> Result<(), StoreError> {
    let index = Index::open_in_dir(path)?;
    let doc_field = index.schema().get_field("doc")?;
    let searcher = index.reader()?.searcher();
    let columns = ColumnCache::default();
    for (ord, segment) in searcher.segment_readers().iter().enumerate() {
        let store = segment.get_store_reader(16).map_err(StoreError::Write)?;
        for doc in segment.doc_ids_alive() {
            let stored: TantivyDocument = store.get(doc)?;
            let json = stored.get_first(doc_field).and_then(|v| v.as_bytes());
            let columns = || columns.get(&searcher, ord as u32);
            each(&served(json.unwrap_or(b"{}"), doc, columns)?);
        }
    }
    Ok(())
}

/// The served JSON of log `doc` stored as `stored`; `columns` gives those of its segment, asked
/// for only when the document leaves values out.
pub(super) fn served(
    stored: &[u8],
    doc: DocId,
    columns: impl FnOnce() -> Result<Arc<Columns>, StoreError>,
) -> Result<Vec<u8>, StoreError> {
    let Some((&FORMAT, parts)) = stored.split_first() else {
        // an earlier version's document: the served JSON itself
        return Ok(stored.to_vec());
    };
    let mut parts = parts.split(|&b| b == SEPARATOR);
    let (Some(room), Some(middle), Some(last), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(StoreError::StoredLog(
            "a stored log does not have its three parts".into(),
        ));
    };
    let columns = columns()?;
    let value = |column: &Column<u64>, name: &str| {
        column.first(doc).ok_or_else(|| {
            StoreError::StoredLog(format!("a stored log has no value in the {name} column"))
        })
    };
    let kind = value(&columns.kinds, KIND_FIELD)?;
    let timestamp = value(&columns.timestamps, TIMESTAMP_FIELD)?;
    let latency = value(&columns.latencies, LATENCY_FIELD)?;
    let (log_type, status) = kind_parts(kind);
    let (Some(log_type), Some(status)) = (LogType::ALL.get(log_type), LogStatus::ALL.get(status))
    else {
        return Err(StoreError::StoredLog(format!("unknown kind {kind}")));
    };
    let assistant = columns.assistant(doc)?;
    let mut out = Vec::with_capacity(stored.len() + 160 + assistant.len());
    out.extend_from_slice(b"{\"log_type\":\"");
    out.extend_from_slice(log_type.as_str().as_bytes());
    out.extend_from_slice(b"\",\"status\":\"");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b"\",\"assistant_id\":");
    json_into(&mut out, &*assistant);
    out.push(b',');
    out.extend_from_slice(room);
    out.extend_from_slice(b",\"timestamp\":\"");
    out.extend_from_slice(format_timestamp(timestamp).as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(middle);
    out.extend_from_slice(b",\"latency_ms\":");
    out.extend_from_slice(latency.to_string().as_bytes());
    out.push(b',');
    out.extend_from_slice(last);
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::super::schema::served_json;
    use super::super::{LogQuery, StoreOptions, open};
    use super::*;
    use crate::mapping::example_log;

    /// Logs that try every part of a document: each type and status, escapes in every string,
    /// no assistant, absent and present ids, extreme numbers, payloads with whitespace.
    fn logs() -> Vec<ActivityLog> {
        let mut logs = Vec::new();
        for (i, (log_type, status)) in LogType::ALL
            .into_iter()
            .flat_map(|t| LogStatus::ALL.map(|s| (t, s)))
            .enumerate()
        {
            let mut log = example_log(&format!("log {i}"));
            (log.log_type, log.status) = (log_type, status);
            log.timestamp_nanos = 1_773_134_142_000_000_000 + i as u64;
            logs.push(log);
        }
        let mut odd = example_log("quote \" backslash \\ tab \t NUL \0 é 🎧");
        odd.assistant_id = "a\"b\\c é".into();
        odd.room_name = "room \u{1} \0 ✓".into();
        odd.request_data =
            RawValue::from_string(r#"{ "k" : [1, 2.50, "x\"y"] ,"e":{}}"#.into()).unwrap();
        odd.response_data = RawValue::from_string("{}".into()).unwrap();
        (odd.trace_id, odd.span_id, odd.severity_text) = (None, None, None);
        odd.latency_ms = u64::MAX;
        odd.timestamp_nanos = u64::MAX;
        logs.push(odd);
        let mut empty = example_log("");
        (empty.assistant_id, empty.room_name) = (String::new(), String::new());
        empty.latency_ms = 0;
        empty.timestamp_nanos = 0;
        logs.push(empty);
        logs
    }

    #[test]
    fn every_log_is_served_byte_for_byte_as_the_whole_json_was() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        let logs = logs();
        for (i, log) in logs.iter().enumerate() {
            writer.add(log, i as u64 + 1).unwrap();
            if i == 3 {
                // a page over two segments
                writer.commit(i as u64 + 1).unwrap();
            }
        }
        writer.commit(logs.len() as u64).unwrap();

        let mut newest_first: Vec<&ActivityLog> = logs.iter().collect();
        newest_first.sort_by_key(|log| std::cmp::Reverse(log.timestamp_nanos));
        let expected: Vec<String> = newest_first
            .iter()
            .map(|log| String::from_utf8(served_json(log)).unwrap())
            .collect();
        let page = store
            .search(&LogQuery {
                user_id: logs[0].user_id.clone(),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let served: Vec<String> = page
            .logs
            .into_iter()
            .map(|(_, json)| String::from_utf8(json).unwrap())
            .collect();
        assert_eq!(served, expected);
    }

    #[test]
    fn a_document_that_is_not_in_either_format_is_an_error_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        writer.add(&example_log("one"), 1).unwrap();
        writer.commit(1).unwrap();
        let searcher = store.reader.searcher();
        let columns = || store.columns.get(&searcher, 0);
        let error = served(&[FORMAT, b'x'], 0, columns).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a stored log cannot be read: a stored log does not have its three parts"
        );
    }
}
