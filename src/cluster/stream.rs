//! NATS JetStream, the cluster's replicated log: one stream per shard. Gateways publish each
//! export's logs in chunks whose `Nats-Msg-Id` is derived from their content, and answer the
//! export only once JetStream acknowledged every chunk; indexers read the chunks back in order.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::ClusterConfig;
use super::lag::Freshness;
use super::membership::{ShardCheck, View};
use super::shard::shard_for;
use crate::ingest::{EncodedLog, LogSink, Reservation, WriteError, chunk_ranges};
use crate::mapping::ActivityLog;

/// How long a node waits for JetStream to answer while it sets up streams on start.
const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// The stream of shard `shard` of the cluster `cluster`.
pub fn stream_name(cluster: &str, shard: u32) -> String {
    format!("LOGBRIDGE_{cluster}_{shard}")
}

/// The subject shard `shard`'s stream takes its messages on.
pub(super) fn subject(cluster: &str, shard: u32) -> String {
    format!("logbridge.{cluster}.shard.{shard}")
}

/// A server URL as it may be logged: without a user or password.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_owned(),
        },
        None => url
            .rsplit_once('@')
            .map_or(url, |(_, host)| host)
            .to_owned(),
    }
}

/// A message as stored: logs of one shard, in the order of their export.
#[derive(Debug, Deserialize)]
pub struct Chunk {
    pub logs: Vec<ActivityLog>,
}

/// The message payloads `{"logs":[...]}` of logs of one shard: one for each of their
/// content-defined chunks (`ingest::chunk_ranges`), which a single node recognizes retries by
/// too. The same logs always give the same payloads, and an export retried without one of its
/// logs (one that crossed its retention between the attempts) changes only the chunks around
/// that log, so every other chunk is still recognized as a duplicate. A chunk is far below NATS'
/// default `max_payload` of 1 MiB.
fn chunks(logs: &[&EncodedLog]) -> Vec<Vec<u8>> {
    let keys: Vec<_> = logs.iter().map(|log| log.key).collect();
    chunk_ranges(&keys)
        .map(|range| {
            let logs = &logs[range];
            let mut payload =
                Vec::with_capacity(logs.iter().map(|l| l.json.len() + 1).sum::<usize>() + 11);
            payload.extend_from_slice(b"{\"logs\":[");
            for (i, log) in logs.iter().enumerate() {
                if i > 0 {
                    payload.push(b',');
                }
                payload.extend_from_slice(&log.json);
            }
            payload.extend_from_slice(b"]}");
            payload
        })
        .collect()
}

/// The deduplication id of a payload: the hex SHA-256 of its bytes.
fn message_id(payload: &[u8]) -> String {
    hex::encode(Sha256::digest(payload))
}

/// Connects to NATS, over TLS only when configured; the client reconnects by itself after a
/// server goes away.
pub async fn connect(config: &ClusterConfig) -> anyhow::Result<jetstream::Context> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("logbridge {}", config.node_id))
        .retry_on_initial_connect();
    if let Some(files) = &config.nats_tls {
        options = options
            .require_tls(true)
            .tls_client_config(super::tls::client_config(files)?);
    }
    let client = options
        .connect(config.nats_urls.as_slice())
        .await
        .with_context(|| {
            let urls: Vec<String> = config.nats_urls.iter().map(|u| redacted(u)).collect();
            format!("cannot connect to NATS at {}", urls.join(", "))
        })?;
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
            name: stream_name(&config.name, shard),
            subjects: vec![subject(&config.name, shard)],
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
                    return Err(anyhow::anyhow!(e))
                        .with_context(|| format!("cannot create the stream {}", stream.name));
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
    /// The cluster's view: which users are spread over several shards.
    view: watch::Receiver<View>,
    /// How far behind each shard's reads are: a shard past the bound takes no new exports.
    freshness: Arc<Freshness>,
    /// Nothing is published before etcd confirmed the shard count logs are routed by.
    shard_check: watch::Receiver<ShardCheck>,
    cluster: String,
    shards: u32,
    timeout: Duration,
}

impl Publisher {
    pub fn new(
        context: jetstream::Context,
        config: &ClusterConfig,
        view: watch::Receiver<View>,
        freshness: Arc<Freshness>,
        shard_check: watch::Receiver<ShardCheck>,
    ) -> Self {
        Self {
            context,
            view,
            freshness,
            shard_check,
            cluster: config.name.clone(),
            shards: config.shards,
            timeout: config.publish_timeout,
        }
    }

    async fn publish_all(&self, logs: &[EncodedLog]) -> Result<(), WriteError> {
        if let Some(refusal) = self.shard_check.borrow().refusal() {
            return Err(WriteError::Storage(refusal));
        }
        let mut by_shard: BTreeMap<u32, Vec<&EncodedLog>> = BTreeMap::new();
        {
            let view = self.view.borrow();
            for encoded in logs {
                let log = &encoded.log;
                let spreads = view.spreads_of(&log.user_id);
                let shard = shard_for(
                    &log.user_id,
                    log.timestamp_nanos,
                    &log.message,
                    spreads,
                    self.shards,
                );
                by_shard.entry(shard).or_default().push(encoded);
            }
        }
        // a shard whose reads are too far behind takes nothing until they catch up
        for &shard in by_shard.keys() {
            if let Err(lag) = self.freshness.within_bound(shard) {
                let expected = lag.expected.map_or(String::new(), |e| {
                    format!(", {:.1} s for an export now", e.as_secs_f64())
                });
                return Err(WriteError::Storage(format!(
                    "the reads of shard {shard} are behind the exports acknowledged ({:.1} s for \
                     the oldest not visible{expected}), past cluster.max_lag_ms",
                    lag.oldest.as_secs_f64()
                )));
            }
        }
        let mut acks: Vec<(u32, PublishAckFuture)> = Vec::new();
        for (shard, logs) in by_shard {
            for payload in chunks(&logs) {
                let publish = PublishMessage::build()
                    .message_id(message_id(&payload))
                    .payload(payload.into());
                let ack = self
                    .context
                    .send_publish(subject(&self.cluster, shard), publish)
                    .await
                    .map_err(refusal)?;
                acks.push((shard, ack));
            }
        }
        for (shard, ack) in acks {
            let ack = ack.await.map_err(refusal)?;
            // a "duplicate" of nothing stored (seen around leader changes in nats-server 2.10)
            if ack.sequence == 0 {
                return Err(refusal("an acknowledgement without a stream sequence"));
            }
            self.freshness.acknowledged(shard, ack.sequence);
        }
        Ok(())
    }
}

impl LogSink for Publisher {
    /// Publishes `logs` and waits until JetStream acknowledged every chunk (or reported it a
    /// duplicate of one it holds). Any refusal or timeout refuses the whole batch: what was
    /// stored of it is dropped as a duplicate when the client sends it again.
    fn write(
        &self,
        logs: Vec<EncodedLog>,
        reservation: Reservation,
    ) -> Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send + '_>> {
        Box::pin(async move {
            // while the client reconnects, a publish waits to be sent: the whole export has a
            // deadline
            let published = tokio::time::timeout(self.timeout, self.publish_all(&logs))
                .await
                .unwrap_or_else(|_| Err(refusal("no acknowledgement in time")));
            drop((logs, reservation));
            published
        })
    }
}

fn refusal(error: impl std::fmt::Display) -> WriteError {
    WriteError::Storage(format!("the log stream did not acknowledge: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::shard::LOGS_PER_MESSAGE;
    use crate::mapping::example_log;

    fn encoded(count: usize) -> Vec<EncodedLog> {
        (0..count)
            .map(|n| EncodedLog::new(example_log(&format!("m{n}"))))
            .collect()
    }

    fn payloads(logs: &[EncodedLog]) -> Vec<Vec<u8>> {
        chunks(&logs.iter().collect::<Vec<_>>())
    }

    /// The messages of the logs of `payloads`, chunk by chunk.
    fn decoded(payloads: &[Vec<u8>]) -> Vec<Vec<String>> {
        payloads
            .iter()
            .map(|p| serde_json::from_slice::<Chunk>(p).unwrap().logs)
            .map(|logs| logs.into_iter().map(|log| log.message).collect())
            .collect()
    }

    #[test]
    fn chunks_hold_whole_logs_in_order_and_are_the_same_every_time() {
        let logs = encoded(3000);
        let payloads = payloads(&logs);
        let sizes: Vec<usize> = decoded(&payloads).iter().map(Vec::len).collect();
        assert!(
            sizes.iter().all(|&n| (1..=LOGS_PER_MESSAGE).contains(&n)),
            "{sizes:?}"
        );
        // about one log in NATURAL_CUT ends a chunk
        assert!(
            (25..=100).contains(&payloads.len()),
            "{} chunks",
            payloads.len()
        );
        let sent: Vec<String> = logs.iter().map(|l| l.log.message.clone()).collect();
        assert_eq!(decoded(&payloads).concat(), sent);
        let again = super::chunks(&logs.iter().collect::<Vec<_>>());
        assert_eq!(
            payloads.iter().map(|p| message_id(p)).collect::<Vec<_>>(),
            again.iter().map(|p| message_id(p)).collect::<Vec<_>>()
        );
        assert_ne!(message_id(&payloads[0]), message_id(&payloads[1]));
    }

    #[test]
    fn a_log_missing_from_a_retry_changes_only_the_chunks_around_it() {
        let logs = encoded(3000);
        let ids = |logs: &[EncodedLog]| -> Vec<String> {
            payloads(logs).iter().map(|p| message_id(p)).collect()
        };
        let first = ids(&logs);
        let mut retried = logs.clone();
        retried.remove(1000);
        let second = ids(&retried);
        let new: Vec<&String> = second.iter().filter(|id| !first.contains(id)).collect();
        assert!(
            new.len() <= 2,
            "{} of {} chunks are new",
            new.len(),
            second.len()
        );
    }

    #[test]
    fn credentials_never_reach_the_log() {
        assert_eq!(
            redacted("nats://user:secret@10.0.0.1:4222"),
            "nats://10.0.0.1:4222"
        );
        assert_eq!(redacted("tls://token@host:4222"), "tls://host:4222");
        assert_eq!(redacted("nats://host:4222"), "nats://host:4222");
        assert_eq!(redacted("user:pw@host:4222"), "host:4222");
    }
}
