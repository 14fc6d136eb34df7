//! Self-observability: the counters, gauges and histograms served at `GET /metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A gauge of seconds, with their fractions.
pub type Seconds = Gauge<f64, AtomicU64>;

/// Labels of an OTLP export answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    /// `grpc` or `http`.
    pub transport: &'static str,
    /// The gRPC code name (`OK`, `UNAVAILABLE`, ...) or the HTTP status (`200`, `503`, ...).
    pub status: String,
}

/// Labels of a rejected record.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: &'static str,
}

/// Labels of a storage failure: where it happened.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageLabels {
    /// `wal_write`, `wal_rotate`, `index_write`, `index_commit`, `recovery` or `merge`.
    pub stage: &'static str,
}

/// Labels of a shard replica's metrics (cluster mode).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: u32,
}

/// Labels of an attempt to deliver an alert.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `alertmanager` or `webhook`.
    pub receiver: &'static str,
    /// `delivered`, `failed` (to be retried) or `dropped` (given up).
    pub outcome: &'static str,
}

/// Labels of a `/logs` request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub status: u16,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub records_received: Counter,
    pub records_accepted: Counter,
    pub records_rejected: Family<RejectLabels, Counter>,
    /// Logs of a client's retry that were stored already: acknowledged, not stored again.
    pub records_duplicate: Counter,
    /// Bytes the dedup window holds.
    pub dedup_window_bytes: Gauge,
    /// Seconds since the oldest log the dedup window remembers was stored.
    pub dedup_window_seconds: Gauge,
    pub exports: Family<ExportLabels, Counter>,
    pub queue_depth: Gauge,
    pub wal_bytes: Gauge,
    pub commits: Counter,
    pub commit_seconds: Histogram,
    /// Time each warm-up of new segments' block statistics took.
    pub warm_seconds: Histogram,
    pub index_logs: Gauge,
    pub storage_failures: Family<StorageLabels, Counter>,
    pub storage_failing: Gauge,
    pub storage_recoveries: Counter,
    pub logs_request_seconds: Family<RequestLabels, Histogram>,
    pub records_expired: Counter,
    pub retention_last_sweep: Gauge,
    pub records_erased: Counter,
    pub index_deleted_logs: Gauge,
    pub keys_loaded: Gauge,
    pub keys_file_invalid: Gauge,
    pub keys_reload_failures: Counter,
    pub tls_reload_failures: Counter,
    pub tls_handshake_failures: Counter,
    pub exports_throttled: Counter,
    /// Cluster mode: users whose logs are spread over several shards, as this node last read.
    pub cluster_spread_users: Gauge,
    /// Cluster mode: live gateways, as this node last read; they share each user's ingest limit.
    pub cluster_gateways: Gauge,
    /// Cluster mode: 1 while etcd answers this node.
    pub cluster_etcd_reachable: Gauge,
    /// Cluster mode: replicas this node started from a copy of a peer's index.
    pub cluster_replica_copies: Counter,
    /// Cluster mode: copies of peers' replicas this node is fetching.
    pub cluster_replica_copies_in_flight: Gauge,
    /// Messages of its stream a replica of this node lacks: gone from the stream before it
    /// indexed them. 0 for a complete replica.
    pub cluster_replica_missing: Family<ShardLabels, Gauge>,
    /// Messages of its stream a replica's reads do not show yet.
    pub cluster_replica_lag_messages: Family<ShardLabels, Gauge>,
    /// How long ago the oldest message a replica's reads do not show was published.
    pub cluster_replica_lag: Family<ShardLabels, Seconds>,
    /// A gateway's view: how long its oldest acknowledged publish to a shard has not been
    /// visible on any ready replica.
    pub cluster_shard_lag: Family<ShardLabels, Seconds>,
    /// Exports a gateway refused because no replica of a shard was within the lag bound.
    pub cluster_lag_refusals: Counter,
    pub alert_rules: Gauge,
    pub alerts_firing: Gauge,
    /// Cluster mode: 1 on the gateway that keeps the alert rules, 0 on the others.
    pub alert_keeper: Gauge,
    pub alert_evaluations: Counter,
    pub alert_evaluation_failures: Counter,
    /// Evaluations a round's budget left for the next round.
    pub alert_evaluations_deferred: Counter,
    /// Time spent evaluating rules, in seconds.
    pub alert_evaluation_seconds: Counter<f64, AtomicU64>,
    pub alert_round_seconds: Histogram,
    pub alert_deliveries: Family<DeliveryLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms to ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Metrics {
    /// A fresh set of metrics, all zero.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("logbridge"),
            records_received: Counter::default(),
            records_accepted: Counter::default(),
            records_rejected: Family::default(),
            records_duplicate: Counter::default(),
            dedup_window_bytes: Gauge::default(),
            dedup_window_seconds: Gauge::default(),
            exports: Family::default(),
            queue_depth: Gauge::default(),
            wal_bytes: Gauge::default(),
            commits: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            warm_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            index_logs: Gauge::default(),
            storage_failures: Family::default(),
            storage_failing: Gauge::default(),
            storage_recoveries: Counter::default(),
            logs_request_seconds: Family::new_with_constructor(latency_histogram),
            records_expired: Counter::default(),
            retention_last_sweep: Gauge::default(),
            records_erased: Counter::default(),
            index_deleted_logs: Gauge::default(),
            keys_loaded: Gauge::default(),
            keys_file_invalid: Gauge::default(),
            keys_reload_failures: Counter::default(),
            tls_reload_failures: Counter::default(),
            tls_handshake_failures: Counter::default(),
            exports_throttled: Counter::default(),
            cluster_spread_users: Gauge::default(),
            cluster_gateways: Gauge::default(),
            cluster_etcd_reachable: Gauge::default(),
            cluster_replica_copies: Counter::default(),
            cluster_replica_copies_in_flight: Gauge::default(),
            cluster_replica_missing: Family::default(),
            cluster_replica_lag_messages: Family::default(),
            cluster_replica_lag: Family::default(),
            cluster_shard_lag: Family::default(),
            cluster_lag_refusals: Counter::default(),
            alert_rules: Gauge::default(),
            alerts_firing: Gauge::default(),
            alert_keeper: Gauge::default(),
            alert_evaluations: Counter::default(),
            alert_evaluation_failures: Counter::default(),
            alert_evaluations_deferred: Counter::default(),
            alert_evaluation_seconds: Counter::default(),
            // 1 ms to ~65 s
            alert_round_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            alert_deliveries: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "records_received",
            "Log records received in OTLP exports",
            m.records_received.clone(),
        );
        r.register(
            "records_accepted",
            "Log records acknowledged: durable and indexed, or stored already (records_duplicate)",
            m.records_accepted.clone(),
        );
        r.register(
            "records_rejected",
            "Log records rejected by the mapping, by reason",
            m.records_rejected.clone(),
        );
        r.register(
            "otlp_exports",
            "OTLP export requests answered, by transport and status",
            m.exports.clone(),
        );
        r.register(
            "ingest_queue_depth",
            "Export batches waiting for the index writer",
            m.queue_depth.clone(),
        );
        r.register(
            "wal_bytes",
            "Bytes in the write-ahead log",
            m.wal_bytes.clone(),
        );
        r.register("index_commits", "Index commits", m.commits.clone());
        r.register(
            "index_commit_duration_seconds",
            "Time an index commit takes",
            m.commit_seconds.clone(),
        );
        r.register(
            "index_warm_duration_seconds",
            "Time a warm-up takes: the block statistics of the large users' unfiltered queries, \
             computed for the segments a commit, merge or restart brings before a query asks",
            m.warm_seconds.clone(),
        );
        r.register(
            "index_logs",
            "Logs in the index, visible to /logs",
            m.index_logs.clone(),
        );
        r.register(
            "storage_failures",
            "Storage operations that failed (full disk, I/O error), by stage",
            m.storage_failures.clone(),
        );
        r.register(
            "storage_failing",
            "1 while storage fails and exports are refused, else 0",
            m.storage_failing.clone(),
        );
        r.register(
            "storage_recoveries",
            "Times ingest resumed after storage failed",
            m.storage_recoveries.clone(),
        );
        r.register(
            "logs_request_duration_seconds",
            "/logs latency (GET and DELETE), by HTTP status",
            m.logs_request_seconds.clone(),
        );
        r.register(
            "records_expired",
            "Logs deleted by retention sweeps",
            m.records_expired.clone(),
        );
        r.register(
            "retention_last_sweep_timestamp_seconds",
            "When the last retention sweep finished, in seconds since the epoch (0: none yet)",
            m.retention_last_sweep.clone(),
        );
        r.register(
            "records_erased",
            "Logs erased through DELETE /logs",
            m.records_erased.clone(),
        );
        r.register(
            "records_duplicate",
            "Logs a client sent again within the dedup window: acknowledged, not stored again",
            m.records_duplicate.clone(),
        );
        r.register(
            "dedup_window_bytes",
            "Bytes the dedup window holds to recognize logs a client sends again",
            m.dedup_window_bytes.clone(),
        );
        r.register(
            "dedup_window_seconds",
            "How far back the dedup window reaches: seconds since the oldest log it remembers was stored",
            m.dedup_window_seconds.clone(),
        );
        r.register(
            "index_deleted_logs",
            "Deleted logs whose bytes stay on disk until their segment is merged",
            m.index_deleted_logs.clone(),
        );
        r.register(
            "keys_loaded",
            "API keys in the set in use",
            m.keys_loaded.clone(),
        );
        r.register(
            "keys_file_invalid",
            "1 while the keys file on disk cannot be used and the last good set is kept, else 0",
            m.keys_file_invalid.clone(),
        );
        r.register(
            "keys_reload_failures",
            "Reloads of the keys file that failed",
            m.keys_reload_failures.clone(),
        );
        r.register(
            "tls_reload_failures",
            "Reloads of the TLS certificate or key that failed",
            m.tls_reload_failures.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS connections that failed their handshake (no or a bad client certificate, plaintext)",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "exports_throttled",
            "OTLP exports refused because a user was over its ingest limit",
            m.exports_throttled.clone(),
        );
        r.register(
            "cluster_spread_users",
            "Cluster mode: users whose logs are spread over several shards, in this node's view",
            m.cluster_spread_users.clone(),
        );
        r.register(
            "cluster_gateways",
            "Cluster mode: live gateways in this node's view; each enforces its share of every user's ingest limit",
            m.cluster_gateways.clone(),
        );
        r.register(
            "cluster_etcd_reachable",
            "Cluster mode: 1 while etcd answers this node, 0 while it works from its last view",
            m.cluster_etcd_reachable.clone(),
        );
        r.register(
            "cluster_replica_copies",
            "Cluster mode: replicas this node started from a copy of a peer's committed index",
            m.cluster_replica_copies.clone(),
        );
        r.register(
            "cluster_replica_copies_in_flight",
            "Cluster mode: copies of peers' replicas this node is fetching, beside the replicas it serves",
            m.cluster_replica_copies_in_flight.clone(),
        );
        r.register(
            "cluster_replica_missing_messages",
            "Cluster mode: messages of its stream a replica lacks (gone from the stream before it indexed them); such a replica is never read",
            m.cluster_replica_missing.clone(),
        );
        r.register(
            "cluster_replica_lag_messages",
            "Cluster mode: messages of its stream a replica's reads do not show yet",
            m.cluster_replica_lag_messages.clone(),
        );
        r.register(
            "cluster_replica_lag_seconds",
            "Cluster mode: how long ago the oldest message a replica's reads do not show yet was published",
            m.cluster_replica_lag.clone(),
        );
        r.register(
            "cluster_shard_lag_seconds",
            "Cluster mode, gateways: how long the oldest export this gateway acknowledged for a shard has not been visible on a ready replica",
            m.cluster_shard_lag.clone(),
        );
        r.register(
            "cluster_lag_refusals",
            "Cluster mode, gateways: exports refused (retryably) because no ready replica of a shard was within cluster.max_lag_ms",
            m.cluster_lag_refusals.clone(),
        );
        r.register(
            "alert_rules",
            "Alert rules of every user",
            m.alert_rules.clone(),
        );
        r.register(
            "alerts_firing",
            "Alert rules whose alert is firing",
            m.alerts_firing.clone(),
        );
        r.register(
            "alert_keeper",
            "Cluster mode, gateways: 1 on the gateway that keeps the alert rules and evaluates them",
            m.alert_keeper.clone(),
        );
        r.register(
            "alert_evaluations",
            "Evaluations of alert rules",
            m.alert_evaluations.clone(),
        );
        r.register(
            "alert_evaluation_failures",
            "Evaluations of alert rules that failed (the rule's state says why)",
            m.alert_evaluation_failures.clone(),
        );
        r.register(
            "alert_evaluations_deferred",
            "Evaluations a round's budget (alerts.evaluation_budget_ms) left for the next round",
            m.alert_evaluations_deferred.clone(),
        );
        r.register(
            "alert_evaluation_seconds",
            "Time spent evaluating alert rules",
            m.alert_evaluation_seconds.clone(),
        );
        r.register(
            "alert_round_duration_seconds",
            "Time a round of evaluations of every alert rule takes",
            m.alert_round_seconds.clone(),
        );
        r.register(
            "alert_deliveries",
            "Attempts to deliver alerts, by receiver and outcome (delivered, failed and retried, dropped after the last attempt)",
            m.alert_deliveries.clone(),
        );
        m
    }

    /// The metrics in the OpenMetrics text format, which Prometheus scrapes.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
