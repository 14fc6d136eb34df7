//! The terms a log's `request_data` and `response_data` are indexed under: every string, number
//! and boolean by its JSON path, whole (for `path:value`) and, for strings, word by word (for
//! words and phrases in free text).

use serde_json::Value;

/// The payloads whose paths a query can name, by the name that starts the path.
pub const PAYLOADS: [&str; 2] = ["request_data", "response_data"];

/// Longest path that is indexed or can be named, in bytes.
pub const MAX_PATH_BYTES: usize = 256;

/// Longest value that is indexed whole, in bytes: a longer one is searchable by its words.
pub const MAX_VALUE_BYTES: usize = 256;

/// The term of a whole value at a path: compared ignoring case.
pub fn value_term(path: &str, value: &str) -> String {
    format!("{path}\0{}", value.to_lowercase())
}

/// The term of one word of a value at a path. With a whole string for the word, it is what
/// the index of words takes, and its analyzer cuts into the terms of the string's words.
pub fn word_term(path: &str, word: &str) -> String {
    format!("{path}\0{word}")
}

/// The terms of a log's payloads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PayloadTerms {
    /// Each value whole, as [`value_term`].
    pub values: Vec<String>,
    /// Each string, as [`word_term`] of the whole string: one value of the field each, so
    /// that a phrase never spans two.
    pub texts: Vec<String>,
}

impl PayloadTerms {
    /// The terms of `request_data` and `response_data`, as JSON texts (objects, as stored).
    pub fn of(request_data: &str, response_data: &str) -> Self {
        let mut terms = PayloadTerms::default();
        for (name, json) in PAYLOADS.into_iter().zip([request_data, response_data]) {
            // what is stored was checked at ingest; a text that is not JSON has no terms
            if let Ok(value) = serde_json::from_str::<Value>(json) {
                terms.add(&mut name.to_owned(), &value);
            }
        }
        terms
    }

    fn add(&mut self, path: &mut String, value: &Value) {
        if path.len() > MAX_PATH_BYTES {
            return;
        }
        match value {
            Value::Null => {}
            Value::Bool(b) => self
                .values
                .push(value_term(path, if *b { "true" } else { "false" })),
            Value::Number(n) => self.values.push(value_term(path, &n.to_string())),
            Value::String(s) => {
                if s.len() <= MAX_VALUE_BYTES {
                    self.values.push(value_term(path, s));
                }
                self.texts.push(word_term(path, s));
            }
            Value::Array(items) => {
                for item in items {
                    self.add(path, item);
                }
            }
            Value::Object(fields) => {
                let len = path.len();
                // a NUL would end the path where the index of words reads it
                for (key, item) in fields.iter().filter(|(key, _)| !key.contains('\0')) {
                    path.push('.');
                    path.push_str(key);
                    self.add(path, item);
                    path.truncate(len);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_is_indexed_by_its_path_whole_and_word_by_word() {
        let terms = PayloadTerms::of(
            r#"{"payload":{"caller_number":"+919876543210","n":3,"ok":true,"none":null}}"#,
            r#"{"context_keys":["customer_name","Plan"],"reason":"Timed out"}"#,
        );
        let path = |p: &str, v: &str| format!("{p}\0{v}");
        assert_eq!(
            terms.values,
            [
                path("request_data.payload.caller_number", "+919876543210"),
                path("request_data.payload.n", "3"),
                path("request_data.payload.ok", "true"),
                path("response_data.context_keys", "customer_name"),
                path("response_data.context_keys", "plan"),
                path("response_data.reason", "timed out"),
            ]
        );
        assert_eq!(
            terms.texts,
            [
                path("request_data.payload.caller_number", "+919876543210"),
                path("response_data.context_keys", "customer_name"),
                path("response_data.context_keys", "Plan"),
                path("response_data.reason", "Timed out"),
            ]
        );
    }

    #[test]
    fn long_values_are_indexed_by_their_words_only() {
        let long = format!("{} end", "word ".repeat(60));
        let terms = PayloadTerms::of(&serde_json::json!({ "text": long }).to_string(), "{}");
        assert!(terms.values.is_empty());
        assert_eq!(terms.texts, [format!("request_data.text\0{long}")]);
    }
}
