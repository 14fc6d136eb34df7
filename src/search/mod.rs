//! `q`, the search grammar: what a support engineer types into the explorer's search box, or a
//! dashboard sends, parsed into an expression the store runs over the index; and the words and
//! payload terms that logs are indexed under, so that both sides cut text the same way.

mod grammar;
mod payload;
mod words;

use std::convert::Infallible;

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
    /// Calls `visit` with each term, where it starts, and whether it is under a `-`, in the
    /// order of the query, until it fails.
    pub fn try_for_each_term<E>(
        &self,
        visit: &mut impl FnMut(&Term, usize, bool) -> Result<(), E>,
    ) -> Result<(), E> {
        self.visit_terms(false, visit)
    }

    fn visit_terms<E>(
        &self,
        excluded: bool,
        visit: &mut impl FnMut(&Term, usize, bool) -> Result<(), E>,
    ) -> Result<(), E> {
        match self {
            Expr::And(parts) | Expr::Or(parts) => parts
                .iter()
                .try_for_each(|p| p.visit_terms(excluded, visit)),
            Expr::Not(inner) => inner.visit_terms(true, visit),
            Expr::Term(term, at) => visit(term, *at, excluded),
        }
    }

    /// Refuses a query that names a payload path, for a server that does not index them
    /// (`[index] payload_paths = false`): such a term could not be answered, and excluded it
    /// would select every log.
    pub fn refuse_payloads(&self) -> Result<(), QueryError> {
        self.try_for_each_term(&mut |term, at, _| match term {
            Term::Payload { .. } => Err(QueryError::new(
                at,
                "names a payload path, and this server does not index them ([index] payload_paths = false)",
            )),
            _ => Ok(()),
        })
    }

    /// The words of the message a log matches the query by, to show them marked: those not
    /// under a `-`. Prefixes end with `*`.
    pub fn highlights(&self) -> Vec<String> {
        let mut found = Vec::new();
        let Ok(()) = self.try_for_each_term::<Infallible>(&mut |term, _, excluded| {
            match term {
                Term::Message(Text::Word(w)) if !excluded => found.push(w.clone()),
                Term::Message(Text::Prefix(p)) if !excluded => found.push(format!("{p}*")),
                Term::Message(Text::Phrase(words)) if !excluded => {
                    found.extend(words.iter().cloned())
                }
                _ => {}
            }
            Ok(())
        });
        found.sort();
        found.dedup();
        found
    }
}
