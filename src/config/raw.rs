//! The config file's sections as written, with the defaults of every setting: what serde
//! reads and what `LOGBRIDGE_*` overrides are typed by.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::mapping::FieldSources;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) otlp: RawOtlp,
    pub(super) api: RawApi,
    pub(super) server: RawServer,
    pub(super) index: RawIndex,
    pub(super) auth: RawAuth,
    pub(super) mapping: FieldSources,
    pub(super) log: RawLog,
    pub(super) retention: RawRetention,
    pub(super) limits: RawLimits,
    pub(super) tls: RawTls,
    pub(super) cluster: RawCluster,
    pub(super) alerts: RawAlerts,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAlerts {
    pub(super) evaluation_interval_ms: u64,
    pub(super) evaluation_budget_ms: u64,
    pub(super) rule_timeout_ms: u64,
    pub(super) max_rules_per_user: u64,
    pub(super) alertmanager_url: String,
    pub(super) resend_interval_ms: u64,
    pub(super) webhook_url: String,
    pub(super) webhook_secret_file: String,
}

impl Default for RawAlerts {
    fn default() -> Self {
        Self {
            evaluation_interval_ms: 30_000,
            evaluation_budget_ms: 20_000,
            rule_timeout_ms: 5_000,
            max_rules_per_user: 100,
            alertmanager_url: String::new(),
            resend_interval_ms: 60_000,
            webhook_url: String::new(),
            webhook_secret_file: String::new(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCluster {
    pub(super) role: String,
    pub(super) node_id: String,
    pub(super) name: String,
    pub(super) nats_urls: Vec<String>,
    pub(super) nats_ca_file: String,
    pub(super) nats_cert_file: String,
    pub(super) nats_key_file: String,
    pub(super) etcd_endpoints: Vec<String>,
    pub(super) etcd_ca_file: String,
    pub(super) etcd_cert_file: String,
    pub(super) etcd_key_file: String,
    pub(super) peer_ca_file: String,
    pub(super) shards: u64,
    pub(super) stream_replicas: u64,
    pub(super) indexer_replicas: u64,
    pub(super) publish_timeout_ms: u64,
    pub(super) dedup_window_ms: u64,
    pub(super) max_lag_ms: u64,
    pub(super) advertise_url: String,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            role: String::new(),
            node_id: String::new(),
            name: "logbridge".to_owned(),
            nats_urls: vec!["nats://127.0.0.1:4222".to_owned()],
            nats_ca_file: String::new(),
            nats_cert_file: String::new(),
            nats_key_file: String::new(),
            etcd_endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            etcd_ca_file: String::new(),
            etcd_cert_file: String::new(),
            etcd_key_file: String::new(),
            peer_ca_file: String::new(),
            shards: 8,
            stream_replicas: 3,
            indexer_replicas: 2,
            publish_timeout_ms: 5_000,
            dedup_window_ms: 600_000,
            max_lag_ms: 3_000,
            advertise_url: String::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTls {
    pub(super) cert_file: String,
    pub(super) key_file: String,
    pub(super) client_ca_file: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub(super) user_records_per_second: u64,
    pub(super) user_burst: u64,
    pub(super) users: BTreeMap<String, RawRate>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRate {
    pub(super) records_per_second: u64,
    #[serde(default)]
    pub(super) burst: u64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRetention {
    pub(super) days: u64,
    pub(super) sweep_interval_ms: u64,
    pub(super) users: BTreeMap<String, u64>,
}

impl Default for RawRetention {
    fn default() -> Self {
        Self {
            days: 0,
            sweep_interval_ms: 30_000,
            users: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOtlp {
    pub(super) grpc_listen: String,
    pub(super) http_listen: String,
    pub(super) max_message_bytes: u64,
    pub(super) max_inflight_bytes: u64,
}

impl Default for RawOtlp {
    fn default() -> Self {
        Self {
            grpc_listen: "127.0.0.1:4317".to_owned(),
            http_listen: "127.0.0.1:4318".to_owned(),
            max_message_bytes: 16 * 1024 * 1024,
            max_inflight_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawApi {
    pub(super) listen: String,
    pub(super) max_concurrent_searches: u64,
    pub(super) max_concurrent_searches_per_user: u64,
    pub(super) max_tail_subscribers: u64,
    pub(super) max_tail_subscribers_per_user: u64,
    pub(super) tail_stall_timeout_ms: u64,
    pub(super) max_concurrent_exports: u64,
    pub(super) max_concurrent_exports_per_user: u64,
    pub(super) export_stall_timeout_ms: u64,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            max_concurrent_searches: 8,
            max_concurrent_searches_per_user: 4,
            max_tail_subscribers: 64,
            max_tail_subscribers_per_user: 8,
            tail_stall_timeout_ms: 10_000,
            max_concurrent_exports: 4,
            max_concurrent_exports_per_user: 2,
            export_stall_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) header_read_timeout_ms: u64,
    pub(super) body_read_timeout_ms: u64,
    pub(super) idle_timeout_ms: u64,
    pub(super) max_connections: u64,
    pub(super) max_concurrent_streams: u64,
    pub(super) http2_keepalive_interval_ms: u64,
    pub(super) http2_keepalive_timeout_ms: u64,
    pub(super) drain_timeout_ms: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 120_000,
            max_connections: 1024,
            max_concurrent_streams: 100,
            http2_keepalive_interval_ms: 30_000,
            http2_keepalive_timeout_ms: 10_000,
            drain_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawIndex {
    pub(super) path: PathBuf,
    pub(super) commit_interval_ms: u64,
    pub(super) writer_memory_mb: u64,
    pub(super) dedup_window_ms: u64,
    pub(super) dedup_max_mb: u64,
    pub(super) payload_paths: bool,
}

impl Default for RawIndex {
    fn default() -> Self {
        Self {
            path: PathBuf::from("index"),
            commit_interval_ms: 1000,
            writer_memory_mb: 128,
            dedup_window_ms: 600_000,
            dedup_max_mb: 512,
            payload_paths: true,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    pub(super) keys_file: PathBuf,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            keys_file: PathBuf::from("config/keys.toml"),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub(super) level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
        }
    }
}
