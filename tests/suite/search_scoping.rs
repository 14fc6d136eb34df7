//! Scoping under any query: random queries (operators, fields, payload paths, prefixes,
//! garbage) of one user over an index holding three users' logs. No answer ever holds another
//! user's log, and every answer is what a brute-force filter of the user's own logs gives: the
//! query parsed by the server's grammar, then evaluated here over the logs as sent.

use crate::common;

use common::{activity, at_ms, spawn_app, text, with_attr};
use logbridge::search::{self, Expr, Term, Text, Value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value as Json, json};

const LOGS_PER_USER: usize = 150;
const QUERIES: usize = 400;

/// Words of messages: shared by every user, and one of each user's own.
const VOCABULARY: [&str; 14] = [
    "timeout", "timed", "out", "retry", "retrying", "caller", "context", "fetched", "rate",
    "limit", "weather", "webhook", "Pune", "refund",
];
const TYPES: [&str; 3] = ["tool_call", "end_call_webhook", "inbound_context_lookup"];
const ASSISTANTS: [&str; 3] = ["asst-1", "asst-2", "support bot"];
const KEYS: [&str; 3] = ["customer_name", "plan", "account_id"];

/// A log as sent, what the brute force reads.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    time: u64,
    message: String,
    log_type: &'static str,
    status: &'static str,
    assistant_id: &'static str,
    room_name: String,
    request_data: Json,
    response_data: Json,
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn sentence(rng: &mut StdRng, own: &str) -> String {
    let mut words: Vec<&str> = (0..rng.random_range(2..6))
        .map(|_| *pick(rng, &VOCABULARY))
        .collect();
    if rng.random_bool(0.3) {
        words.push(own);
    }
    words.join(if rng.random_bool(0.5) { " " } else { ", " })
}

fn sent(rng: &mut StdRng, n: usize, own: &str) -> Sent {
    let keys: Vec<&str> = KEYS
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.5))
        .collect();
    Sent {
        id: format!("n{n}"),
        time: at_ms(n as u64),
        message: format!("{} n{n}", sentence(rng, own)),
        log_type: TYPES[rng.random_range(0..TYPES.len())],
        status: if rng.random_bool(0.3) {
            "error"
        } else {
            "success"
        },
        assistant_id: ASSISTANTS[rng.random_range(0..ASSISTANTS.len())],
        room_name: format!("room-{}", rng.random_range(0..5)),
        request_data: json!({
            "payload": {
                "caller_number": format!("+9198{:02}", rng.random_range(0..20)),
                "attempt": rng.random_range(1..4),
            },
            "city": pick(rng, &["Pune", "New Delhi", "pune"]),
        }),
        response_data: json!({
            "context_keys": keys,
            "summary": sentence(rng, own),
            "retry": rng.random_bool(0.5),
        }),
    }
}

fn record(log: &Sent) -> LogRecord {
    let mut record = activity(log.log_type, log.time, &log.message);
    for (key, value) in [
        ("activity.status", log.status.to_owned()),
        ("activity.assistant_id", log.assistant_id.to_owned()),
        ("activity.room_name", log.room_name.clone()),
        ("activity.request_data", log.request_data.to_string()),
        ("activity.response_data", log.response_data.to_string()),
    ] {
        record = with_attr(record, key, text(&value));
    }
    record
}

/// A random query: mostly what a person types, sometimes garbage.
fn query(rng: &mut StdRng) -> String {
    let units = rng.random_range(1..5);
    let mut parts: Vec<String> = (0..units).map(|_| unit(rng, 0)).collect();
    if rng.random_bool(0.1) {
        parts.insert(
            rng.random_range(0..=parts.len()),
            pick(rng, &["(", ")", "\"", "OR", "-", "*", ":", "!!"]).to_string(),
        );
    }
    parts.join(" ")
}

fn unit(rng: &mut StdRng, depth: usize) -> String {
    let term = match rng.random_range(0..16) {
        0..=3 => {
            let word = *pick(rng, &VOCABULARY);
            if rng.random_bool(0.2) {
                word.to_uppercase()
            } else {
                word.to_owned()
            }
        }
        4 => format!("\"{} {}\"", pick(rng, &VOCABULARY), pick(rng, &VOCABULARY)),
        5 => {
            let word = *pick(rng, &VOCABULARY);
            format!("{}*", &word[..rng.random_range(1..=word.len().min(5))])
        }
        6 => pick(
            rng,
            &[
                "status:error",
                "status:success",
                "status:er*",
                "status:bad",
                "log_type:tool_call",
                "log_type:end*",
            ],
        )
        .to_string(),
        7 => pick(
            rng,
            &[
                "assistant_id:asst-1",
                "assistant_id:\"support bot\"",
                "assistant_id:asst*",
                "room_name:room-3",
                "room_name:room-*",
                "room_name:r*",
            ],
        )
        .to_string(),
        8 => format!(
            "request_data.payload.caller_number:\"+9198{:02}\"",
            rng.random_range(0..22)
        ),
        9 => pick(
            rng,
            &[
                "request_data.payload.caller_number:+91981*",
                "request_data.payload.attempt:2",
                "request_data.city:pune",
                "request_data.city:\"new delhi\"",
                "request_data.city:del*",
                "request_data.nothing:x",
            ],
        )
        .to_string(),
        10 => format!(
            "response_data.context_keys:{}",
            pick(rng, &["customer_name", "plan", "cust*", "account*"])
        ),
        11 => format!(
            "response_data.summary:{}",
            pick(
                rng,
                &["timeout", "\"rate limit\"", "ret*", "alicezz", "bobzz"]
            )
        ),
        12 => pick(
            rng,
            &[
                "response_data.retry:true",
                "response_data.retry:FALSE",
                "bobzz",
                "carolzz",
                "alicezz",
                "user_id:user-bob",
                "n1*",
            ],
        )
        .to_string(),
        13 if depth < 2 => {
            let inner: Vec<String> = (0..rng.random_range(1..4))
                .map(|_| unit(rng, depth + 1))
                .collect();
            format!("({})", inner.join(" OR "))
        }
        14 if depth < 2 => format!("{} OR {}", unit(rng, depth + 1), unit(rng, depth + 1)),
        _ => pick(rng, &["!!", "a-b", "x:", "\"\"", "***"]).to_string(),
    };
    if rng.random_bool(0.2) {
        format!("-{term}")
    } else {
        term
    }
}

fn contains_run(words: &[String], run: &[String]) -> bool {
    !run.is_empty() && words.windows(run.len()).any(|w| w == run)
}

/// The values at `path` of a payload: strings, numbers and booleans, array items one by one.
fn values_at<'a>(value: &'a Json, path: &[&str], out: &mut Vec<&'a Json>) {
    match (value, path) {
        (Json::Array(items), _) => items.iter().for_each(|i| values_at(i, path, out)),
        (Json::Object(fields), [key, rest @ ..]) => {
            if let Some(v) = fields.get(*key) {
                values_at(v, rest, out);
            }
        }
        (Json::Object(_), []) | (Json::Null, _) => {}
        (leaf, []) => out.push(leaf),
        _ => {}
    }
}

fn leaf_text(leaf: &Json) -> String {
    match leaf {
        Json::String(s) => s.to_lowercase(),
        other => other.to_string(),
    }
}

fn payload_matches(log: &Sent, path: &str, value: &Value) -> bool {
    let (root, rest) = path.split_once('.').unwrap();
    let payload = if root == "request_data" {
        &log.request_data
    } else {
        &log.response_data
    };
    let keys: Vec<&str> = rest.split('.').collect();
    let mut leaves = Vec::new();
    values_at(payload, &keys, &mut leaves);
    leaves.into_iter().any(|leaf| {
        let whole = leaf_text(leaf);
        let words = match leaf {
            Json::String(s) => search::words(s),
            _ => Vec::new(),
        };
        match value {
            Value::Is(v) => whole == v.to_lowercase() || contains_run(&words, &search::words(v)),
            Value::Prefix(v) => {
                let v = v.to_lowercase();
                whole.starts_with(&v)
                    || (search::words(&v) == [v.clone()] && words.iter().any(|w| w.starts_with(&v)))
            }
        }
    })
}

fn exact(actual: &str, value: &Value) -> bool {
    match value {
        Value::Is(v) => actual == v,
        Value::Prefix(v) => actual.starts_with(v.as_str()),
    }
}

fn matches(log: &Sent, expr: &Expr) -> bool {
    match expr {
        Expr::And(parts) => parts.iter().all(|p| matches(log, p)),
        Expr::Or(parts) => parts.iter().any(|p| matches(log, p)),
        Expr::Not(inner) => !matches(log, inner),
        Expr::Term(term, _) => match term {
            Term::Message(text) => {
                let words = search::words(&log.message);
                match text {
                    Text::Word(w) => words.contains(w),
                    Text::Prefix(p) => words.iter().any(|w| w.starts_with(p.as_str())),
                    Text::Phrase(run) => contains_run(&words, run),
                }
            }
            Term::LogType(t) => t.as_str() == log.log_type,
            Term::Status(s) => s.as_str() == log.status,
            Term::AssistantId(v) => exact(log.assistant_id, v),
            Term::RoomName(v) => exact(&log.room_name, v),
            Term::Payload { path, value } => payload_matches(log, path, value),
        },
    }
}

#[tokio::test]
async fn no_query_reaches_past_the_users_own_logs_and_each_answers_as_brute_force() {
    let app = spawn_app().await;
    let mut rng = StdRng::seed_from_u64(20);
    let mut n = 0;
    let mut alice = Vec::new();
    let users = [
        (&app.keys.alice, None, "alicezz"),
        (&app.keys.bob, None, "bobzz"),
        (&app.keys.platform, Some("user-carol"), "carolzz"),
    ];
    for (key, user, own) in users {
        let logs: Vec<Sent> = (0..LOGS_PER_USER)
            .map(|_| {
                n += 1;
                sent(&mut rng, n, own)
            })
            .collect();
        let records = logs
            .iter()
            .map(|log| match user {
                Some(user) => with_attr(record(log), "user.id", text(user)),
                None => record(log),
            })
            .collect();
        app.ingest(key, records).await;
        if own == "alicezz" {
            alice = logs;
        }
    }
    alice.sort_by_key(|log| std::cmp::Reverse(log.time));

    let (mut refused, mut empty, mut answered) = (0, 0, 0);
    for round in 0..QUERIES {
        let q = query(&mut rng);
        let encoded = serde_urlencoded::to_string([("q", q.as_str()), ("limit", "100")]).unwrap();
        let expr = match search::parse(&q) {
            Err(error) => {
                let (status, body) = app.get_logs(Some(&app.keys.alice), &encoded).await;
                assert_eq!(status, 400, "round {round}: {q}: {body}");
                assert_eq!(body["message"], error.to_string(), "round {round}: {q}");
                refused += 1;
                continue;
            }
            Ok(expr) => expr,
        };
        let expected: Vec<&str> = alice
            .iter()
            .filter(|log| matches(log, &expr))
            .map(|log| log.id.as_str())
            .collect();
        let mut got = Vec::new();
        for page in 1..=2 {
            let data = app
                .logs(&app.keys.alice, &format!("{encoded}&page={page}"))
                .await;
            assert_eq!(data["total"], expected.len(), "round {round}: {q}");
            for log in data["logs"].as_array().unwrap() {
                let message = log["message"].as_str().unwrap();
                let id = message.rsplit(' ').next().unwrap().to_owned();
                assert!(
                    alice.iter().any(|a| a.id == id && a.message == message),
                    "round {round}: {q} reached another user's log: {message}"
                );
                got.push(id);
            }
        }
        assert_eq!(got, expected, "round {round}: {q}");
        if expected.is_empty() {
            empty += 1;
        } else {
            answered += 1;
        }
    }
    // the generator reaches every kind of answer
    assert!(
        refused >= 10 && empty >= 40 && answered >= 150,
        "{refused} refused, {empty} empty, {answered} answered"
    );
}
