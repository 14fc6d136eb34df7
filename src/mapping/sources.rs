//! Where each activity-log field is read from: the `[mapping]` section of the config file.

use std::fmt;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde::{Deserialize, Serialize};

/// One place a field's value can come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `attr:KEY`: the LogRecord's attribute KEY, else the Resource's.
    Attr(String),
    /// `record_attr:KEY`: the LogRecord's attribute KEY only.
    RecordAttr(String),
    /// `resource_attr:KEY`: the Resource's attribute KEY only.
    ResourceAttr(String),
    /// `event_name`: the LogRecord's `event_name`, else its legacy `event.name` attribute.
    EventName,
    /// `body`: the LogRecord's body.
    Body,
    /// `severity_text`: the LogRecord's severity text.
    SeverityText,
}

/// A value found at a [`Source`].
#[derive(Debug, Clone, Copy)]
pub enum Found<'a> {
    Any(&'a any_value::Value),
    Str(&'a str),
}

impl<'a> Found<'a> {
    /// The value when it is a string.
    pub fn as_str(self) -> Option<&'a str> {
        match self {
            Found::Str(s) => Some(s),
            Found::Any(any_value::Value::StringValue(s)) => Some(s),
            Found::Any(_) => None,
        }
    }
}

impl Source {
    fn parse(text: &str) -> Result<Self, String> {
        let keyed = |key: &str, make: fn(String) -> Source| {
            if key.is_empty() {
                Err(format!("source {text:?} names no attribute"))
            } else {
                Ok(make(key.to_owned()))
            }
        };
        match text.split_once(':') {
            Some(("attr", key)) => keyed(key, Source::Attr),
            Some(("record_attr", key)) => keyed(key, Source::RecordAttr),
            Some(("resource_attr", key)) => keyed(key, Source::ResourceAttr),
            None if text == "event_name" => Ok(Source::EventName),
            None if text == "body" => Ok(Source::Body),
            None if text == "severity_text" => Ok(Source::SeverityText),
            _ => Err(format!(
                "unknown source {text:?} (expected attr:KEY, record_attr:KEY, resource_attr:KEY, \
                 event_name, body or severity_text)"
            )),
        }
    }

    /// The value at this source, if present and non-empty.
    pub fn find<'a>(
        &self,
        record: &'a LogRecord,
        resource: &ResourceAttributes<'a>,
    ) -> Option<Found<'a>> {
        match self {
            Source::Attr(key) => attribute(&record.attributes, key).or_else(|| resource.get(key)),
            Source::RecordAttr(key) => attribute(&record.attributes, key),
            Source::ResourceAttr(key) => resource.get(key),
            Source::EventName => {
                if record.event_name.is_empty() {
                    attribute(&record.attributes, "event.name")
                } else {
                    Some(Found::Str(&record.event_name))
                }
            }
            Source::Body => record
                .body
                .as_ref()
                .and_then(|body| body.value.as_ref())
                .map(Found::Any),
            Source::SeverityText => Some(record.severity_text.as_str())
                .filter(|s| !s.is_empty())
                .map(Found::Str),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Attr(key) => write!(f, "attr:{key}"),
            Source::RecordAttr(key) => write!(f, "record_attr:{key}"),
            Source::ResourceAttr(key) => write!(f, "resource_attr:{key}"),
            Source::EventName => f.write_str("event_name"),
            Source::Body => f.write_str("body"),
            Source::SeverityText => f.write_str("severity_text"),
        }
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<Found<'a>> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(value_of)
        .map(Found::Any)
}

fn value_of(kv: &KeyValue) -> Option<&any_value::Value> {
    kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref())
}

/// The attributes of one Resource that the mapping reads, found in one pass over them: a
/// Resource is shared by all its records, so looking them up per field and record would cost
/// its size times theirs.
#[derive(Debug, Default)]
pub struct ResourceAttributes<'a> {
    /// The first attribute of each key the mapping reads, in the order found.
    found: Vec<(&'a str, Option<&'a any_value::Value>)>,
}

impl<'a> ResourceAttributes<'a> {
    /// Finds in `attributes` every key some source of `config` reads.
    pub fn new(config: &MappingConfig, attributes: &'a [KeyValue]) -> Self {
        let wanted = config.attribute_keys();
        let mut found: Vec<(&'a str, Option<&'a any_value::Value>)> = Vec::new();
        for kv in attributes {
            if found.len() == wanted.len() {
                break;
            }
            let key = kv.key.as_str();
            if wanted.contains(&key) && !found.iter().any(|(k, _)| *k == key) {
                found.push((key, value_of(kv)));
            }
        }
        Self { found }
    }

    fn get(&self, key: &str) -> Option<Found<'a>> {
        self.found
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, value)| *value)
            .map(Found::Any)
    }
}

/// The ordered sources of every configurable field, as validated from the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingConfig {
    pub log_type: Vec<Source>,
    pub status: Vec<Source>,
    pub assistant_id: Vec<Source>,
    pub room_name: Vec<Source>,
    pub message: Vec<Source>,
    pub request_data: Vec<Source>,
    pub response_data: Vec<Source>,
    pub latency_ms: Vec<Source>,
    pub user_id: Vec<Source>,
}

impl MappingConfig {
    /// Every attribute key a source reads, once each.
    fn attribute_keys(&self) -> Vec<&str> {
        let all = [
            &self.log_type,
            &self.status,
            &self.assistant_id,
            &self.room_name,
            &self.message,
            &self.request_data,
            &self.response_data,
            &self.latency_ms,
            &self.user_id,
        ];
        let mut keys: Vec<&str> = Vec::new();
        for source in all.into_iter().flatten() {
            if let Source::Attr(key) | Source::ResourceAttr(key) = source
                && !keys.contains(&key.as_str())
            {
                keys.push(key);
            }
        }
        keys
    }
}

impl Default for MappingConfig {
    fn default() -> Self {
        FieldSources::default()
            .validate()
            .expect("the default mapping is valid")
    }
}

/// The `[mapping]` section as written: a list of source strings per field.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldSources {
    log_type: Vec<String>,
    status: Vec<String>,
    assistant_id: Vec<String>,
    room_name: Vec<String>,
    message: Vec<String>,
    request_data: Vec<String>,
    response_data: Vec<String>,
    latency_ms: Vec<String>,
    user_id: Vec<String>,
}

impl Default for FieldSources {
    fn default() -> Self {
        let list = |sources: &[&str]| sources.iter().map(|s| s.to_string()).collect();
        Self {
            log_type: list(&["attr:activity.log_type", "event_name"]),
            status: list(&["attr:activity.status"]),
            assistant_id: list(&["attr:activity.assistant_id"]),
            room_name: list(&["attr:activity.room_name"]),
            message: list(&["body"]),
            request_data: list(&["attr:activity.request_data"]),
            response_data: list(&["attr:activity.response_data"]),
            latency_ms: list(&["attr:activity.latency_ms"]),
            user_id: list(&["attr:user.id"]),
        }
    }
}

impl FieldSources {
    /// Parses every source string; the error names the field and the bad source.
    pub fn validate(self) -> Result<MappingConfig, String> {
        let parse = |field: &str, sources: Vec<String>| -> Result<Vec<Source>, String> {
            sources
                .iter()
                .map(|s| Source::parse(s).map_err(|e| format!("{field}: {e}")))
                .collect()
        };
        Ok(MappingConfig {
            log_type: parse("log_type", self.log_type)?,
            status: parse("status", self.status)?,
            assistant_id: parse("assistant_id", self.assistant_id)?,
            room_name: parse("room_name", self.room_name)?,
            message: parse("message", self.message)?,
            request_data: parse("request_data", self.request_data)?,
            response_data: parse("response_data", self.response_data)?,
            latency_ms: parse("latency_ms", self.latency_ms)?,
            user_id: parse("user_id", self.user_id)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_print_back() {
        for text in [
            "attr:activity.log_type",
            "record_attr:a.b",
            "resource_attr:service.name",
            "event_name",
            "body",
            "severity_text",
        ] {
            assert_eq!(Source::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn bad_sources_name_the_field() {
        let raw = FieldSources {
            room_name: vec!["attr:".to_owned()],
            ..Default::default()
        };
        assert_eq!(
            raw.validate().unwrap_err(),
            "room_name: source \"attr:\" names no attribute"
        );
        let raw = FieldSources {
            status: vec!["severity".to_owned()],
            ..Default::default()
        };
        assert!(
            raw.validate()
                .unwrap_err()
                .starts_with("status: unknown source \"severity\"")
        );
    }
}
