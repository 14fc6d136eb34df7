//! Reading a Server-Sent Events stream (`GET /logs/tail`) as a client does.

use std::time::Instant;

use serde_json::Value as Json;

use super::PATIENCE;

/// One event of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub kind: Option<String>,
    pub data: Json,
}

impl Event {
    /// The id of a single node's or a single shard's event: a sequence number.
    pub fn seq(&self) -> u64 {
        let id = self.id.as_deref().expect("an event id");
        id.parse()
            .unwrap_or_else(|_| panic!("a numeric event id: {id}"))
    }
}

/// A stream being read.
pub struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    /// The events of `response`, which must be an event stream.
    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, keep-alives and `retry` lines skipped; panics after [`PATIENCE`].
    pub async fn next(&mut self) -> Event {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&block) {
                    return event;
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("an event within the patience")
                .expect("the stream reads")
                .expect("the stream goes on");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// An event block, or `None` for one with no data (a comment, `retry`).
fn parse(block: &str) -> Option<Event> {
    let mut event = Event {
        id: None,
        kind: None,
        data: Json::Null,
    };
    let mut data = None;
    for line in block.lines() {
        if let Some(id) = line.strip_prefix("id: ") {
            event.id = Some(id.to_owned());
        } else if let Some(kind) = line.strip_prefix("event: ") {
            event.kind = Some(kind.to_owned());
        } else if let Some(json) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str(json).unwrap());
        }
    }
    event.data = data?;
    Some(event)
}
