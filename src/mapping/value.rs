//! OTLP `AnyValue` to JSON.

use base64::Engine as _;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
use serde_json::Value as Json;

/// Calls `visit` for every byte of a JSON text that is outside its strings: its structure.
pub fn for_each_structural_byte(json: &[u8], mut visit: impl FnMut(u8)) {
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        } else {
            visit(byte);
        }
    }
}

/// Converts an OTLP value to JSON: a kvlist becomes an object (a repeated key keeps its last
/// value), bytes become base64, a non-finite double and an empty value become `null`.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::StringValue(s) => Json::String(s.clone()),
        Value::BoolValue(b) => Json::Bool(*b),
        Value::IntValue(i) => Json::from(*i),
        Value::DoubleValue(d) => serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number),
        Value::BytesValue(bytes) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        // an index into a dictionary that logs never carry
        Value::StringValueStrindex(_) => Json::Null,
        Value::ArrayValue(array) => Json::Array(array.values.iter().map(any_to_json).collect()),
        Value::KvlistValue(list) => Json::Object(
            list.values
                .iter()
                .map(|kv| {
                    let value = kv.value.as_ref().map_or(Json::Null, any_to_json);
                    (kv.key.clone(), value)
                })
                .collect(),
        ),
    }
}

fn any_to_json(value: &AnyValue) -> Json {
    value.value.as_ref().map_or(Json::Null, to_json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValue, KeyValueList};

    fn any(value: Value) -> AnyValue {
        AnyValue { value: Some(value) }
    }

    fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn every_kind_converts() {
        let value = Value::KvlistValue(KeyValueList {
            values: vec![
                kv("s", Some(any(Value::StringValue("x".into())))),
                kv("b", Some(any(Value::BoolValue(true)))),
                kv("i", Some(any(Value::IntValue(-7)))),
                kv("d", Some(any(Value::DoubleValue(1.5)))),
                kv("nan", Some(any(Value::DoubleValue(f64::NAN)))),
                kv("bytes", Some(any(Value::BytesValue(vec![1, 2, 3])))),
                kv(
                    "a",
                    Some(any(Value::ArrayValue(ArrayValue {
                        values: vec![any(Value::IntValue(1)), AnyValue { value: None }],
                    }))),
                ),
                kv("none", None),
            ],
        });
        assert_eq!(
            to_json(&value).to_string(),
            r#"{"s":"x","b":true,"i":-7,"d":1.5,"nan":null,"bytes":"AQID","a":[1,null],"none":null}"#
        );
    }
}
