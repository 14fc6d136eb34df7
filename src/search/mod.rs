//! `q`, the search grammar: what a support engineer types into the explorer's search box, or a
//! dashboard sends, parsed into an expression the store runs over the index; and the words and
//! payload terms that logs are indexed under, so that both sides cut text the same way.

mod grammar;
mod payload;
mod words;

pub use grammar::{Expr, MAX_Q_BYTES, MIN_PREFIX_CHARS, QueryError, Term, Text, Value, parse};
pub use payload::{MAX_PATH_BYTES, MAX_VALUE_BYTES, PAYLOADS, PayloadTerms, value_term, word_term};
pub use words::{MAX_WORD_BYTES, words};

impl Term {
    /// What a prefix term starts with (as typed, without its star); none for other terms.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            Term::Message(Text::Prefix(p))
            | Term::AssistantId(Value::Prefix(p))
            | Term::RoomName(Value::Prefix(p))
            | Term::Payload {
                value: Value::Prefix(p),
                ..
            } => Some(p),
            _ => None,
        }
    }
}

impl Expr {
    /// Refuses a query that names a payload path, for a server that does not index them
    /// (`[index] payload_paths = false`): such a term could not be answered, and excluded it
    /// would select every log.
    pub fn refuse_payloads(&self) -> Result<(), QueryError> {
        match self {
            Expr::And(parts) | Expr::Or(parts) => parts.iter().try_for_each(Expr::refuse_payloads),
            Expr::Not(inner) => inner.refuse_payloads(),
            Expr::Term(Term::Payload { .. }, at) => Err(QueryError::new(
                *at,
                "names a payload path, and this server does not index them ([index] payload_paths = false)",
            )),
            Expr::Term(..) => Ok(()),
        }
    }

    /// The words of the message a log matches the query by, to show them marked: those not
    /// under a `-`. Prefixes end with `*`.
    pub fn highlights(&self) -> Vec<String> {
        let mut found = Vec::new();
        self.collect_highlights(&mut found);
        found.sort();
        found.dedup();
        found
    }

    fn collect_highlights(&self, found: &mut Vec<String>) {
        match self {
            Expr::And(parts) | Expr::Or(parts) => {
                parts.iter().for_each(|p| p.collect_highlights(found));
            }
            Expr::Not(_) => {}
            Expr::Term(Term::Message(text), _) => match text {
                Text::Word(w) => found.push(w.clone()),
                Text::Prefix(p) => found.push(format!("{p}*")),
                Text::Phrase(words) => found.extend(words.iter().cloned()),
            },
            Expr::Term(..) => {}
        }
    }
}
