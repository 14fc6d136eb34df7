//! Configuration: `config/logbridge.toml`, its defaults and `LOGBRIDGE_<SECTION>_<KEY>` overrides.
//!
//! The file is read into its raw sections ([`raw`]: serde structures, unknown keys are errors),
//! environment overrides are applied to it, and the result is validated ([`validate`]) into the
//! typed [`Config`] the server runs on. The sections of the API, the cluster, retention, limits
//! and the mapping are their rooms' own types; this module composes them.

mod raw;
mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::alerts::AlertsConfig;
use crate::api::ApiConfig;
use crate::cluster::ClusterConfig;
use crate::lifecycle::{LimitsConfig, Retention};
use crate::mapping::MappingConfig;
use raw::RawConfig;

/// The config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/logbridge.toml";

const ENV_PREFIX: &str = "LOGBRIDGE_";

/// Variables with the config's prefix that are not settings: `logbridge emit` reads its key
/// from `LOGBRIDGE_KEY`, so that a shell can hold it for both commands.
const CLIENT_VARIABLES: [&str; 1] = ["LOGBRIDGE_KEY"];

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
    /// Alert rules: their evaluation and where alerts go.
    pub alerts: AlertsConfig,
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
    /// Whether the payloads' values are indexed by path, for `q`'s `request_data.…:` terms.
    pub payload_paths: bool,
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
mod tests;
