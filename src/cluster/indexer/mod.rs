//! The indexer role: one tantivy index per shard replica, fed by the shard's stream, and the
//! reads of those shards for the gateways (`/shards/<n>/logs...`, the REST API of a single node
//! on that shard's index).
//!
//! A replica's thread consumes the stream from the message after the last one its index
//! committed (the commit payload holds the last log's sequence number, which encodes the stream
//! sequence), adds each message's logs, and commits at most every commit interval. After a crash
//! it starts over from the commit: nothing is indexed twice, nothing is skipped.

mod consume;
mod copying;
mod reconcile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, Uri};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::erasure::Erasures;
use super::lag::ReplicaLag;
use super::membership::{Membership, ReplicaStatus, ShardCheck, View};
use super::shard::resume_from;
use super::stream::stream_name;
use super::tls::HttpClient;
use crate::api::{self, ApiError, ApiParts};
use crate::lifecycle::Retention;
use crate::metrics::ShardLabels;
use crate::store::{self, StoreOptions};
use consume::Consumer;
use copying::Copies;
use reconcile::{RECOPY_INTERVAL, Reconcile};

/// How long a replica whose stream or index fails waits before it starts over.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The status an indexer answers for a shard it does not hold: the gateway tries another replica.
pub const NOT_HERE: StatusCode = StatusCode::MISDIRECTED_REQUEST;

/// What every replica of this node shares.
#[derive(Clone)]
pub struct IndexerContext {
    pub jetstream: jetstream::Context,
    /// What the replicas' REST APIs share; each adds its own store.
    pub api: ApiParts,
    /// Where the shards' indexes live: `<dir>/<shard>`.
    pub dir: PathBuf,
    pub store_options: StoreOptions,
    pub commit_interval: Duration,
    /// This node's API, as gateways reach it.
    pub advertise: String,
    pub replicas_per_shard: usize,
    pub node_id: String,
    /// The cluster's name, in its streams' names.
    pub cluster_name: String,
    /// How long logs are kept, and how often expired ones are deleted.
    pub retention: Retention,
    pub sweep_interval: Duration,
    /// Fetches copies of replicas from peers (over HTTPS only when the listeners serve TLS).
    pub client: HttpClient<Body>,
    /// Shown to peers for copies.
    pub peer_token: String,
}

/// Where a replica stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaState {
    /// Consuming its stream, not caught up with its end yet (or again, after a failure).
    CatchingUp,
    /// Caught up: read by gateways and copied by peers.
    Ready,
    /// The stream no longer holds its messages `first..=last`, which the replica never indexed:
    /// it is never read or copied, and is replaced by a complete peer's copy once one is ready.
    Missing { first: u64, last: u64 },
}

struct Replica {
    router: Router,
    /// Its index, for what peers compute on it (the statistics alert rules measure).
    store: store::Store,
    state: watch::Receiver<ReplicaState>,
    /// The stream sequence its reads see through.
    seen: Arc<AtomicU64>,
    /// The erasures it applied, for gateways to learn their counts.
    erasures: Arc<Erasures>,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
    /// When a replica with a gap next asks its peers for a copy, and how long it waits after
    /// that one if it does not fill the gap (doubling, up to [`RECOPY_BACKOFF_MAX`]).
    recopy_at: Instant,
    recopy_backoff: Duration,
}

impl Replica {
    fn ready(&self) -> bool {
        *self.state.borrow() == ReplicaState::Ready
    }
}

/// The replicas this node holds, by shard.
#[derive(Clone, Default)]
pub struct Replicas(Arc<RwLock<BTreeMap<u32, Replica>>>);

impl Replicas {
    /// Whether this node holds a caught-up replica of `shard`.
    pub fn is_ready(&self, shard: u32) -> bool {
        let replicas = self.0.read().unwrap_or_else(|e| e.into_inner());
        replicas.get(&shard).is_some_and(Replica::ready)
    }

    /// What this node's replica of `shard` recorded of the erasures it applied.
    pub fn erasures(&self, shard: u32) -> Option<Arc<Erasures>> {
        let replicas = self.0.read().unwrap_or_else(|e| e.into_inner());
        replicas.get(&shard).map(|r| r.erasures.clone())
    }

    /// The index of this node's replica of `shard`, once it has caught up.
    pub fn store(&self, shard: u32) -> Option<store::Store> {
        let replicas = self.0.read().unwrap_or_else(|e| e.into_inner());
        replicas
            .get(&shard)
            .filter(|r| r.ready())
            .map(|r| r.store.clone())
    }

    /// Whether this node holds a replica of `shard`, in whatever state.
    fn holds(&self, shard: u32) -> bool {
        let replicas = self.0.read().unwrap_or_else(|e| e.into_inner());
        replicas.contains_key(&shard)
    }

    /// The last stream message this node's replica of `shard` lacks, when it has a hole and is
    /// due to ask its peers for a copy again.
    fn hole_due(&self, shard: u32) -> Option<u64> {
        let replicas = self.0.read().unwrap_or_else(|e| e.into_inner());
        let replica = replicas
            .get(&shard)
            .filter(|r| Instant::now() >= r.recopy_at)?;
        match *replica.state.borrow() {
            ReplicaState::Missing { last, .. } => Some(last),
            _ => None,
        }
    }

    fn insert(&self, shard: u32, replica: Replica) {
        let mut replicas = self.0.write().unwrap_or_else(|e| e.into_inner());
        replicas.insert(shard, replica);
    }

    fn remove(&self, shard: u32) -> Option<Replica> {
        let mut replicas = self.0.write().unwrap_or_else(|e| e.into_inner());
        replicas.remove(&shard)
    }

    /// The REST API of this node's replica of `shard`, once it has caught up, and the position
    /// in the shard's stream its reads see.
    fn reads(&self, shard: u32) -> Option<(Router, Arc<AtomicU64>)> {
        let replicas = self.0.read().unwrap_or_else(|e| e.into_inner());
        let replica = replicas.get(&shard).filter(|r| r.ready())?;
        Some((replica.router.clone(), replica.seen.clone()))
    }
}

/// Longest a tail resumed after an event its replica's reads do not show yet waits for them
/// (another replica showed it: this one commits a moment later); past it the id is refused as
/// unknown.
pub const TAIL_RESUME_WAIT: Duration = Duration::from_secs(10);

/// The routes gateways read through: `/shards/<n>/<REST path>`.
pub fn router(replicas: Replicas) -> Router {
    Router::new()
        .route("/shards/{*rest}", axum::routing::any(dispatch))
        .with_state(replicas)
}

/// `/readyz` of a node that is only an indexer: ready once it has read the cluster's view from
/// etcd and every replica it holds has caught up with its stream.
pub fn readiness(replicas: Replicas, view: watch::Receiver<View>) -> Router {
    let ready = move || {
        let (replicas, view) = (replicas.clone(), view.clone());
        async move {
            if view.borrow().revision == 0 {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no view of the cluster yet (is etcd reachable?)",
                )
                    .into_response();
            }
            let held = replicas.0.read().unwrap_or_else(|e| e.into_inner());
            let (mut behind, mut missing) = (Vec::new(), Vec::new());
            for (shard, replica) in held.iter() {
                match *replica.state.borrow() {
                    ReplicaState::Ready => {}
                    ReplicaState::CatchingUp => behind.push(shard.to_string()),
                    ReplicaState::Missing { first, last } => missing.push(format!(
                        "shard {shard} lacks messages {first} to {last} of its stream, gone before it indexed them; waiting for a complete peer to copy"
                    )),
                }
            }
            if behind.is_empty() && missing.is_empty() {
                return "ready".into_response();
            }
            if !behind.is_empty() {
                missing.insert(0, format!("catching up on shards {}", behind.join(", ")));
            }
            let message = format!("not ready: {}", missing.join("; "));
            (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
        }
    };
    Router::new().route("/readyz", axum::routing::get(ready))
}

/// Hands a request for `/shards/<n>/<path>` to shard `n`'s REST API as `/<path>`.
async fn dispatch(State(replicas): State<Replicas>, mut request: Request) -> Response {
    let uri = request.uri();
    let Some(rest) = uri.path().strip_prefix("/shards/") else {
        return ApiError::NotFound.into_response();
    };
    let (shard, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(shard) = shard.parse::<u32>() else {
        return ApiError::NotFound.into_response();
    };
    let Some((router, seen)) = replicas.reads(shard) else {
        return (
            NOT_HERE,
            "this indexer holds no caught-up replica of that shard",
        )
            .into_response();
    };
    let rewritten = match uri.query() {
        Some(query) => format!("/{path}?{query}"),
        None => format!("/{path}"),
    };
    match rewritten.parse::<Uri>() {
        Ok(rewritten) => *request.uri_mut() = rewritten,
        Err(_) => return ApiError::NotFound.into_response(),
    }
    // read before the answer: the page shows at least this much of the stream
    let through = seen.load(Ordering::Relaxed);
    let mut response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if let Ok(value) = HeaderValue::from_str(&format!("{shard}:{through}")) {
        response.headers_mut().insert(INDEXED_HEADER, value);
    }
    response
}

/// The header of a replica's answer that says how fresh it is: the shard and the sequence of
/// its stream the replica's reads see through (`3:1200`); a gathered page lists each shard's.
pub const INDEXED_HEADER: &str = "logbridge-indexed-through";

/// Opens and closes replicas as the shard map changes: a shard assigned to this node is opened
/// and consumed; one no longer assigned is closed (and its folder removed) once every owner
/// it now has is ready, so that reads never lose their last caught-up replica.
pub async fn run(
    context: IndexerContext,
    replicas: Replicas,
    membership: Arc<Membership>,
    shards: u32,
    mut shard_check: watch::Receiver<ShardCheck>,
    stop: CancellationToken,
) {
    // nothing is consumed before etcd confirmed the shard count this node reads by
    let confirmed = tokio::select! {
        () = stop.cancelled() => false,
        checked = shard_check.wait_for(|check| *check != ShardCheck::Pending) => {
            checked.is_ok_and(|check| *check == ShardCheck::Confirmed)
        }
    };
    if !confirmed {
        return;
    }
    tokio::task::block_in_place(|| remove_leftovers(&context.dir));
    let mut view = membership.view();
    let mut copies = Copies::new(context.api.metrics.cluster_replica_copies_in_flight.clone());
    loop {
        let current: View = view.borrow_and_update().clone();
        if current.revision > 0 {
            // opening an index reads its files (and may upgrade it): off the async workers
            tokio::task::block_in_place(|| {
                let mut reconcile = Reconcile {
                    context: &context,
                    replicas: &replicas,
                    copies: &mut copies,
                    membership: &membership,
                    view: &current,
                };
                for shard in 0..shards {
                    reconcile.shard(shard);
                }
            });
        }
        // replicas becoming ready are reported as they do
        let readiness: Vec<(u32, bool)> = {
            let held = replicas.0.read().unwrap_or_else(|e| e.into_inner());
            held.iter().map(|(s, r)| (*s, r.ready())).collect()
        };
        for (shard, ready) in readiness {
            let status = ReplicaStatus {
                api: context.advertise.clone(),
                ready,
            };
            membership.set_replica(shard, Some(status));
        }
        tokio::select! {
            () = stop.cancelled() => break,
            changed = view.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    copies.cancel_all().await;
    let held = std::mem::take(&mut *replicas.0.write().unwrap_or_else(|e| e.into_inner()));
    let closing: Vec<_> = held.into_values().collect();
    for replica in &closing {
        replica.stop.cancel();
    }
    let _ = tokio::task::spawn_blocking(move || {
        for replica in closing {
            let _ = replica.thread.join();
        }
    })
    .await;
}

/// Removes what a crash left beside the replicas' folders: copies being made or received, and
/// replicas being removed.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().parse::<u32>().is_err() {
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover");
            }
        }
    }
}

/// The folder of this node's replica of `shard`.
pub fn shard_dir(dir: &Path, shard: u32) -> PathBuf {
    dir.join(shard.to_string())
}

/// Opens shard `shard`'s index and starts its consuming thread: the index in its folder
/// (`copied` there from a peer), or a new one.
fn open(context: &IndexerContext, shard: u32, copied: bool) -> anyhow::Result<Replica> {
    let dir = shard_dir(&context.dir, shard);
    if !dir.join("meta.json").exists() && dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let (store, writer) = match store::open(&dir, &context.store_options) {
        Ok(opened) => opened,
        Err(e) => {
            if copied {
                // a copy that does not open is dropped: the next attempt copies or replays
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(e.into());
        }
    };
    let (state_tx, state) = watch::channel(ReplicaState::CatchingUp);
    let missing = context
        .api
        .metrics
        .cluster_replica_missing
        .get_or_create(&ShardLabels { shard })
        .clone();
    missing.set(0);
    let through = resume_from(writer.committed_seq()) - 1;
    let erasures = Arc::new(Erasures::resuming_after(through));
    let lag = ReplicaLag::new(
        context.jetstream.client(),
        &context.cluster_name,
        &context.node_id,
        shard,
        through,
        &context.api.metrics,
    );
    let seen = lag.seen();
    let stop = CancellationToken::new();
    let consumer = Consumer {
        handle: Handle::current(),
        jetstream: context.jetstream.clone(),
        stream: stream_name(&context.cluster_name, shard),
        shard,
        writer,
        commit_interval: context.commit_interval,
        state: state_tx,
        missing,
        erasures: erasures.clone(),
        erased: context.api.metrics.records_erased.clone(),
        lag,
        stop: stop.clone(),
        retention: context.retention.clone(),
        sweep_interval: context.sweep_interval,
        sweep_at: Instant::now(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("shard-{shard}"))
        .spawn(move || consumer.run())?;
    let router = api::router(context.api.with_store(store.clone()));
    Ok(Replica {
        router,
        store,
        state,
        seen,
        erasures,
        stop,
        thread,
        recopy_at: Instant::now(),
        recopy_backoff: RECOPY_INTERVAL,
    })
}
