//! The embedded tantivy index: schema, the single writer, and newest-first queries.
//!
//! One [`LogWriter`] owns the `IndexWriter`; one [`Store`] (cheap to clone) holds the reader and
//! takes a fresh searcher per query. Both are blocking: call them off the async runtime.

mod collector;
mod schema;

use std::path::Path;

use serde::{Deserialize, Serialize};
use tantivy::directory::MmapDirectory;
use tantivy::indexer::IndexWriterOptions;
use tantivy::query::{BooleanQuery, Occur, PhraseQuery, Query, TermQuery};
use tantivy::schema::{IndexRecordOption, Value as _};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

pub use collector::SortKey;
pub use schema::{MAX_WORD_BYTES, format_timestamp, message_terms};

use crate::mapping::{ActivityLog, LogStatus, LogType};
use collector::TopLogs;
use schema::{Fields, MESSAGE_TOKENIZER, message_analyzer};

/// A failure of the index.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open index folder {path}: {message}")]
    Open { path: String, message: String },
    #[error("index error: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("corrupt commit payload {0:?}")]
    Payload(String),
}

/// What a commit records beside the documents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CommitPayload {
    /// The highest sequence number in the commit.
    last_seq: u64,
}

/// A query over one user's logs. Every condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub user_id: String,
    pub log_type: Option<LogType>,
    pub status: Option<LogStatus>,
    pub assistant_id: Option<String>,
    pub room_name: Option<String>,
    /// Full-text clauses over `message`: each is a word (one term) or a phrase (several).
    pub text: Vec<Vec<String>>,
    /// Inclusive, nanoseconds since the epoch.
    pub start: Option<u64>,
    /// Exclusive, nanoseconds since the epoch.
    pub end: Option<u64>,
    /// Keyset position: only logs strictly older than this key.
    pub before: Option<SortKey>,
    /// Eligible logs to skip before the page.
    pub offset: usize,
    /// Size of the page.
    pub limit: usize,
}

/// One page of logs.
#[derive(Debug)]
pub struct LogPage {
    /// Every log matching the filters (the keyset position aside).
    pub total: u64,
    /// Whether eligible logs follow this page.
    pub has_more: bool,
    /// The page, newest first: each log's sort key and its JSON as served.
    pub logs: Vec<(SortKey, Vec<u8>)>,
}

/// The read side of the index.
#[derive(Clone)]
pub struct Store {
    reader: IndexReader,
    fields: Fields,
}

/// The one writer of the index.
pub struct LogWriter {
    writer: IndexWriter,
    reader: IndexReader,
    fields: Fields,
    committed_seq: u64,
}

/// Opens the index in `path`, creating the folder and the index on first use.
pub fn open(path: &Path, writer_memory_bytes: usize) -> Result<(Store, LogWriter), StoreError> {
    let open_error = |message: String| StoreError::Open {
        path: path.display().to_string(),
        message,
    };
    std::fs::create_dir_all(path).map_err(|e| open_error(e.to_string()))?;
    let directory = MmapDirectory::open(path).map_err(|e| open_error(e.to_string()))?;
    let (schema, fields) = Fields::schema();
    let index = Index::open_or_create(directory, schema).map_err(|e| open_error(e.to_string()))?;
    index
        .tokenizers()
        .register(MESSAGE_TOKENIZER, message_analyzer());
    let committed_seq = match index.load_metas()?.payload {
        None => 0,
        Some(payload) => {
            serde_json::from_str::<CommitPayload>(&payload)
                .map_err(|_| StoreError::Payload(payload.clone()))?
                .last_seq
        }
    };
    // Merges on a second thread would fight indexing on small machines: one of each.
    let options = IndexWriterOptions::builder()
        .memory_budget_per_thread(writer_memory_bytes)
        .num_worker_threads(1)
        .num_merge_threads(1)
        .build();
    let writer = index.writer_with_options(options)?;
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    Ok((
        Store {
            reader: reader.clone(),
            fields,
        },
        LogWriter {
            writer,
            reader,
            fields,
            committed_seq,
        },
    ))
}

impl LogWriter {
    /// The highest sequence number of the last commit (0 for a new index).
    pub fn committed_seq(&self) -> u64 {
        self.committed_seq
    }

    /// Number of logs committed and visible.
    pub fn num_logs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Adds a log; it becomes visible with the next commit.
    pub fn add(&mut self, log: &ActivityLog, seq: u64) -> Result<(), StoreError> {
        self.writer.add_document(self.fields.document(log, seq))?;
        Ok(())
    }

    /// Commits everything added so far, recording `last_seq`, and makes it visible.
    pub fn commit(&mut self, last_seq: u64) -> Result<(), StoreError> {
        let payload = serde_json::to_string(&CommitPayload { last_seq })
            .expect("a payload of one integer serializes");
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.committed_seq = last_seq;
        self.reader.reload()?;
        Ok(())
    }
}

impl Store {
    /// Number of logs visible to searches.
    pub fn num_logs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Runs a query: the exact total and one page, newest first.
    pub fn search(&self, query: &LogQuery) -> Result<LogPage, StoreError> {
        let searcher = self.reader.searcher();
        let offset = query.offset;
        // An offset past every log in the index can only yield an empty page: count only.
        let k = if offset as u64 >= searcher.num_docs() {
            0
        } else {
            offset.saturating_add(query.limit)
        };
        let collector = TopLogs {
            k,
            start: query.start.unwrap_or(0),
            end: query.end,
            before: query.before,
        };
        let fruit = searcher.search(&self.tantivy_query(query), &collector)?;
        let mut logs = Vec::with_capacity(fruit.top.len().saturating_sub(offset));
        for (key, address) in fruit.top.into_iter().skip(offset) {
            let doc: TantivyDocument = searcher.doc(address)?;
            let json = doc
                .get_first(self.fields.doc)
                .and_then(|value| value.as_bytes())
                .unwrap_or(b"{}")
                .to_vec();
            logs.push((key, json));
        }
        let shown = offset.saturating_add(logs.len()) as u64;
        Ok(LogPage {
            total: fruit.total,
            has_more: fruit.eligible > shown,
            logs,
        })
    }

    fn tantivy_query(&self, query: &LogQuery) -> BooleanQuery {
        let f = &self.fields;
        let term = |field, value: &str| -> (Occur, Box<dyn Query>) {
            let term = Term::from_field_text(field, value);
            (
                Occur::Must,
                Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
            )
        };
        let mut clauses = vec![term(f.user, &query.user_id)];
        if let Some(log_type) = query.log_type {
            clauses.push(term(f.log_type, log_type.as_str()));
        }
        if let Some(status) = query.status {
            clauses.push(term(f.status, status.as_str()));
        }
        if let Some(assistant_id) = &query.assistant_id {
            clauses.push(term(f.assistant_id, assistant_id));
        }
        if let Some(room_name) = &query.room_name {
            clauses.push(term(f.room_name, room_name));
        }
        for words in &query.text {
            match words.as_slice() {
                [] => {}
                [word] => clauses.push(term(f.message, word)),
                phrase => {
                    let terms = phrase
                        .iter()
                        .map(|w| Term::from_field_text(f.message, w))
                        .collect();
                    clauses.push((Occur::Must, Box::new(PhraseQuery::new(terms))));
                }
            }
        }
        BooleanQuery::new(clauses)
    }
}
