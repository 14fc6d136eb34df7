//! The single writer: adding logs, committing with their last sequence number, rolling back
//! after a failure, and a merge policy that reclaims deleted logs.

use tantivy::indexer::{IndexWriterOptions, LogMergePolicy};
use tantivy::{Index, IndexReader, IndexWriter};

use super::columns::ColumnCache;
use super::directory::WriteErrors;
use super::{CommitPayload, LogWriter, StoreError, payload_last_seq};
use crate::mapping::ActivityLog;

/// Share of deleted logs past which a segment is merged to reclaim their space.
pub(super) const DELETED_SHARE_BEFORE_MERGE: f32 = 0.2;

/// An index writer whose merges also reclaim the space of deleted logs: a segment is rewritten
/// once a fifth of it is deleted (tantivy's default waits until all of it is).
pub(super) fn new_writer(
    index: &Index,
    options: &IndexWriterOptions,
) -> tantivy::Result<IndexWriter> {
    let writer = index.writer_with_options(options.clone())?;
    writer.set_merge_policy(merge_policy());
    Ok(writer)
}

pub(super) fn merge_policy() -> Box<LogMergePolicy> {
    let mut policy = LogMergePolicy::default();
    policy.set_del_docs_ratio_before_merge(DELETED_SHARE_BEFORE_MERGE);
    Box::new(policy)
}

/// The highest sequence number the index holds on disk: that of its last commit's payload, or
/// higher when tantivy published segments of a commit that failed (a merge that ends after a
/// failed `meta.json` write saves the new segments under the old payload). Logs are added in
/// sequence order and segments flushed in that order, so every log up to it is there.
pub(super) fn durable_seq(
    index: &Index,
    reader: &IndexReader,
    columns: &ColumnCache,
) -> Result<u64, StoreError> {
    let highest = match index.load_metas()?.payload {
        None => 0,
        Some(payload) => {
            payload_last_seq(&payload).ok_or_else(|| StoreError::Payload(payload.clone()))?
        }
    };
    Ok(highest.max(super::reader::seen_through(&reader.searcher(), columns)?))
}

/// Tantivy's error, or the I/O error behind it when the directory saw one.
pub(super) fn explain(write_errors: &WriteErrors, error: tantivy::TantivyError) -> StoreError {
    match write_errors.take() {
        Some(io) => StoreError::Write(io),
        None => StoreError::Tantivy(error),
    }
}

impl LogWriter {
    /// The highest sequence number the index holds durably (0 for a new index).
    pub fn committed_seq(&self) -> u64 {
        self.committed_seq
    }

    /// Drops everything added since the last commit and makes the writer work again after a
    /// failure (a failed writer keeps taking documents into a channel nobody reads). Then
    /// [`LogWriter::committed_seq`] tells from where to add again.
    pub fn rollback(&mut self) -> Result<(), StoreError> {
        if !self.writer_lost {
            if self.writer.rollback().is_err() {
                // a failed rollback leaves the writer without its lock: only a new writer works
                self.writer_lost = true;
            } else {
                // a rolled-back writer starts over with tantivy's default merge policy
                self.writer.set_merge_policy(merge_policy());
            }
        }
        if self.writer_lost {
            self.writer = new_writer(&self.index, &self.options)?;
            self.writer_lost = false;
        }
        self.reload()?;
        self.committed_seq = durable_seq(&self.index, &self.reader, &self.columns)?;
        self.publish_visible();
        // what went wrong before the rollback explains nothing after it
        self.write_errors.take();
        Ok(())
    }

    /// Number of logs committed and visible.
    pub fn num_logs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Number of logs deleted but still on disk, as of the last commit.
    pub fn num_deleted_logs(&self) -> u64 {
        let searcher = self.reader.searcher();
        let segments = searcher.segment_readers().iter();
        segments.map(|s| u64::from(s.num_deleted_docs())).sum()
    }

    /// Adds a log; it becomes visible with the next commit.
    pub fn add(&mut self, log: &ActivityLog, seq: u64) -> Result<(), StoreError> {
        let added = self.writer.add_document(self.fields.document(log, seq));
        added.map_err(|e| explain(&self.write_errors, e))?;
        Ok(())
    }

    /// Commits everything added so far, recording `last_seq`, and makes it visible.
    pub fn commit(&mut self, last_seq: u64) -> Result<(), StoreError> {
        let payload = serde_json::to_string(&CommitPayload { last_seq })
            .expect("a payload of one integer serializes");
        let errors = &self.write_errors;
        let mut prepared = self
            .writer
            .prepare_commit()
            .map_err(|e| explain(errors, e))?;
        prepared.set_payload(&payload);
        prepared.commit().map_err(|e| explain(errors, e))?;
        self.committed_seq = last_seq;
        self.reload()?;
        self.publish_visible();
        self.start_purge();
        Ok(())
    }

    /// Makes searches see the last commit, and asks for the segments it brings to be warmed.
    fn reload(&self) -> tantivy::Result<()> {
        self.reader.reload()?;
        self.warming.wake();
        Ok(())
    }

    /// Tells searches that every log up to the committed sequence number is visible.
    fn publish_visible(&self) {
        let seq = self.committed_seq;
        self.visible.send_if_modified(|visible| {
            let newer = seq > *visible;
            *visible = (*visible).max(seq);
            newer
        });
    }
}
