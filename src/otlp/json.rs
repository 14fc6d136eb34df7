//! OTLP/JSON decoding, as the OpenTelemetry Collector accepts it.
//!
//! Field names in lowerCamelCase or snake_case; 64-bit integers as JSON numbers or decimal strings;
//! `severityNumber` as an integer or its enum name; `traceId`/`spanId` as hex in either case (an
//! empty or malformed id drops the trace context, not the record); `bytesValue` as base64;
//! unknown fields, nulls and empty values accepted. Nesting deeper than 128 levels is refused.

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::{Map, Value};

/// An OTLP/JSON body that does not decode; the message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OTLP/JSON: {0}")]
pub struct JsonError(String);

type Result<T> = std::result::Result<T, JsonError>;

/// Decodes an `ExportLogsServiceRequest` from OTLP/JSON.
pub fn decode(body: &[u8]) -> Result<ExportLogsServiceRequest> {
    let value: Value = serde_json::from_slice(body).map_err(|e| JsonError(e.to_string()))?;
    let root = object(&value, "request")?;
    Ok(ExportLogsServiceRequest {
        resource_logs: list(root, "resourceLogs", "resource_logs", "", resource_logs)?,
    })
}

fn resource_logs(value: &Value, path: &str) -> Result<ResourceLogs> {
    let obj = object(value, path)?;
    let resource = match field(obj, "resource", "resource") {
        None => None,
        Some(v) => {
            let path = format!("{path}.resource");
            let r = object(v, &path)?;
            Some(Resource {
                attributes: list(r, "attributes", "attributes", &path, key_value)?,
                dropped_attributes_count: uint32(
                    r,
                    "droppedAttributesCount",
                    "dropped_attributes_count",
                    &path,
                )?,
                ..Default::default()
            })
        }
    };
    Ok(ResourceLogs {
        resource,
        scope_logs: list(obj, "scopeLogs", "scope_logs", path, scope_logs)?,
        schema_url: string(obj, "schemaUrl", "schema_url", path)?,
    })
}

fn scope_logs(value: &Value, path: &str) -> Result<ScopeLogs> {
    let obj = object(value, path)?;
    let scope = match field(obj, "scope", "scope") {
        None => None,
        Some(v) => {
            let path = format!("{path}.scope");
            let s = object(v, &path)?;
            Some(InstrumentationScope {
                name: string(s, "name", "name", &path)?,
                version: string(s, "version", "version", &path)?,
                attributes: list(s, "attributes", "attributes", &path, key_value)?,
                dropped_attributes_count: uint32(
                    s,
                    "droppedAttributesCount",
                    "dropped_attributes_count",
                    &path,
                )?,
            })
        }
    };
    Ok(ScopeLogs {
        scope,
        log_records: list(obj, "logRecords", "log_records", path, log_record)?,
        schema_url: string(obj, "schemaUrl", "schema_url", path)?,
    })
}

fn log_record(value: &Value, path: &str) -> Result<LogRecord> {
    let obj = object(value, path)?;
    Ok(LogRecord {
        time_unix_nano: uint64(obj, "timeUnixNano", "time_unix_nano", path)?,
        observed_time_unix_nano: uint64(
            obj,
            "observedTimeUnixNano",
            "observed_time_unix_nano",
            path,
        )?,
        severity_number: severity(obj, path)?,
        severity_text: string(obj, "severityText", "severity_text", path)?,
        body: match field(obj, "body", "body") {
            None => None,
            Some(v) => Some(any_value(v, &format!("{path}.body"))?),
        },
        attributes: list(obj, "attributes", "attributes", path, key_value)?,
        dropped_attributes_count: uint32(
            obj,
            "droppedAttributesCount",
            "dropped_attributes_count",
            path,
        )?,
        flags: uint32(obj, "flags", "flags", path)?,
        trace_id: hex_id(obj, "traceId", "trace_id", 16),
        span_id: hex_id(obj, "spanId", "span_id", 8),
        event_name: string(obj, "eventName", "event_name", path)?,
    })
}

fn key_value(value: &Value, path: &str) -> Result<KeyValue> {
    let obj = object(value, path)?;
    Ok(KeyValue {
        key: string(obj, "key", "key", path)?,
        value: match field(obj, "value", "value") {
            None => None,
            Some(v) => Some(any_value(v, &format!("{path}.value"))?),
        },
        ..Default::default()
    })
}

fn any_value(value: &Value, path: &str) -> Result<AnyValue> {
    use any_value::Value as V;
    let obj = object(value, path)?;
    let kinds: [(&str, &str); 7] = [
        ("stringValue", "string_value"),
        ("boolValue", "bool_value"),
        ("intValue", "int_value"),
        ("doubleValue", "double_value"),
        ("arrayValue", "array_value"),
        ("kvlistValue", "kvlist_value"),
        ("bytesValue", "bytes_value"),
    ];
    let Some((camel, v)) = kinds
        .iter()
        .find_map(|(camel, snake)| field(obj, camel, snake).map(|v| (*camel, v)))
    else {
        return Ok(AnyValue { value: None });
    };
    let path = format!("{path}.{camel}");
    let value = match camel {
        "stringValue" => V::StringValue(
            v.as_str()
                .ok_or_else(|| expected(&path, "a string"))?
                .to_owned(),
        ),
        "boolValue" => V::BoolValue(
            v.as_bool()
                .ok_or_else(|| expected(&path, "true or false"))?,
        ),
        "intValue" => V::IntValue(int64(v, &path)?),
        "doubleValue" => V::DoubleValue(double(v, &path)?),
        "arrayValue" => {
            let a = object(v, &path)?;
            V::ArrayValue(ArrayValue {
                values: list(a, "values", "values", &path, any_value)?,
            })
        }
        "kvlistValue" => {
            let l = object(v, &path)?;
            V::KvlistValue(KeyValueList {
                values: list(l, "values", "values", &path, key_value)?,
            })
        }
        _ => {
            let text = v
                .as_str()
                .ok_or_else(|| expected(&path, "a base64 string"))?;
            V::BytesValue(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| expected(&path, "a base64 string"))?,
            )
        }
    };
    Ok(AnyValue { value: Some(value) })
}

/// A present, non-null field by either of its names.
fn field<'a>(obj: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    obj.get(camel)
        .or_else(|| obj.get(snake))
        .filter(|v| !v.is_null())
}

fn expected(path: &str, what: &str) -> JsonError {
    JsonError(format!("{path} must be {what}"))
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    value.as_object().ok_or_else(|| expected(path, "an object"))
}

fn list<T>(
    obj: &Map<String, Value>,
    camel: &str,
    snake: &str,
    path: &str,
    item: fn(&Value, &str) -> Result<T>,
) -> Result<Vec<T>> {
    let Some(value) = field(obj, camel, snake) else {
        return Ok(Vec::new());
    };
    let path = join(path, camel);
    let items = value
        .as_array()
        .ok_or_else(|| expected(&path, "an array"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| item(v, &format!("{path}[{i}]")))
        .collect()
}

fn string(obj: &Map<String, Value>, camel: &str, snake: &str, path: &str) -> Result<String> {
    match field(obj, camel, snake) {
        None => Ok(String::new()),
        Some(v) => v
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| expected(&join(path, camel), "a string")),
    }
}

fn uint64(obj: &Map<String, Value>, camel: &str, snake: &str, path: &str) -> Result<u64> {
    let Some(v) = field(obj, camel, snake) else {
        return Ok(0);
    };
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        expected(
            &join(path, camel),
            "an unsigned 64-bit integer or a decimal string",
        )
    })
}

fn uint32(obj: &Map<String, Value>, camel: &str, snake: &str, path: &str) -> Result<u32> {
    let Some(v) = field(obj, camel, snake) else {
        return Ok(0);
    };
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| expected(&join(path, camel), "an unsigned 32-bit integer"))
}

fn int64(v: &Value, path: &str) -> Result<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| expected(path, "a 64-bit integer or a decimal string"))
}

fn double(v: &Value, path: &str) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            other => other.parse().ok(),
        },
        _ => None,
    }
    .ok_or_else(|| expected(path, "a number"))
}

fn severity(obj: &Map<String, Value>, path: &str) -> Result<i32> {
    let Some(v) = field(obj, "severityNumber", "severity_number") else {
        return Ok(0);
    };
    match v {
        Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        Value::String(name) => SeverityNumber::from_str_name(name).map(|s| s as i32),
        _ => None,
    }
    .ok_or_else(|| {
        expected(
            &join(path, "severityNumber"),
            "an integer or a SEVERITY_NUMBER_* name",
        )
    })
}

/// A hex trace or span id of the right length; anything else means no id.
fn hex_id(obj: &Map<String, Value>, camel: &str, snake: &str, len: usize) -> Vec<u8> {
    field(obj, camel, snake)
        .and_then(Value::as_str)
        .and_then(|s| hex::decode(s).ok())
        .filter(|bytes| bytes.len() == len)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example published with the OTLP protocol definitions, byte for byte.
    const FIXTURE: &[u8] = include_bytes!("../../tests/data/otlp-logs-example.json");

    #[test]
    fn the_published_example_decodes() {
        let request = decode(FIXTURE).unwrap();
        let rl = &request.resource_logs[0];
        assert_eq!(
            rl.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let scope = &rl.scope_logs[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "my.library");
        let record = &scope.log_records[0];
        assert_eq!(record.time_unix_nano, 1_544_712_660_300_000_000);
        assert_eq!(record.observed_time_unix_nano, 1_544_712_660_300_000_000);
        assert_eq!(record.severity_text, "Information");
        assert_eq!(
            hex::encode(&record.trace_id),
            "5b8efff798038103d269b633813fc60c"
        );
        assert_eq!(hex::encode(&record.span_id), "eee19b7ec3c1b174");
        assert_eq!(record.attributes.len(), 6);
        let int = record.attributes[2].value.as_ref().unwrap().value.clone();
        assert_eq!(int, Some(any_value::Value::IntValue(10)));
        let double = record.attributes[3].value.as_ref().unwrap().value.clone();
        assert_eq!(double, Some(any_value::Value::DoubleValue(637.704)));
    }

    #[test]
    fn snake_case_strings_and_enum_names_decode() {
        let body = br#"{"resource_logs":[{"scope_logs":[{"log_records":[{
            "time_unix_nano":"1773134142000000001","severity_number":"SEVERITY_NUMBER_ERROR",
            "trace_id":"","span_id":"abc","event_name":"tool_call","unknown":{"x":1},
            "body":{},"attributes":[{"value":{"string_value":"no key"}},
              {"key":"arr","value":{"arrayValue":{}}},
              {"key":"n","value":null},
              {"key":"b","value":{"bytesValue":"AQID"}},
              {"key":"i","value":{"intValue":"-5"}}]}]}]}]}"#;
        let request = decode(body).unwrap();
        let record = &request.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(record.time_unix_nano, 1_773_134_142_000_000_001);
        assert_eq!(record.severity_number, 17);
        assert!(record.trace_id.is_empty());
        assert!(record.span_id.is_empty());
        assert_eq!(record.event_name, "tool_call");
        assert_eq!(record.body, Some(AnyValue { value: None }));
        assert_eq!(record.attributes[0].key, "");
        assert_eq!(
            record.attributes[1].value.as_ref().unwrap().value,
            Some(any_value::Value::ArrayValue(ArrayValue { values: vec![] }))
        );
        assert_eq!(record.attributes[2].value, None);
        assert_eq!(
            record.attributes[3].value.as_ref().unwrap().value,
            Some(any_value::Value::BytesValue(vec![1, 2, 3]))
        );
        assert_eq!(
            record.attributes[4].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(-5))
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 5] = [
            (
                b"{",
                "invalid OTLP/JSON: EOF while parsing an object at line 1 column 1",
            ),
            (b"[]", "invalid OTLP/JSON: request must be an object"),
            (
                br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":-1}]}]}]}"#,
                "invalid OTLP/JSON: resourceLogs[0].scopeLogs[0].logRecords[0].timeUnixNano must be an unsigned 64-bit integer or a decimal string",
            ),
            (
                br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":"LOUD"}]}]}]}"#,
                "invalid OTLP/JSON: resourceLogs[0].scopeLogs[0].logRecords[0].severityNumber must be an integer or a SEVERITY_NUMBER_* name",
            ),
            (
                br#"{"resourceLogs":{}}"#,
                "invalid OTLP/JSON: resourceLogs must be an array",
            ),
        ];
        for (body, message) in cases {
            assert_eq!(decode(body).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn absurd_nesting_is_refused_not_a_stack_overflow() {
        let depth = 10_000;
        let mut body = String::from(r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":"#);
        for _ in 0..depth {
            body.push_str(r#"{"arrayValue":{"values":["#);
        }
        for _ in 0..depth {
            body.push_str("]}}");
        }
        body.push_str("}]}]}]}");
        let err = decode(body.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("recursion limit exceeded"), "{err}");
    }
}
