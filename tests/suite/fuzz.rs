//! Property-based fuzzing of everything that parses untrusted input: OTLP/JSON and protobuf
//! decoding followed by the mapping, and `/logs` query parsing. Nothing may panic, and what comes
//! out must respect the documented limits.
//!
//! The suite runs a short smoke pass; a longer one: `PROPTEST_CASES=100000 cargo test --release
//! --test suite fuzz::`. Arbitrary records rarely name a valid type and user, so valid ones are
//! generated too (alone and mixed with arbitrary ones): the properties of a mapped log run on
//! every case of those.

use logbridge::api::{ApiError, CursorKey, MAX_LIMIT, parse_logs_params};
use logbridge::ingest::{EncodedLog, LogKey};
use logbridge::mapping::{
    ActivityLog, Admission, MAX_DATA_BYTES, MAX_MESSAGE_BYTES, MAX_NAME_BYTES, MappingConfig,
    map_request,
};
use logbridge::otlp::decode_json;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use proptest::prelude::*;
use prost::Message as _;
use serde_json::{Value as Json, json};

const KEYS: &[&str] = &[
    "activity.log_type",
    "activity.status",
    "activity.assistant_id",
    "activity.room_name",
    "activity.request_data",
    "activity.response_data",
    "activity.latency_ms",
    "user.id",
    "event.name",
    "other",
];

fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        prop_oneof![
            Just("tool_call".to_owned()),
            Just("error".to_owned()),
            Just("{\"a\":null}".to_owned()),
            Just("[1]".to_owned()),
            Just("12.5".to_owned()),
            ".{0,40}",
        ]
        .prop_map(Value::StringValue),
        any::<bool>().prop_map(Value::BoolValue),
        any::<i64>().prop_map(Value::IntValue),
        any::<f64>().prop_map(Value::DoubleValue),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::BytesValue),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|values| {
                Value::ArrayValue(ArrayValue {
                    values: values
                        .into_iter()
                        .map(|v| AnyValue { value: Some(v) })
                        .collect(),
                })
            }),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..4).prop_map(
                |pairs| {
                    Value::KvlistValue(KeyValueList {
                        values: pairs.into_iter().map(|(k, v)| attribute(k, v)).collect(),
                    })
                }
            ),
        ]
    })
}

fn attribute(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn log_record() -> impl Strategy<Value = LogRecord> {
    (
        any::<u64>(),
        any::<u64>(),
        -5i32..30,
        proptest::option::of(any_value()),
        proptest::collection::vec((proptest::sample::select(KEYS), any_value()), 0..10),
        proptest::collection::vec(any::<u8>(), 0..20),
        prop_oneof![Just(String::new()), Just("tool_call".to_owned()), ".{0,12}"],
    )
        .prop_map(
            |(time, observed, severity, body, attributes, id, event_name)| LogRecord {
                time_unix_nano: time,
                observed_time_unix_nano: observed,
                severity_number: severity,
                body: body.map(|v| AnyValue { value: Some(v) }),
                attributes: attributes
                    .into_iter()
                    .map(|(k, v)| attribute(k, v))
                    .collect(),
                trace_id: id.clone(),
                span_id: id,
                event_name,
                ..Default::default()
            },
        )
}

/// An arbitrary record that names a valid type, status and user, with arbitrary other
/// attributes besides (none of the mapped ones): it maps.
fn valid_record() -> impl Strategy<Value = LogRecord> {
    (
        log_record(),
        proptest::sample::select(&["tool_call", "end_call_webhook", "inbound_context_lookup"][..]),
        proptest::sample::select(&["success", "error"][..]),
        "[a-z0-9-]{1,40}",
    )
        .prop_map(|(mut record, log_type, status, user)| {
            record
                .attributes
                .retain(|kv| kv.key == "other" || kv.key == "event.name");
            let text = |s: &str| Value::StringValue(s.to_owned());
            record
                .attributes
                .push(attribute("activity.log_type", text(log_type)));
            record
                .attributes
                .push(attribute("activity.status", text(status)));
            record.attributes.push(attribute("user.id", text(&user)));
            record
        })
}

/// The string value of the last attribute `key` of `record`, as JSON.
fn attr_json(record: &LogRecord, key: &str) -> Option<Json> {
    record
        .attributes
        .iter()
        .rev()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(Json::from(s.clone())),
            _ => None,
        })
}

/// Maps every record of a request; checks what the mapping promises of its output.
fn map_all(request: &ExportLogsServiceRequest, key_user: Option<&str>) {
    let mapped = map_request(&MappingConfig::default(), key_user, 1, request, |_| {
        Admission::Keep
    })
    .expect("every log is admitted");
    assert_eq!(mapped.logs.len() + mapped.rejected.len(), mapped.records);
    mapped.logs.iter().for_each(check_log);
}

fn check_log(log: &ActivityLog) {
    assert!(!log.user_id.is_empty() && log.user_id.len() <= MAX_NAME_BYTES);
    assert!(log.assistant_id.len() <= MAX_NAME_BYTES);
    assert!(log.room_name.len() <= MAX_NAME_BYTES);
    assert!(log.message.len() <= MAX_MESSAGE_BYTES + 64);
    for data in [&log.request_data, &log.response_data] {
        assert!(data.get().len() <= MAX_DATA_BYTES);
        let parsed: Json = serde_json::from_str(data.get()).expect("data is JSON");
        assert!(parsed.is_object());
    }
    // what the write-ahead log stores reads back
    let logged = serde_json::to_string(log).unwrap();
    let back: ActivityLog = serde_json::from_str(&logged).unwrap();
    assert_eq!(back.message, log.message);
    assert_eq!(back.request_data.get(), log.request_data.get());
}

fn request_of(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Arbitrary JSON shaped like OTLP: real field names, wrong types and values anywhere.
fn otlp_like_json() -> impl Strategy<Value = Json> {
    let names = proptest::sample::select(vec![
        "resourceLogs",
        "resource_logs",
        "scopeLogs",
        "logRecords",
        "log_records",
        "attributes",
        "key",
        "value",
        "stringValue",
        "intValue",
        "doubleValue",
        "boolValue",
        "bytesValue",
        "arrayValue",
        "kvlistValue",
        "values",
        "body",
        "timeUnixNano",
        "observedTimeUnixNano",
        "severityNumber",
        "traceId",
        "spanId",
        "eventName",
    ]);
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Json::from),
        Just(json!("SEVERITY_NUMBER_ERROR")),
        Just(json!("5B8EFFF798038103D269B633813FC60C")),
    ];
    leaf.prop_recursive(8, 64, 5, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            proptest::collection::vec((names.clone(), inner), 0..5).prop_map(|pairs| Json::Object(
                pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    let names = proptest::sample::select(vec![
        "log_type",
        "status",
        "assistant_id",
        "room_name",
        "page",
        "limit",
        "q",
        "start_time",
        "end_time",
        "cursor",
        "other",
    ]);
    let values = prop_oneof![
        Just(String::new()),
        Just("tool_call".to_owned()),
        Just("error".to_owned()),
        Just("2026-03-10T09:15:42Z".to_owned()),
        Just("\"a b\" c".to_owned()),
        "[0-9]{0,25}",
        "-?[0-9]{1,3}\\.?[0-9]?",
        ".{0,30}",
    ];
    proptest::collection::vec((names.prop_map(str::to_owned), values), 0..8)
}

// 256 cases each unless PROPTEST_CASES says otherwise
proptest! {
    #[test]
    fn json_decoding_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_json(&bytes);
    }

    #[test]
    fn json_decoding_and_mapping_hold_on_otlp_like_json(value in otlp_like_json()) {
        let body = serde_json::to_vec(&json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [value.clone()]}]}]})).unwrap();
        if let Ok(request) = decode_json(&body) {
            map_all(&request, None);
            map_all(&request, Some("user-a"));
        }
        let _ = decode_json(&serde_json::to_vec(&value).unwrap());
    }

    #[test]
    fn protobuf_decoding_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = ExportLogsServiceRequest::decode(&bytes[..]) {
            map_all(&request, Some("user-a"));
        }
    }

    #[test]
    fn valid_records_map_and_their_encoding_reads_back_to_the_same_key(records in proptest::collection::vec(valid_record(), 1..4)) {
        let request = request_of(records.clone());
        let mapped = map_request(&MappingConfig::default(), None, 1, &request, |_| Admission::Keep)
            .expect("every log is admitted");
        prop_assert_eq!(mapped.rejected.len(), 0, "{:?}", mapped.rejected);
        prop_assert_eq!(mapped.logs.len(), records.len());
        for (record, log) in records.iter().zip(&mapped.logs) {
            check_log(log);
            // the named type, status and user, as sent
            let served = serde_json::to_value(log).unwrap();
            prop_assert_eq!(Some(served["log_type"].clone()), attr_json(record, "activity.log_type"));
            prop_assert_eq!(Some(served["status"].clone()), attr_json(record, "activity.status"));
            prop_assert_eq!(Some(Json::from(log.user_id.clone())), attr_json(record, "user.id"));
            // a retry is known after a restart by the key of the log read back from the
            // write-ahead log: the same as the key it was stored with
            let encoded = EncodedLog::new(log.clone());
            let back: ActivityLog = serde_json::from_slice(&encoded.json).unwrap();
            prop_assert_eq!(LogKey::of_log(&back), encoded.key);
        }
    }

    #[test]
    fn mapping_holds_on_arbitrary_records(records in proptest::collection::vec(log_record(), 1..4)) {
        let request = request_of(records);
        let decoded = ExportLogsServiceRequest::decode(&request.encode_to_vec()[..]).unwrap();
        prop_assert_eq!(&decoded, &request);
        map_all(&decoded, None);
        map_all(&decoded, Some("user-a"));
    }

    #[test]
    fn every_valid_record_of_a_batch_maps_whatever_is_beside_it(
        valid in proptest::collection::vec(valid_record(), 1..4),
        arbitrary in proptest::collection::vec(log_record(), 0..4),
        first in any::<bool>(),
    ) {
        let records: Vec<LogRecord> = if first {
            valid.iter().chain(&arbitrary).cloned().collect()
        } else {
            arbitrary.iter().chain(&valid).cloned().collect()
        };
        let request = request_of(records);
        let mapped = map_request(&MappingConfig::default(), None, 1, &request, |_| Admission::Keep)
            .expect("every log is admitted");
        prop_assert_eq!(mapped.logs.len() + mapped.rejected.len(), mapped.records);
        prop_assert!(mapped.logs.len() >= valid.len(), "{:?}", mapped.rejected);
        mapped.logs.iter().for_each(check_log);
        // each valid record is among the logs, under its user
        let mut users: Vec<&str> = mapped.logs.iter().map(|log| log.user_id.as_str()).collect();
        for record in &valid {
            let user = attr_json(record, "user.id").unwrap();
            let at = users.iter().position(|u| Some(*u) == user.as_str());
            prop_assert!(at.is_some(), "{} not mapped", user);
            users.remove(at.unwrap());
        }
    }

    #[test]
    fn logs_parameters_parse_or_name_the_problem(pairs in params()) {
        match parse_logs_params(&pairs, "user-a", &CursorKey::from_bytes([7; 32])) {
            Ok(request) => {
                prop_assert!((1..=MAX_LIMIT).contains(&request.query.limit));
                prop_assert!(request.page >= 1);
                prop_assert_eq!(request.query.user_id.as_str(), "user-a");
            }
            Err(ApiError::BadRequest(message)) => {
                let named = ["log_type", "status", "assistant_id", "room_name", "page", "limit", "q ", "start_time", "end_time", "cursor"]
                    .iter()
                    .any(|name| message.starts_with(name));
                prop_assert!(named, "{}", message);
            }
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }
}
