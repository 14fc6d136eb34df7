//! The grammar of `q`: words (all must match), `"phrases"`, `-` to exclude, `OR`, parentheses,
//! `prefix*`, and `field:value` for the activity fields and for paths into the payloads.

use std::fmt;
use std::iter::Peekable;

use super::payload::{MAX_PATH_BYTES, PAYLOADS};
use super::words::{MAX_WORD_BYTES, words};
use crate::mapping::{LogStatus, LogType, MAX_NAME_BYTES};

/// Longest `q`, in bytes.
pub const MAX_Q_BYTES: usize = 1024;

/// Fewest characters before the star of a prefix.
pub const MIN_PREFIX_CHARS: usize = 2;

/// Deepest nesting of parentheses.
const MAX_DEPTH: usize = 16;

/// What a query selects, within the caller's own logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Every one of these.
    And(Vec<Expr>),
    /// Any of these.
    Or(Vec<Expr>),
    /// Not this.
    Not(Box<Expr>),
    /// One term, and where it starts in `q` (its first character is 1).
    Term(Term, usize),
}

/// One condition on a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// Words of the message.
    Message(Text),
    LogType(LogType),
    Status(LogStatus),
    /// The assistant id, exactly (case matters).
    AssistantId(Value),
    /// The room name, exactly (case matters).
    RoomName(Value),
    /// A value at a path into `request_data` or `response_data` (the path starts with either):
    /// a whole value ignoring case, or its words in this order.
    Payload {
        path: String,
        value: Value,
    },
}

/// Words of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Word(String),
    /// A word starting with this.
    Prefix(String),
    /// These words, one after the other.
    Phrase(Vec<String>),
}

impl Text {
    /// One word, or a phrase of several; none without words.
    pub fn of(mut words: Vec<String>) -> Option<Text> {
        match words.len() {
            0 => None,
            1 => words.pop().map(Text::Word),
            _ => Some(Text::Phrase(words)),
        }
    }
}

/// A value as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// This value.
    Is(String),
    /// A value starting with this.
    Prefix(String),
}

/// Why a query was refused: what, and at which character of `q` (1 for the first; 0 for `q`
/// as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub at: usize,
    pub problem: String,
}

impl QueryError {
    pub fn new(at: usize, problem: impl Into<String>) -> Self {
        Self {
            at,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            0 => write!(f, "q {}", self.problem),
            at => write!(f, "q {} (at character {at})", self.problem),
        }
    }
}

impl std::error::Error for QueryError {}

/// Parses `q`. A part without any letter or digit (punctuation) is ignored wherever it stands,
/// as if it was not typed; a query left with nothing is refused.
pub fn parse(q: &str) -> Result<Expr, QueryError> {
    if q.len() > MAX_Q_BYTES {
        return Err(QueryError::new(
            0,
            format!("must be at most {MAX_Q_BYTES} bytes"),
        ));
    }
    let mut parser = Parser {
        lexemes: lex(q)?.into_iter().peekable(),
    };
    let expr = parser.or(0)?;
    if let Some(lexeme) = parser.peek() {
        // only a `)` stops the top level early
        return Err(QueryError::new(lexeme.at, "has a ')' without its '('"));
    }
    expr.ok_or_else(|| QueryError::new(0, "must contain at least one word"))
}

/// A piece of `q`.
#[derive(Debug)]
enum Token {
    Open,
    Close,
    Or,
    Not,
    /// A word or more, or `field:value`.
    Bare(String),
    /// A `"quoted phrase"`, or the quoted value of `field:"value"` (then `field` is set).
    Quoted {
        field: Option<String>,
        text: String,
    },
}

#[derive(Debug)]
struct Lexeme {
    at: usize,
    token: Token,
}

fn lex(q: &str) -> Result<Vec<Lexeme>, QueryError> {
    let chars: Vec<char> = q.chars().collect();
    let ends_bare = |c: char| c.is_whitespace() || matches!(c, '(' | ')' | '"');
    let mut lexemes = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i + 1;
        let token = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => {
                i += 1;
                Token::Open
            }
            ')' => {
                i += 1;
                Token::Close
            }
            '-' if chars
                .get(i + 1)
                .is_some_and(|&n| !ends_bare(n) || n == '"' || n == '(') =>
            {
                i += 1;
                Token::Not
            }
            '"' => {
                let (text, after) = quoted(&chars, i)?;
                i = after;
                Token::Quoted { field: None, text }
            }
            _ => {
                let start = i;
                while i < chars.len() && !ends_bare(chars[i]) {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                if text.ends_with(':') && chars.get(i) == Some(&'"') {
                    let (value, after) = quoted(&chars, i)?;
                    i = after;
                    Token::Quoted {
                        field: Some(text[..text.len() - 1].to_owned()),
                        text: value,
                    }
                } else if text == "OR" {
                    Token::Or
                } else {
                    Token::Bare(text)
                }
            }
        };
        lexemes.push(Lexeme { at, token });
    }
    Ok(lexemes)
}

/// The text of the quotes opening at `chars[open]`, and the index after the closing one.
fn quoted(chars: &[char], open: usize) -> Result<(String, usize), QueryError> {
    let close = chars[open + 1..]
        .iter()
        .position(|&c| c == '"')
        .ok_or_else(|| QueryError::new(open + 1, "has an unbalanced double quote"))?;
    let text = chars[open + 1..open + 1 + close].iter().collect();
    Ok((text, open + close + 2))
}

struct Parser {
    lexemes: Peekable<std::vec::IntoIter<Lexeme>>,
}

impl Parser {
    fn peek(&mut self) -> Option<&Lexeme> {
        self.lexemes.peek()
    }

    /// Terms joined by `OR`, up to a `)` or the end. `None`: nothing but punctuation.
    fn or(&mut self, depth: usize) -> Result<Option<Expr>, QueryError> {
        let mut branches = Vec::new();
        loop {
            match self.peek() {
                Some(Lexeme {
                    at,
                    token: Token::Or,
                }) => return Err(QueryError::new(*at, "has OR without a term before it")),
                Some(Lexeme {
                    at,
                    token: Token::Close,
                }) if branches.is_empty() => {
                    return Err(QueryError::new(*at, "has an empty group '()'"));
                }
                _ => {}
            }
            branches.push(self.and(depth)?);
            match self.peek() {
                Some(Lexeme {
                    at,
                    token: Token::Or,
                }) => {
                    let at = *at;
                    self.lexemes.next();
                    if matches!(
                        self.peek(),
                        None | Some(Lexeme {
                            token: Token::Close | Token::Or,
                            ..
                        })
                    ) {
                        return Err(QueryError::new(at, "has OR without a term after it"));
                    }
                }
                _ => break,
            }
        }
        Ok(join(branches.into_iter().flatten().collect(), Expr::Or))
    }

    /// Terms one after the other, up to `OR`, a `)` or the end.
    fn and(&mut self, depth: usize) -> Result<Option<Expr>, QueryError> {
        let mut terms = Vec::new();
        while let Some(lexeme) = self.peek() {
            if matches!(lexeme.token, Token::Or | Token::Close) {
                break;
            }
            terms.push(self.unary(depth)?);
        }
        Ok(join(terms.into_iter().flatten().collect(), Expr::And))
    }

    /// A term, after any number of `-`: two cancel out.
    fn unary(&mut self, depth: usize) -> Result<Option<Expr>, QueryError> {
        let mut negations = 0;
        let mut last = 0;
        while let Some(Lexeme {
            at,
            token: Token::Not,
        }) = self.peek()
        {
            last = *at;
            negations += 1;
            self.lexemes.next();
        }
        if negations == 0 {
            return self.primary(depth);
        }
        if matches!(
            self.peek(),
            None | Some(Lexeme {
                token: Token::Or | Token::Close,
                ..
            })
        ) {
            return Err(QueryError::new(last, "has '-' without a term after it"));
        }
        let term = self.primary(depth)?;
        Ok(match negations % 2 {
            1 => term.map(|e| Expr::Not(Box::new(e))),
            _ => term,
        })
    }

    fn primary(&mut self, depth: usize) -> Result<Option<Expr>, QueryError> {
        let Some(Lexeme { at, token }) = self.lexemes.next() else {
            unreachable!("the callers saw a lexeme")
        };
        match token {
            Token::Open => {
                if depth == MAX_DEPTH {
                    return Err(QueryError::new(
                        at,
                        format!("nests parentheses deeper than {MAX_DEPTH}"),
                    ));
                }
                if self.peek().is_none() {
                    return Err(QueryError::new(at, "has a '(' that is never closed"));
                }
                let inner = self.or(depth + 1)?;
                match self.peek() {
                    Some(Lexeme {
                        token: Token::Close,
                        ..
                    }) => {
                        self.lexemes.next();
                        Ok(inner)
                    }
                    _ => Err(QueryError::new(at, "has a '(' that is never closed")),
                }
            }
            Token::Quoted { field: None, text } => phrase(&text, at),
            Token::Quoted {
                field: Some(field),
                text,
            } if is_field(&field) => field_term(&field, &text, true, at),
            Token::Quoted {
                field: Some(field),
                text,
            } => {
                // not a field of logs: words, and a phrase
                let quote_at = at + field.chars().count() + 1;
                let parts = [bare(&field, at)?, phrase(&text, quote_at)?];
                Ok(join(parts.into_iter().flatten().collect(), Expr::And))
            }
            Token::Bare(text) => match text.split_once(':') {
                Some((field, value)) if is_field(field) => field_term(field, value, false, at),
                // not a field of logs: words, as any text
                _ => bare(&text, at),
            },
            Token::Close | Token::Or | Token::Not => unreachable!("handled by the callers"),
        }
    }
}

/// One expression of `parts`, joined by `make` when there are several.
fn join(mut parts: Vec<Expr>, make: fn(Vec<Expr>) -> Expr) -> Option<Expr> {
    match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => Some(make(parts)),
    }
}

/// Checks the length of each word.
fn checked(words: Vec<String>, at: usize) -> Result<Vec<String>, QueryError> {
    if words.iter().any(|w| w.len() > MAX_WORD_BYTES) {
        return Err(QueryError::new(
            at,
            format!("has a word longer than {MAX_WORD_BYTES} bytes"),
        ));
    }
    Ok(words)
}

/// A `"quoted phrase"` of the message.
fn phrase(text: &str, at: usize) -> Result<Option<Expr>, QueryError> {
    let text = Text::of(checked(words(text), at)?);
    Ok(text.map(|text| Expr::Term(Term::Message(text), at)))
}

/// Unquoted text of the message: each word must be in it, and a last word followed by `*` is
/// a prefix.
fn bare(text: &str, at: usize) -> Result<Option<Expr>, QueryError> {
    let prefix = prefix_of(text, false, at)?;
    let mut words = checked(words(text), at)?;
    let last = match (prefix, words.pop()) {
        (true, Some(last)) => Text::Prefix(last),
        (_, Some(last)) => Text::Word(last),
        (_, None) => return Ok(None),
    };
    let terms = words
        .into_iter()
        .map(Text::Word)
        .chain([last])
        .map(|t| Expr::Term(Term::Message(t), at))
        .collect();
    Ok(join(terms, Expr::And))
}

/// Whether unquoted `text` ends in a prefix, checking that the prefix is long enough: for
/// words, a letter or digit then `*`, counting the last word; for a value, anything then `*`,
/// counting all of it.
fn prefix_of(text: &str, value: bool, at: usize) -> Result<bool, QueryError> {
    let Some(stem) = text.strip_suffix('*') else {
        return Ok(false);
    };
    if !value && !stem.chars().last().is_some_and(char::is_alphanumeric) {
        return Ok(false);
    }
    let length = match value {
        true => stem.chars().count(),
        false => stem
            .chars()
            .rev()
            .take_while(|c| c.is_alphanumeric())
            .count(),
    };
    if length < MIN_PREFIX_CHARS {
        return Err(QueryError::new(
            at,
            format!(
                "has the prefix \"{text}\": a prefix needs at least {MIN_PREFIX_CHARS} characters before the star"
            ),
        ));
    }
    Ok(true)
}

/// Whether `field:` names a field of logs (or a payload, which a path must follow); anything
/// else before a colon is words.
fn is_field(field: &str) -> bool {
    matches!(
        field,
        "message" | "status" | "log_type" | "assistant_id" | "room_name"
    ) || PAYLOADS.iter().any(|p| {
        field
            .strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// `field:value`, quoted or not, for a field of logs ([`is_field`]); `None` when the value
/// has no words where words are asked for (`message:!!`).
fn field_term(
    field: &str,
    value: &str,
    quoted: bool,
    at: usize,
) -> Result<Option<Expr>, QueryError> {
    if PAYLOADS.contains(&field) {
        return Err(QueryError::new(
            at,
            format!(
                "has {field}: without a path; name one, such as {field}.payload.caller_number:…"
            ),
        ));
    }
    if value.is_empty() {
        return Err(QueryError::new(at, format!("has {field}: without a value")));
    }
    if field == "message" {
        return if quoted {
            phrase(value, at)
        } else {
            bare(value, at)
        };
    }
    let typed = if !quoted && prefix_of(value, true, at)? {
        Value::Prefix(value[..value.len() - 1].to_owned())
    } else {
        Value::Is(value.to_owned())
    };
    let term = |term| Ok(Some(Expr::Term(term, at)));
    match field {
        "status" => enumerated(field, &typed, &LogStatus::ALL, LogStatus::as_str, at, |s| {
            Term::Status(s)
        }),
        "log_type" => enumerated(field, &typed, &LogType::ALL, LogType::as_str, at, |t| {
            Term::LogType(t)
        }),
        "assistant_id" | "room_name" => {
            if value.len() > MAX_NAME_BYTES {
                return Err(QueryError::new(
                    at,
                    format!("has a {field} longer than {MAX_NAME_BYTES} bytes"),
                ));
            }
            term(if field == "assistant_id" {
                Term::AssistantId(typed)
            } else {
                Term::RoomName(typed)
            })
        }
        path => {
            if path.len() > MAX_PATH_BYTES
                || path.split('.').any(str::is_empty)
                || path.contains('\0')
            {
                return Err(QueryError::new(
                    at,
                    format!(
                        "has the path {path}, which is not one: keys joined by dots, at most {MAX_PATH_BYTES} bytes"
                    ),
                ));
            }
            let (Value::Is(v) | Value::Prefix(v)) = &typed;
            checked(words(v), at)?;
            term(Term::Payload {
                path: path.to_owned(),
                value: typed,
            })
        }
    }
}

/// `status:` or `log_type:`: one of `all`, or any starting with a prefix.
fn enumerated<T: Copy>(
    field: &str,
    value: &Value,
    all: &[T],
    name: fn(T) -> &'static str,
    at: usize,
    term: fn(T) -> Term,
) -> Result<Option<Expr>, QueryError> {
    let matching: Vec<Expr> = all
        .iter()
        .filter(|&&v| match value {
            Value::Is(text) => name(v) == text,
            Value::Prefix(text) => name(v).starts_with(text.as_str()),
        })
        .map(|&v| Expr::Term(term(v), at))
        .collect();
    if matching.is_empty() {
        let names: Vec<&str> = all.iter().map(|&v| name(v)).collect();
        return Err(QueryError::new(
            at,
            format!(
                "has {field}:{}, which none is: {field} is one of {}",
                shown(value),
                names.join(", ")
            ),
        ));
    }
    Ok(join(matching, Expr::Or))
}

fn shown(value: &Value) -> String {
    match value {
        Value::Is(v) => v.clone(),
        Value::Prefix(v) => format!("{v}*"),
    }
}

#[cfg(test)]
#[path = "grammar_tests.rs"]
mod tests;
