//! Wiring: open the index, start the writer, serve OTLP/gRPC, OTLP/HTTP and the REST API on
//! already-bound listeners, and shut all of it down in order.

mod cluster;
mod listener;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alerts::{Alerts, Book};
use crate::api::{self, AlertsState, ApiParts, ApiState, CursorKey};
use crate::auth::KeyStore;
use crate::config::Config;
use crate::explorer;
use crate::faults::Faults;
use crate::ingest::{
    ExportService, Health, IngestPolicy, IngestQueue, LogSink, MemoryBudget, WriteError,
    WriterOptions, WriterThread, spawn_writer,
};
use crate::lifecycle;
use crate::lifecycle::LimitShare;
use crate::lifecycle::watch::{hangups, read_all, watch_files};
use crate::metrics::{Metrics, StorageLabels};
use crate::otlp::{self, ReceiveLimits};
use crate::store::{self, StoreOptions};
pub use cluster::{ClusterNode, start as start_cluster};
use listener::{Protocol, Tls};
use tls::Certificates;
pub use tls::install_provider;

/// The three listeners, bound before the server starts (port 0 picks a free port).
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub api: TcpListener,
}

impl Listeners {
    /// Where the listeners are bound.
    pub fn addresses(&self) -> std::io::Result<Addresses> {
        Ok(Addresses {
            grpc: self.grpc.local_addr()?,
            http: self.http.local_addr()?,
            api: self.api.local_addr()?,
        })
    }

    /// Binds the addresses of the config.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let bind = |setting: &'static str, addr: String| async move {
            TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr} ({setting})"))
        };
        Ok(Self {
            grpc: bind("otlp.grpc_listen", config.otlp.grpc_listen.clone()).await?,
            http: bind("otlp.http_listen", config.otlp.http_listen.clone()).await?,
            api: bind("api.listen", config.api.listen.clone()).await?,
        })
    }
}

/// Where a running server listens.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
}

/// A running logbridge.
pub struct RunningServer {
    pub addresses: Addresses,
    shutdown: CancellationToken,
    servers: Vec<JoinHandle<()>>,
    /// Tasks re-reading files, evaluating alert rules and delivering alerts; they end with the
    /// shutdown.
    watchers: Vec<JoinHandle<()>>,
    writer: WriterThread,
    queue: IngestQueue,
    health: watch::Receiver<Health>,
    died: Option<oneshot::Receiver<String>>,
}

/// Starts logbridge on the given listeners.
pub async fn start(config: &Config, listeners: Listeners) -> anyhow::Result<RunningServer> {
    start_with_faults(config, listeners, Faults::none()).await
}

/// Starts logbridge with storage faults that a test arms on command.
pub async fn start_with_faults(
    config: &Config,
    listeners: Listeners,
    faults: Faults,
) -> anyhow::Result<RunningServer> {
    let addresses = listeners.addresses()?;
    // from here on, SIGHUP re-reads files rather than ending the process
    let shutdown = CancellationToken::new();
    let hangups = hangups(shutdown.clone())?;
    let metrics = Arc::new(Metrics::new());
    let (keys, keys_watcher) = watched_keys(config, &metrics, hangups.clone(), shutdown.clone())?;
    let index_path = config.index.path.clone();
    let store_options = StoreOptions {
        writer_memory_bytes: config.index.writer_memory_bytes,
        faults: faults.clone(),
        merge_failures: metrics
            .storage_failures
            .get_or_create(&StorageLabels { stage: "merge" })
            .clone(),
        payloads: config.index.payload_paths,
        warm_seconds: metrics.warm_seconds.clone(),
    };
    let (store, log_writer) =
        tokio::task::spawn_blocking(move || store::open(&index_path, &store_options)).await??;
    let cursor_key = CursorKey::load_or_create(&config.index.path)?;
    tracing::info!(
        path = %config.index.path.display(),
        logs = store.num_logs(),
        "index open"
    );
    let (health, health_rx) = watch::channel(Health::Starting);
    let (died, died_rx) = oneshot::channel();
    let (queue, writer) = spawn_writer(
        log_writer,
        WriterOptions {
            wal_dir: config.index.path.join("wal"),
            commit_interval: config.index.commit_interval,
            health,
            metrics: metrics.clone(),
            faults,
            retention: config.retention.policy.clone(),
            sweep_interval: config.retention.sweep_interval,
            dedup_window: config.index.dedup_window,
            dedup_max_bytes: config.index.dedup_max_bytes,
        },
        died,
    )?;
    let otlp = otlp_routers(
        config,
        &keys,
        Arc::new(queue.clone()),
        LimitShare::default(),
        &metrics,
    );
    let book = Book::open(
        &config.index.path,
        config.alerts.max_rules_per_user,
        &api::alert_rule,
    )?;
    let (alerts, alert_tasks) = Alerts::start(
        &config.alerts,
        book,
        Arc::new(store.clone()),
        metrics.clone(),
        shutdown.clone(),
    )?;
    let alerts = AlertsState {
        keys: keys.clone(),
        alerts,
        store: Some(store.clone()),
    };
    let api_state = ApiState {
        writer: Some(queue.clone()),
        ..ApiParts::new(
            &config.api,
            keys.clone(),
            health_rx.clone(),
            metrics.clone(),
            cursor_key,
            shutdown.clone(),
        )
        .with_store(store)
    };
    let mut watchers = vec![keys_watcher];
    watchers.extend(alert_tasks);
    let certificates =
        listener_certificates(config, &metrics, hangups, shutdown.clone(), &mut watchers)?;
    let serve = |listener, router, protocol, acceptor: Option<&tls::Acceptor>| {
        serve(
            listener,
            router,
            protocol,
            acceptor,
            &metrics,
            config,
            shutdown.clone(),
        )
    };
    let servers = vec![
        serve(
            listeners.grpc,
            otlp.grpc,
            Protocol::Http2,
            certificates.as_ref().map(|c| &c.grpc),
        ),
        serve(
            listeners.http,
            otlp.http,
            Protocol::Http1,
            certificates.as_ref().map(|c| &c.http),
        ),
        serve(
            listeners.api,
            api::router(api_state)
                .merge(api::alerts_router(alerts))
                .merge(explorer::router()),
            Protocol::Http1,
            certificates.as_ref().map(|c| &c.api),
        ),
    ];
    tracing::info!(
        otlp_grpc = %addresses.grpc,
        otlp_http = %addresses.http,
        api = %addresses.api,
        tls = config.tls.is_some(),
        "logbridge listening"
    );
    Ok(RunningServer {
        addresses,
        shutdown,
        servers,
        watchers,
        writer,
        queue,
        health: health_rx,
        died: Some(died_rx),
    })
}

/// The routers of the two OTLP listeners.
struct OtlpRouters {
    grpc: axum::Router,
    http: axum::Router,
}

/// The OTLP receivers of `config`, exporting to `sink` and enforcing `limit_share` of each
/// user's limit: one export path behind both.
fn otlp_routers(
    config: &Config,
    keys: &KeyStore,
    sink: Arc<dyn LogSink>,
    limit_share: LimitShare,
    metrics: &Arc<Metrics>,
) -> OtlpRouters {
    let export = ExportService::new(
        keys.clone(),
        IngestPolicy {
            mapping: config.mapping.clone(),
            retention: config.retention.policy.clone(),
            limits: config.limits.clone(),
            limit_share,
        },
        sink,
        MemoryBudget::new(config.otlp.max_inflight_bytes),
        metrics.clone(),
    );
    let limits = ReceiveLimits {
        max_message_bytes: config.otlp.max_message_bytes,
        body_read_timeout: config.server.body_read_timeout,
    };
    OtlpRouters {
        grpc: otlp::grpc::router(export.clone(), limits, metrics.clone()),
        http: otlp::http::router(export, limits, metrics.clone()),
    }
}

/// The keys of the keys file, and the task that reloads them when the file changes (or on
/// `SIGHUP`) until `shutdown`.
fn watched_keys(
    config: &Config,
    metrics: &Arc<Metrics>,
    hangups: watch::Receiver<u64>,
    shutdown: CancellationToken,
) -> anyhow::Result<(KeyStore, JoinHandle<()>)> {
    let (loaded_keys, keys_contents) = lifecycle::keys::load(&config.auth.keys_file)?;
    let keys = KeyStore::new(loaded_keys);
    let watcher = lifecycle::keys::watch_keys(
        config.auth.keys_file.clone(),
        keys_contents,
        keys.clone(),
        metrics.clone(),
        hangups,
        shutdown,
    );
    Ok((keys, watcher))
}

/// Serves `router` on `listener` in `protocol`, over TLS with `acceptor` when set, with the
/// listener limits of `config`, until `shutdown` and its drain.
fn serve(
    listener: TcpListener,
    router: axum::Router,
    protocol: Protocol,
    acceptor: Option<&tls::Acceptor>,
    metrics: &Metrics,
    config: &Config,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let tls = acceptor.map(|acceptor| Tls {
        acceptor: acceptor.clone(),
        handshake_failures: metrics.tls_handshake_failures.clone(),
    });
    tokio::spawn(listener::serve(
        listener,
        router,
        protocol,
        tls,
        config.server.clone(),
        shutdown,
    ))
}

/// The listeners' TLS configurations when `[tls]` is set; the task that rebuilds them when its
/// files change (or on `SIGHUP`) joins `tasks`. Files that no longer make a configuration keep
/// the last one.
fn listener_certificates(
    config: &Config,
    metrics: &Arc<Metrics>,
    hangups: watch::Receiver<u64>,
    stop: CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Option<Certificates>> {
    let Some(files) = &config.tls else {
        return Ok(None);
    };
    let paths = files.paths();
    let contents = read_all(&paths).context("cannot read the TLS files")?;
    let certificates = Certificates::new(files, &contents)?;
    let (current, files, metrics) = (certificates.clone(), files.clone(), metrics.clone());
    let watcher = watch_files(paths, contents, hangups, stop, move |trigger, read| {
        let reloaded = read
            .map_err(anyhow::Error::from)
            .and_then(|contents| Ok(current.reload(&files, &contents)?));
        match reloaded {
            Ok(()) => tracing::info!(%trigger, "TLS certificate reloaded"),
            Err(e) => {
                metrics.tls_reload_failures.inc();
                tracing::error!(
                    error = %e,
                    %trigger,
                    "TLS certificate not reloaded; the last good one stays in use"
                );
            }
        }
    });
    tasks.push(watcher);
    Ok(Some(certificates))
}

impl RunningServer {
    /// Waits until the write-ahead log is replayed; true if the server then takes exports
    /// (`/readyz` answers 200).
    pub async fn ready(&self) -> bool {
        let mut health = self.health.clone();
        match health.wait_for(|h| *h != Health::Starting).await {
            Ok(health) => *health == Health::Ready,
            Err(_) => false,
        }
    }

    /// Resolves if the writer stops for good without being shut down (its thread died, or the
    /// write-ahead log cannot be replayed), with the reason; never resolves otherwise.
    pub async fn writer_died(&mut self) -> String {
        match self.died.take() {
            Some(died) => match died.await {
                Ok(reason) => reason,
                // shut down normally: nothing to report, ever
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Commits everything accepted so far and makes it visible to `/logs`.
    pub async fn flush(&self) -> Result<(), WriteError> {
        self.queue.flush().await
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), commits, and
    /// returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.servers.into_iter().chain(self.watchers) {
            let _ = task.await;
        }
        let writer = self.writer;
        if tokio::task::spawn_blocking(move || writer.shutdown())
            .await
            .is_err()
        {
            tracing::error!("writer shutdown task failed");
        }
        tracing::info!("logbridge stopped");
    }
}
