//! The index as [`super::open`] makes it, with nothing of logbridge around it: what the ingest
//! benchmark compares logbridge with, tantivy indexing the same documents.

use std::path::Path;

use tantivy::directory::MmapDirectory;
use tantivy::{IndexWriter, TantivyDocument};

use super::schema::Fields;
use super::writer::new_writer;
use super::{StoreError, StoreOptions, open_error, open_index};
use crate::mapping::ActivityLog;

/// A new index in an empty folder, made as [`super::open`] makes one (schema, analyzers,
/// compression of stored documents, one indexing and one merge thread, merge policy), and its
/// writer; without write-ahead log, commit payload, reader or checks.
pub struct BareIndex {
    pub writer: IndexWriter,
    fields: Fields,
}

impl BareIndex {
    /// The index in `path`, an existing empty folder.
    pub fn create(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let directory = MmapDirectory::open(path).map_err(|e| open_error(path, e.to_string()))?;
        let (index, fields, writer_options) = open_index(directory, options)?;
        let writer = new_writer(&index, &writer_options)?;
        Ok(Self { writer, fields })
    }

    /// The document [`super::LogWriter::add`] gives tantivy for `log`.
    pub fn document(&self, log: &ActivityLog, seq: u64) -> TantivyDocument {
        self.fields.document(log, seq)
    }
}
