//! A deterministic generator of realistic activity logs, for `logbridge emit` and the benchmarks.
//!
//! From a seed it yields the traffic of a fleet of voice agents: tool calls, end-of-call webhooks
//! and inbound caller-context lookups (about 70/15/15), about 8% of them errors, a few hundred
//! assistants, rooms of about 20 records, and 100 users of whom one owns about 30% of the records.

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::mapping::{LogStatus, LogType};

const NUM_ASSISTANTS: usize = 300;
const NUM_USERS: usize = 100;
const ERROR_RATE: f64 = 0.08;

/// One generated activity, before it is encoded as an OTLP LogRecord.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    pub user_id: String,
    pub log_type: LogType,
    pub status: LogStatus,
    pub assistant_id: String,
    pub room_name: String,
    pub message: String,
    pub request_data: Value,
    pub response_data: Value,
    pub latency_ms: u64,
}

impl Activity {
    /// The OTLP LogRecord a worker sends for this activity at `time_unix_nano`, with `user.id`
    /// set for a platform key.
    pub fn to_log_record(&self, time_unix_nano: u64) -> LogRecord {
        let attribute = |key: &str, value: any_value::Value| KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        };
        let text = |s: &str| any_value::Value::StringValue(s.to_owned());
        let (severity_number, severity_text) = match self.status {
            LogStatus::Success => (9, "INFO"),
            LogStatus::Error => (17, "ERROR"),
        };
        LogRecord {
            time_unix_nano,
            observed_time_unix_nano: time_unix_nano,
            severity_number,
            severity_text: severity_text.to_owned(),
            body: Some(AnyValue {
                value: Some(text(&self.message)),
            }),
            attributes: vec![
                attribute("activity.log_type", text(self.log_type.as_str())),
                attribute("activity.status", text(self.status.as_str())),
                attribute("activity.assistant_id", text(&self.assistant_id)),
                attribute("activity.room_name", text(&self.room_name)),
                attribute(
                    "activity.latency_ms",
                    any_value::Value::IntValue(i64::try_from(self.latency_ms).unwrap_or(i64::MAX)),
                ),
                attribute("activity.request_data", to_any(&self.request_data)),
                attribute("activity.response_data", to_any(&self.response_data)),
                attribute("user.id", text(&self.user_id)),
            ],
            event_name: self.log_type.as_str().to_owned(),
            ..Default::default()
        }
    }
}

/// JSON as an OTLP value: objects become kvlists.
fn to_any(value: &Value) -> any_value::Value {
    use any_value::Value as V;
    let wrap = |v: &Value| AnyValue {
        value: Some(to_any(v)),
    };
    match value {
        Value::Null => V::StringValue(String::new()),
        Value::Bool(b) => V::BoolValue(*b),
        Value::Number(n) => n
            .as_i64()
            .map(V::IntValue)
            .unwrap_or_else(|| V::DoubleValue(n.as_f64().unwrap_or_default())),
        Value::String(s) => V::StringValue(s.clone()),
        Value::Array(items) => V::ArrayValue(ArrayValue {
            values: items.iter().map(wrap).collect(),
        }),
        Value::Object(map) => V::KvlistValue(KeyValueList {
            values: map
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(wrap(v)),
                    ..Default::default()
                })
                .collect(),
        }),
    }
}

/// The generator; the same seed gives the same activities.
pub struct Workload {
    rng: StdRng,
    assistants: Vec<String>,
    room: String,
    room_left: u32,
    room_assistant: usize,
    room_user: usize,
    rooms_made: u64,
}

impl Workload {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_assistants(seed, NUM_ASSISTANTS)
    }

    /// A generator seeded with `seed` whose rooms each go to one of `assistants` assistants
    /// (at least one).
    pub fn with_assistants(seed: u64, assistants: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let assistants = (0..assistants.max(1)).map(|_| uuid(&mut rng)).collect();
        Self {
            rng,
            assistants,
            room: String::new(),
            room_left: 0,
            room_assistant: 0,
            room_user: 0,
            rooms_made: 0,
        }
    }

    /// The user of a record: `user-000` owns about 30%, the rest fall off with rank.
    fn pick_user(&mut self) -> usize {
        if self.rng.random_bool(0.3) {
            return 0;
        }
        // Zipf-like over users 1..NUM_USERS: rank r with weight 1/r.
        let harmonic: f64 = (1..NUM_USERS).map(|r| 1.0 / r as f64).sum();
        let mut target = self.rng.random::<f64>() * harmonic;
        for r in 1..NUM_USERS {
            target -= 1.0 / r as f64;
            if target <= 0.0 {
                return r;
            }
        }
        NUM_USERS - 1
    }

    fn next_room(&mut self) {
        if self.room_left == 0 {
            self.room_assistant = self.rng.random_range(0..self.assistants.len());
            self.room_user = self.pick_user();
            self.rooms_made += 1;
            let assistant = &self.assistants[self.room_assistant];
            self.room = format!("{}_{:06x}", &assistant[..8], self.rooms_made);
            self.room_left = self.rng.random_range(10..=30);
        }
        self.room_left -= 1;
    }

    /// The next activity.
    pub fn next_activity(&mut self) -> Activity {
        self.next_room();
        let roll = self.rng.random::<f64>();
        let log_type = if roll < 0.70 {
            LogType::ToolCall
        } else if roll < 0.85 {
            LogType::EndCallWebhook
        } else {
            LogType::InboundContextLookup
        };
        let failed = self.rng.random_bool(ERROR_RATE);
        let (message, request_data, response_data, latency_ms) = match log_type {
            LogType::ToolCall => self.tool_call(failed),
            LogType::EndCallWebhook => self.webhook(failed),
            LogType::InboundContextLookup => self.context_lookup(failed),
        };
        Activity {
            user_id: format!("user-{:03}", self.room_user),
            log_type,
            status: if failed {
                LogStatus::Error
            } else {
                LogStatus::Success
            },
            assistant_id: self.assistants[self.room_assistant].clone(),
            room_name: self.room.clone(),
            message,
            request_data,
            response_data,
            latency_ms,
        }
    }

    fn tool_call(&mut self, failed: bool) -> (String, Value, Value, u64) {
        const TOOLS: [(&str, &str); 6] = [
            ("get_weather", "https://api.example.com/weather"),
            ("book_appointment", "https://crm.example.com/appointments"),
            ("lookup_order", "https://shop.example.com/orders/lookup"),
            ("transfer_call", "https://pbx.example.com/transfer"),
            ("check_availability", "https://calendar.example.com/slots"),
            ("create_ticket", "https://helpdesk.example.com/tickets"),
        ];
        let (tool, url) = TOOLS[self.rng.random_range(0..TOOLS.len())];
        let order = self.rng.random_range(10_000..99_999);
        let request = json!({
            "tool": tool,
            "method": "POST",
            "url": url,
            "arguments": {"order_id": format!("ORD-{order}"), "locale": "en-IN"},
        });
        if failed {
            let (code, reason) = [
                (504, "upstream timeout"),
                (500, "internal error"),
                (422, "invalid arguments"),
            ][self.rng.random_range(0..3)];
            let latency = if code == 504 {
                5000
            } else {
                self.rng.random_range(40..1500)
            };
            let message = format!(
                "Tool {tool} failed with HTTP {code} ({reason}) after {latency} ms for order ORD-{order}"
            );
            let response = json!({"status_code": code, "error": reason, "retryable": code >= 500});
            (message, request, response, latency)
        } else {
            let latency = self.rng.random_range(40..2000);
            let message = format!(
                "Tool {tool} returned HTTP 200 in {latency} ms; result delivered to the assistant"
            );
            let response = json!({
                "status_code": 200,
                "body": {"ok": true, "reference": format!("REF-{}", self.rng.random_range(1000..9999))},
            });
            (message, request, response, latency)
        }
    }

    fn webhook(&mut self, failed: bool) -> (String, Value, Value, u64) {
        let duration = self.rng.random_range(15..900);
        let ended_reason =
            ["customer_hangup", "assistant_hangup", "transfer"][self.rng.random_range(0..3)];
        let request = json!({
            "url": "https://hooks.example.com/call-ended",
            "event": "call.ended",
            "payload": {
                "call_id": uuid(&mut self.rng),
                "duration_s": duration,
                "ended_reason": ended_reason,
            },
        });
        let latency = self.rng.random_range(30..800);
        if failed {
            let code = [500, 502, 503][self.rng.random_range(0..3)];
            let message = format!(
                "End-of-call webhook delivery failed: HTTP {code} from hooks.example.com after {latency} ms"
            );
            (
                message,
                request,
                json!({"status_code": code, "attempts": 3}),
                latency,
            )
        } else {
            let message = format!(
                "End-of-call webhook delivered to hooks.example.com in {latency} ms (call lasted {duration} s)"
            );
            (message, request, json!({"status_code": 200}), latency)
        }
    }

    fn context_lookup(&mut self, failed: bool) -> (String, Value, Value, u64) {
        let caller = format!("+9198{:08}", self.rng.random_range(0..100_000_000u64));
        let request = json!({
            "strategy_id": uuid(&mut self.rng),
            "strategy_type": "webhook",
            "url": "https://example.com/caller-context",
            "payload": {"caller_number": caller, "inbound_number": "918044319240"},
        });
        if failed {
            let (problem, response, latency) = match self.rng.random_range(0..4) {
                0 => (
                    "timeout after 3000 ms",
                    json!({"error": "timeout", "timeout_ms": 3000}),
                    3000,
                ),
                1 => {
                    let code = [500, 502, 404][self.rng.random_range(0..3)];
                    let latency = self.rng.random_range(80..1200);
                    (
                        "HTTP failure",
                        json!({"error": "http_error", "status_code": code}),
                        latency,
                    )
                }
                2 => {
                    let latency = self.rng.random_range(80..1200);
                    (
                        "invalid JSON in response",
                        json!({"error": "invalid_json", "body_prefix": "<html>"}),
                        latency,
                    )
                }
                _ => {
                    let latency = self.rng.random_range(80..1200);
                    (
                        "invalid response shape",
                        json!({"error": "invalid_shape", "expected": "object"}),
                        latency,
                    )
                }
            };
            let message = format!(
                "Inbound context lookup failed: {problem}; the assistant starts with the default prompt"
            );
            (message, request, response, latency)
        } else {
            let all = [
                "customer_name",
                "ticket_id",
                "plan",
                "last_order",
                "language",
            ];
            let n = self.rng.random_range(1..=all.len());
            let keys: Vec<&str> = all[..n].to_vec();
            let latency = self.rng.random_range(80..1500);
            let message = format!(
                "Inbound context lookup completed successfully with {n} context keys in {latency} ms"
            );
            (
                message,
                request,
                json!({"context_keys": keys, "context_size": n}),
                latency,
            )
        }
    }
}

impl Iterator for Workload {
    type Item = Activity;

    fn next(&mut self) -> Option<Activity> {
        Some(self.next_activity())
    }
}

fn uuid(rng: &mut StdRng) -> String {
    let b: [u8; 16] = rng.random();
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        u16::from_be_bytes([b[8], b[9]]) & 0x0fff,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_activities() {
        let a: Vec<Activity> = Workload::new(7).take(50).collect();
        let b: Vec<Activity> = Workload::new(7).take(50).collect();
        assert_eq!(a, b);
        let c: Vec<Activity> = Workload::new(8).take(50).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn records_map_back_to_their_activity_at_the_documented_size() {
        use prost::Message as _;
        let config = crate::mapping::MappingConfig::default();
        let resource = crate::mapping::ResourceAttributes::default();
        let ctx = crate::mapping::RecordContext {
            resource: &resource,
            key_user: None,
            received_nanos: 0,
        };
        let mut bytes = 0;
        for (i, activity) in Workload::new(3).take(1000).enumerate() {
            let record = activity.to_log_record(1_000 + i as u64);
            bytes += record.encoded_len();
            let log = crate::mapping::map_record(&config, &ctx, &record).unwrap();
            assert_eq!(log.user_id, activity.user_id);
            assert_eq!(log.log_type, activity.log_type);
            assert_eq!(log.status, activity.status);
            assert_eq!(log.message, activity.message);
            assert_eq!(log.latency_ms, activity.latency_ms);
            let request: Value = serde_json::from_str(log.request_data.get()).unwrap();
            assert_eq!(request, activity.request_data);
        }
        let average = bytes / 1000;
        assert!((500..=700).contains(&average), "{average} bytes per record");
    }

    #[test]
    fn proportions_are_realistic() {
        let n = 20_000;
        let sample: Vec<Activity> = Workload::new(1).take(n).collect();
        let share = |f: &dyn Fn(&Activity) -> bool| {
            sample.iter().filter(|a| f(a)).count() as f64 / n as f64
        };
        let tool = share(&|a| a.log_type == LogType::ToolCall);
        let errors = share(&|a| a.status == LogStatus::Error);
        let top_user = share(&|a| a.user_id == "user-000");
        assert!((0.67..0.73).contains(&tool), "tool calls {tool}");
        assert!((0.065..0.095).contains(&errors), "errors {errors}");
        assert!((0.25..0.40).contains(&top_user), "top user {top_user}");
        for a in &sample {
            assert!(
                (40..=160).contains(&a.message.len()),
                "{} chars: {}",
                a.message.len(),
                a.message
            );
            assert!(a.request_data.is_object() && a.response_data.is_object());
        }
        let lookup = sample
            .iter()
            .find(|a| a.log_type == LogType::InboundContextLookup && a.status == LogStatus::Success)
            .unwrap();
        assert!(lookup.request_data["payload"]["caller_number"].is_string());
        assert!(lookup.response_data["context_keys"].is_array());
    }
}
