//! A whole cluster on loopback, each part a real process with its own folder: three NATS
//! servers (JetStream clustered), one etcd, gateways and indexers running the `logbridge`
//! binary. Ports are free ones the system picked.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use logbridge::auth::{KeyRecord, Scope, Secret};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::Value as Json;

#[path = "../../../benches/harness/engines.rs"]
mod engines;

pub use engines::{Etcd, Nats};

use super::process::{Served, serve};
use super::{activity, authorized, kv, messages, request_of, text};

/// Shards of the test cluster: enough that users spread over indexers.
pub const SHARDS: u32 = 6;
/// The users the tests read as.
pub const USERS: [&str; 4] = ["user-0", "user-1", "user-2", "user-3"];

/// A logbridge node of the cluster.
pub struct Node {
    pub served: Option<Served>,
    pub config: PathBuf,
    pub api: String,
    pub grpc: String,
}

impl Node {
    /// `kill -9`.
    pub fn kill(&mut self) {
        self.served = None;
    }

    pub fn restart(&mut self) {
        let served = serve(&self.config);
        self.api = served.api.clone();
        self.grpc = served.grpc.clone();
        self.served = Some(served);
    }
}

/// The cluster, and the keys its tests use.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nats: Nats,
    pub etcd: Etcd,
    pub gateways: Vec<Node>,
    pub indexers: Vec<Node>,
    /// Ingests for any user (records carry `user.id`).
    pub ingest: Secret,
    /// One read key per user of [`USERS`].
    pub readers: Vec<Secret>,
}

impl TestCluster {
    /// NATS, etcd, `gateways` gateways and `indexers` indexers, ready: every shard has its
    /// replicas caught up.
    pub async fn start(gateways: usize, indexers: usize) -> Self {
        // the tests' HTTP clients take the process's rustls provider
        logbridge::server::install_provider();
        // nats-server and etcd, installed when missing
        super::tools::installed();
        let dir = tempfile::tempdir().unwrap();
        let nats = Nats::start(dir.path()).await;
        let etcd = Etcd::start(dir.path()).await;
        let ingest = Secret::generate();
        let readers: Vec<Secret> = USERS.iter().map(|_| Secret::generate()).collect();
        let mut keys = vec![KeyRecord {
            name: "fleet".to_owned(),
            sha256: ingest.sha256(),
            scopes: vec![Scope::Ingest],
            user_id: None,
            expires_at: None,
        }];
        for (user, secret) in USERS.iter().zip(&readers) {
            keys.push(KeyRecord {
                name: format!("reader-{user}"),
                sha256: secret.sha256(),
                scopes: vec![Scope::Read, Scope::Delete],
                user_id: Some((*user).to_owned()),
                expires_at: None,
            });
        }
        super::write_keys_file(&dir.path().join("keys.toml"), &keys);
        let mut cluster = Self {
            dir,
            nats,
            etcd,
            gateways: Vec::new(),
            indexers: Vec::new(),
            ingest,
            readers,
        };
        for n in 0..indexers {
            cluster.add_node("indexer", &format!("indexer-{n}"));
        }
        for n in 0..gateways {
            cluster.add_node("gateway", &format!("gateway-{n}"));
        }
        cluster.wait_all_shards_served().await;
        cluster
    }

    /// Starts a node with `role` named `id`.
    pub fn add_node(&mut self, role: &str, id: &str) {
        let folder = self.dir.path().join(id);
        std::fs::create_dir_all(&folder).unwrap();
        let config = folder.join("logbridge.toml");
        let quoted = |urls: Vec<String>| {
            urls.iter()
                .map(|u| format!("\"{u}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        std::fs::write(
            &config,
            format!(
                "[otlp]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
                 [api]\nlisten = \"127.0.0.1:0\"\n\
                 [index]\npath = \"{}\"\ncommit_interval_ms = 200\n\
                 [auth]\nkeys_file = \"{}\"\n\
                 [cluster]\nrole = \"{role}\"\nnode_id = \"{id}\"\nshards = {SHARDS}\n\
                 nats_urls = [{}]\netcd_endpoints = [\"{}\"]\n",
                folder.join("index").display(),
                self.dir.path().join("keys.toml").display(),
                quoted(self.nats.urls()),
                self.etcd.url,
            ),
        )
        .unwrap();
        let served = serve(&config);
        let node = Node {
            api: served.api.clone(),
            grpc: served.grpc.clone(),
            served: Some(served),
            config,
        };
        match role {
            "gateway" => self.gateways.push(node),
            _ => self.indexers.push(node),
        }
    }

    /// Waits until each user's `/logs` answers 200 through every gateway: their shards have a
    /// caught-up replica.
    pub async fn wait_all_shards_served(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for gateway in &self.gateways {
            for (n, _) in USERS.iter().enumerate() {
                loop {
                    let (status, _) = self.get(gateway, n, "limit=1").await;
                    if status == 200 {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "user {n} not served by {}",
                        gateway.api
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The live gateways.
    pub fn live_gateways(&self) -> Vec<&Node> {
        self.gateways
            .iter()
            .filter(|g| g.served.is_some())
            .collect()
    }

    /// The gateways' OTLP/gRPC addresses, dead ones included (a client tries them in turn).
    pub fn grpc(&self) -> Vec<String> {
        self.gateways.iter().map(|g| g.grpc.clone()).collect()
    }

    /// `GET /shards/<shard>/logs?{query}` on indexer `indexer` as user `user`: the body, when
    /// it answers 200 (it holds a caught-up replica of the shard).
    async fn on_replica(
        &self,
        indexer: usize,
        shard: u32,
        user: usize,
        query: &str,
    ) -> Option<Json> {
        let url = format!(
            "http://{}/shards/{shard}/logs?{query}",
            self.indexers[indexer].api
        );
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(self.readers[user].expose())
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        response.json().await.ok()
    }

    /// Asks indexer `indexer` directly for user `user`'s shard: its total of that user's logs
    /// when it serves the shard, `None` when it holds no caught-up replica of it (or is down).
    pub async fn held(&self, indexer: usize, user: usize) -> Option<u64> {
        let shard = logbridge::cluster::shard_of(USERS[user], SHARDS);
        let body = self.on_replica(indexer, shard, user, "limit=1").await?;
        body["data"]["total"].as_u64()
    }

    /// Every message of `user` in indexer `indexer`'s replica of the user's shard, newest first,
    /// walking it directly with cursors; `None` when the indexer holds no ready replica of it.
    pub async fn walk_replica(&self, indexer: usize, user: usize) -> Option<Vec<String>> {
        let shard = logbridge::cluster::shard_of(USERS[user], SHARDS);
        let mut all = Vec::new();
        let mut query = "limit=500".to_owned();
        loop {
            let body = self.on_replica(indexer, shard, user, &query).await?;
            all.extend(messages(&body["data"]));
            match body["data"]["next_cursor"].as_str() {
                Some(cursor) => query = format!("limit=500&cursor={cursor}"),
                None => return Some(all),
            }
        }
    }

    /// User `user`'s total on shard `shard`, from the first indexer that serves it.
    pub async fn shard_total(&self, shard: u32, user: usize) -> Option<u64> {
        for indexer in 0..self.indexers.len() {
            if let Some(body) = self.on_replica(indexer, shard, user, "limit=1").await {
                return body["data"]["total"].as_u64();
            }
        }
        None
    }

    /// `GET /logs?{query}` through `gateway` as user `user`: status and body.
    pub async fn get(&self, gateway: &Node, user: usize, query: &str) -> (u16, Json) {
        let response = reqwest::Client::new()
            .get(format!("http://{}/logs?{query}", gateway.api))
            .bearer_auth(self.readers[user].expose())
            .send()
            .await;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Json::Null))
            }
            Err(_) => (0, Json::Null),
        }
    }

    /// Every message of `user`, newest first, walking `/logs` with cursors through `gateway`;
    /// asserts the walk's total and order.
    pub async fn walk(&self, gateway: &Node, user: usize, filters: &str) -> Vec<String> {
        let mut all = Vec::new();
        let mut query = format!("limit=100{filters}");
        let mut last_timestamp: Option<String> = None;
        loop {
            let (status, body) = self.get(gateway, user, &query).await;
            assert_eq!(status, 200, "{body}");
            let data = &body["data"];
            for log in data["logs"].as_array().unwrap() {
                let timestamp = log["timestamp"].as_str().unwrap().to_owned();
                if let Some(last) = &last_timestamp {
                    assert!(timestamp <= *last, "newest first: {timestamp} after {last}");
                }
                last_timestamp = Some(timestamp);
            }
            all.extend(messages(data));
            match data["next_cursor"].as_str() {
                Some(cursor) => query = format!("limit=100{filters}&cursor={cursor}"),
                None => {
                    assert_eq!(data["total"].as_u64().unwrap() as usize, all.len());
                    return all;
                }
            }
        }
    }
}

/// Records of `user` numbered `first..first + count`: message `"{user} record {n}"`, one
/// millisecond apart from 2026-03-10, every tenth an error.
pub fn records(user: &str, first: u64, count: u64) -> Vec<LogRecord> {
    records_from(user, first, count, super::at_ms(0))
}

/// [`records`] stamped from `base` (nanoseconds) on: record n at `base` + n ms.
pub fn records_from(user: &str, first: u64, count: u64, base: u64) -> Vec<LogRecord> {
    (first..first + count)
        .map(|n| {
            let message = format!("{user} record {n}");
            let record = activity("tool_call", base + n * 1_000_000, &message);
            let mut record = super::with_attr(record, "user.id", text(user));
            if n % 10 == 0 {
                record.attributes.push(kv("activity.status", text("error")));
            }
            record
        })
        .collect()
}

/// Exports `records` through the gateways, starting with `first` and moving to the next on any
/// failure (a refusal, a broken connection, no answer in 10 s), until one acknowledges them; how
/// many attempts it took.
pub async fn export_until_acknowledged(
    grpc: &[String],
    first: usize,
    key: &Secret,
    records: Vec<LogRecord>,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    let request = request_of(records);
    let mut attempt = 0;
    loop {
        let target = &grpc[(first + attempt) % grpc.len()];
        attempt += 1;
        let sent = async {
            let mut client = LogsServiceClient::connect(format!("http://{target}")).await?;
            let response = client.export(authorized(request.clone(), key)).await?;
            anyhow::Ok(response.into_inner())
        };
        match tokio::time::timeout(Duration::from_secs(10), sent).await {
            Ok(Ok(response)) => {
                assert_eq!(response.partial_success, None, "every record accepted");
                return attempt;
            }
            Ok(Err(_)) | Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "no gateway acknowledged an export for 2 minutes"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
