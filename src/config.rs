//! Configuration: `config/logbridge.toml`, its defaults and `LOGBRIDGE_<SECTION>_<KEY>` overrides.
//!
//! The file is read into a raw serde structure (unknown keys are errors), environment overrides are
//! applied to it, and the result is validated into the typed [`Config`] the server runs on.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::ApiConfig;
use crate::cluster::{ClusterConfig, MAX_SHARDS};
use crate::lifecycle::{LimitsConfig, MAX_DAYS, Rate, Retention};
use crate::mapping::{FieldSources, MappingConfig};

/// The config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/logbridge.toml";

const ENV_PREFIX: &str = "LOGBRIDGE_";

/// Longest timeout or interval: a day, in milliseconds.
const MAX_MILLIS: u64 = 24 * 60 * 60 * 1000;
/// Largest count of connections, streams or searches.
const MAX_COUNT: u64 = 1_000_000;
/// Largest per-user rate or burst, in records.
const MAX_RATE: u64 = 1_000_000_000;
/// Largest export: 1 GiB.
const MAX_MESSAGE_BYTES: u64 = 1 << 30;

/// Variables with the config's prefix that are not settings: `logbridge emit` reads its key
/// from `LOGBRIDGE_KEY`, so that a shell can hold it for both commands.
const CLIENT_VARIABLES: [&str; 1] = ["LOGBRIDGE_KEY"];

/// What the in-flight budget must hold at least, per byte of the largest export: twice what an
/// export of real records holds at its peak (see `otlp::ADMISSION_PER_BYTE`).
const MIN_INFLIGHT_PER_MESSAGE_BYTE: u64 = 2 * crate::otlp::ADMISSION_PER_BYTE as u64;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid environment override {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

/// The validated configuration of a logbridge process.
#[derive(Debug, Clone)]
pub struct Config {
    pub otlp: OtlpConfig,
    pub api: ApiConfig,
    pub server: ServerConfig,
    pub index: IndexConfig,
    pub auth: AuthConfig,
    pub mapping: MappingConfig,
    pub log: LogConfig,
    pub retention: RetentionConfig,
    pub limits: LimitsConfig,
    /// TLS on every listener, when set.
    pub tls: Option<TlsFiles>,
    /// Cluster mode, when `[cluster] role` is set; a single node otherwise.
    pub cluster: Option<ClusterConfig>,
}

/// The files of the `[tls]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, the OTLP listeners require client certificates signed by these CAs (PEM).
    pub client_ca_file: Option<PathBuf>,
}

impl TlsFiles {
    /// The files, in the order [`Certificates::build`] reads their contents.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert_file.clone(), self.key_file.clone()];
        paths.extend(self.client_ca_file.clone());
        paths
    }
}

/// How long logs are kept.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Days kept, for everyone and per user.
    pub policy: Retention,
    /// How often expired logs are deleted.
    pub sweep_interval: Duration,
}

/// The OTLP receivers.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// Address of the OTLP/gRPC listener.
    pub grpc_listen: String,
    /// Address of the OTLP/HTTP listener.
    pub http_listen: String,
    /// Largest export accepted, in bytes, after decompression.
    pub max_message_bytes: usize,
    /// Memory that exports in flight may hold (bodies, decoded records, queued logs); past it,
    /// exports are refused as overload.
    pub max_inflight_bytes: usize,
}

/// Timeouts and limits of every listener, and the shutdown drain.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A request head (HTTP/1.1) or a connection's first request (HTTP/2) must arrive within
    /// this; an HTTP/1.1 connection waiting for its next request is closed after it too.
    pub header_read_timeout: Duration,
    /// A request body must arrive within this.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight (a response whose body is still sent is) for this
    /// long is closed; so is one whose client takes nothing of a response for this long.
    pub idle_timeout: Duration,
    /// Open connections per listener; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per gRPC connection.
    pub max_concurrent_streams: u32,
    /// How often an HTTP/2 connection is pinged.
    pub http2_keepalive_interval: Duration,
    /// A ping not answered within this closes the connection.
    pub http2_keepalive_timeout: Duration,
    /// On shutdown, how long in-flight requests may take before their connections are dropped.
    pub drain_timeout: Duration,
}

/// The embedded index and the writer in front of it.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Folder of the tantivy index, created on first start.
    pub path: PathBuf,
    /// Longest time an accepted record waits before it is committed and visible.
    pub commit_interval: Duration,
    /// Indexing memory budget of the writer, in bytes.
    pub writer_memory_bytes: usize,
    /// How long logs a client sends again are recognized and not stored twice; zero for never.
    pub dedup_window: Duration,
    /// Most bytes the dedup window holds; past it, its oldest logs are forgotten early.
    pub dedup_max_bytes: usize,
}

/// API keys.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The keys file: one `[[keys]]` table per key, secrets stored as SHA-256 only.
    pub keys_file: PathBuf,
}

/// Diagnostics of the process itself.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `logbridge=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    otlp: RawOtlp,
    api: RawApi,
    server: RawServer,
    index: RawIndex,
    auth: RawAuth,
    mapping: FieldSources,
    log: RawLog,
    retention: RawRetention,
    limits: RawLimits,
    tls: RawTls,
    cluster: RawCluster,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawCluster {
    role: String,
    node_id: String,
    name: String,
    nats_urls: Vec<String>,
    etcd_endpoints: Vec<String>,
    shards: u64,
    stream_replicas: u64,
    indexer_replicas: u64,
    publish_timeout_ms: u64,
    dedup_window_ms: u64,
    advertise_url: String,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            role: String::new(),
            node_id: String::new(),
            name: "logbridge".to_owned(),
            nats_urls: vec!["nats://127.0.0.1:4222".to_owned()],
            etcd_endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            shards: 8,
            stream_replicas: 3,
            indexer_replicas: 2,
            publish_timeout_ms: 5_000,
            dedup_window_ms: 600_000,
            advertise_url: String::new(),
        }
    }
}

impl RawCluster {
    fn validate(self) -> Result<Option<ClusterConfig>, ConfigError> {
        if self.role.is_empty() {
            return Ok(None);
        }
        let invalid =
            |setting: &'static str, message: String| ConfigError::Invalid { setting, message };
        let (mut gateway, mut indexer) = (false, false);
        for role in self.role.split(',').map(str::trim) {
            match role {
                "gateway" => gateway = true,
                "indexer" => indexer = true,
                other => {
                    return Err(invalid(
                        "cluster.role",
                        format!(
                            "unknown role {other:?}: expected gateway, indexer or both, comma-separated"
                        ),
                    ));
                }
            }
        }
        let simple_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !simple_name(&self.node_id) {
            return Err(invalid(
                "cluster.node_id",
                "must be set in cluster mode: 1 to 64 letters, digits, '-' or '_'".to_owned(),
            ));
        }
        if !simple_name(&self.name) {
            return Err(invalid(
                "cluster.name",
                "must be 1 to 64 letters, digits, '-' or '_'".to_owned(),
            ));
        }
        if self.nats_urls.is_empty() {
            return Err(invalid(
                "cluster.nats_urls",
                "must list at least one server".to_owned(),
            ));
        }
        if self.etcd_endpoints.is_empty() {
            return Err(invalid(
                "cluster.etcd_endpoints",
                "must list at least one endpoint".to_owned(),
            ));
        }
        let count = |setting: &'static str, value: u64, max: u64| match value {
            v if (1..=max).contains(&v) => Ok(v),
            _ => Err(invalid(setting, format!("must be between 1 and {max}"))),
        };
        let millis = |setting: &'static str, value: u64| {
            count(setting, value, MAX_MILLIS).map(Duration::from_millis)
        };
        Ok(Some(ClusterConfig {
            gateway,
            indexer,
            node_id: self.node_id,
            name: self.name,
            nats_urls: self.nats_urls,
            etcd_endpoints: self.etcd_endpoints,
            shards: count("cluster.shards", self.shards, u64::from(MAX_SHARDS))? as u32,
            stream_replicas: count("cluster.stream_replicas", self.stream_replicas, 5)? as usize,
            indexer_replicas: count("cluster.indexer_replicas", self.indexer_replicas, 16)?
                as usize,
            publish_timeout: millis("cluster.publish_timeout_ms", self.publish_timeout_ms)?,
            dedup_window: millis("cluster.dedup_window_ms", self.dedup_window_ms)?,
            advertise_url: Some(self.advertise_url).filter(|u| !u.is_empty()),
        }))
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert_file: String,
    key_file: String,
    client_ca_file: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    user_records_per_second: u64,
    user_burst: u64,
    users: BTreeMap<String, RawRate>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    records_per_second: u64,
    #[serde(default)]
    burst: u64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetention {
    days: u64,
    sweep_interval_ms: u64,
    users: BTreeMap<String, u64>,
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
struct RawOtlp {
    grpc_listen: String,
    http_listen: String,
    max_message_bytes: u64,
    max_inflight_bytes: u64,
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
struct RawApi {
    listen: String,
    max_concurrent_searches: u64,
    max_concurrent_searches_per_user: u64,
    max_tail_subscribers: u64,
    max_tail_subscribers_per_user: u64,
    tail_stall_timeout_ms: u64,
    max_concurrent_exports: u64,
    max_concurrent_exports_per_user: u64,
    export_stall_timeout_ms: u64,
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
struct RawServer {
    header_read_timeout_ms: u64,
    body_read_timeout_ms: u64,
    idle_timeout_ms: u64,
    max_connections: u64,
    max_concurrent_streams: u64,
    http2_keepalive_interval_ms: u64,
    http2_keepalive_timeout_ms: u64,
    drain_timeout_ms: u64,
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
struct RawIndex {
    path: PathBuf,
    commit_interval_ms: u64,
    writer_memory_mb: u64,
    dedup_window_ms: u64,
    dedup_max_mb: u64,
}

impl Default for RawIndex {
    fn default() -> Self {
        Self {
            path: PathBuf::from("index"),
            commit_interval_ms: 1000,
            writer_memory_mb: 128,
            dedup_window_ms: 600_000,
            dedup_max_mb: 512,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    keys_file: PathBuf,
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
struct RawLog {
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
        }
    }
}

impl Config {
    /// Loads the config file (`path`, else [`DEFAULT_CONFIG_PATH`] when it exists, else the
    /// embedded defaults) and applies the `LOGBRIDGE_*` entries of `env`.
    pub fn load(path: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let file = match path {
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        };
        let (mut table, origin) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let table = text
                    .parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.clone(),
                        message: e.message().to_owned(),
                    })?;
                (table, path)
            }
            None => (toml::Table::new(), PathBuf::from("<defaults>")),
        };
        apply_env_overrides(&mut table, env)?;
        let raw: RawConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: origin,
                message: e.message().to_owned(),
            })?;
        raw.validate()
    }

    /// The embedded defaults, as `cargo run` uses them on a fresh clone.
    pub fn defaults() -> Self {
        RawConfig::default()
            .validate()
            .expect("the embedded defaults are valid")
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        // upper bounds keep deadlines and pools within what the clock and the runtime take
        let within = |setting: &'static str, value: u64, max: u64| {
            let message = match value {
                0 => "must be at least 1".to_owned(),
                v if v > max => format!("must be at most {max}"),
                v => return Ok(v),
            };
            Err(ConfigError::Invalid { setting, message })
        };
        let positive = |setting: &'static str, value: u64| within(setting, value, MAX_COUNT);
        let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        let millis = |setting: &'static str, value: u64| {
            within(setting, value, MAX_MILLIS).map(Duration::from_millis)
        };
        let max_message_bytes = within(
            "otlp.max_message_bytes",
            self.otlp.max_message_bytes,
            MAX_MESSAGE_BYTES,
        )?;
        let max_inflight_bytes = self.otlp.max_inflight_bytes;
        if max_inflight_bytes / MIN_INFLIGHT_PER_MESSAGE_BYTE < max_message_bytes {
            return Err(ConfigError::Invalid {
                setting: "otlp.max_inflight_bytes",
                message: format!(
                    "must be at least {MIN_INFLIGHT_PER_MESSAGE_BYTE} times otlp.max_message_bytes \
                     ({}), so that the largest export fits",
                    max_message_bytes.saturating_mul(MIN_INFLIGHT_PER_MESSAGE_BYTE)
                ),
            });
        }
        let commit_interval_ms = within(
            "index.commit_interval_ms",
            self.index.commit_interval_ms,
            MAX_MILLIS,
        )?;
        // zero turns recognizing retries off
        let dedup_window_ms = match self.index.dedup_window_ms {
            0 => 0,
            ms => within("index.dedup_window_ms", ms, MAX_MILLIS)?,
        };
        let dedup_max_mb = within("index.dedup_max_mb", self.index.dedup_max_mb, 1 << 20)?;
        let raw_server = &self.server;
        let max_concurrent_streams = positive(
            "server.max_concurrent_streams",
            raw_server.max_concurrent_streams,
        )?;
        let server = ServerConfig {
            header_read_timeout: millis(
                "server.header_read_timeout_ms",
                raw_server.header_read_timeout_ms,
            )?,
            body_read_timeout: millis(
                "server.body_read_timeout_ms",
                raw_server.body_read_timeout_ms,
            )?,
            idle_timeout: millis("server.idle_timeout_ms", raw_server.idle_timeout_ms)?,
            max_connections: size(positive(
                "server.max_connections",
                raw_server.max_connections,
            )?),
            max_concurrent_streams: u32::try_from(max_concurrent_streams).unwrap_or(u32::MAX),
            http2_keepalive_interval: millis(
                "server.http2_keepalive_interval_ms",
                raw_server.http2_keepalive_interval_ms,
            )?,
            http2_keepalive_timeout: millis(
                "server.http2_keepalive_timeout_ms",
                raw_server.http2_keepalive_timeout_ms,
            )?,
            drain_timeout: millis("server.drain_timeout_ms", raw_server.drain_timeout_ms)?,
        };
        let max_concurrent_searches = positive(
            "api.max_concurrent_searches",
            self.api.max_concurrent_searches,
        )?;
        let max_tail_subscribers =
            positive("api.max_tail_subscribers", self.api.max_tail_subscribers)?;
        let max_tail_subscribers_per_user = positive(
            "api.max_tail_subscribers_per_user",
            self.api.max_tail_subscribers_per_user,
        )?;
        let tail_stall_timeout =
            millis("api.tail_stall_timeout_ms", self.api.tail_stall_timeout_ms)?;
        let max_concurrent_searches_per_user = positive(
            "api.max_concurrent_searches_per_user",
            self.api.max_concurrent_searches_per_user,
        )?;
        let max_concurrent_exports = positive(
            "api.max_concurrent_exports",
            self.api.max_concurrent_exports,
        )?;
        let max_concurrent_exports_per_user = positive(
            "api.max_concurrent_exports_per_user",
            self.api.max_concurrent_exports_per_user,
        )?;
        let export_stall_timeout = millis(
            "api.export_stall_timeout_ms",
            self.api.export_stall_timeout_ms,
        )?;
        let writer_memory_mb = self.index.writer_memory_mb;
        if !(16..=4096).contains(&writer_memory_mb) {
            return Err(ConfigError::Invalid {
                setting: "index.writer_memory_mb",
                message: "must be between 16 and 4096".to_owned(),
            });
        }
        let retention_days = |setting: &str, days: u64| {
            u32::try_from(days)
                .ok()
                .filter(|&d| d <= MAX_DAYS)
                .ok_or_else(|| ConfigError::Invalid {
                    setting: "retention",
                    message: format!(
                        "{setting} must be at most {MAX_DAYS} days (0 keeps logs forever)"
                    ),
                })
        };
        let retention = RetentionConfig {
            policy: Retention {
                days: retention_days("days", self.retention.days)?,
                users: self
                    .retention
                    .users
                    .iter()
                    .map(|(user, &days)| {
                        Ok((
                            user.clone(),
                            retention_days(&format!("users.{user:?}"), days)?,
                        ))
                    })
                    .collect::<Result<_, ConfigError>>()?,
            },
            sweep_interval: millis(
                "retention.sweep_interval_ms",
                self.retention.sweep_interval_ms,
            )?,
        };
        let rate = |setting: &str, records_per_second: u64, burst: u64| {
            if records_per_second > MAX_RATE || burst > MAX_RATE {
                return Err(ConfigError::Invalid {
                    setting: "limits",
                    message: format!("{setting}: rates and bursts must be at most {MAX_RATE}"),
                });
            }
            Ok(Rate {
                records_per_second,
                burst,
            })
        };
        let limits = LimitsConfig {
            default: rate(
                "user_records_per_second",
                self.limits.user_records_per_second,
                self.limits.user_burst,
            )?,
            users: self
                .limits
                .users
                .iter()
                .map(|(user, r)| {
                    let setting = format!("users.{user:?}");
                    Ok((user.clone(), rate(&setting, r.records_per_second, r.burst)?))
                })
                .collect::<Result<_, ConfigError>>()?,
        };
        let tls_setting = |setting: &'static str, message: &str| ConfigError::Invalid {
            setting,
            message: message.to_owned(),
        };
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        let raw_tls = &self.tls;
        let tls = match (path(&raw_tls.cert_file), path(&raw_tls.key_file)) {
            (Some(cert_file), Some(key_file)) => Some(TlsFiles {
                cert_file,
                key_file,
                client_ca_file: path(&raw_tls.client_ca_file),
            }),
            (None, None) if raw_tls.client_ca_file.is_empty() => None,
            (None, None) => {
                return Err(tls_setting(
                    "tls.client_ca_file",
                    "needs tls.cert_file and tls.key_file",
                ));
            }
            (Some(_), None) => {
                return Err(tls_setting(
                    "tls.key_file",
                    "must be set when tls.cert_file is",
                ));
            }
            (None, Some(_)) => {
                return Err(tls_setting(
                    "tls.cert_file",
                    "must be set when tls.key_file is",
                ));
            }
        };
        let cluster = self.cluster.validate()?;
        if cluster.is_some() && tls.is_some() {
            return Err(ConfigError::Invalid {
                setting: "tls",
                message:
                    "is not supported in cluster mode yet: terminate TLS in front of the gateways"
                        .to_owned(),
            });
        }
        let mapping = self
            .mapping
            .validate()
            .map_err(|message| ConfigError::Invalid {
                setting: "mapping",
                message,
            })?;
        Ok(Config {
            otlp: OtlpConfig {
                grpc_listen: self.otlp.grpc_listen,
                http_listen: self.otlp.http_listen,
                max_message_bytes: size(max_message_bytes),
                max_inflight_bytes: size(max_inflight_bytes),
            },
            api: ApiConfig {
                listen: self.api.listen,
                max_concurrent_searches: size(max_concurrent_searches),
                max_concurrent_searches_per_user: size(max_concurrent_searches_per_user),
                max_tail_subscribers: size(max_tail_subscribers),
                max_tail_subscribers_per_user: size(max_tail_subscribers_per_user),
                tail_stall_timeout,
                max_concurrent_exports: size(max_concurrent_exports),
                max_concurrent_exports_per_user: size(max_concurrent_exports_per_user),
                export_stall_timeout,
            },
            server,
            index: IndexConfig {
                path: self.index.path,
                commit_interval: Duration::from_millis(commit_interval_ms),
                writer_memory_bytes: usize::try_from(writer_memory_mb * 1024 * 1024)
                    .unwrap_or(usize::MAX),
                dedup_window: Duration::from_millis(dedup_window_ms),
                dedup_max_bytes: usize::try_from(dedup_max_mb << 20).unwrap_or(usize::MAX),
            },
            auth: AuthConfig {
                keys_file: self.auth.keys_file,
            },
            mapping,
            log: LogConfig {
                level: self.log.level,
            },
            retention,
            limits,
            tls,
            cluster,
        })
    }
}

/// Applies `LOGBRIDGE_<SECTION>_<KEY>=value` entries to the parsed file. The value is read as the
/// type of the setting's default: a string as is, a number or a list as TOML.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(RawConfig::default())
        .expect("the default config serializes to a table");
    let mut names: Vec<&String> = env
        .keys()
        .filter(|k| k.starts_with(ENV_PREFIX) && !CLIENT_VARIABLES.contains(&k.as_str()))
        .collect();
    names.sort();
    for name in names {
        let value = &env[name];
        let setting = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let env_error = |message: String| ConfigError::Env {
            name: name.clone(),
            message,
        };
        let Some((section, key, default)) = defaults.iter().find_map(|(section, keys)| {
            let key = setting.strip_prefix(section.as_str())?.strip_prefix('_')?;
            let default = keys.as_table()?.get(key)?;
            Some((section, key, default))
        }) else {
            return Err(env_error("no such setting".to_owned()));
        };
        let parsed = match default {
            toml::Value::String(_) => toml::Value::String(value.clone()),
            _ => format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .filter(|v| v.same_type(default))
                .ok_or_else(|| env_error(format!("expected a value like {default}")))?,
        };
        let section_table = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = section_table else {
            return Err(env_error(format!(
                "[{section}] in the config file is not a table"
            )));
        };
        section_table.insert(key.to_owned(), parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cluster_settings_are_validated_and_named() {
        let cluster = |pairs: &[(&str, &str)]| Config::load(None, &env(pairs));
        let node = [
            ("LOGBRIDGE_CLUSTER_ROLE", "gateway, indexer"),
            ("LOGBRIDGE_CLUSTER_NODE_ID", "node-1"),
        ];
        let config = cluster(&[
            node[0],
            node[1],
            (
                "LOGBRIDGE_CLUSTER_NATS_URLS",
                r#"["nats://a:4222", "nats://b:4222"]"#,
            ),
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert!(config.gateway && config.indexer);
        assert_eq!(config.node_id, "node-1");
        assert_eq!(config.nats_urls, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(
            (
                config.shards,
                config.stream_replicas,
                config.indexer_replicas
            ),
            (8, 3, 2)
        );
        assert_eq!(config.dedup_window, Duration::from_secs(600));
        let refusal = |pairs: &[(&str, &str)]| cluster(pairs).unwrap_err().to_string();
        assert_eq!(
            refusal(&[("LOGBRIDGE_CLUSTER_ROLE", "router"), node[1]]),
            "invalid setting cluster.role: unknown role \"router\": expected gateway, indexer or both, comma-separated"
        );
        assert_eq!(
            refusal(&[node[0]]),
            "invalid setting cluster.node_id: must be set in cluster mode: 1 to 64 letters, digits, '-' or '_'"
        );
        assert_eq!(
            refusal(&[node[0], node[1], ("LOGBRIDGE_CLUSTER_SHARDS", "5000")]),
            "invalid setting cluster.shards: must be between 1 and 4096"
        );
        assert_eq!(
            refusal(&[
                node[0],
                node[1],
                ("LOGBRIDGE_TLS_CERT_FILE", "cert.pem"),
                ("LOGBRIDGE_TLS_KEY_FILE", "key.pem"),
            ]),
            "invalid setting tls: is not supported in cluster mode yet: terminate TLS in front of the gateways"
        );
    }

    #[test]
    fn documented_example_config_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/logbridge.toml");
        let config = Config::load(Some(&path), &HashMap::new()).unwrap();
        let defaults = Config::defaults();
        assert_eq!(config.otlp.grpc_listen, defaults.otlp.grpc_listen);
        assert_eq!(config.otlp.http_listen, defaults.otlp.http_listen);
        assert_eq!(config.otlp.max_message_bytes, 16 * 1024 * 1024);
        assert_eq!(config.api.listen, "127.0.0.1:8080");
        assert_eq!(config.index.path, PathBuf::from("index"));
        assert_eq!(config.index.commit_interval, Duration::from_millis(1000));
        assert_eq!(config.otlp.max_inflight_bytes, 256 * 1024 * 1024);
        assert_eq!(config.api.max_concurrent_searches, 8);
        assert_eq!(config.api.max_concurrent_searches_per_user, 4);
        assert_eq!(config.api.max_concurrent_exports, 4);
        assert_eq!(config.api.max_concurrent_exports_per_user, 2);
        assert_eq!(config.api.export_stall_timeout, Duration::from_secs(30));
        assert_eq!(config.api.tail_stall_timeout, Duration::from_secs(10));
        assert_eq!(config.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.server.body_read_timeout, Duration::from_secs(30));
        assert_eq!(config.server.idle_timeout, Duration::from_secs(120));
        assert_eq!(config.server.max_connections, 1024);
        assert_eq!(config.server.max_concurrent_streams, 100);
        assert_eq!(
            config.server.http2_keepalive_interval,
            Duration::from_secs(30)
        );
        assert_eq!(
            config.server.http2_keepalive_timeout,
            Duration::from_secs(10)
        );
        assert_eq!(config.server.drain_timeout, Duration::from_secs(10));
        assert_eq!(config.auth.keys_file, PathBuf::from("config/keys.toml"));
        assert_eq!(config.mapping, defaults.mapping);
        assert_eq!(config.log.level, "info");
        assert_eq!(config.retention.policy, Retention::default());
        assert_eq!(config.retention.sweep_interval, Duration::from_secs(30));
        assert!(
            config.cluster.is_none(),
            "a single node unless a role is set"
        );
        assert_eq!(config.limits, LimitsConfig::default());
        assert_eq!(config.tls, None);
    }

    #[test]
    fn lifecycle_sections_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logbridge.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path), &HashMap::new()).map_err(|e| e.to_string())
        };
        let config = load(
            "[retention]\ndays = 30\n[retention.users]\n\"acme\" = 90\n\
             [limits]\nuser_records_per_second = 100\n\
             [limits.users]\n\"acme\" = { records_per_second = 5, burst = 10 }\n\
             [tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(config.retention.policy.days_for("acme"), 90);
        assert_eq!(config.retention.policy.days_for("other"), 30);
        assert_eq!(
            config.limits.users["acme"],
            Rate {
                records_per_second: 5,
                burst: 10
            }
        );
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert_file: PathBuf::from("c.pem"),
                key_file: PathBuf::from("k.pem"),
                client_ca_file: None,
            })
        );
        for (text, message) in [
            (
                "[tls]\ncert_file = \"c.pem\"\n",
                "invalid setting tls.key_file: must be set when tls.cert_file is",
            ),
            (
                "[tls]\nclient_ca_file = \"ca.pem\"\n",
                "invalid setting tls.client_ca_file: needs tls.cert_file and tls.key_file",
            ),
            (
                "[retention]\ndays = 40000\n",
                "invalid setting retention: days must be at most 36500 days (0 keeps logs forever)",
            ),
            (
                "[limits.users]\n\"a\" = { burst = 3 }\n",
                "missing field `records_per_second`",
            ),
        ] {
            let err = load(text).unwrap_err();
            assert!(err.ends_with(message), "{err}");
        }
    }

    #[test]
    fn env_overrides_follow_section_and_key() {
        let config = Config::load(Some(Path::new("/nonexistent/but/unused")), &HashMap::new());
        assert!(matches!(config, Err(ConfigError::Read { .. })));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[api]\nlisten = \"0.0.0.0:9000\"\n").unwrap();
        let config = Config::load(
            Some(&path),
            &env(&[
                ("LOGBRIDGE_OTLP_GRPC_LISTEN", "127.0.0.1:0"),
                ("LOGBRIDGE_INDEX_COMMIT_INTERVAL_MS", "250"),
                ("LOGBRIDGE_MAPPING_ASSISTANT_ID", r#"["attr:agent.id"]"#),
                ("LOGBRIDGE_SERVER_DRAIN_TIMEOUT_MS", "2500"),
                // emit's key, not a setting
                ("LOGBRIDGE_KEY", "lb_secret"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.otlp.grpc_listen, "127.0.0.1:0");
        assert_eq!(config.api.listen, "0.0.0.0:9000");
        assert_eq!(config.index.commit_interval, Duration::from_millis(250));
        assert_eq!(config.server.drain_timeout, Duration::from_millis(2500));
        assert_eq!(
            config.mapping.assistant_id,
            vec![crate::mapping::Source::Attr("agent.id".to_owned())]
        );
    }

    #[test]
    fn bad_env_override_names_the_variable() {
        let err = Config::load(
            Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/logbridge.toml")),
            &env(&[("LOGBRIDGE_INDEX_COMMIT_INTERVAL_MS", "soon")]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid environment override LOGBRIDGE_INDEX_COMMIT_INTERVAL_MS: expected a value like 1000"
        );
        let err = Config::load(
            Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/logbridge.toml")),
            &env(&[("LOGBRIDGE_API_PORT", "1")]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid environment override LOGBRIDGE_API_PORT: no such setting"
        );
    }

    #[test]
    fn unknown_keys_and_zero_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[index]\npaht = \"x\"\n").unwrap();
        let err = Config::load(Some(&path), &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("unknown field `paht`"), "{err}");

        std::fs::write(&path, "[index]\ncommit_interval_ms = 0\n").unwrap();
        let err = Config::load(Some(&path), &HashMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting index.commit_interval_ms: must be at least 1"
        );
        std::fs::write(&path, "[server]\nidle_timeout_ms = 99999999999\n").unwrap();
        let err = Config::load(Some(&path), &HashMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting server.idle_timeout_ms: must be at most 86400000"
        );
        std::fs::write(&path, "[server]\ndrain_timeout_ms = 0\n").unwrap();
        let err = Config::load(Some(&path), &HashMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting server.drain_timeout_ms: must be at least 1"
        );
        std::fs::write(&path, "[otlp]\nmax_inflight_bytes = 200000000\n").unwrap();
        let err = Config::load(Some(&path), &HashMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting otlp.max_inflight_bytes: must be at least 16 times \
             otlp.max_message_bytes (268435456), so that the largest export fits"
        );
    }
}
