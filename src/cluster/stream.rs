//! NATS JetStream, the cluster's replicated log: one stream per shard. Gateways publish each
//! export's logs in chunks whose `Nats-Msg-Id` is derived from their content, and answer the
//! export only once JetStream acknowledged every chunk; indexers read the chunks back in order.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::shard::{LOGS_PER_MESSAGE, shard_of};
use crate::config::ClusterConfig;
use crate::ingest::WriteError;
use crate::mapping::ActivityLog;

/// Most JSON bytes in one message, far below NATS' default `max_payload` of 1 MiB; a single log
/// larger than this goes alone.
const MESSAGE_BYTES: usize = 256 * 1024;

/// How long a node waits for JetStream to answer while it sets up streams on start.
const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// The stream of shard `shard`.
pub fn stream_name(shard: u32) -> String {
    format!("LOGBRIDGE_{shard}")
}

fn subject(shard: u32) -> String {
    format!("logbridge.shard.{shard}")
}

/// A message as stored: logs of one shard, in the order of their export.
#[derive(Debug, Deserialize)]
pub struct Chunk {
    pub logs: Vec<ActivityLog>,
}

/// Cuts the JSON encodings of logs into message payloads `{"logs":[...]}` of at most
/// [`LOGS_PER_MESSAGE`] logs and about [`MESSAGE_BYTES`]; the same logs always give the same
/// payloads.
fn chunks<'a>(logs: impl Iterator<Item = &'a ActivityLog>) -> Vec<Vec<u8>> {
    const HEAD: &[u8] = b"{\"logs\":[";
    let mut payloads = Vec::new();
    let mut current: Vec<u8> = HEAD.to_vec();
    let mut count = 0;
    for log in logs {
        let encoded = serde_json::to_vec(log).expect("an activity log serializes to JSON");
        if count > 0 && (count == LOGS_PER_MESSAGE || current.len() + encoded.len() > MESSAGE_BYTES)
        {
            current.extend_from_slice(b"]}");
            payloads.push(std::mem::replace(&mut current, HEAD.to_vec()));
            count = 0;
        }
        if count > 0 {
            current.push(b',');
        }
        current.extend_from_slice(&encoded);
        count += 1;
    }
    if count > 0 {
        current.extend_from_slice(b"]}");
        payloads.push(current);
    }
    payloads
}

/// The deduplication id of a payload: the hex SHA-256 of its bytes.
fn message_id(payload: &[u8]) -> String {
    hex::encode(Sha256::digest(payload))
}

/// Connects to NATS; the client reconnects by itself after a server goes away.
pub async fn connect(config: &ClusterConfig) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("logbridge {}", config.node_id))
        .retry_on_initial_connect()
        .connect(config.nats_urls.as_slice())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.nats_urls.join(", ")))?;
    let mut context = jetstream::new(client);
    context.set_timeout(config.publish_timeout);
    Ok(context)
}

/// Creates the streams of every shard that do not exist yet; an existing stream is left as it
/// is. Waits for a JetStream cluster that is still electing its leaders.
pub async fn ensure_streams(
    context: &jetstream::Context,
    config: &ClusterConfig,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SETUP_PATIENCE;
    for shard in 0..config.shards {
        let stream = jetstream::stream::Config {
            name: stream_name(shard),
            subjects: vec![subject(shard)],
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.stream_replicas,
            duplicate_window: config.dedup_window,
            ..Default::default()
        };
        loop {
            match context.get_or_create_stream(stream.clone()).await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(shard, error = %e, "stream not ready yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(e)).with_context(|| {
                        format!("cannot create the stream {}", stream_name(shard))
                    });
                }
            }
        }
    }
    Ok(())
}

/// Publishes accepted logs to their shards' streams.
#[derive(Clone)]
pub struct Publisher {
    context: jetstream::Context,
    shards: u32,
    timeout: Duration,
}

impl Publisher {
    pub fn new(context: jetstream::Context, config: &ClusterConfig) -> Self {
        Self {
            context,
            shards: config.shards,
            timeout: config.publish_timeout,
        }
    }

    /// Publishes `logs` and waits until JetStream acknowledged every chunk (or reported it a
    /// duplicate of one it holds). Any refusal or timeout refuses the whole batch: what was
    /// stored of it is dropped as a duplicate when the client sends it again.
    pub async fn publish(&self, logs: &[ActivityLog]) -> Result<(), WriteError> {
        // while the client reconnects, a publish waits to be sent: the whole export has a deadline
        tokio::time::timeout(self.timeout, self.publish_all(logs))
            .await
            .unwrap_or_else(|_| Err(refusal("no acknowledgement in time")))
    }

    async fn publish_all(&self, logs: &[ActivityLog]) -> Result<(), WriteError> {
        let mut by_shard: BTreeMap<u32, Vec<&ActivityLog>> = BTreeMap::new();
        for log in logs {
            by_shard
                .entry(shard_of(&log.user_id, self.shards))
                .or_default()
                .push(log);
        }
        let mut acks: Vec<PublishAckFuture> = Vec::new();
        for (shard, logs) in by_shard {
            for payload in chunks(logs.into_iter()) {
                let publish = PublishMessage::build()
                    .message_id(message_id(&payload))
                    .payload(payload.into());
                let ack = self
                    .context
                    .send_publish(subject(shard), publish)
                    .await
                    .map_err(refusal)?;
                acks.push(ack);
            }
        }
        for ack in acks {
            let ack = ack.await.map_err(refusal)?;
            // a "duplicate" of nothing stored (seen around leader changes in nats-server 2.10)
            if ack.sequence == 0 {
                return Err(refusal("an acknowledgement without a stream sequence"));
            }
        }
        Ok(())
    }
}

fn refusal(error: impl std::fmt::Display) -> WriteError {
    WriteError::Storage(format!("the log stream did not acknowledge: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::example_log;

    #[test]
    fn chunks_hold_whole_logs_in_order_and_are_the_same_every_time() {
        let logs: Vec<ActivityLog> = (0..600).map(|n| example_log(&format!("m{n}"))).collect();
        let payloads = chunks(logs.iter());
        assert_eq!(payloads.len(), 3);
        let decoded: Vec<String> = payloads
            .iter()
            .flat_map(|p| serde_json::from_slice::<Chunk>(p).unwrap().logs)
            .map(|log| log.message)
            .collect();
        let sent: Vec<String> = logs.iter().map(|l| l.message.clone()).collect();
        assert_eq!(decoded, sent);
        let again = chunks(logs.iter());
        assert_eq!(
            payloads.iter().map(|p| message_id(p)).collect::<Vec<_>>(),
            again.iter().map(|p| message_id(p)).collect::<Vec<_>>()
        );
        assert_ne!(message_id(&payloads[0]), message_id(&payloads[1]));
    }

    #[test]
    fn a_chunk_stays_under_its_byte_limit_unless_one_log_is_larger() {
        let mut big = example_log("big");
        big.message = "x".repeat(MESSAGE_BYTES);
        let small = example_log("small");
        let payloads = chunks([&small, &big, &small].into_iter());
        assert_eq!(payloads.len(), 3);
        assert!(payloads[0].len() < 1024);
    }
}
