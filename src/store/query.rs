//! The tantivy query of a [`LogQuery`]: its filters and its `q` expression, always within one
//! user's logs; and the checks of `q` against the index (prefixes that expand too far, payload
//! paths an index leaves out).

use std::collections::BTreeSet;
use std::ops::Bound;

use tantivy::query::{AllQuery, BooleanQuery, InvertedIndexRangeQuery, Occur, PhraseQuery, Query};
use tantivy::schema::Field;
use tantivy::{Searcher, Term};

use super::schema::{Fields, Scoped};
use super::{LogQuery, Store, StoreError, term_query};
use crate::search::{Expr, QueryError, Term as QTerm, Text, Value, value_term, word_term, words};

/// Most distinct words (or values) a prefix may stand for.
pub const MAX_PREFIX_TERMS: usize = 10_000;

/// Most words a prefix is spelled out as, each read as a word is: beyond, the logs holding any
/// of them are gathered at once, which costs what they number in the whole index.
const SPELLED_OUT_TERMS: usize = 128;

/// The tantivy query of the filters: the fewest terms that say them, all required. With the
/// `searcher` it will run over, a prefix standing for few words is spelled out as them (read
/// lazily, newest first, as words are); without, it is a range of the term dictionary.
pub(super) fn filter_query(
    f: &Fields,
    query: &LogQuery,
    searcher: Option<&Searcher>,
) -> Box<dyn Query> {
    let user = &query.user_id;
    let scoped = |value: Scoped<'_>| term_query(f.scoped, &value.term_text(user));
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    match (query.log_type, query.status) {
        (Some(t), Some(s)) => clauses.push((Occur::Must, scoped(Scoped::LogTypeAndStatus(t, s)))),
        (Some(t), None) => clauses.push((Occur::Must, scoped(Scoped::LogType(t)))),
        (None, Some(s)) => clauses.push((Occur::Must, scoped(Scoped::Status(s)))),
        (None, None) => {}
    }
    if let Some(assistant_id) = &query.assistant_id {
        clauses.push((Occur::Must, scoped(Scoped::AssistantId(assistant_id))));
    }
    if let Some(room_name) = &query.room_name {
        clauses.push((Occur::Must, scoped(Scoped::RoomName(room_name))));
    }
    // every term above holds the user; without one, the user's own term does
    if clauses.is_empty() {
        clauses.push((Occur::Must, term_query(f.user, user)));
    }
    if let Some(expr) = &query.text {
        Compiler { f, user, searcher }.clauses(expr, &mut clauses);
    }
    if let [(Occur::Must, _)] = clauses.as_slice() {
        return clauses.remove(0).1;
    }
    Box::new(BooleanQuery::new(clauses))
}

struct Compiler<'a> {
    f: &'a Fields,
    user: &'a str,
    searcher: Option<&'a Searcher>,
}

impl Compiler<'_> {
    /// `expr` as clauses all of which must hold, added to `out`: its parts if it is an AND,
    /// an exclusion if it is a NOT.
    fn clauses(&self, expr: &Expr, out: &mut Vec<(Occur, Box<dyn Query>)>) {
        match expr {
            Expr::And(parts) => parts.iter().for_each(|p| self.clauses(p, out)),
            Expr::Not(inner) => out.push((Occur::MustNot, self.query(inner))),
            other => out.push((Occur::Must, self.query(other))),
        }
    }

    fn query(&self, expr: &Expr) -> Box<dyn Query> {
        match expr {
            Expr::Or(parts) => any_of(parts.iter().map(|p| self.query(p)).collect()),
            Expr::Term(term, _) => self.term(term),
            and_or_not => {
                let mut clauses = Vec::new();
                self.clauses(and_or_not, &mut clauses);
                // exclusions alone match nothing: they exclude from everything
                if !clauses.iter().any(|(occur, _)| *occur == Occur::Must) {
                    clauses.push((Occur::Must, Box::new(AllQuery)));
                }
                Box::new(BooleanQuery::new(clauses))
            }
        }
    }

    fn term(&self, term: &QTerm) -> Box<dyn Query> {
        let (f, user) = (self.f, self.user);
        let scoped = |value: Scoped<'_>| term_query(f.scoped, &value.term_text(user));
        match term {
            QTerm::Message(Text::Prefix(_))
            | QTerm::AssistantId(Value::Prefix(_))
            | QTerm::RoomName(Value::Prefix(_))
            | QTerm::Payload {
                value: Value::Prefix(_),
                ..
            } => any_of(
                prefix_ranges(f, user, term)
                    .into_iter()
                    .map(|(field, start)| self.prefix_query(field, &start))
                    .collect(),
            ),
            QTerm::Message(Text::Word(word)) => term_query(f.message, word),
            QTerm::Message(Text::Phrase(words)) => words_query(f.message, "", words),
            QTerm::LogType(t) => scoped(Scoped::LogType(*t)),
            QTerm::Status(s) => scoped(Scoped::Status(*s)),
            QTerm::AssistantId(Value::Is(v)) => scoped(Scoped::AssistantId(v)),
            QTerm::RoomName(Value::Is(v)) => scoped(Scoped::RoomName(v)),
            QTerm::Payload {
                path,
                value: Value::Is(v),
            } => {
                let mut either = vec![term_query(f.payload_values, &value_term(path, v))];
                let words = words(v);
                if !words.is_empty() {
                    either.push(words_query(f.payload_words, &word_term(path, ""), &words));
                }
                any_of(either)
            }
        }
    }

    /// The logs holding a term of `field` that starts with `start`: the terms spelled out
    /// when they are few in the searcher's segments, else their range.
    fn prefix_query(&self, field: Field, start: &str) -> Box<dyn Query> {
        let spelled = self
            .searcher
            .and_then(|searcher| terms_starting(searcher, field, start, SPELLED_OUT_TERMS).ok())
            .filter(|terms| terms.len() <= SPELLED_OUT_TERMS);
        let Some(terms) = spelled else {
            let (lower, upper) = prefix_bounds(field, start);
            return Box::new(InvertedIndexRangeQuery::new(lower, upper));
        };
        any_of(
            terms
                .iter()
                .filter_map(|term| std::str::from_utf8(term).ok())
                .map(|word| term_query(field, word))
                .collect(),
        )
    }
}

/// The logs any of `queries` selects.
fn any_of(mut queries: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    if queries.len() == 1 {
        return queries.remove(0);
    }
    Box::new(BooleanQuery::new(
        queries.into_iter().map(|q| (Occur::Should, q)).collect(),
    ))
}

/// `words` of a text field one after the other (a phrase, or one word), each term being
/// `prefix` and the word.
fn words_query(field: Field, prefix: &str, words: &[String]) -> Box<dyn Query> {
    if let [word] = words {
        return term_query(field, &format!("{prefix}{word}"));
    }
    Box::new(PhraseQuery::new(
        words
            .iter()
            .map(|word| Term::from_field_text(field, &format!("{prefix}{word}")))
            .collect(),
    ))
}

/// Where a prefix term looks: each field with the start of the terms it stands for; none
/// for a term that is not a prefix. A prefix of a payload value looks at whole values
/// starting with it and, when it is one word, at words starting with it.
fn prefix_ranges(f: &Fields, user: &str, term: &QTerm) -> Vec<(Field, String)> {
    match term {
        QTerm::Message(Text::Prefix(p)) => vec![(f.message, p.clone())],
        QTerm::AssistantId(Value::Prefix(p)) => {
            vec![(f.scoped, Scoped::AssistantId(p).term_text(user))]
        }
        QTerm::RoomName(Value::Prefix(p)) => vec![(f.scoped, Scoped::RoomName(p).term_text(user))],
        QTerm::Payload {
            path,
            value: Value::Prefix(p),
        } => {
            let mut ranges = vec![(f.payload_values, value_term(path, p))];
            if let [word] = words(p).as_slice()
                && *word == p.to_lowercase()
            {
                ranges.push((f.payload_words, word_term(path, word)));
            }
            ranges
        }
        _ => Vec::new(),
    }
}

fn prefix_bounds(field: Field, start: &str) -> (Bound<Term>, Bound<Term>) {
    let lower = Bound::Included(Term::from_field_text(field, start));
    let mut end = start.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return (lower, Bound::Excluded(Term::from_field_bytes(field, &end)));
        }
    }
    (lower, Bound::Unbounded)
}

impl Store {
    /// Checks `query`'s `q` against the index as it is: a prefix may stand for at most
    /// [`MAX_PREFIX_TERMS`] words, and payload paths need an index that holds them. The outer
    /// error is the index failing; the inner one, what is wrong with `q`.
    pub fn check(&self, query: &LogQuery) -> Result<Result<(), QueryError>, StoreError> {
        let Some(expr) = &query.text else {
            return Ok(Ok(()));
        };
        if let Err(e) = self.fields.answerable(expr) {
            return Ok(Err(e));
        }
        let searcher = self.reader.searcher();
        let checked = expr.try_for_each_term(&mut |term, at, _| {
            self.check_term(&searcher, &query.user_id, term, at)
        });
        match checked {
            Ok(()) => Ok(Ok(())),
            Err(Refused::Query(e)) => Ok(Err(e)),
            Err(Refused::Store(e)) => Err(e),
        }
    }

    /// Refuses a prefix of `term` standing for more than [`MAX_PREFIX_TERMS`] words.
    fn check_term(
        &self,
        searcher: &Searcher,
        user: &str,
        term: &QTerm,
        at: usize,
    ) -> Result<(), Refused> {
        let Some(shown) = term.prefix() else {
            return Ok(());
        };
        for (field, start) in prefix_ranges(&self.fields, user, term) {
            if terms_starting(searcher, field, &start, MAX_PREFIX_TERMS)?.len() > MAX_PREFIX_TERMS {
                return Err(Refused::Query(QueryError::new(
                    at,
                    format!(
                        "has the prefix \"{shown}*\", which stands for more than {MAX_PREFIX_TERMS} words: give more of it"
                    ),
                )));
            }
        }
        Ok(())
    }
}

impl Fields {
    /// Refuses `expr` when it names a payload path and documents get no payload terms: such a
    /// term cannot be answered, and excluded it would select every log.
    pub(super) fn answerable(&self, expr: &Expr) -> Result<(), QueryError> {
        match self.payloads {
            true => Ok(()),
            false => expr.refuse_payloads(),
        }
    }
}

/// Why [`Store::check`] stopped.
enum Refused {
    Query(QueryError),
    Store(StoreError),
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused::Store(e)
    }
}

/// The distinct terms of `field` that start with `start`, in order, up to one past `limit`.
fn terms_starting(
    searcher: &Searcher,
    field: Field,
    start: &str,
    limit: usize,
) -> Result<BTreeSet<Vec<u8>>, StoreError> {
    let (lower, upper) = prefix_bounds(field, start);
    let mut seen = BTreeSet::new();
    for segment in searcher.segment_readers() {
        let index = segment.inverted_index(field)?;
        let mut range = index.terms().range();
        if let Bound::Included(term) = &lower {
            range = range.ge(term.serialized_value_bytes());
        }
        if let Bound::Excluded(term) = &upper {
            range = range.lt(term.serialized_value_bytes());
        }
        let mut stream = range
            .into_stream()
            .map_err(|e| StoreError::Tantivy(e.into()))?;
        while stream.advance() {
            seen.insert(stream.key().to_vec());
            if seen.len() > limit {
                return Ok(seen);
            }
        }
    }
    Ok(seen)
}
