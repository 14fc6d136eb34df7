//! The tantivy schema of an activity log and the stored document it serves.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use tantivy::schema::{
    FAST, Field, IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::tokenizer::{
    BoxTokenStream, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer, Token,
    TokenStream, Tokenizer,
};
use tantivy::{Index, TantivyDocument};

use crate::mapping::{ActivityLog, LogStatus, LogType};
use crate::search::{MAX_WORD_BYTES, PayloadTerms};

/// Name of the analyzer of `message`: words split on non-alphanumerics, lower-cased.
const MESSAGE_TOKENIZER: &str = "message";

/// Name of the analyzer of `payload_words`: [`PayloadWords`].
const PAYLOAD_TOKENIZER: &str = "payload_words";

/// Name of the fast field of timestamps.
pub const TIMESTAMP_FIELD: &str = "timestamp";

/// Name of the fast field of ingest sequence numbers.
pub const SEQ_FIELD: &str = "seq";

/// Name of the fast field of a log's type and status, as [`kind`] encodes them.
pub const KIND_FIELD: &str = "kind";

/// Name of the fast field of latencies, in milliseconds.
pub const LATENCY_FIELD: &str = "latency_ms";

/// Name of the fast (columnar, not searchable) field of assistant ids.
pub const ASSISTANT_FIELD: &str = "assistant_id";

/// A log type and status as one small number: `type * 2 + status`, in the order of
/// [`LogType::ALL`] and [`LogStatus::ALL`].
pub fn kind(log_type: LogType, status: LogStatus) -> u64 {
    let t = LogType::ALL.iter().position(|&x| x == log_type);
    let s = LogStatus::ALL.iter().position(|&x| x == status);
    (t.expect("every type is in ALL") * 2 + s.expect("every status is in ALL")) as u64
}

/// The indexes in [`LogType::ALL`] and [`LogStatus::ALL`] of a stored [`kind`].
pub(super) fn kind_parts(kind: u64) -> (usize, usize) {
    ((kind / 2) as usize, (kind % 2) as usize)
}

/// A filter value, always within one user: indexed as one term of the `scoped` field, so that a
/// query by user and filter is a single term, counted from its document frequency.
#[derive(Debug, Clone, Copy)]
pub enum Scoped<'a> {
    LogType(LogType),
    Status(LogStatus),
    LogTypeAndStatus(LogType, LogStatus),
    AssistantId(&'a str),
    RoomName(&'a str),
}

impl Scoped<'_> {
    /// The term text: the user, length-prefixed so no value can pose as another user's, then a
    /// tag and the value.
    pub fn term_text(&self, user: &str) -> String {
        let (tag, value) = match *self {
            Scoped::LogType(t) => ('t', t.as_str().to_owned()),
            Scoped::Status(s) => ('s', s.as_str().to_owned()),
            Scoped::LogTypeAndStatus(t, s) => ('x', format!("{}/{}", t.as_str(), s.as_str())),
            Scoped::AssistantId(a) => ('a', a.to_owned()),
            Scoped::RoomName(r) => ('r', r.to_owned()),
        };
        format!("{}:{user}{tag}{value}", user.len())
    }
}

/// The fields of the index.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// The tenant, exact match; every query is restricted to one.
    pub user: Field,
    /// The user's filter values, one [`Scoped`] term each.
    pub scoped: Field,
    /// Full text, with positions for phrases.
    pub message: Field,
    /// Nanoseconds since the epoch, fast, full precision: the primary sort key.
    pub timestamp: Field,
    /// Ingest sequence number, fast: the tie-breaker of equal timestamps, and what replay
    /// compares with the last commit.
    pub seq: Field,
    /// The log as served by the API, less what the fast fields hold ([`super::stored`]).
    pub doc: Field,
    /// Type and status, fast, for statistics.
    pub kind: Field,
    /// Latency in milliseconds, fast, for statistics.
    pub latency: Field,
    /// Assistant id, fast, for statistics.
    pub assistant: Field,
    /// The whole values of the payloads, by path ([`crate::search::value_term`]).
    pub payload_values: Field,
    /// The words of the payloads' strings, by path ([`crate::search::word_term`]), with
    /// positions for phrases.
    pub payload_words: Field,
    /// Whether documents get their payload terms (`[index] payload_paths`).
    pub payloads: bool,
}

impl Fields {
    /// The schema and its fields; `payloads`: whether documents get payload terms. No field
    /// keeps norms: they serve relevance scoring, which no query uses (results are newest first).
    pub fn schema(payloads: bool) -> (Schema, Fields) {
        let mut builder = Schema::builder();
        let indexed = |tokenizer: &str, record: IndexRecordOption| {
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(tokenizer)
                    .set_index_option(record)
                    .set_fieldnorms(false),
            )
        };
        let exact = || indexed("raw", IndexRecordOption::Basic);
        let fields = Fields {
            user: builder.add_text_field("user", exact()),
            scoped: builder.add_text_field("scoped", exact()),
            message: builder.add_text_field(
                "message",
                indexed(MESSAGE_TOKENIZER, IndexRecordOption::WithFreqsAndPositions),
            ),
            timestamp: builder.add_u64_field(TIMESTAMP_FIELD, FAST),
            seq: builder.add_u64_field(SEQ_FIELD, FAST),
            doc: builder.add_bytes_field("doc", STORED),
            kind: builder.add_u64_field(KIND_FIELD, FAST),
            latency: builder.add_u64_field(LATENCY_FIELD, FAST),
            assistant: builder.add_text_field(ASSISTANT_FIELD, FAST),
            payload_values: builder.add_text_field("payload_values", exact()),
            payload_words: builder.add_text_field(
                "payload_words",
                indexed(PAYLOAD_TOKENIZER, IndexRecordOption::WithFreqsAndPositions),
            ),
            payloads,
        };
        (builder.build(), fields)
    }

    /// The tantivy document of an activity log with its sequence number.
    pub fn document(&self, log: &ActivityLog, seq: u64) -> TantivyDocument {
        let mut doc = TantivyDocument::new();
        let user = &log.user_id;
        doc.add_text(self.user, user);
        for scoped in [
            Scoped::LogType(log.log_type),
            Scoped::Status(log.status),
            Scoped::LogTypeAndStatus(log.log_type, log.status),
            Scoped::AssistantId(&log.assistant_id),
            Scoped::RoomName(&log.room_name),
        ] {
            doc.add_text(self.scoped, scoped.term_text(user));
        }
        doc.add_text(self.message, &log.message);
        doc.add_u64(self.timestamp, log.timestamp_nanos);
        doc.add_u64(self.seq, seq);
        doc.add_bytes(self.doc, &super::stored::document(log));
        doc.add_u64(self.kind, kind(log.log_type, log.status));
        doc.add_u64(self.latency, log.latency_ms);
        doc.add_text(self.assistant, &log.assistant_id);
        if self.payloads {
            self.add_payloads(&mut doc, log);
        }
        doc
    }

    fn add_payloads(&self, doc: &mut TantivyDocument, log: &ActivityLog) {
        let terms = PayloadTerms::of(log.request_data.get(), log.response_data.get());
        for value in &terms.values {
            doc.add_text(self.payload_values, value);
        }
        for text in &terms.texts {
            doc.add_text(self.payload_words, text);
        }
    }
}

/// Size of a block of stored documents before compression: tantivy's default. Reading a log
/// decompresses its whole block, and the logs of a small user's page each sit in a block of
/// their own: larger blocks compress better (24 KiB: 13% smaller) but make such a page slower to
/// read (about 1 ms more).
const STORE_BLOCK_BYTES: usize = 16 << 10;

/// Makes `index` store documents as zstd (level 3) blocks of [`STORE_BLOCK_BYTES`]: activity
/// logs take a third less than with tantivy's default LZ4, for about 0.4 ms more on a page whose
/// logs sit in 50 different blocks. Segments written before keep their compression until a
/// merge rewrites them, and stay readable: each segment's store names its own.
pub fn compress_stored_documents(index: &mut Index) {
    let settings = index.settings_mut();
    settings.docstore_compression = Compressor::Zstd(ZstdCompressor::default());
    settings.docstore_blocksize = STORE_BLOCK_BYTES;
}

/// Registers the analyzers the schema names with `index`.
pub fn register_analyzers(index: &Index) {
    let tokenizers = index.tokenizers();
    tokenizers.register(MESSAGE_TOKENIZER, message_analyzer());
    tokenizers.register(PAYLOAD_TOKENIZER, PayloadWords(message_analyzer()));
}

/// The analyzer of `message` at indexing time.
fn message_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_WORD_BYTES + 1))
        .filter(LowerCaser)
        .build()
}

/// The analyzer of `payload_words`: a value `<path>\0<text>` ([`crate::search::word_term`] of
/// a whole string) gives the words of the text as `message` cuts them, each as its path's
/// [`crate::search::word_term`].
#[derive(Clone)]
struct PayloadWords(TextAnalyzer);

impl Tokenizer for PayloadWords {
    type TokenStream<'a> = PathWords<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> PathWords<'a> {
        let (path, words) = text.split_once('\0').unwrap_or(("", text));
        PathWords {
            path,
            words: self.0.token_stream(words),
            token: Token::default(),
        }
    }
}

struct PathWords<'a> {
    path: &'a str,
    words: BoxTokenStream<'a>,
    token: Token,
}

impl TokenStream for PathWords<'_> {
    fn advance(&mut self) -> bool {
        if !self.words.advance() {
            return false;
        }
        let word = self.words.token();
        self.token.text.clear();
        self.token.text.push_str(self.path);
        self.token.text.push('\0');
        self.token.text.push_str(&word.text);
        self.token.position = word.position;
        self.token.position_length = word.position_length;
        self.token.offset_from = word.offset_from;
        self.token.offset_to = word.offset_to;
        true
    }

    fn token(&self) -> &Token {
        &self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.token
    }
}

/// A timestamp as the API shows it: UTC, RFC 3339, milliseconds, `Z`.
pub fn format_timestamp(nanos: u64) -> String {
    let secs = i64::try_from(nanos / 1_000_000_000).expect("u64 seconds fit in i64");
    let subsec = u32::try_from(nanos % 1_000_000_000).expect("below one billion");
    DateTime::<Utc>::from_timestamp(secs, subsec)
        .expect("every u64 nanosecond timestamp is a valid date")
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An activity log as the API serves it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ActivityLog)]
pub struct ServedLog<'a> {
    #[schema(value_type = LogType)]
    log_type: &'static str,
    #[schema(value_type = LogStatus)]
    status: &'static str,
    assistant_id: &'a str,
    room_name: &'a str,
    /// UTC, RFC 3339 with milliseconds.
    #[schema(format = DateTime, example = "2026-03-10T09:15:42.123Z")]
    timestamp: String,
    message: &'a str,
    /// What the worker sent: a JSON object.
    #[schema(value_type = Object)]
    request_data: &'a RawValue,
    /// What it got back: a JSON object.
    #[schema(value_type = Object)]
    response_data: &'a RawValue,
    latency_ms: u64,
    /// Lower-case hex.
    trace_id: Option<&'a str>,
    /// Lower-case hex.
    span_id: Option<&'a str>,
    severity_text: Option<&'a str>,
}

/// The JSON of a log as `GET /logs` returns it, by [`ServedLog`]: what serving a stored document
/// must give.
#[cfg(test)]
pub(super) fn served_json(log: &ActivityLog) -> Vec<u8> {
    serde_json::to_vec(&ServedLog {
        log_type: log.log_type.as_str(),
        status: log.status.as_str(),
        assistant_id: &log.assistant_id,
        room_name: &log.room_name,
        timestamp: format_timestamp(log.timestamp_nanos),
        message: &log.message,
        request_data: &log.request_data,
        response_data: &log.response_data,
        latency_ms: log.latency_ms,
        trace_id: log.trace_id.as_deref(),
        span_id: log.span_id.as_deref(),
        severity_text: log.severity_text.as_deref(),
    })
    .expect("a log of strings, numbers and valid JSON serializes")
}

#[cfg(test)]
mod tests {
    use tantivy::tokenizer::TokenStream;

    use super::*;

    #[test]
    fn scoped_terms_cannot_collide_across_users() {
        let a = Scoped::AssistantId("x").term_text("u1");
        assert_eq!(a, "2:u1ax");
        // a user whose id looks like another's prefix and tag
        assert_ne!(
            Scoped::AssistantId("x").term_text("u1a"),
            Scoped::AssistantId("ax").term_text("u1")
        );
        assert_ne!(
            Scoped::RoomName("r").term_text("u"),
            Scoped::AssistantId("r").term_text("u")
        );
    }

    #[test]
    fn timestamps_have_three_fraction_digits_and_z() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(1_773_134_142_999_999_999),
            "2026-03-10T09:15:42.999Z"
        );
        assert_eq!(format_timestamp(u64::MAX), "2554-07-21T23:34:33.709Z");
    }

    #[test]
    fn words_up_to_the_limit_are_indexed() {
        let mut analyzer = message_analyzer();
        let mut count = |text: &str| {
            let mut stream = analyzer.token_stream(text);
            let mut n = 0;
            while stream.advance() {
                n += 1;
            }
            n
        };
        assert_eq!(count(&"a".repeat(MAX_WORD_BYTES)), 1);
        assert_eq!(count(&format!("{} b", "a".repeat(MAX_WORD_BYTES + 1))), 1);
    }
}
