//! The mapping table of SPEC section 3, row by row.

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList};

use super::*;

fn any(value: Value) -> AnyValue {
    AnyValue { value: Some(value) }
}

fn s(text: &str) -> Value {
    Value::StringValue(text.to_owned())
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(any(value)),
        ..Default::default()
    }
}

/// A record that maps: a tool call with every activity attribute.
fn record() -> LogRecord {
    LogRecord {
        time_unix_nano: 1_773_134_142_123_456_789,
        observed_time_unix_nano: 1_773_134_143_000_000_000,
        severity_number: 9,
        severity_text: "INFO".to_owned(),
        body: Some(any(s("tool get_weather returned 200"))),
        attributes: vec![
            kv("activity.log_type", s("tool_call")),
            kv("activity.status", s("success")),
            kv("activity.assistant_id", s("asst-1")),
            kv("activity.room_name", s("room-1")),
            kv("activity.latency_ms", Value::IntValue(312)),
            kv("user.id", s("user-a")),
        ],
        trace_id: vec![0xAB; 16],
        span_id: vec![0xCD; 8],
        ..Default::default()
    }
}

fn map(record: &LogRecord) -> Result<ActivityLog, RejectReason> {
    map_with(record, &[], None)
}

fn map_with(
    record: &LogRecord,
    resource: &[KeyValue],
    key_user: Option<&str>,
) -> Result<ActivityLog, RejectReason> {
    let config = MappingConfig::default();
    let resource = ResourceAttributes::new(&config, resource);
    let ctx = RecordContext {
        resource: &resource,
        key_user,
        received_nanos: 42,
    };
    map_record(&config, &ctx, record)
}

fn without(mut record: LogRecord, key: &str) -> LogRecord {
    record.attributes.retain(|kv| kv.key != key);
    record
}

fn with(mut record: LogRecord, key: &str, value: Value) -> LogRecord {
    record.attributes.retain(|kv| kv.key != key);
    record.attributes.push(kv(key, value));
    record
}

#[test]
fn a_complete_record_maps_every_field() {
    let log = map(&record()).unwrap();
    assert_eq!(log.user_id, "user-a");
    assert_eq!(log.log_type, LogType::ToolCall);
    assert_eq!(log.status, LogStatus::Success);
    assert_eq!(log.assistant_id, "asst-1");
    assert_eq!(log.room_name, "room-1");
    assert_eq!(log.timestamp_nanos, 1_773_134_142_123_456_789);
    assert_eq!(log.message, "tool get_weather returned 200");
    assert_eq!(log.request_data.get(), "{}");
    assert_eq!(log.response_data.get(), "{}");
    assert_eq!(log.latency_ms, 312);
    assert_eq!(
        log.trace_id.as_deref(),
        Some("abababababababababababababababab")
    );
    assert_eq!(log.span_id.as_deref(), Some("cdcdcdcdcdcdcdcd"));
    assert_eq!(log.severity_text.as_deref(), Some("INFO"));
}

#[test]
fn log_type_comes_from_the_attribute_then_event_name() {
    let mut rec = without(record(), "activity.log_type");
    rec.event_name = "end_call_webhook".to_owned();
    assert_eq!(map(&rec).unwrap().log_type, LogType::EndCallWebhook);

    // the attribute wins over event_name
    let mut rec = record();
    rec.event_name = "end_call_webhook".to_owned();
    assert_eq!(map(&rec).unwrap().log_type, LogType::ToolCall);

    // the legacy event.name attribute stands in for an empty event_name
    let rec = with(
        without(record(), "activity.log_type"),
        "event.name",
        s("inbound_context_lookup"),
    );
    assert_eq!(map(&rec).unwrap().log_type, LogType::InboundContextLookup);

    // a resource attribute counts when the record has none
    let rec = without(record(), "activity.log_type");
    let resource = [kv("activity.log_type", s("tool_call"))];
    assert_eq!(
        map_with(&rec, &resource, None).unwrap().log_type,
        LogType::ToolCall
    );
}

#[test]
fn missing_or_unknown_log_type_is_rejected() {
    let rec = without(record(), "activity.log_type");
    assert_eq!(map(&rec).unwrap_err(), RejectReason::MissingLogType);
    let rec = with(record(), "activity.log_type", s("TOOL_CALL"));
    assert_eq!(
        map(&rec).unwrap_err(),
        RejectReason::UnknownLogType("TOOL_CALL".to_owned())
    );
    let rec = with(
        record(),
        "activity.log_type",
        Value::ArrayValue(ArrayValue::default()),
    );
    assert_eq!(
        map(&rec).unwrap_err().to_string(),
        "log_type from attr:activity.log_type is not a string"
    );
}

#[test]
fn status_comes_from_the_attribute_or_the_severity() {
    let rec = with(record(), "activity.status", s("error"));
    assert_eq!(map(&rec).unwrap().status, LogStatus::Error);

    let mut rec = without(record(), "activity.status");
    rec.severity_number = 17;
    assert_eq!(map(&rec).unwrap().status, LogStatus::Error);
    rec.severity_number = 21;
    assert_eq!(map(&rec).unwrap().status, LogStatus::Error);
    rec.severity_number = 16;
    assert_eq!(map(&rec).unwrap().status, LogStatus::Success);

    // an explicit status wins over the severity
    let mut rec = record();
    rec.severity_number = 17;
    assert_eq!(map(&rec).unwrap().status, LogStatus::Success);

    let rec = with(record(), "activity.status", s("failed"));
    assert_eq!(
        map(&rec).unwrap_err().to_string(),
        "invalid status \"failed\" (expected success or error)"
    );
}

#[test]
fn assistant_and_room_default_to_empty() {
    let rec = without(
        without(record(), "activity.assistant_id"),
        "activity.room_name",
    );
    let log = map(&rec).unwrap();
    assert_eq!(log.assistant_id, "");
    assert_eq!(log.room_name, "");

    let rec = with(record(), "activity.assistant_id", Value::IntValue(7));
    assert_eq!(map(&rec).unwrap().assistant_id, "7");
}

#[test]
fn timestamp_falls_back_to_observed_then_received() {
    let mut rec = record();
    rec.time_unix_nano = 0;
    assert_eq!(
        map(&rec).unwrap().timestamp_nanos,
        1_773_134_143_000_000_000
    );
    rec.observed_time_unix_nano = 0;
    assert_eq!(map(&rec).unwrap().timestamp_nanos, 42);
}

#[test]
fn message_is_the_body_as_text_or_compact_json() {
    let mut rec = record();
    rec.body = None;
    assert_eq!(map(&rec).unwrap().message, "");
    rec.body = Some(AnyValue { value: None });
    assert_eq!(map(&rec).unwrap().message, "");
    rec.body = Some(any(Value::IntValue(5)));
    assert_eq!(map(&rec).unwrap().message, "5");
    rec.body = Some(any(Value::KvlistValue(KeyValueList {
        values: vec![kv("event", s("done")), kv("n", Value::BoolValue(false))],
    })));
    assert_eq!(map(&rec).unwrap().message, r#"{"event":"done","n":false}"#);
}

#[test]
fn request_and_response_data_take_kvlists_and_json_strings() {
    let rec = with(
        record(),
        "activity.request_data",
        Value::KvlistValue(KeyValueList {
            values: vec![
                kv("url", s("https://example.com/ctx")),
                kv(
                    "payload",
                    Value::KvlistValue(KeyValueList {
                        values: vec![kv("caller_number", s("+919876543210"))],
                    }),
                ),
            ],
        }),
    );
    let rec = with(
        rec,
        "activity.response_data",
        s(r#" {"context_keys": ["customer_name"], "missing": null} "#),
    );
    let log = map(&rec).unwrap();
    assert_eq!(
        log.request_data.get(),
        r#"{"url":"https://example.com/ctx","payload":{"caller_number":"+919876543210"}}"#
    );
    assert_eq!(
        log.response_data.get(),
        r#"{"context_keys": ["customer_name"], "missing": null}"#
    );
}

#[test]
fn request_data_that_is_not_an_object_is_rejected() {
    for bad in [s("[1,2]"), s("{not json"), s("42"), Value::IntValue(1)] {
        let rec = with(record(), "activity.request_data", bad.clone());
        assert_eq!(
            map(&rec).unwrap_err().to_string(),
            "request_data from attr:activity.request_data is not a kvlist or a string holding a JSON object",
            "{bad:?}"
        );
    }
}

#[test]
fn latency_takes_ints_doubles_and_numeric_strings() {
    let cases = [
        (Value::IntValue(0), 0),
        (Value::DoubleValue(311.5), 312),
        (s("87"), 87),
        (s(" 12.4 "), 12),
    ];
    for (value, expected) in cases {
        let rec = with(record(), "activity.latency_ms", value);
        assert_eq!(map(&rec).unwrap().latency_ms, expected);
    }
    assert_eq!(
        map(&without(record(), "activity.latency_ms"))
            .unwrap()
            .latency_ms,
        0
    );
    for bad in [
        Value::IntValue(-1),
        s("fast"),
        Value::DoubleValue(f64::INFINITY),
        Value::BoolValue(true),
    ] {
        let rec = with(record(), "activity.latency_ms", bad);
        assert_eq!(
            map(&rec).unwrap_err().to_string(),
            "latency_ms from attr:activity.latency_ms is not a non-negative number"
        );
    }
}

#[test]
fn user_comes_from_the_key_or_the_user_id_attribute() {
    // a platform key: the record's user.id
    assert_eq!(map(&record()).unwrap().user_id, "user-a");
    // a user-bound key: its user, and a matching user.id is fine
    assert_eq!(
        map_with(&record(), &[], Some("user-a")).unwrap().user_id,
        "user-a"
    );
    let rec = without(record(), "user.id");
    assert_eq!(
        map_with(&rec, &[], Some("user-b")).unwrap().user_id,
        "user-b"
    );
    // a contradicting user.id is rejected
    assert_eq!(
        map_with(&record(), &[], Some("user-b")).unwrap_err(),
        RejectReason::UserMismatch
    );
    // a platform key and no user.id (or an empty one)
    assert_eq!(map(&rec).unwrap_err(), RejectReason::MissingUser);
    assert_eq!(
        map(&with(record(), "user.id", s(""))).unwrap_err(),
        RejectReason::MissingUser
    );
    // user.id on the resource
    let resource = [kv("user.id", s("user-r"))];
    assert_eq!(map_with(&rec, &resource, None).unwrap().user_id, "user-r");
}

#[test]
fn trace_context_is_kept_only_when_valid() {
    let mut rec = record();
    rec.trace_id = vec![0; 16];
    rec.span_id = vec![1, 2, 3];
    let log = map(&rec).unwrap();
    assert_eq!(log.trace_id, None);
    assert_eq!(log.span_id, None);
    rec.severity_text = String::new();
    assert_eq!(map(&rec).unwrap().severity_text, None);
}

#[test]
fn configured_sources_replace_the_defaults() {
    let config = MappingConfig {
        assistant_id: vec![
            Source::RecordAttr("agent.id".to_owned()),
            Source::ResourceAttr("service.name".to_owned()),
        ],
        message: vec![Source::Attr("summary".to_owned()), Source::Body],
        ..Default::default()
    };
    let attributes = [kv("service.name", s("voice-worker"))];
    let resource = ResourceAttributes::new(&config, &attributes);
    let ctx = RecordContext {
        resource: &resource,
        key_user: None,
        received_nanos: 0,
    };
    let log = map_record(&config, &ctx, &record()).unwrap();
    assert_eq!(log.assistant_id, "voice-worker");
    assert_eq!(log.message, "tool get_weather returned 200");

    let rec = with(with(record(), "agent.id", s("a-9")), "summary", s("short"));
    let log = map_record(&config, &ctx, &rec).unwrap();
    assert_eq!(log.assistant_id, "a-9");
    assert_eq!(log.message, "short");
}

#[test]
fn long_messages_are_cut_and_marked() {
    // a multi-byte character straddles the limit
    let text = format!("{}é{}", "a".repeat(MAX_MESSAGE_BYTES - 1), "b".repeat(10));
    let mut rec = record();
    rec.body = Some(any(s(&text)));
    let message = map(&rec).unwrap().message;
    assert_eq!(
        message,
        format!(
            "{}... [truncated from {} bytes]",
            "a".repeat(MAX_MESSAGE_BYTES - 1),
            MAX_MESSAGE_BYTES + 11
        )
    );
    rec.body = Some(any(s(&"c".repeat(MAX_MESSAGE_BYTES))));
    assert_eq!(map(&rec).unwrap().message.len(), MAX_MESSAGE_BYTES);
}

#[test]
fn oversized_or_deep_data_and_long_names_are_rejected() {
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(MAX_DATA_BYTES));
    let rec = with(record(), "activity.request_data", s(&big));
    assert_eq!(
        map(&rec).unwrap_err().to_string(),
        "request_data is longer than 65536 bytes"
    );

    let nested = |depth: usize| {
        format!(
            r#"{{"a":{}{}}}"#,
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    };
    let rec = with(
        record(),
        "activity.response_data",
        s(&nested(MAX_DATA_DEPTH)),
    );
    assert!(map(&rec).is_ok());
    let rec = with(
        record(),
        "activity.response_data",
        s(&nested(MAX_DATA_DEPTH + 1)),
    );
    assert_eq!(
        map(&rec).unwrap_err(),
        RejectReason::TooDeep {
            field: "response_data",
            limit: MAX_DATA_DEPTH
        }
    );
    // brackets inside strings are not nesting
    let rec = with(
        record(),
        "activity.response_data",
        s(&format!(
            r#"{{"a":"{}\"{}"}}"#,
            "[".repeat(40),
            "{".repeat(40)
        )),
    );
    assert!(map(&rec).is_ok());

    let rec = with(
        record(),
        "activity.assistant_id",
        s(&"a".repeat(MAX_NAME_BYTES)),
    );
    assert!(map(&rec).is_ok());
    let rec = with(
        record(),
        "activity.room_name",
        s(&"r".repeat(MAX_NAME_BYTES + 1)),
    );
    assert_eq!(
        map(&rec).unwrap_err().to_string(),
        "room_name is longer than 256 bytes"
    );

    let mut rec = record();
    rec.severity_text = "E".repeat(1000);
    assert_eq!(
        map(&rec).unwrap().severity_text.unwrap().len(),
        MAX_NAME_BYTES
    );
}

#[test]
fn resource_attributes_apply_to_every_record_first_one_winning() {
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    // the shape `benches/mapping.rs` times: 20,000 resource attributes, those the mapping reads
    // at the very end, and 20,000 records without attributes of their own for those fields
    let mut attributes: Vec<KeyValue> = (0..20_000)
        .map(|i| kv(&format!("resource.noise.{i}"), s("x")))
        .collect();
    attributes.push(kv("activity.assistant_id", s("from-resource")));
    attributes.push(kv("activity.assistant_id", s("a later duplicate")));
    attributes.push(kv("user.id", s("user-r")));
    let records: Vec<LogRecord> = (0..20_000)
        .map(|_| without(without(record(), "activity.assistant_id"), "user.id"))
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes,
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    };
    let mapped = map_request(&MappingConfig::default(), None, 0, &request, |_| {
        Admission::Keep
    })
    .unwrap();
    assert_eq!(mapped.logs.len(), 20_000);
    assert!(mapped.rejected.is_empty());
    assert!(
        mapped
            .logs
            .iter()
            .all(|log| log.assistant_id == "from-resource")
    );
    assert!(mapped.logs.iter().all(|log| log.user_id == "user-r"));
    // a record's own attribute still wins over the resource's
    let mut own = request.clone();
    own.resource_logs[0].scope_logs[0].log_records[7] = without(record(), "user.id");
    let mapped = map_request(&MappingConfig::default(), None, 0, &own, |_| {
        Admission::Keep
    })
    .unwrap();
    assert_eq!(mapped.logs[7].assistant_id, "asst-1");
    assert_eq!(mapped.logs[8].assistant_id, "from-resource");
}

#[test]
fn mapping_stops_when_a_log_is_not_admitted() {
    let request = ExportLogsServiceRequest {
        resource_logs: vec![opentelemetry_proto::tonic::logs::v1::ResourceLogs {
            scope_logs: vec![opentelemetry_proto::tonic::logs::v1::ScopeLogs {
                log_records: vec![record(); 10],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut admitted = 0;
    let mut held = 0;
    let mapped = map_request(&MappingConfig::default(), None, 0, &request, |log| {
        held += log.memory_bytes();
        admitted += 1;
        if admitted <= 3 {
            Admission::Keep
        } else {
            Admission::Stop
        }
    });
    assert!(mapped.is_none());
    assert_eq!(admitted, 4);
    let log = map(&record()).unwrap();
    assert!(log.memory_bytes() > std::mem::size_of::<ActivityLog>() + log.message.len());
    assert_eq!(held, 4 * log.memory_bytes());
}
