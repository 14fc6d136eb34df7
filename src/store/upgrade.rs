//! Opening an index written by an earlier logbridge, whose schema is not this one's (it lacks
//! the fast fields of statistics or the payload fields of search, or keeps field norms): every
//! live log is copied, with its sequence number and the last commit's payload, into a new index
//! beside it (`upgrade/`), which then takes its place.
//!
//! A crash at any point is safe: until `upgrade/complete` exists the old index is untouched and
//! a partial copy is thrown away; after it, the swap is finished on the next start. The swap
//! moves the new segment files in, lists old and new files in `.managed.json` (so that tantivy
//! deletes the old ones once unused) and switches `meta.json` last, in one rename.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;
use tantivy::schema::{IndexRecordOption, Value as _};
use tantivy::{DocSet, Index, IndexWriter, TERMINATED, TantivyDocument};

use super::StoreError;
use super::columns::ColumnCache;
use super::schema::{
    Fields, SEQ_FIELD, TIMESTAMP_FIELD, compress_stored_documents, register_analyzers,
};
use super::stored;
use crate::mapping::{ActivityLog, LogStatus, LogType};

/// The folder the new index is built in.
const UPGRADE_DIR: &str = "upgrade";
/// Written in it once the copy is committed and complete.
const COMPLETE: &str = "complete";
const META: &str = "meta.json";
const MANAGED: &str = ".managed.json";

/// Indexing memory of the copy.
const WRITER_BYTES: usize = 64 << 20;

/// A log as the API serves it.
#[derive(Deserialize)]
struct Stored {
    log_type: LogType,
    status: LogStatus,
    assistant_id: String,
    room_name: String,
    message: String,
    request_data: Box<RawValue>,
    response_data: Box<RawValue>,
    latency_ms: u64,
    trace_id: Option<String>,
    span_id: Option<String>,
    severity_text: Option<String>,
}

/// Brings the index in `path`, if there is one, to this schema. Returns the number of logs
/// copied (0 when nothing needed doing).
pub fn upgrade(path: &Path, payloads: bool) -> Result<u64, StoreError> {
    let staging = path.join(UPGRADE_DIR);
    if staging.join(COMPLETE).exists() {
        swap(path, &staging).map_err(StoreError::Write)?;
        return Ok(0);
    }
    if staging.exists() {
        // a copy cut short: the old index is untouched, start over
        fs::remove_dir_all(&staging).map_err(StoreError::Write)?;
    }
    if !path.join(META).exists() {
        return Ok(0);
    }
    let old = Index::open_in_dir(path)?;
    if old.schema() == Fields::schema(payloads).0 {
        return Ok(0);
    }
    tracing::info!(path = %path.display(), "the index was written by an earlier logbridge: upgrading it");
    let copied = copy(&old, &staging, payloads)?;
    sync_file(&staging.join(COMPLETE), true).map_err(StoreError::Write)?;
    sync_dir(&staging).map_err(StoreError::Write)?;
    swap(path, &staging).map_err(StoreError::Write)?;
    tracing::info!(logs = copied, "index upgraded");
    Ok(copied)
}

/// Copies every live log of `old` into a new index in `staging`.
fn copy(old: &Index, staging: &Path, payloads: bool) -> Result<u64, StoreError> {
    fs::create_dir_all(staging).map_err(StoreError::Write)?;
    let (schema, fields) = Fields::schema(payloads);
    let mut new = Index::create_in_dir(staging, schema)?;
    compress_stored_documents(&mut new);
    register_analyzers(&new);
    let mut writer: IndexWriter = new.writer_with_num_threads(1, WRITER_BYTES)?;
    let old_schema = old.schema();
    let user_field = old_schema.get_field("user")?;
    let doc_field = old_schema.get_field("doc")?;
    let searcher = old.reader()?.searcher();
    let columns = ColumnCache::default();
    let mut copied = 0u64;
    for (ord, segment) in searcher.segment_readers().iter().enumerate() {
        // the user of each document, from the postings of the `user` field (it is not stored)
        let mut users: Vec<String> = Vec::new();
        let mut owner = vec![u32::MAX; segment.max_doc() as usize];
        let inverted = segment.inverted_index(user_field)?;
        let mut terms = inverted.terms().stream().map_err(StoreError::Write)?;
        while terms.advance() {
            let index = users.len() as u32;
            users.push(String::from_utf8_lossy(terms.key()).into_owned());
            let mut postings = inverted
                .read_postings_from_terminfo(terms.value(), IndexRecordOption::Basic)
                .map_err(StoreError::Write)?;
            let mut doc = postings.doc();
            while doc != TERMINATED {
                owner[doc as usize] = index;
                doc = postings.advance();
            }
        }
        let fast = segment.fast_fields();
        let timestamps = fast.u64(TIMESTAMP_FIELD)?;
        let seqs = fast.u64(SEQ_FIELD)?;
        let store = segment.get_store_reader(64).map_err(StoreError::Write)?;
        for doc in segment.doc_ids_alive() {
            let (Some(user), Some(timestamp), Some(seq)) = (
                users.get(owner[doc as usize] as usize),
                timestamps.first(doc),
                seqs.first(doc),
            ) else {
                continue;
            };
            let stored: TantivyDocument = store.get(doc)?;
            let json = stored.get_first(doc_field).and_then(|v| v.as_bytes());
            let served =
                json.map(|json| stored::served(json, doc, || columns.get(&searcher, ord as u32)));
            let served = match served {
                // a log that cannot be read is left out; an index that cannot be read stops it
                Some(Err(StoreError::StoredLog(_))) | None => None,
                Some(served) => Some(served?),
            };
            let Some(Ok(log)) = served.map(|json| serde_json::from_slice::<Stored>(&json)) else {
                tracing::warn!(
                    doc,
                    seq,
                    "a stored log could not be read back; it is not copied"
                );
                continue;
            };
            let log = ActivityLog {
                user_id: user.clone(),
                log_type: log.log_type,
                status: log.status,
                assistant_id: log.assistant_id,
                room_name: log.room_name,
                timestamp_nanos: timestamp,
                message: log.message,
                request_data: log.request_data,
                response_data: log.response_data,
                latency_ms: log.latency_ms,
                trace_id: log.trace_id,
                span_id: log.span_id,
                severity_text: log.severity_text,
            };
            writer.add_document(fields.document(&log, seq))?;
            copied += 1;
        }
    }
    let mut prepared = writer.prepare_commit()?;
    if let Some(payload) = old.load_metas()?.payload {
        prepared.set_payload(&payload);
    }
    prepared.commit()?;
    writer.wait_merging_threads()?;
    Ok(copied)
}

/// Moves the new index of `staging` into `path`, `meta.json` last; safe to run again.
fn swap(path: &Path, staging: &Path) -> io::Result<()> {
    let mut new_files = Vec::new();
    for entry in fs::read_dir(staging)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy().into_owned();
        if ![META, MANAGED, COMPLETE].contains(&name.as_str()) && !name.starts_with(".tantivy") {
            new_files.push(name);
        }
    }
    for name in &new_files {
        fs::rename(staging.join(name), path.join(name))?;
    }
    // tantivy deletes the files it manages once no commit uses them: the old segments, then
    let managed_path = path.join(MANAGED);
    let mut managed: BTreeSet<PathBuf> = match fs::read(&managed_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(e),
    };
    managed.extend(new_files.iter().map(PathBuf::from));
    let temporary = path.join(format!("{MANAGED}.upgrade"));
    let mut bytes = serde_json::to_vec(&managed).map_err(io::Error::other)?;
    bytes.push(b'\n');
    fs::write(&temporary, bytes)?;
    sync_file(&temporary, false)?;
    fs::rename(&temporary, &managed_path)?;
    let new_meta = staging.join(META);
    if new_meta.exists() {
        sync_dir(path)?;
        fs::rename(&new_meta, path.join(META))?;
    }
    sync_dir(path)?;
    fs::remove_dir_all(staging)
}

fn sync_file(path: &Path, create: bool) -> io::Result<()> {
    let file = if create {
        File::create(path)?
    } else {
        File::open(path)?
    };
    file.sync_all()
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use tantivy::index::SegmentComponent;
    use tantivy::schema::{FAST, STORED, STRING, Schema, TEXT};

    use super::super::schema::KIND_FIELD as KIND;
    use super::super::schema::served_json;
    use super::super::{LogQuery, StoreOptions, open};
    use super::*;
    use crate::mapping::example_log;
    use crate::search::parse;

    /// Which earlier logbridge wrote an index.
    #[derive(Clone, Copy)]
    enum Version {
        /// Before statistics: no `kind`, `latency_ms` or `assistant_id` fast fields.
        BeforeStatistics,
        /// Before payload search: no `payload_values` or `payload_words`.
        BeforePayloads,
    }

    /// An index as an earlier logbridge wrote it.
    fn write_old_index(path: &Path, logs: &[ActivityLog], version: Version) {
        let mut builder = Schema::builder();
        let user = builder.add_text_field("user", STRING);
        let scoped = builder.add_text_field("scoped", STRING);
        let message = builder.add_text_field("message", TEXT);
        let timestamp = builder.add_u64_field(TIMESTAMP_FIELD, FAST);
        let seq = builder.add_u64_field(SEQ_FIELD, FAST);
        let doc = builder.add_bytes_field("doc", STORED);
        if let Version::BeforePayloads = version {
            builder.add_u64_field(KIND, FAST);
            builder.add_u64_field("latency_ms", FAST);
            builder.add_text_field("assistant_id", FAST);
        }
        let index = Index::create_in_dir(path, builder.build()).unwrap();
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 16 << 20).unwrap();
        for (i, log) in logs.iter().enumerate() {
            let mut document = TantivyDocument::new();
            document.add_text(user, &log.user_id);
            document.add_text(scoped, "unused");
            document.add_text(message, &log.message);
            document.add_u64(timestamp, log.timestamp_nanos);
            document.add_u64(seq, i as u64 + 1);
            document.add_bytes(doc, &served_json(log));
            writer.add_document(document).unwrap();
            if i == 2 {
                // two segments
                writer.commit().unwrap();
            }
        }
        let mut prepared = writer.prepare_commit().unwrap();
        prepared.set_payload(r#"{"last_seq":7}"#);
        prepared.commit().unwrap();
        writer.wait_merging_threads().unwrap();
    }

    fn logs() -> Vec<ActivityLog> {
        (0..5u64)
            .map(|i| {
                let mut log = example_log(&format!("log {i}"));
                log.user_id = if i % 2 == 0 { "alice" } else { "bob" }.to_owned();
                log.latency_ms = 100 * (i + 1);
                log.timestamp_nanos = 1_000 + i;
                log.request_data =
                    RawValue::from_string(format!(r#"{{"payload":{{"caller":"+9198{i}"}}}}"#))
                        .unwrap();
                log
            })
            .collect()
    }

    fn query(user: &str) -> LogQuery {
        LogQuery {
            user_id: user.to_owned(),
            limit: 10,
            ..Default::default()
        }
    }

    #[test]
    fn an_index_of_an_earlier_version_is_upgraded_with_every_log_as_it_was() {
        for version in [Version::BeforeStatistics, Version::BeforePayloads] {
            upgrades_with_every_log_as_it_was(version);
        }
    }

    fn upgrades_with_every_log_as_it_was(version: Version) {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs();
        write_old_index(dir.path(), &logs, version);

        let (store, writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        assert_eq!(writer.committed_seq(), 7);
        assert_eq!(store.num_logs(), 5);
        let page = store.search(&query("alice")).unwrap();
        let served: Vec<Vec<u8>> = page.logs.into_iter().map(|(_, json)| json).collect();
        let expected: Vec<Vec<u8>> = [4, 2, 0].iter().map(|&i| served_json(&logs[i])).collect();
        assert_eq!(served, expected);
        let not_cancelled = std::sync::atomic::AtomicBool::new(false);
        let stats = store.stats(&query("bob"), None, &not_cancelled).unwrap();
        assert_eq!(stats.total(), 2);
        let latency = stats.latency[0].unwrap();
        assert_eq!((latency.count, latency.max), (2, 400));
        assert_eq!(stats.top_assistants[0].count, 2);
        // the payloads are searchable by path
        let by_caller = LogQuery {
            text: Some(parse("request_data.payload.caller:\"+91982\"").unwrap()),
            ..query("alice")
        };
        let page = store.search(&by_caller).unwrap();
        assert_eq!(page.total, 1);
        assert_eq!(page.logs[0].1, served_json(&logs[2]));
        assert!(!dir.path().join(UPGRADE_DIR).exists());
        assert_eq!(store_compression(dir.path()), ["zstd"]);
        drop((store, writer));

        // opened again: nothing to do
        assert_eq!(upgrade(dir.path(), true).unwrap(), 0);
    }

    /// How each segment of the index in `path` compresses its stored documents, as its store's
    /// footer names it: the 13th of its last 28 bytes (1: LZ4, 4: zstd).
    fn store_compression(path: &Path) -> Vec<&'static str> {
        let searcher = Index::open_in_dir(path)
            .unwrap()
            .reader()
            .unwrap()
            .searcher();
        let segments = searcher.segment_readers();
        let mut compression: Vec<&str> = segments
            .iter()
            .map(|segment| {
                let store = segment.open_read(SegmentComponent::Store).unwrap();
                let bytes = store.read_bytes().unwrap();
                match bytes.as_slice()[bytes.len() - 28 + 12] {
                    1 => "lz4",
                    4 => "zstd",
                    other => panic!("compressor {other}"),
                }
            })
            .collect();
        compression.sort();
        compression
    }

    #[test]
    fn stored_documents_of_earlier_segments_stay_readable_and_are_rewritten_when_merged() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs();
        // the current schema with tantivy's default compression and each stored document the
        // whole served JSON, as logbridge wrote it before
        let (schema, fields) = Fields::schema(true);
        let index = Index::create_in_dir(dir.path(), schema).unwrap();
        register_analyzers(&index);
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 16 << 20).unwrap();
        for (i, log) in logs[..3].iter().enumerate() {
            let document = fields.document(log, i as u64 + 1);
            let mut earlier = TantivyDocument::new();
            for (field, value) in document.field_values() {
                if field != fields.doc {
                    earlier.add_field_value(field, value);
                }
            }
            earlier.add_bytes(fields.doc, &served_json(log));
            writer.add_document(earlier).unwrap();
        }
        let mut prepared = writer.prepare_commit().unwrap();
        prepared.set_payload(r#"{"last_seq":3}"#);
        prepared.commit().unwrap();
        writer.wait_merging_threads().unwrap();
        assert_eq!(store_compression(dir.path()), ["lz4"]);

        let (store, mut writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        assert_eq!(upgrade(dir.path(), true).unwrap(), 0, "no copy");
        for (i, log) in logs.iter().enumerate().skip(3) {
            writer.add(log, i as u64 + 1).unwrap();
        }
        writer.commit(5).unwrap();
        assert_eq!(store_compression(dir.path()), ["lz4", "zstd"]);
        let served = |store: &super::super::Store, user| -> Vec<Vec<u8>> {
            let page = store.search(&query(user)).unwrap();
            page.logs.into_iter().map(|(_, json)| json).collect()
        };
        let alice: Vec<Vec<u8>> = [4, 2, 0].iter().map(|&i| served_json(&logs[i])).collect();
        assert_eq!(served(&store, "alice"), alice);

        let segments = writer.index.searchable_segment_ids().unwrap();
        writer.writer.merge(&segments).wait().unwrap();
        writer.commit(5).unwrap();
        assert_eq!(store_compression(dir.path()), ["zstd"]);
        assert_eq!(served(&store, "alice"), alice);
        let bob: Vec<Vec<u8>> = [3, 1].iter().map(|&i| served_json(&logs[i])).collect();
        assert_eq!(served(&store, "bob"), bob);
    }

    #[test]
    fn a_swap_cut_short_is_finished_and_a_copy_cut_short_is_redone() {
        let dir = tempfile::tempdir().unwrap();
        write_old_index(dir.path(), &logs(), Version::BeforePayloads);
        let staging = dir.path().join(UPGRADE_DIR);

        // a copy cut short (no `complete`): thrown away and made again
        let old = Index::open_in_dir(dir.path()).unwrap();
        copy(&old, &staging, true).unwrap();
        assert_eq!(upgrade(dir.path(), true).unwrap(), 5);

        // a crash after the copy completed and a few files moved: the next start finishes it
        let dir = tempfile::tempdir().unwrap();
        write_old_index(dir.path(), &logs(), Version::BeforeStatistics);
        let staging = dir.path().join(UPGRADE_DIR);
        let old = Index::open_in_dir(dir.path()).unwrap();
        copy(&old, &staging, true).unwrap();
        sync_file(&staging.join(COMPLETE), true).unwrap();
        let first = fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|n| n.ends_with(".store"))
            .unwrap();
        fs::rename(staging.join(&first), dir.path().join(&first)).unwrap();
        let (store, _writer) = open(dir.path(), &StoreOptions::new(16 << 20)).unwrap();
        assert_eq!(store.num_logs(), 5);
        assert_eq!(store.search(&query("alice")).unwrap().total, 3);
        assert!(!staging.exists());
    }
}
