//! The terms a log's `request_data` and `response_data` are indexed under: every string, number
//! and boolean by its JSON path, whole (for `path:value`) and, for strings, word by word (for
//! words and phrases in free text).

use std::fmt;

use serde::Deserialize as _;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

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
    /// The terms of `request_data` and `response_data`, as JSON texts (objects, as stored), in
    /// the order of the texts. Read as they are parsed, with no tree of values built in between:
    /// a key given twice in an object has the terms of both of its values.
    pub fn of(request_data: &str, response_data: &str) -> Self {
        let mut terms = PayloadTerms::default();
        for (name, json) in PAYLOADS.into_iter().zip([request_data, response_data]) {
            let (values, texts) = (terms.values.len(), terms.texts.len());
            let mut path = name.to_owned();
            let mut parser = serde_json::Deserializer::from_str(json);
            let leaves = Leaves {
                terms: &mut terms,
                path: &mut path,
            };
            // what is stored was checked at ingest; a text that is not JSON has no terms
            if leaves
                .deserialize(&mut parser)
                .and_then(|()| parser.end())
                .is_err()
            {
                terms.values.truncate(values);
                terms.texts.truncate(texts);
            }
        }
        terms
    }
}

/// The leaves of the JSON value at `path`, added to `terms` as the parser meets them.
struct Leaves<'a> {
    terms: &'a mut PayloadTerms,
    path: &'a mut String,
}

impl Leaves<'_> {
    /// The leaves of a value inside this one.
    fn inner(&mut self) -> Leaves<'_> {
        Leaves {
            terms: self.terms,
            path: self.path,
        }
    }

    fn value(self, value: &str) {
        self.terms.values.push(value_term(self.path, value));
    }
}

impl<'de> DeserializeSeed<'de> for Leaves<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.path.len() > MAX_PATH_BYTES {
            return IgnoredAny::deserialize(deserializer).map(drop);
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Leaves<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E>(self, b: bool) -> Result<(), E> {
        self.value(if b { "true" } else { "false" });
        Ok(())
    }

    fn visit_u64<E>(self, n: u64) -> Result<(), E> {
        self.value(&Number::from(n).to_string());
        Ok(())
    }

    fn visit_i64<E>(self, n: i64) -> Result<(), E> {
        self.value(&Number::from(n).to_string());
        Ok(())
    }

    fn visit_f64<E>(self, n: f64) -> Result<(), E> {
        // JSON has no infinities or NaN: every number parsed is finite
        if let Some(n) = Number::from_f64(n) {
            self.value(&n.to_string());
        }
        Ok(())
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        if s.len() <= MAX_VALUE_BYTES {
            self.terms.values.push(value_term(self.path, s));
        }
        self.terms.texts.push(word_term(self.path, s));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut items: A) -> Result<(), A::Error> {
        while items.next_element_seed(self.inner())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut fields: A) -> Result<(), A::Error> {
        let len = self.path.len();
        while let Some(named) = fields.next_key_seed(Key(self.path))? {
            if named {
                fields.next_value_seed(self.inner())?;
            } else {
                fields.next_value::<IgnoredAny>()?;
            }
            self.path.truncate(len);
        }
        Ok(())
    }
}

/// A key of an object: appended to the path as `.key`; whether its value is indexed (a NUL
/// would end the path where the index of words reads it).
struct Key<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        self.0.push('.');
        self.0.push_str(key);
        Ok(!key.contains('\0'))
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

    #[test]
    fn nested_values_long_paths_nul_keys_and_numbers_give_the_terms_the_values_say() {
        let long = "k".repeat(MAX_PATH_BYTES);
        let request = format!(
            r#"{{"a":[[1,-2],{{"b":2.50}}],"{long}":{{"deep":"x"}},"n\u0000k":"hidden","z":1e2}}"#
        );
        let terms = PayloadTerms::of(&request, "not json");
        let path = |p: &str, v: &str| format!("request_data.{p}\0{v}");
        assert_eq!(
            terms.values,
            [
                path("a", "1"),
                path("a", "-2"),
                path("a.b", "2.5"),
                path("z", "100.0")
            ]
        );
        assert!(terms.texts.is_empty());
    }

    #[test]
    fn a_payload_that_is_not_json_to_its_end_has_no_terms_and_the_other_keeps_its() {
        let terms = PayloadTerms::of(r#"{"a":"kept?","#, r#"{"b":true} {"#);
        assert_eq!(terms, PayloadTerms::default());
        let terms = PayloadTerms::of(r#"{"a":"x"} trailing"#, r#"{"b":true}"#);
        assert_eq!(terms.values, ["response_data.b\0true"]);
        assert!(terms.texts.is_empty());
    }
}
