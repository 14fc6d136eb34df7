//! Who is in the cluster, from etcd: each node keeps its own keys alive under a lease and reads
//! everyone's every [`POLL_INTERVAL`]. What it last read is the [`View`] it works from; while
//! etcd cannot be reached, that last view stays in force and nothing moves.

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::etcd::Etcd;
use super::shard::{Spread, owners};
use crate::metrics::Metrics;

/// How often a node renews its lease and reads the cluster's keys.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A node's keys outlive it by at most this (after `kill -9`, say).
const LEASE_TTL: Duration = Duration::from_secs(5);

/// What a node says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub gateway: bool,
    pub indexer: bool,
    /// Where its REST API answers, `http://host:port`.
    pub api: String,
}

/// What an indexer says of its replica of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub api: String,
    /// Caught up with the shard's stream: it may serve reads.
    pub ready: bool,
}

/// The cluster as last read from etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The etcd revision it was read at; 0 before the first read.
    pub revision: i64,
    pub nodes: BTreeMap<String, NodeInfo>,
    /// By shard, then node id.
    pub replicas: BTreeMap<u32, BTreeMap<String, ReplicaStatus>>,
    /// The users spread over several shards, their cut-overs in order.
    pub spreads: BTreeMap<String, Vec<Spread>>,
    /// The node that keeps the alert rules, while one does.
    pub alerts_keeper: Option<String>,
}

impl View {
    /// The cut-overs of `user_id`'s logs to several shards; none for most users.
    pub fn spreads_of(&self, user_id: &str) -> &[Spread] {
        self.spreads.get(user_id).map_or(&[], Vec::as_slice)
    }

    /// The live indexers' ids.
    pub fn indexers(&self) -> Vec<&str> {
        let indexers = self.nodes.iter().filter(|(_, n)| n.indexer);
        indexers.map(|(id, _)| id.as_str()).collect()
    }

    /// How many gateways are live.
    pub fn gateways(&self) -> usize {
        self.nodes.values().filter(|n| n.gateway).count()
    }

    /// The gateway that keeps the cluster's alert rules and evaluates them, if one does.
    pub fn alerts_keeper(&self) -> Option<(&str, &NodeInfo)> {
        let id = self.alerts_keeper.as_deref()?;
        let (id, node) = self.nodes.get_key_value(id)?;
        Some((id.as_str(), node))
    }

    /// The indexers that own `shard` in this view.
    pub fn owners(&self, shard: u32, replicas: usize) -> Vec<&str> {
        owners(shard, &self.indexers(), replicas)
    }

    /// The ready replicas of `shard` to read `user_id`'s logs from (node and API), in the order
    /// to try them: owners first, and among them an order of the user's own, so that one user's
    /// reads go to one replica (its pages agree with each other) and users spread over both.
    pub fn read_targets(
        &self,
        shard: u32,
        replicas: usize,
        user_id: &str,
    ) -> Vec<(String, String)> {
        let Some(serving) = self.replicas.get(&shard) else {
            return Vec::new();
        };
        let owners = self.owners(shard, replicas);
        let ready: Vec<&str> = serving
            .iter()
            .filter(|(_, r)| r.ready)
            .map(|(node, _)| node.as_str())
            .collect();
        let mut ordered = owners_first(&ready, &owners, user_id);
        ordered.dedup();
        ordered
            .into_iter()
            .map(|node| (node.to_owned(), serving[node].api.clone()))
            .collect()
    }

    /// Whether every owner of `shard` has a ready replica of it.
    pub fn owners_ready(&self, shard: u32, replicas: usize) -> bool {
        let serving = self.replicas.get(&shard);
        self.owners(shard, replicas)
            .iter()
            .all(|owner| serving.and_then(|s| s.get(*owner)).is_some_and(|r| r.ready))
    }
}

/// `ready` ordered owners first, each group by the rendezvous order of `user_id`.
fn owners_first<'a>(ready: &[&'a str], owners: &[&str], user_id: &str) -> Vec<&'a str> {
    let (mut first, mut rest): (Vec<&str>, Vec<&str>) =
        ready.iter().partition(|node| owners.contains(node));
    let by_user = |group: &mut Vec<&'a str>| {
        let order = owners_of_user(user_id, group);
        *group = order;
    };
    by_user(&mut first);
    by_user(&mut rest);
    first.extend(rest);
    first
}

/// `nodes` in the rendezvous order of `user_id`.
fn owners_of_user<'a>(user_id: &str, nodes: &[&'a str]) -> Vec<&'a str> {
    let key = super::shard::shard_of(user_id, u32::MAX);
    owners(key, nodes, nodes.len())
}

/// This node's place in the cluster: its own keys kept alive, and the view of everyone.
pub struct Membership {
    view: watch::Receiver<View>,
    replicas: watch::Sender<BTreeMap<u32, ReplicaStatus>>,
    task: JoinHandle<()>,
}

/// The keys of one cluster in etcd.
#[derive(Clone)]
pub struct Keys {
    prefix: String,
    /// The alert rules', apart: every node reads the whole of `prefix` twice a second.
    alerts: String,
}

impl Keys {
    pub fn new(cluster_name: &str) -> Self {
        Self {
            prefix: format!("/logbridge/{cluster_name}/"),
            alerts: format!("/logbridge-alerts/{cluster_name}/"),
        }
    }

    /// Where the alert rules are, one key per rule.
    pub fn alerts(&self) -> &str {
        &self.alerts
    }

    /// The node that keeps the alert rules, under its lease: in the cluster's view.
    pub fn alerts_keeper(&self) -> String {
        format!("{}alerts_keeper", self.prefix)
    }

    fn node(&self, id: &str) -> String {
        format!("{}nodes/{id}", self.prefix)
    }

    fn replica(&self, shard: u32, id: &str) -> String {
        format!("{}replicas/{shard}/{id}", self.prefix)
    }

    pub fn cursor_key(&self) -> String {
        format!("{}cursor_key", self.prefix)
    }

    fn shards(&self) -> String {
        format!("{}shards", self.prefix)
    }

    pub fn spreads(&self, user_id: &str) -> String {
        format!("{}spreads/{user_id}", self.prefix)
    }
}

impl Membership {
    /// Starts keeping this node's keys alive and reading the cluster's; etcd being unreachable
    /// now or later is logged and retried, never fatal.
    pub fn join(
        etcd: Etcd,
        keys: Keys,
        node_id: String,
        me: NodeInfo,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Self {
        let (view_tx, view) = watch::channel(View::default());
        let (replicas, replicas_rx) = watch::channel(BTreeMap::new());
        let task = tokio::spawn(
            Registration {
                etcd,
                keys,
                node_id,
                me,
                lease: None,
                published: BTreeMap::new(),
                reachable: true,
                metrics,
            }
            .run(view_tx, replicas_rx, stop),
        );
        Self {
            view,
            replicas,
            task,
        }
    }

    /// The view, updated whenever a read of etcd finds it changed.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Says (or, with `None`, stops saying) what this node's replica of `shard` is.
    pub fn set_replica(&self, shard: u32, status: Option<ReplicaStatus>) {
        self.replicas.send_if_modified(|replicas| match status {
            Some(status) => replicas.insert(shard, status.clone()) != Some(status),
            None => replicas.remove(&shard).is_some(),
        });
    }

    /// Waits for the task, which ends once `stop` is cancelled, having removed this node's keys.
    pub async fn leave(self) {
        let _ = self.task.await;
    }
}

struct Registration {
    metrics: Arc<Metrics>,
    etcd: Etcd,
    keys: Keys,
    node_id: String,
    me: NodeInfo,
    lease: Option<i64>,
    /// The replica statuses etcd holds under the current lease.
    published: BTreeMap<u32, ReplicaStatus>,
    /// Whether the last round reached etcd (to log an outage once, and its end).
    reachable: bool,
}

impl Registration {
    async fn run(
        mut self,
        view: watch::Sender<View>,
        mut replicas: watch::Receiver<BTreeMap<u32, ReplicaStatus>>,
        stop: CancellationToken,
    ) {
        loop {
            let wanted = replicas.borrow_and_update().clone();
            match self.round(&wanted).await {
                Ok(read) => {
                    if !self.reachable {
                        tracing::info!("etcd reachable again");
                        self.reachable = true;
                    }
                    self.metrics.cluster_etcd_reachable.set(1);
                    self.metrics
                        .cluster_spread_users
                        .set(read.spreads.len() as i64);
                    self.metrics.cluster_gateways.set(read.gateways() as i64);
                    view.send_if_modified(|current| {
                        let changed = current.nodes != read.nodes
                            || current.replicas != read.replicas
                            || current.spreads != read.spreads
                            || current.alerts_keeper != read.alerts_keeper;
                        if changed {
                            *current = read;
                        }
                        changed
                    });
                }
                Err(e) => {
                    self.metrics.cluster_etcd_reachable.set(0);
                    if self.reachable {
                        tracing::warn!(error = %format!("{e:#}"), "etcd unreachable; working from the last view of the cluster");
                        self.reachable = false;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = replicas.changed() => {}
            }
        }
        // gone at once rather than when the lease runs out
        if let Some(lease) = self.lease {
            let keys = self
                .published
                .keys()
                .map(|shard| self.keys.replica(*shard, &self.node_id));
            for key in keys.chain([self.keys.node(&self.node_id)]) {
                let _ = self.etcd.delete(&key).await;
            }
            tracing::debug!(lease, "left the cluster");
        }
    }

    /// Renews (or takes) the lease, writes this node's keys where they changed, and reads the
    /// cluster's.
    async fn round(&mut self, wanted: &BTreeMap<u32, ReplicaStatus>) -> anyhow::Result<View> {
        if let Some(lease) = self.lease
            && !self.etcd.keep_alive(lease).await?
        {
            tracing::warn!(lease, "this node's etcd lease expired; registering again");
            self.lease = None;
        }
        let lease = match self.lease {
            Some(lease) => lease,
            None => {
                let lease = self.etcd.grant(LEASE_TTL).await?;
                let me = serde_json::to_vec(&self.me)?;
                self.etcd
                    .put(&self.keys.node(&self.node_id), &me, lease)
                    .await?;
                self.published.clear();
                self.lease = Some(lease);
                lease
            }
        };
        for (shard, status) in wanted {
            if self.published.get(shard) != Some(status) {
                let value = serde_json::to_vec(status)?;
                let key = self.keys.replica(*shard, &self.node_id);
                self.etcd.put(&key, &value, lease).await?;
                self.published.insert(*shard, status.clone());
            }
        }
        let gone: Vec<u32> = self
            .published
            .keys()
            .filter(|shard| !wanted.contains_key(shard))
            .copied()
            .collect();
        for shard in gone {
            self.etcd
                .delete(&self.keys.replica(shard, &self.node_id))
                .await?;
            self.published.remove(&shard);
        }
        self.read().await
    }

    async fn read(&self) -> anyhow::Result<View> {
        let (revision, kvs) = self.etcd.list(&self.keys.prefix).await?;
        let mut view = View {
            revision,
            ..View::default()
        };
        for kv in kvs {
            let Some(rest) = kv.key.strip_prefix(&self.keys.prefix) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                ["nodes", id] => {
                    if let Ok(node) = serde_json::from_slice(&kv.value) {
                        view.nodes.insert((*id).to_owned(), node);
                    }
                }
                ["alerts_keeper"] => {
                    view.alerts_keeper = String::from_utf8(kv.value).ok();
                }
                ["spreads", ..] => {
                    let user = &rest["spreads/".len()..];
                    if let Ok(spreads) = serde_json::from_slice(&kv.value) {
                        view.spreads.insert(user.to_owned(), spreads);
                    }
                }
                ["replicas", shard, id] => {
                    if let (Ok(shard), Ok(status)) =
                        (shard.parse(), serde_json::from_slice(&kv.value))
                    {
                        view.replicas
                            .entry(shard)
                            .or_default()
                            .insert((*id).to_owned(), status);
                    }
                }
                _ => {}
            }
        }
        Ok(view)
    }
}

/// How long a starting node waits for etcd to check its shard count.
const SHARDS_CHECK_PATIENCE: Duration = Duration::from_secs(10);

/// Records the cluster's shard count in etcd on the first start, and refuses a node configured
/// with another: it would publish and read each user's logs on other shards. A node that cannot
/// reach etcd in time starts, but publishes and consumes nothing until etcd confirms its count
/// (asked every second); a mismatch found then leaves it refusing, saying why.
pub async fn check_shards(
    etcd: &Etcd,
    keys: &Keys,
    shards: u32,
    stop: &CancellationToken,
) -> anyhow::Result<watch::Receiver<ShardCheck>> {
    let asked =
        tokio::time::timeout(SHARDS_CHECK_PATIENCE, compare_shards(etcd, keys, shards)).await;
    match asked {
        Ok(Ok(check)) => {
            if let ShardCheck::Mismatch(message) = &check {
                anyhow::bail!("{message}");
            }
            Ok(watch::channel(check).1)
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(
                "etcd does not answer: starting, but publishing and consuming nothing until it confirms the shard count"
            );
            let (checked, check) = watch::channel(ShardCheck::Pending);
            let (etcd, keys, stop) = (etcd.clone(), keys.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    if let Ok(check) = compare_shards(&etcd, &keys, shards).await {
                        match &check {
                            ShardCheck::Mismatch(message) => tracing::error!(
                                "{message}; this node publishes and consumes nothing"
                            ),
                            _ => tracing::info!("etcd confirmed the shard count"),
                        }
                        checked.send_replace(check);
                        return;
                    }
                }
            });
            Ok(check)
        }
    }
}

/// Where this node stands with the cluster's shard count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardCheck {
    /// etcd has not answered yet.
    Pending,
    /// etcd holds this node's count (or took it, as the first node's).
    Confirmed,
    /// etcd holds another count: the message says which.
    Mismatch(String),
}

impl ShardCheck {
    /// Why this node may not publish or consume yet, if it may not.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Self::Confirmed => None,
            Self::Pending => Some(
                "the cluster's shard count is not confirmed yet: etcd has not answered this node"
                    .to_owned(),
            ),
            Self::Mismatch(message) => Some(message.clone()),
        }
    }
}

/// etcd's shard count against `shards` (stored first if the cluster has none yet).
async fn compare_shards(etcd: &Etcd, keys: &Keys, shards: u32) -> anyhow::Result<ShardCheck> {
    let value = etcd
        .put_if_absent(&keys.shards(), shards.to_string().as_bytes())
        .await?;
    let value = String::from_utf8_lossy(&value).into_owned();
    Ok(if value == shards.to_string() {
        ShardCheck::Confirmed
    } else {
        ShardCheck::Mismatch(format!(
            "this cluster has {value} shards, but [cluster] shards = {shards}: the shard count is fixed for the life of a cluster"
        ))
    })
}

/// The secret every node signs and checks cursors with: created once in etcd, kept beside the
/// index so that a restart while etcd is down still has it.
pub async fn shared_cursor_key(
    etcd: &Etcd,
    keys: &Keys,
    cache: Option<&std::path::Path>,
    stop: &CancellationToken,
) -> anyhow::Result<crate::api::CursorKey> {
    let cached = cache.and_then(|cache| std::fs::read_to_string(cache).ok());
    let mut warned = false;
    loop {
        match etcd
            .put_if_absent(
                &keys.cursor_key(),
                crate::api::CursorKey::random_hex().as_bytes(),
            )
            .await
        {
            Ok(value) => {
                let text = String::from_utf8(value)?;
                let key = crate::api::CursorKey::from_hex(&text).ok_or_else(|| {
                    anyhow::anyhow!("the cluster's cursor key in etcd is not 64 hex characters")
                })?;
                if let Some(cache) = cache
                    && cached.as_deref() != Some(text.as_str())
                {
                    write_secret(cache, &text)?;
                }
                return Ok(key);
            }
            Err(e) => {
                if let Some(key) = cached.as_deref().and_then(crate::api::CursorKey::from_hex) {
                    tracing::warn!(error = %format!("{e:#}"), "etcd unreachable; using the cursor key kept from before");
                    return Ok(key);
                }
                if !warned {
                    tracing::warn!(error = %format!("{e:#}"), "waiting for etcd to read the cluster's cursor key");
                    warned = true;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => anyhow::bail!("stopped while waiting for etcd"),
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// Writes a secret readable by its owner only.
fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.create_new(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
