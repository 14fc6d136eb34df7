//! Wiring: open the index, start the writer, serve OTLP/gRPC, OTLP/HTTP and the REST API on
//! already-bound listeners, and shut all of it down in order.

use std::net::SocketAddr;

use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::auth::{KeyStore, load_keys};
use crate::config::Config;
use crate::ingest::{
    ExportService, IngestQueue, WriteError, WriterOptions, WriterThread, spawn_writer,
};
use crate::metrics::Metrics;
use crate::otlp;
use crate::store;

/// The three listeners, bound before the server starts (port 0 picks a free port).
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub api: TcpListener,
}

impl Listeners {
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
    writer: WriterThread,
    queue: IngestQueue,
    ready: watch::Receiver<bool>,
}

/// Starts logbridge on the given listeners.
pub async fn start(config: &Config, listeners: Listeners) -> anyhow::Result<RunningServer> {
    let addresses = Addresses {
        grpc: listeners.grpc.local_addr()?,
        http: listeners.http.local_addr()?,
        api: listeners.api.local_addr()?,
    };
    let keys = KeyStore::new(load_keys(&config.auth.keys_file)?);
    let index = config.index.clone();
    let (store, log_writer) =
        tokio::task::spawn_blocking(move || store::open(&index.path, index.writer_memory_bytes))
            .await??;
    tracing::info!(
        path = %config.index.path.display(),
        logs = store.num_logs(),
        "index open"
    );
    let (ready, ready_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let (queue, writer) = spawn_writer(
        log_writer,
        WriterOptions {
            wal_dir: config.index.path.join("wal"),
            commit_interval: config.index.commit_interval,
            capacity: config.index.queue_capacity,
            ready,
            metrics: metrics.clone(),
        },
    )?;
    let export = ExportService::new(
        keys.clone(),
        config.mapping.clone(),
        queue.clone(),
        metrics.clone(),
    );
    let shutdown = CancellationToken::new();

    let grpc = tokio::spawn(log_exit(
        "otlp grpc",
        otlp::grpc::serve(
            listeners.grpc,
            export.clone(),
            config.otlp.max_message_bytes,
            metrics.clone(),
            shutdown.clone().cancelled_owned(),
        ),
    ));
    let http = tokio::spawn(log_exit(
        "otlp http",
        axum::serve(
            listeners.http.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            otlp::http::router(export, config.otlp.max_message_bytes, metrics.clone()),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future(),
    ));
    let api_state = ApiState {
        keys,
        store,
        ready: ready_rx.clone(),
        metrics,
    };
    let api = tokio::spawn(log_exit(
        "rest api",
        axum::serve(
            listeners.api.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            api::router(api_state),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future(),
    ));
    tracing::info!(
        otlp_grpc = %addresses.grpc,
        otlp_http = %addresses.http,
        api = %addresses.api,
        "logbridge listening"
    );
    Ok(RunningServer {
        addresses,
        shutdown,
        servers: vec![grpc, http, api],
        writer,
        queue,
        ready: ready_rx,
    })
}

async fn log_exit<E: std::fmt::Display>(
    name: &'static str,
    server: impl Future<Output = Result<(), E>>,
) {
    if let Err(e) = server.await {
        tracing::error!(server = name, error = %e, "server stopped");
    }
}

impl RunningServer {
    /// Waits until the write-ahead log is replayed and `/readyz` answers 200; false if the writer
    /// failed to start.
    pub async fn ready(&self) -> bool {
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.is_ok()
    }

    /// Commits everything accepted so far and makes it visible to `/logs`.
    pub async fn flush(&self) -> Result<(), WriteError> {
        self.queue.flush().await
    }

    /// Stops accepting, lets in-flight requests finish, commits, and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for server in self.servers {
            let _ = server.await;
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
