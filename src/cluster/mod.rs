//! Cluster mode (`[cluster] role`): gateways publish to NATS JetStream, indexers consume it
//! into one index per shard replica, etcd says who is alive and who serves which shard. The
//! design is `docs/SCALING.md`.
//!
//! - [`shard`]: which shard a user's logs go to, who owns a shard, replica-wide sequence numbers.
//! - [`stream`]: the streams, and publishing with content-derived deduplication ids.
//! - [`etcd`], [`membership`]: leases, the cluster's view, the shared cursor key.
//! - [`indexer`]: replicas consuming their shards, and their reads.
//! - [`erasure`]: `DELETE /logs`, a message every replica of a shard applies in order.
//! - [`lag`]: replicas report what their reads see; gateways bound how far behind that is.
//! - [`gateway`]: routing each user's reads to a ready replica.
//! - [`gather`]: the reads of a user spread over several shards, gathered from each.
//! - [`alerting`]: the alert rules, kept and evaluated by one gateway, measured on the shards.
//!
//! These are the parts; `server` wires them into a running node.

pub(crate) mod alerting;
pub(crate) mod copy;
pub(crate) mod erasure;
pub(crate) mod etcd;
pub(crate) mod gateway;
mod gather;
pub(crate) mod indexer;
pub(crate) mod lag;
pub(crate) mod membership;
mod shard;
pub(crate) mod stream;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use rustls::ClientConfig;

pub use shard::{MAX_SHARDS, Spread, owners, shard_for, shard_of};
pub use stream::Publisher;

use etcd::Etcd;
use membership::Keys;
use tls::ClientTlsFiles;

/// Cluster mode: roles, the engines it runs on, and how logs are spread (`docs/SCALING.md`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Runs the OTLP receivers and the REST API, publishing to the stream and routing reads.
    pub gateway: bool,
    /// Consumes shards into local indexes and serves their reads to gateways.
    pub indexer: bool,
    /// This node's name, unique in the cluster and stable across restarts.
    pub node_id: String,
    /// Prefix of the etcd keys; several clusters may share one etcd.
    pub name: String,
    /// NATS servers, `nats://host:port` (`tls://host:port` with [`ClusterConfig::nats_tls`]).
    pub nats_urls: Vec<String>,
    /// TLS to NATS: every server is reached over it when set.
    pub nats_tls: Option<ClientTlsFiles>,
    /// etcd endpoints, `http://host:port` (`https://` with [`ClusterConfig::etcd_tls`]).
    pub etcd_endpoints: Vec<String>,
    /// TLS to etcd: every endpoint is reached over it when set.
    pub etcd_tls: Option<ClientTlsFiles>,
    /// The CA indexers' certificates chain to, when the listeners serve TLS (`[tls]`): gateways
    /// reach indexers, and indexers each other, over HTTPS only, verified against it.
    pub peer_ca_file: Option<PathBuf>,
    /// Shards, fixed for the life of the cluster.
    pub shards: u32,
    /// Replicas of each shard's stream.
    pub stream_replicas: usize,
    /// Indexers serving each shard.
    pub indexer_replicas: usize,
    /// How an export's publishes wait for their acknowledgements.
    pub publish_timeout: Duration,
    /// How long the stream remembers a message id, dropping a retry of it.
    pub dedup_window: Duration,
    /// How far a shard's reads may fall behind the exports a gateway acknowledged before it
    /// refuses new ones for the shard (retryably).
    pub max_lag: Duration,
    /// The URL gateways reach this indexer's API at; by default `http://` (`https://` with TLS)
    /// and the bound API address.
    pub advertise_url: Option<String>,
}

impl ClusterConfig {
    /// The TLS configuration of the hops to indexers, when they are encrypted.
    pub fn peer_tls(&self) -> anyhow::Result<Option<ClientConfig>> {
        self.peer_ca_file
            .as_ref()
            .map(|ca_file| {
                tls::client_config(&ClientTlsFiles {
                    ca_file: ca_file.clone(),
                    identity: None,
                })
            })
            .transpose()
    }

    /// An etcd client of the cluster's endpoints, over TLS when configured.
    pub fn etcd(&self) -> anyhow::Result<Etcd> {
        let tls = self.etcd_tls.as_ref().map(tls::client_config).transpose()?;
        Ok(Etcd::new(&self.etcd_endpoints, tls.as_ref()))
    }
}

/// How far ahead a spread's cut-over must be: every gateway reads etcd within a second, and one
/// that had not yet would publish the user's newer logs to the home shard only.
const SPREAD_NOTICE: Duration = Duration::from_secs(60);

/// Spreads `user_id`'s logs stamped from `from` (nanoseconds) on over `shards` shards, after its
/// earlier spreads; all of them, in order. A cut-over is never changed once set: logs already
/// routed by it stay where they are.
pub async fn spread(
    cluster: &ClusterConfig,
    user_id: &str,
    shards: u32,
    from: u64,
) -> anyhow::Result<Vec<Spread>> {
    anyhow::ensure!(
        (2..=cluster.shards).contains(&shards),
        "--shards must be between 2 and the cluster's {} shards",
        cluster.shards
    );
    let earliest = crate::ingest::now_nanos() + SPREAD_NOTICE.as_nanos() as u64;
    anyhow::ensure!(
        from >= earliest,
        "--from must be at least {} s ahead, so that every gateway knows the cut-over before it comes",
        SPREAD_NOTICE.as_secs()
    );
    let etcd = cluster.etcd()?;
    let key = Keys::new(&cluster.name).spreads(user_id);
    let (_, listed) = etcd.list(&key).await?;
    let mut spreads: Vec<Spread> = match listed.iter().find(|kv| kv.key == key) {
        Some(kv) => serde_json::from_slice(&kv.value)?,
        None => Vec::new(),
    };
    if let Some(last) = spreads.last() {
        anyhow::ensure!(
            from > last.from && shards > last.shards,
            "a later cut-over must come after the last one and spread over more than its {} shards",
            last.shards
        );
    }
    spreads.push(Spread { from, shards });
    etcd.put(&key, &serde_json::to_vec(&spreads)?, 0).await?;
    Ok(spreads)
}
