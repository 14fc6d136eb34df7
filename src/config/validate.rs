//! From the raw sections to the typed [`Config`]: every setting checked, errors naming it.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawAlerts, RawCluster, RawConfig};
use super::{
    AuthConfig, Config, ConfigError, IndexConfig, LogConfig, OtlpConfig, RetentionConfig,
    ServerConfig, TlsFiles,
};
use crate::alerts::{AlertsConfig, WebhookConfig};
use crate::api::ApiConfig;
use crate::cluster::tls::ClientTlsFiles;
use crate::cluster::{ClusterConfig, MAX_SHARDS};
use crate::lifecycle::{LimitsConfig, MAX_DAYS, Rate, Retention};

/// Longest timeout or interval: a day, in milliseconds.
const MAX_MILLIS: u64 = 24 * 60 * 60 * 1000;
/// Largest count of connections, streams or searches.
const MAX_COUNT: u64 = 1_000_000;
/// Largest per-user rate or burst, in records.
const MAX_RATE: u64 = 1_000_000_000;
/// Largest export: 1 GiB.
const MAX_MESSAGE_BYTES: u64 = 1 << 30;

/// What the in-flight budget must hold at least, per byte of the largest export: twice what an
/// export of real records holds at its peak (see `otlp::ADMISSION_PER_BYTE`).
const MIN_INFLIGHT_PER_MESSAGE_BYTE: u64 = 2 * crate::otlp::ADMISSION_PER_BYTE as u64;

/// The settings of one of the cluster's TLS client hops: the CA, the client certificate and the
/// key, and the servers' setting with the URL scheme TLS takes.
struct ClientHop {
    ca_file: (&'static str, String),
    cert_file: (&'static str, String),
    key_file: (&'static str, String),
    urls: (&'static str, &'static str),
}

impl ClientHop {
    /// The hop's TLS files: set when its CA is. Then every URL in `urls` must be of the TLS
    /// scheme (no plaintext fallback); a TLS URL without a CA, or half an identity, is refused.
    fn validate(self, urls: &[String]) -> Result<Option<ClientTlsFiles>, ConfigError> {
        let invalid =
            |setting: &'static str, message: String| ConfigError::Invalid { setting, message };
        let path = |(_, p): &(&'static str, String)| (!p.is_empty()).then(|| PathBuf::from(p));
        let (urls_setting, scheme) = self.urls;
        let identity = match (path(&self.cert_file), path(&self.key_file)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                let message = format!("must be set when {} is", self.cert_file.0);
                return Err(invalid(self.key_file.0, message));
            }
            (None, Some(_)) => {
                let message = format!("must be set when {} is", self.key_file.0);
                return Err(invalid(self.cert_file.0, message));
            }
        };
        let Some(ca_file) = path(&self.ca_file) else {
            if identity.is_some() {
                let message = format!("must be set when {} is", self.cert_file.0);
                return Err(invalid(self.ca_file.0, message));
            }
            if let Some(url) = urls.iter().find(|u| u.starts_with(scheme)) {
                let message = format!("must be set to reach {url} over TLS");
                return Err(invalid(self.ca_file.0, message));
            }
            return Ok(None);
        };
        if let Some(url) = urls.iter().find(|u| !u.starts_with(scheme)) {
            let message = format!(
                "{url} is not {scheme}: with {} set every one is reached over TLS",
                self.ca_file.0
            );
            return Err(invalid(urls_setting, message));
        }
        Ok(Some(ClientTlsFiles { ca_file, identity }))
    }
}

impl RawCluster {
    /// Cluster mode's settings, when a role is set; `tls` says whether the listeners serve TLS,
    /// which then every hop of the cluster must too.
    fn validate(self, tls: bool) -> Result<Option<ClusterConfig>, ConfigError> {
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
        let nats_tls = ClientHop {
            ca_file: ("cluster.nats_ca_file", self.nats_ca_file),
            cert_file: ("cluster.nats_cert_file", self.nats_cert_file),
            key_file: ("cluster.nats_key_file", self.nats_key_file),
            urls: ("cluster.nats_urls", "tls://"),
        }
        .validate(&self.nats_urls)?;
        let etcd_tls = ClientHop {
            ca_file: ("cluster.etcd_ca_file", self.etcd_ca_file),
            cert_file: ("cluster.etcd_cert_file", self.etcd_cert_file),
            key_file: ("cluster.etcd_key_file", self.etcd_key_file),
            urls: ("cluster.etcd_endpoints", "https://"),
        }
        .validate(&self.etcd_endpoints)?;
        let peer_ca_file =
            (!self.peer_ca_file.is_empty()).then(|| PathBuf::from(&self.peer_ca_file));
        if tls {
            let every_hop = "must be set when [tls] is: cluster mode then encrypts every hop";
            for (setting, set) in [
                ("cluster.nats_ca_file", nats_tls.is_some()),
                ("cluster.etcd_ca_file", etcd_tls.is_some()),
                ("cluster.peer_ca_file", peer_ca_file.is_some()),
            ] {
                if !set {
                    return Err(invalid(setting, every_hop.to_owned()));
                }
            }
        } else if peer_ca_file.is_some() {
            return Err(invalid(
                "cluster.peer_ca_file",
                "needs [tls]: indexers serve HTTPS only with tls.cert_file and tls.key_file"
                    .to_owned(),
            ));
        }
        let scheme = if tls { "https://" } else { "http://" };
        if !self.advertise_url.is_empty() && !self.advertise_url.starts_with(scheme) {
            return Err(invalid(
                "cluster.advertise_url",
                format!("must start with {scheme}, as the API listener serves it"),
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
            nats_tls,
            etcd_endpoints: self.etcd_endpoints,
            etcd_tls,
            peer_ca_file,
            shards: count("cluster.shards", self.shards, u64::from(MAX_SHARDS))? as u32,
            stream_replicas: count("cluster.stream_replicas", self.stream_replicas, 5)? as usize,
            indexer_replicas: count("cluster.indexer_replicas", self.indexer_replicas, 16)?
                as usize,
            publish_timeout: millis("cluster.publish_timeout_ms", self.publish_timeout_ms)?,
            dedup_window: millis("cluster.dedup_window_ms", self.dedup_window_ms)?,
            max_lag: millis("cluster.max_lag_ms", self.max_lag_ms)?,
            advertise_url: Some(self.advertise_url).filter(|u| !u.is_empty()),
        }))
    }
}

impl RawAlerts {
    fn validate(self) -> Result<AlertsConfig, ConfigError> {
        let invalid =
            |setting: &'static str, message: String| ConfigError::Invalid { setting, message };
        let millis = |setting: &'static str, value: u64, min: u64| {
            if !(min..=MAX_MILLIS).contains(&value) {
                return Err(invalid(
                    setting,
                    format!("must be from {min} to {MAX_MILLIS}"),
                ));
            }
            Ok(Duration::from_millis(value))
        };
        let url = |setting: &'static str, url: String| {
            if url.is_empty() {
                return Ok(None);
            }
            let parsed = url.parse::<http::Uri>().ok();
            let scheme = parsed.as_ref().and_then(|u| u.scheme_str());
            if !matches!(scheme, Some("http" | "https"))
                || parsed.and_then(|u| u.host().map(str::to_owned)).is_none()
            {
                return Err(invalid(
                    setting,
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
            Ok(Some(url))
        };
        let webhook = match url("alerts.webhook_url", self.webhook_url)? {
            None if !self.webhook_secret_file.is_empty() => {
                return Err(invalid(
                    "alerts.webhook_url",
                    "must be set when alerts.webhook_secret_file is".to_owned(),
                ));
            }
            None => None,
            Some(_) if self.webhook_secret_file.is_empty() => {
                return Err(invalid(
                    "alerts.webhook_secret_file",
                    "must be set when alerts.webhook_url is: webhooks are always signed".to_owned(),
                ));
            }
            Some(url) => Some(WebhookConfig {
                url,
                secret_file: PathBuf::from(self.webhook_secret_file),
            }),
        };
        if !(1..=MAX_COUNT).contains(&self.max_rules_per_user) {
            return Err(invalid(
                "alerts.max_rules_per_user",
                format!("must be from 1 to {MAX_COUNT}"),
            ));
        }
        Ok(AlertsConfig {
            evaluation_interval: millis(
                "alerts.evaluation_interval_ms",
                self.evaluation_interval_ms,
                1000,
            )?,
            evaluation_budget: millis("alerts.evaluation_budget_ms", self.evaluation_budget_ms, 1)?,
            rule_timeout: millis("alerts.rule_timeout_ms", self.rule_timeout_ms, 1)?,
            max_rules_per_user: usize::try_from(self.max_rules_per_user).unwrap_or(usize::MAX),
            alertmanager_url: url("alerts.alertmanager_url", self.alertmanager_url)?,
            resend_interval: millis("alerts.resend_interval_ms", self.resend_interval_ms, 1000)?,
            webhook,
        })
    }
}

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
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
        let cluster = self.cluster.validate(tls.is_some())?;
        let alerts = self.alerts.validate()?;
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
                payload_paths: self.index.payload_paths,
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
            alerts,
        })
    }
}
