//! Wiring of a cluster node: joins the cluster, then serves the roles of `[cluster] role` on the
//! listeners with the parts of [`crate::cluster`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::listener::Protocol;
use super::{Addresses, Listeners, listener_certificates, otlp_routers, serve, watched_keys};
use crate::api;
use crate::cluster::alerting::{self, Alerting};
use crate::cluster::gateway::{self, Gateway};
use crate::cluster::indexer::{self, IndexerContext, Replicas};
use crate::cluster::lag::Freshness;
use crate::cluster::membership::{self, Keys, Membership, NodeInfo, View};
use crate::cluster::{ClusterConfig, Publisher, copy, erasure, stream, tls};
use crate::config::Config;
use crate::explorer;
use crate::ingest::Health;
use crate::lifecycle::LimitShare;
use crate::lifecycle::watch::hangups;
use crate::metrics::{Metrics, StorageLabels};
use crate::store::{self, StoreOptions};

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
    let (keys, keys_watcher) = watched_keys(config, &metrics, hangups.clone(), shutdown.clone())?;
    let mut tasks = vec![keys_watcher];
    let certificates =
        listener_certificates(config, &metrics, hangups, shutdown.clone(), &mut tasks)?;
    // the hops to indexers: HTTPS only when the listeners serve TLS
    let peer_tls = cluster.peer_tls()?;

    let jetstream = stream::connect(cluster).await?;
    stream::ensure_streams(&jetstream, cluster).await?;
    let etcd = cluster.etcd()?;
    let etcd_keys = Keys::new(&cluster.name);
    let shard_check =
        membership::check_shards(&etcd, &etcd_keys, cluster.shards, &shutdown).await?;
    let scheme = if certificates.is_some() {
        "https"
    } else {
        "http"
    };
    let advertise = cluster
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", advertised_addr(addresses.api)));
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
            Some(&config.index.path.join(store::CURSOR_KEY_FILE)),
            &shutdown,
        )
        .await?;
        let peer_token = cursor_key.peer_token();
        let (_, health) = watch::channel(Health::Ready);
        let replicas = Replicas::default();
        let context = IndexerContext {
            jetstream: jetstream.clone(),
            api: api::ApiParts {
                tail_resume_wait: indexer::TAIL_RESUME_WAIT,
                ..api::ApiParts::new(
                    &config.api,
                    keys.clone(),
                    health,
                    metrics.clone(),
                    cursor_key,
                    shutdown.clone(),
                )
            },
            dir: config.index.path.join("shards"),
            store_options: StoreOptions {
                merge_failures: metrics
                    .storage_failures
                    .get_or_create(&StorageLabels { stage: "merge" })
                    .clone(),
                payloads: config.index.payload_paths,
                warm_seconds: metrics.warm_seconds.clone(),
                ..StoreOptions::new(config.index.writer_memory_bytes)
            },
            commit_interval: config.index.commit_interval,
            advertise: advertise.clone(),
            replicas_per_shard: cluster.indexer_replicas,
            node_id: cluster.node_id.clone(),
            cluster_name: cluster.name.clone(),
            retention: config.retention.policy.clone(),
            sweep_interval: config.retention.sweep_interval,
            client: tls::http_client(peer_tls.as_ref()),
            peer_token: peer_token.clone(),
        };
        api_router = api_router
            .merge(indexer::router(replicas.clone()))
            .merge(copy::router(
                replicas.clone(),
                context.dir.clone(),
                peer_token.clone(),
            ))
            .merge(erasure::router(replicas.clone(), peer_token.clone()))
            .merge(alerting::peer_router(replicas.clone(), peer_token));
        if !cluster.gateway {
            api_router = api_router.merge(indexer::readiness(replicas.clone(), membership.view()));
        }
        indexer_task = Some(tokio::spawn(indexer::run(
            context,
            replicas,
            membership.clone(),
            cluster.shards,
            shard_check.clone(),
            leave.clone(),
        )));
    }
    if cluster.gateway {
        let freshness = Arc::new(Freshness::new(
            cluster.max_lag,
            membership.view(),
            metrics.clone(),
        ));
        tasks.push(tokio::spawn(freshness.clone().follow(
            jetstream.client(),
            cluster.name.clone(),
            shutdown.clone(),
        )));
        let sink = Arc::new(Publisher::new(
            jetstream.clone(),
            cluster,
            membership.view(),
            freshness.clone(),
            shard_check.clone(),
        ));
        let limit_share = LimitShare::default();
        tasks.push(tokio::spawn(share_limits_among_gateways(
            membership.view(),
            limit_share.clone(),
            shutdown.clone(),
        )));
        let otlp = otlp_routers(config, &keys, sink, limit_share, &metrics);
        tasks.push(serve(
            listeners.grpc,
            otlp.grpc,
            Protocol::Http2,
            certificates.as_ref().map(|c| &c.grpc),
            &metrics,
            config,
            shutdown.clone(),
        ));
        tasks.push(serve(
            listeners.http,
            otlp.http,
            Protocol::Http1,
            certificates.as_ref().map(|c| &c.http),
            &metrics,
            config,
            shutdown.clone(),
        ));
        let cursor_key = Arc::new(arc_swap::ArcSwapOption::empty());
        let (shared_etcd, shared_keys, stop, shared) = (
            etcd.clone(),
            etcd_keys.clone(),
            shutdown.clone(),
            cursor_key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let read = membership::shared_cursor_key(&shared_etcd, &shared_keys, None, &stop);
            if let Ok(key) = read.await {
                shared.store(Some(Arc::new(key)));
            }
        }));
        let gateway = Gateway {
            freshness,
            shard_check,
            jetstream: jetstream.clone(),
            cluster_name: cluster.name.clone(),
            cursor_key,
            shutdown: shutdown.clone(),
            keys: keys.clone(),
            view: membership.view(),
            shards: cluster.shards,
            replicas: cluster.indexer_replicas,
            metrics: metrics.clone(),
            client: tls::http_client(peer_tls.as_ref()),
            payload_paths: config.index.payload_paths,
            alerting: Alerting::new(&cluster.node_id),
        };
        let keeping = alerting::Keeping {
            config: config.alerts.clone(),
            etcd,
            keys: etcd_keys,
            api_keys: keys.clone(),
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(alerting::run(
            gateway.alerting.clone(),
            keeping,
            gateway.clone(),
            shutdown.clone(),
        )));
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
    tasks.push(serve(
        listeners.api,
        api_router,
        Protocol::Http1,
        certificates.as_ref().map(|c| &c.api),
        &metrics,
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
        tls = certificates.is_some(),
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

/// Keeps `share` at the number of live gateways in the cluster's view, so that each enforces
/// its part of every user's ingest limit and together they hold the whole.
async fn share_limits_among_gateways(
    mut view: watch::Receiver<View>,
    share: LimitShare,
    shutdown: CancellationToken,
) {
    loop {
        let gateways = view.borrow_and_update().gateways();
        share.set(u32::try_from(gateways).unwrap_or(u32::MAX));
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = view.changed() => if changed.is_err() { return },
        }
    }
}
