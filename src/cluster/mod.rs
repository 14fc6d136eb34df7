//! Cluster mode (`[cluster] role`): gateways publish to NATS JetStream, indexers consume it
//! into one index per shard replica, etcd says who is alive and who serves which shard. The
//! design is `docs/SCALING.md`.
//!
//! - [`shard`]: which shard a user's logs go to, who owns a shard, replica-wide sequence numbers.
//! - [`stream`]: the streams, and publishing with content-derived deduplication ids.
//! - [`etcd`], [`membership`]: leases, the cluster's view, the shared cursor key.
//! - [`indexer`]: replicas consuming their shards, and their reads.
//! - [`gateway`]: routing each user's reads to a ready replica.

mod copy;
mod etcd;
mod gateway;
mod indexer;
mod membership;
mod shard;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use shard::{MAX_SHARDS, Spread, shard_of};
pub use stream::Publisher;

use crate::api;
use crate::config::{ClusterConfig, Config};
use crate::explorer;
use crate::ingest::{Health, LogSink};
use crate::lifecycle::watch::hangups;
use crate::metrics::{Metrics, StorageLabels};
use crate::server::{Addresses, Listeners, otlp_routers, serve_plain, watched_keys};
use crate::store::StoreOptions;
use etcd::Etcd;
use gateway::Gateway;
use indexer::{IndexerContext, Replicas};
use membership::{Keys, Membership, NodeInfo};

/// A running cluster node.
pub struct ClusterNode {
    pub addresses: Addresses,
    shutdown: CancellationToken,
    /// Cancelled after the listeners drained: the node then leaves the cluster.
    leave: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    indexer: Option<JoinHandle<()>>,
    membership: Arc<Membership>,
}

/// Starts a node with the roles of `cluster` on `listeners`. An indexer-only node serves its
/// shards' reads on the API listener and leaves the OTLP listeners closed.
pub async fn start(
    config: &Config,
    cluster: &ClusterConfig,
    listeners: Listeners,
) -> anyhow::Result<ClusterNode> {
    let addresses = listeners.addresses()?;
    let shutdown = CancellationToken::new();
    let leave = CancellationToken::new();
    let hangups = hangups(shutdown.clone())?;
    let metrics = Arc::new(Metrics::new());
    let (keys, keys_watcher) = watched_keys(config, &metrics, hangups, shutdown.clone())?;
    let mut tasks = vec![keys_watcher];

    let jetstream = stream::connect(cluster).await?;
    stream::ensure_streams(&jetstream, cluster).await?;
    let etcd = Etcd::new(&cluster.etcd_endpoints);
    let etcd_keys = Keys::new(&cluster.name);
    membership::check_shards(&etcd, &etcd_keys, cluster.shards).await?;
    let advertise = cluster
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", advertised_addr(addresses.api)));
    let membership = Arc::new(Membership::join(
        etcd.clone(),
        etcd_keys.clone(),
        cluster.node_id.clone(),
        NodeInfo {
            gateway: cluster.gateway,
            indexer: cluster.indexer,
            api: advertise.clone(),
        },
        metrics.clone(),
        leave.clone(),
    ));

    let mut api_router = axum::Router::new();
    let mut indexer_task = None;
    if cluster.indexer {
        std::fs::create_dir_all(&config.index.path)?;
        let cursor_key = membership::shared_cursor_key(
            &etcd,
            &etcd_keys,
            Some(&config.index.path.join(api::CURSOR_KEY_FILE)),
            &shutdown,
        )
        .await?;
        let peer_token = cursor_key.peer_token();
        let (_, health) = watch::channel(Health::Ready);
        let replicas = Replicas::default();
        let context = IndexerContext {
            jetstream: jetstream.clone(),
            api: api::ApiParts::new(
                &config.api,
                keys.clone(),
                health,
                metrics.clone(),
                cursor_key,
                shutdown.clone(),
            ),
            dir: config.index.path.join("shards"),
            store_options: StoreOptions {
                merge_failures: metrics
                    .storage_failures
                    .get_or_create(&StorageLabels { stage: "merge" })
                    .clone(),
                ..StoreOptions::new(config.index.writer_memory_bytes)
            },
            commit_interval: config.index.commit_interval,
            advertise: advertise.clone(),
            replicas_per_shard: cluster.indexer_replicas,
            node_id: cluster.node_id.clone(),
            cluster_name: cluster.name.clone(),
            retention: config.retention.policy.clone(),
            sweep_interval: config.retention.sweep_interval,
            client: Gateway::client(),
            peer_token: peer_token.clone(),
        };
        api_router = api_router
            .merge(indexer::router(replicas.clone()))
            .merge(copy::router(
                replicas.clone(),
                context.dir.clone(),
                peer_token,
            ));
        if !cluster.gateway {
            api_router = api_router.merge(indexer::readiness(replicas.clone(), membership.view()));
        }
        indexer_task = Some(tokio::spawn(indexer::run(
            context,
            replicas,
            membership.clone(),
            cluster.shards,
            leave.clone(),
        )));
    }
    if cluster.gateway {
        let sink = LogSink::Stream(Box::new(Publisher::new(
            jetstream.clone(),
            cluster,
            membership.view(),
        )));
        let otlp = otlp_routers(config, &keys, sink, &metrics);
        tasks.push(serve_plain(
            listeners.grpc,
            otlp.grpc,
            true,
            config,
            shutdown.clone(),
        ));
        tasks.push(serve_plain(
            listeners.http,
            otlp.http,
            false,
            config,
            shutdown.clone(),
        ));
        let cursor_key = Arc::new(arc_swap::ArcSwapOption::empty());
        let (etcd, etcd_keys, stop, shared) = (
            etcd.clone(),
            etcd_keys.clone(),
            shutdown.clone(),
            cursor_key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Ok(key) = membership::shared_cursor_key(&etcd, &etcd_keys, None, &stop).await {
                shared.store(Some(Arc::new(key)));
            }
        }));
        let gateway = Gateway {
            cursor_key,
            shutdown: shutdown.clone(),
            keys: keys.clone(),
            view: membership.view(),
            shards: cluster.shards,
            replicas: cluster.indexer_replicas,
            metrics: metrics.clone(),
            client: Gateway::client(),
        };
        api_router = api_router
            .merge(gateway::router(gateway))
            .merge(explorer::router());
    } else {
        let metrics = metrics.clone();
        api_router = api_router
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = metrics.clone();
                    async move { api::metrics_response(&metrics) }
                }),
            );
    }
    tasks.push(serve_plain(
        listeners.api,
        api_router,
        false,
        config,
        shutdown.clone(),
    ));
    tracing::info!(
        node = %cluster.node_id,
        gateway = cluster.gateway,
        indexer = cluster.indexer,
        otlp_grpc = %addresses.grpc,
        otlp_http = %addresses.http,
        api = %addresses.api,
        advertise = %advertise,
        "logbridge listening"
    );
    Ok(ClusterNode {
        addresses,
        shutdown,
        leave,
        tasks,
        indexer: indexer_task,
        membership,
    })
}

/// How far ahead a spread's cut-over must be: every gateway reads etcd within a second, and one
/// that had not yet would publish the user's newer logs to the home shard only.
const SPREAD_NOTICE: std::time::Duration = std::time::Duration::from_secs(60);

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
    let etcd = Etcd::new(&cluster.etcd_endpoints);
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

/// The address others reach a listener at: a wildcard bind is reached at loopback.
fn advertised_addr(bound: SocketAddr) -> SocketAddr {
    let mut addr = bound;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

impl ClusterNode {
    /// Stops accepting, lets in-flight requests finish, commits the replicas and leaves the
    /// cluster.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.leave.cancel();
        if let Some(indexer) = self.indexer {
            let _ = indexer.await;
        }
        if let Ok(membership) = Arc::try_unwrap(self.membership) {
            membership.leave().await;
        }
        tracing::info!("logbridge cluster node stopped");
    }
}
