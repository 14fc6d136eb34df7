//! A whole cluster on loopback, each part a real process with its own folder: three NATS
//! servers (JetStream clustered), one etcd, gateways and indexers running the `logbridge`
//! binary. The nodes listen on ports the system picks (port 0); the engines on free ones
//! [`super::harness::engines`] picks. Every hop is TLS, verified against one CA (clients of NATS
//! and etcd present certificates too), unless a test asks for plaintext.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logbridge::auth::{KeyRecord, Scope, Secret};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::Value as Json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use super::harness::blackhole::Blackhole;
use super::harness::certs::TlsFiles;
pub use super::harness::engines::{Etcd, Nats};

use super::process::{Served, serve, serve_with_env};
use super::{PATIENCE, activity, authorized, kv, messages, request_of, text};

/// Shards of the test cluster: enough that users spread over indexers.
pub const SHARDS: u32 = 6;
/// The users the tests read as.
pub const USERS: [&str; 4] = ["user-0", "user-1", "user-2", "user-3"];
/// Indexers serving each shard (`[cluster] indexer_replicas`).
pub const REPLICAS: usize = 2;

/// A logbridge node of the cluster.
pub struct Node {
    /// Its `node_id`, e.g. `indexer-0`.
    pub id: String,
    pub served: Option<Served>,
    pub config: PathBuf,
    pub api: String,
    pub grpc: String,
    /// Out of the cluster's view while running: paused (`SIGSTOP`), or cut off from etcd.
    pub out_of_view: bool,
}

impl Node {
    /// `kill -9`.
    pub fn kill(&mut self) {
        self.served = None;
    }

    /// `SIGSTOP`: the process stands still, its connections open, its lease running out.
    pub fn pause(&mut self) {
        super::process::signal(self.served.as_ref().expect("a running node"), "STOP");
        self.out_of_view = true;
    }

    /// `SIGCONT`.
    pub fn resume(&mut self) {
        super::process::signal(self.served.as_ref().expect("a running node"), "CONT");
        self.out_of_view = false;
    }

    /// Running and in the cluster's view.
    pub fn live(&self) -> bool {
        self.served.is_some() && !self.out_of_view
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
    /// One key per user of [`USERS`]: reads, erasures and alert rules.
    pub readers: Vec<Secret>,
    /// While etcd is down: the indexers (positions in `indexers`) of the view every node
    /// works from meanwhile, the live ones when etcd went down.
    frozen_view: Option<Vec<usize>>,
    /// Every request gives up after [`PATIENCE`]: a test fails, it never hangs.
    client: reqwest::Client,
    /// The CA and certificates of every hop; none when the cluster speaks plaintext.
    tls: Option<TlsFiles>,
    /// More `[cluster]` settings of every node.
    cluster_settings: String,
}

/// How a test cluster differs from the usual one.
#[derive(Default)]
pub struct Options {
    /// Every hop in plaintext rather than TLS.
    pub plaintext: bool,
    /// More `[cluster]` settings of every node (TOML lines).
    pub cluster_settings: &'static str,
    /// The NATS servers' routes through proxies a test can cut ([`Nats::isolate`]).
    pub partitionable: bool,
}

/// The gateways' OTLP/gRPC endpoints, and the CA their certificates chain to (with TLS).
#[derive(Clone)]
pub struct GrpcTargets {
    pub urls: Vec<String>,
    ca_pem: Option<String>,
}

impl GrpcTargets {
    /// A client of the endpoint `n` (modulo their number).
    pub async fn connect(&self, n: usize) -> anyhow::Result<LogsServiceClient<Channel>> {
        let url = &self.urls[n % self.urls.len()];
        let mut endpoint = Endpoint::from_shared(url.clone())?;
        if let Some(ca) = &self.ca_pem {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?;
        }
        Ok(LogsServiceClient::new(endpoint.connect().await?))
    }
}

impl TestCluster {
    /// NATS, etcd, `gateways` gateways and `indexers` indexers, TLS on every hop, ready: every
    /// shard has its replicas caught up.
    pub async fn start(gateways: usize, indexers: usize) -> Self {
        Self::start_with(gateways, indexers, Options::default()).await
    }

    /// [`TestCluster::start`] with every hop in plaintext.
    pub async fn start_plaintext(gateways: usize, indexers: usize) -> Self {
        let options = Options {
            plaintext: true,
            ..Options::default()
        };
        Self::start_with(gateways, indexers, options).await
    }

    /// [`TestCluster::start`] with `options`.
    pub async fn start_with(gateways: usize, indexers: usize, options: Options) -> Self {
        let Options {
            plaintext,
            cluster_settings,
            partitionable,
        } = options;
        let tls = !plaintext;
        // the tests' HTTP clients take the process's rustls provider
        logbridge::server::install_provider();
        // nats-server and etcd, installed when missing
        super::tools::installed();
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.then(|| {
            let folder = dir.path().join("tls");
            std::fs::create_dir_all(&folder).unwrap();
            TlsFiles::write(&folder)
        });
        let nats = if partitionable {
            Nats::start_partitionable(dir.path(), tls.as_ref()).await
        } else {
            Nats::start(dir.path(), tls.as_ref()).await
        };
        let etcd = Etcd::start(dir.path(), tls.as_ref()).await;
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
                scopes: vec![Scope::Read, Scope::Delete, Scope::Alerts],
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
            frozen_view: None,
            cluster_settings: cluster_settings.to_owned(),
            client: Self::client_trusting(tls.as_ref())
                .timeout(PATIENCE)
                .build()
                .unwrap(),
            tls,
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

    /// An HTTP client builder that trusts the cluster's CA only (none when it is plaintext).
    fn client_trusting(tls: Option<&TlsFiles>) -> reqwest::ClientBuilder {
        let ca = tls.map(|files| reqwest::Certificate::from_pem(files.ca_pem.as_bytes()).unwrap());
        reqwest::Client::builder().tls_certs_only(ca)
    }

    /// An HTTP client builder for the cluster's listeners: HTTPS, trusting its CA, when they
    /// serve TLS.
    pub fn http_client(&self) -> reqwest::ClientBuilder {
        Self::client_trusting(self.tls.as_ref())
    }

    /// A JetStream client of the cluster's NATS servers, over TLS with a client certificate
    /// when the cluster speaks it.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(files) = &self.tls {
            options = options
                .require_tls(true)
                .add_root_certificates(files.ca.clone())
                .add_client_certificate(files.client_cert.clone(), files.client_key.clone());
        }
        let client = options
            .connect(self.nats.urls().as_slice())
            .await
            .expect("a NATS client");
        async_nats::jetstream::new(client)
    }

    /// The stream of `shard`.
    pub async fn stream(&self, shard: u32) -> async_nats::jetstream::stream::Stream {
        let name = format!("LOGBRIDGE_logbridge_{shard}");
        self.jetstream()
            .await
            .get_stream(&name)
            .await
            .unwrap_or_else(|e| panic!("no stream {name}: {e}"))
    }

    /// The value of a sample of `node`'s `/metrics` (see [`super::metric`]).
    pub async fn metric(&self, node: &Node, sample: &str) -> f64 {
        super::metric_of(&self.client, &self.api_url(node), sample).await
    }

    /// The value of a sample of a labeled family of `node`'s `/metrics` (see
    /// [`super::labeled_metric`]): 0 while nothing with those labels was counted.
    pub async fn labeled_metric(&self, node: &Node, sample: &str) -> f64 {
        super::labeled_metric_of(&self.client, &self.api_url(node), sample).await
    }

    /// `GET {path_and_query}` on `node` as user `user`: the answer, whatever its status.
    pub async fn get_as(
        &self,
        node: &Node,
        user: usize,
        path_and_query: &str,
    ) -> reqwest::Response {
        self.client
            .get(format!("{}{path_and_query}", self.api_url(node)))
            .bearer_auth(self.readers[user].expose())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path_and_query} on {}: {e}", node.api))
    }

    /// The certificate `node`'s API listener serves now (DER), read from a fresh handshake.
    pub async fn served_certificate(&self, node: &Node) -> Vec<u8> {
        let client = self
            .http_client()
            .tls_info(true)
            .pool_max_idle_per_host(0)
            .timeout(PATIENCE)
            .build()
            .unwrap();
        let response = client
            .get(format!("{}/healthz", self.api_url(node)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("no TLS answer from {}: {e}", node.id));
        response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|info| info.peer_certificate())
            .expect("the handshake's certificate")
            .to_vec()
    }

    /// Replaces the certificate and key every node serves with new ones of the same CA.
    pub fn reissue_certificates(&self) {
        self.tls.as_ref().expect("a cluster with TLS").reissue();
    }

    /// The URL of `node`'s REST API.
    pub fn api_url(&self, node: &Node) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", node.api)
    }

    /// The TLS settings of a node: its listeners' certificate, and the CA and client
    /// certificate of each hop it makes.
    fn tls_settings(&self) -> (String, String) {
        let Some(files) = &self.tls else {
            return (String::new(), String::new());
        };
        let listeners = format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            files.cert.display(),
            files.key.display()
        );
        let (ca, cert, key) = (
            files.ca.display(),
            files.client_cert.display(),
            files.client_key.display(),
        );
        let hops = format!(
            "peer_ca_file = \"{ca}\"\n\
             nats_ca_file = \"{ca}\"\nnats_cert_file = \"{cert}\"\nnats_key_file = \"{key}\"\n\
             etcd_ca_file = \"{ca}\"\netcd_cert_file = \"{cert}\"\netcd_key_file = \"{key}\"\n"
        );
        (listeners, hops)
    }

    /// Starts a node with `role` named `id`.
    pub fn add_node(&mut self, role: &str, id: &str) {
        let (nats, etcd) = (self.nats.urls(), self.etcd.url.clone());
        self.add_node_via(role, id, &nats, &etcd, &[]);
    }

    /// Proxies to the NATS servers' client ports, and the URLs a node reaches NATS by through
    /// them: cutting them cuts that node off from NATS.
    pub async fn nats_proxies(&self) -> (Vec<Blackhole>, Vec<String>) {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        let mut proxies = Vec::new();
        for port in &self.nats.client_ports {
            proxies.push(Blackhole::start(0, format!("127.0.0.1:{port}")).await);
        }
        let urls = proxies
            .iter()
            .map(|p| format!("{scheme}://{}", p.addr))
            .collect();
        (proxies, urls)
    }

    /// A proxy to etcd, and the URL a node reaches etcd by through it.
    pub async fn etcd_proxy(&self) -> (Blackhole, String) {
        let (scheme, target) = self.etcd.url.split_once("://").expect("a URL");
        let proxy = Blackhole::start(0, target.to_owned()).await;
        let url = format!("{scheme}://{}", proxy.addr);
        (proxy, url)
    }

    /// Starts a node with `role` named `id` that reaches NATS at `nats` and etcd at `etcd`, with
    /// `env` (`LOGBRIDGE_*` overrides of its settings).
    pub fn add_node_via(
        &mut self,
        role: &str,
        id: &str,
        nats: &[String],
        etcd: &str,
        env: &[(&str, &str)],
    ) {
        let folder = self.dir.path().join(id);
        std::fs::create_dir_all(&folder).unwrap();
        let config = folder.join("logbridge.toml");
        let (listeners, hops) = self.tls_settings();
        let quoted = |urls: &[String]| {
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
                 [auth]\nkeys_file = \"{}\"\n{listeners}\
                 [cluster]\nrole = \"{role}\"\nnode_id = \"{id}\"\nshards = {SHARDS}\n\
                 indexer_replicas = {REPLICAS}\nnats_urls = [{}]\netcd_endpoints = [\"{}\"]\n{hops}{}\n",
                folder.join("index").display(),
                self.dir.path().join("keys.toml").display(),
                quoted(nats),
                etcd,
                self.cluster_settings,
            ),
        )
        .unwrap();
        let served = serve_with_env(&config, env);
        // the node says how it is reached: over TLS (and so advertised to gateways) or not
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let listening = served.printed.last().unwrap();
        assert!(
            listening.contains(&format!("tls={}", self.tls.is_some()))
                && listening.contains(&format!("advertise={scheme}://")),
            "{listening}"
        );
        let node = Node {
            id: id.to_owned(),
            api: served.api.clone(),
            grpc: served.grpc.clone(),
            served: Some(served),
            config,
            out_of_view: false,
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
        self.gateways.iter().filter(|g| g.live()).collect()
    }

    /// The gateways' OTLP/gRPC endpoints, dead ones included (a client tries them in turn).
    pub fn grpc(&self) -> GrpcTargets {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        GrpcTargets {
            urls: self
                .gateways
                .iter()
                .map(|g| format!("{scheme}://{}", g.grpc))
                .collect(),
            ca_pem: self.tls.as_ref().map(|files| files.ca_pem.clone()),
        }
    }

    /// `kill -9` of etcd: every node goes on with the view it last read, so the indexers of
    /// that view keep their shards, killed ones included.
    pub fn kill_etcd(&mut self) {
        self.frozen_view = Some(self.live_indexers());
        self.etcd.kill();
    }

    pub async fn restart_etcd(&mut self) {
        self.etcd.restart().await;
        self.frozen_view = None;
    }

    /// The live indexers, by position in `indexers`.
    fn live_indexers(&self) -> Vec<usize> {
        (0..self.indexers.len())
            .filter(|&n| self.indexers[n].live())
            .collect()
    }

    /// The indexers (positions in `indexers`) that own `shard` once the cluster's view has
    /// settled: the shard map's owners among the view's indexers (`docs/SCALING.md`). The view's
    /// indexers are the live ones, or while etcd is down those of the view every node kept; a
    /// test names every replica that must hold a shard.
    pub fn owners(&self, shard: u32) -> Vec<usize> {
        let members = self
            .frozen_view
            .clone()
            .unwrap_or_else(|| self.live_indexers());
        let ids: Vec<&str> = members
            .iter()
            .map(|&n| self.indexers[n].id.as_str())
            .collect();
        logbridge::cluster::owners(shard, &ids, REPLICAS)
            .into_iter()
            .map(|id| {
                members[ids
                    .iter()
                    .position(|m| *m == id)
                    .expect("an owner is a member")]
            })
            .collect()
    }

    /// `GET /shards/<shard>/logs?{query}` on indexer `indexer` as user `user`: the body when it
    /// answers 200 (it holds a caught-up replica of the shard), else what it answered instead.
    async fn on_replica(
        &self,
        indexer: usize,
        shard: u32,
        user: usize,
        query: &str,
    ) -> Result<Json, String> {
        let url = format!(
            "{}/shards/{shard}/logs?{query}",
            self.api_url(&self.indexers[indexer])
        );
        let response = self
            .client
            .get(url)
            .bearer_auth(self.readers[user].expose())
            .send()
            .await
            .map_err(|e| format!("no answer ({e})"))?;
        let status = response.status();
        if status != 200 {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("answered {status}: {text}"));
        }
        response
            .json()
            .await
            .map_err(|e| format!("answered 200 without a page ({e})"))
    }

    /// User `user`'s total on indexer `indexer`'s replica of `shard`, asked directly; what it
    /// answered instead when it does not serve the shard (holds no caught-up replica, is down).
    pub async fn replica_total(
        &self,
        indexer: usize,
        shard: u32,
        user: usize,
    ) -> Result<u64, String> {
        let body = self.on_replica(indexer, shard, user, "limit=1").await?;
        body["data"]["total"]
            .as_u64()
            .ok_or_else(|| format!("answered a page without a total: {body}"))
    }

    /// Asks indexer `indexer` directly for user `user`'s (home) shard: its total of that user's
    /// logs when it serves the shard, `None` when it holds no caught-up replica of it (or is
    /// down).
    pub async fn held(&self, indexer: usize, user: usize) -> Option<u64> {
        let shard = logbridge::cluster::shard_of(USERS[user], SHARDS);
        self.replica_total(indexer, shard, user).await.ok()
    }

    /// Every message of `user` in indexer `indexer`'s replica of `shard`, newest first (checked),
    /// walking it directly with cursors; what it answered instead when it does not serve it.
    pub async fn walk_replica(
        &self,
        indexer: usize,
        shard: u32,
        user: usize,
    ) -> Result<Vec<String>, String> {
        let mut all = Vec::new();
        let mut query = "limit=500".to_owned();
        let mut last_timestamp: Option<String> = None;
        loop {
            let body = self.on_replica(indexer, shard, user, &query).await?;
            for log in body["data"]["logs"].as_array().into_iter().flatten() {
                let timestamp = log["timestamp"].as_str().unwrap_or_default().to_owned();
                if let Some(last) = &last_timestamp {
                    assert!(
                        timestamp <= *last,
                        "indexer-{indexer}'s replica of shard {shard}: newest first, but {timestamp} after {last}"
                    );
                }
                last_timestamp = Some(timestamp);
            }
            all.extend(messages(&body["data"]));
            match body["data"]["next_cursor"].as_str() {
                Some(cursor) => query = format!("limit=500&cursor={cursor}"),
                None => return Ok(all),
            }
        }
    }

    /// Waits until every replica of `shards` that the cluster must have (their [`owners`])
    /// holds exactly its part of `sent`, user `user`'s acknowledged logs: the replicas of a shard
    /// the same logs, and the shards together every log of `sent`, as many times as it was sent.
    /// A replica on an indexer the test killed is left out, and named so; any other that does
    /// not answer, or holds anything else, fails the test after [`PATIENCE`], naming it and what
    /// it held. The totals by shard, in the order of `shards`.
    ///
    /// [`owners`]: TestCluster::owners
    pub async fn assert_replicas_exact(
        &self,
        user: usize,
        shards: &[u32],
        sent: &[String],
        when: &str,
    ) -> Vec<u64> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (totals, report) = self.replicas_exact(user, shards, sent).await;
            if let Some(totals) = totals {
                return totals;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: the replicas of user {user}'s shards never held exactly the {} acknowledged logs:\n{}",
                sent.len(),
                report.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One look at the replicas of [`TestCluster::assert_replicas_exact`]: the totals by shard
    /// when they hold exactly `sent`; and what each replica held.
    async fn replicas_exact(
        &self,
        user: usize,
        shards: &[u32],
        sent: &[String],
    ) -> (Option<Vec<u64>>, Vec<String>) {
        let mut report = Vec::new();
        let mut settled = true;
        // the live owners of each shard, and the total each holds
        let mut holders: Vec<Vec<(usize, u64)>> = Vec::new();
        for &shard in shards {
            let mut held = Vec::new();
            for indexer in self.owners(shard) {
                let replica = format!("indexer-{indexer}'s replica of shard {shard}");
                if !self.indexers[indexer].live() {
                    report.push(format!(
                        "{replica}: left out, the test killed indexer-{indexer} or took it out of the view"
                    ));
                    continue;
                }
                match self.replica_total(indexer, shard, user).await {
                    Ok(total) => {
                        report.push(format!("{replica}: {total} logs"));
                        held.push((indexer, total));
                    }
                    Err(why) => {
                        report.push(format!("{replica}: {why}"));
                        settled = false;
                    }
                }
            }
            if held.is_empty() {
                report.push(format!("shard {shard}: no live replica"));
                settled = false;
            }
            if held.windows(2).any(|pair| pair[0].1 != pair[1].1) {
                report.push(format!("shard {shard}: its replicas disagree"));
                settled = false;
            }
            holders.push(held);
        }
        let totals: Vec<u64> = holders
            .iter()
            .map(|held| held.first().map_or(0, |&(_, total)| total))
            .collect();
        if totals.iter().sum::<u64>() != sent.len() as u64 {
            report.push(format!(
                "the shards' totals {totals:?} add up to {}, not {}",
                totals.iter().sum::<u64>(),
                sent.len()
            ));
            settled = false;
        }
        if !settled {
            return (None, report);
        }
        // the totals agree: the logs themselves, replica by replica
        let mut together = Vec::new();
        for (&shard, held) in shards.iter().zip(&holders) {
            let mut first: Option<Vec<String>> = None;
            for &(indexer, total) in held {
                let replica = format!("indexer-{indexer}'s replica of shard {shard}");
                let mut walked = match self.walk_replica(indexer, shard, user).await {
                    Ok(walked) => walked,
                    Err(why) => {
                        report.push(format!("{replica}, walked: {why}"));
                        return (None, report);
                    }
                };
                if walked.len() as u64 != total {
                    report.push(format!(
                        "{replica}: a walk found {} logs of its total {total}",
                        walked.len()
                    ));
                    return (None, report);
                }
                walked.sort();
                match &first {
                    None => first = Some(walked),
                    Some(other) if *other != walked => {
                        let (lost, doubled) = differences(&walked, other);
                        report.push(format!(
                            "{replica}: other logs than the shard's first replica ({lost} of its missing, {doubled} more)"
                        ));
                        return (None, report);
                    }
                    Some(_) => {}
                }
            }
            together.extend(first.unwrap_or_default());
        }
        let (lost, doubled) = differences(&together, sent);
        if (lost, doubled) != (0, 0) {
            report.push(format!(
                "together: {lost} acknowledged logs missing, {doubled} stored more often than sent"
            ));
            return (None, report);
        }
        (Some(totals), report)
    }

    /// `GET /logs?{query}` through `gateway` as user `user`: status and body.
    pub async fn get(&self, gateway: &Node, user: usize, query: &str) -> (u16, Json) {
        let response = self
            .client
            .get(format!("{}/logs?{query}", self.api_url(gateway)))
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

    /// `DELETE /logs?{query}` through `gateway` as user `user`: status and body.
    pub async fn delete(&self, gateway: &Node, user: usize, query: &str) -> (u16, Json) {
        let response = self
            .client
            .delete(format!("{}/logs?{query}", self.api_url(gateway)))
            .bearer_auth(self.readers[user].expose())
            .send()
            .await
            .unwrap_or_else(|e| panic!("DELETE /logs?{query} through {}: {e}", gateway.api));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Json::Null))
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

/// How many acknowledged logs are missing from `stored`, and how many are there more often than
/// they were sent (logs compared by message; a message sent twice must be stored twice).
pub fn differences(stored: &[String], sent: &[String]) -> (usize, usize) {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for message in sent {
        *counts.entry(message).or_default() += 1;
    }
    for message in stored {
        *counts.entry(message).or_default() -= 1;
    }
    let lost = counts.values().filter(|n| **n > 0).sum::<i64>();
    let doubled = -counts.values().filter(|n| **n < 0).sum::<i64>();
    (lost as usize, doubled as usize)
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
    grpc: &GrpcTargets,
    first: usize,
    key: &Secret,
    records: Vec<LogRecord>,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    let request = request_of(records);
    let mut attempt = 0;
    loop {
        let target = first + attempt;
        attempt += 1;
        let sent = async {
            let mut client = grpc.connect(target).await?;
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

/// What a load acknowledged, by user, and how many exports it had to send again; shared with
/// the test while the load runs.
#[derive(Default)]
pub struct Load {
    pub acked: HashMap<usize, Vec<String>>,
    pub retries: usize,
}

pub type Acked = Arc<Mutex<Load>>;

/// Starts sending `batches` batches of `size` records for each user, through the gateways in
/// turn, each retried (through the next gateway) until acknowledged. Records are numbered from
/// `first_batch * size`, so later loads are newer.
pub fn start_load(
    cluster: &TestCluster,
    first_batch: u64,
    batches: u64,
    size: u64,
) -> (Acked, tokio::task::JoinHandle<()>) {
    let grpc = cluster.grpc();
    let key = cluster.ingest.clone();
    let acked: Acked = Arc::default();
    let shared = acked.clone();
    let task = tokio::spawn(async move {
        for batch in first_batch..first_batch + batches {
            for (user, name) in USERS.iter().enumerate() {
                let records = records(name, batch * size, size);
                let messages: Vec<String> = (batch * size..(batch + 1) * size)
                    .map(|n| format!("{name} record {n}"))
                    .collect();
                let attempts =
                    export_until_acknowledged(&grpc, batch as usize + user, &key, records).await;
                let mut load = shared.lock().unwrap();
                load.acked.entry(user).or_default().extend(messages);
                load.retries += attempts - 1;
            }
        }
    });
    (acked, task)
}

/// Waits until the load acknowledged at least `records` records in all.
pub async fn wait_acked(acked: &Acked, records: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked
        .lock()
        .unwrap()
        .acked
        .values()
        .map(Vec::len)
        .sum::<usize>()
        < records
    {
        assert!(
            Instant::now() < deadline,
            "the load stalled below {records} records"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the load acknowledged, once it ended, and how many exports it sent again.
pub async fn finished(
    acked: Acked,
    task: tokio::task::JoinHandle<()>,
) -> (HashMap<usize, Vec<String>>, usize) {
    task.await.unwrap();
    let load = acked.lock().unwrap();
    (load.acked.clone(), load.retries)
}

/// Waits until `user`'s total through `gateway` is `expected`.
pub async fn wait_for_total(cluster: &TestCluster, gateway: &Node, user: usize, expected: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = cluster.get(gateway, user, "limit=1").await;
        if status == 200 && body["data"]["total"].as_u64() == Some(expected as u64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "user {user} never reached {expected} logs through {}: {status} {body}",
            gateway.api
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that each user's logs, on each replica of its shard (every one the cluster must have,
/// but those on indexers the test killed) and walked through every live gateway, are exactly the
/// acknowledged messages, as many times as sent, newest first; waits for each replica to catch
/// up, and fails naming the one that does not.
pub async fn assert_exactly(
    cluster: &TestCluster,
    acked: &HashMap<usize, Vec<String>>,
    when: &str,
) {
    for (&user, messages) in acked {
        // each replica first: a failure names the one that does not hold what was acknowledged
        let shard = logbridge::cluster::shard_of(USERS[user], SHARDS);
        cluster
            .assert_replicas_exact(user, &[shard], messages, when)
            .await;
        for gateway in cluster.live_gateways() {
            wait_for_total(cluster, gateway, user, messages.len()).await;
            let stored = cluster.walk(gateway, user, "").await;
            let (lost, doubled) = differences(&stored, messages);
            assert_eq!(
                (lost, doubled, stored.len()),
                (0, 0, messages.len()),
                "{when}: user {user} through gateway {}: (lost, stored twice, stored)",
                gateway.api
            );
        }
    }
}

/// Spreads `user`'s logs over `shards` shards from ten minutes ahead on (far past the 60 s the
/// command asks for however late it runs; whole seconds, so that the printed cut-over is the one
/// given), and waits until every gateway knows it: the cut-over, in nanoseconds. Logs stamped
/// around it are taken: nothing refuses a timestamp ahead of the clock.
pub async fn spread(cluster: &TestCluster, user: usize, shards: u32) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let from = (now / 1_000_000_000 + 600) * 1_000_000_000;
    let from_text = chrono::DateTime::from_timestamp_nanos(from as i64).to_rfc3339();
    let seen = spreads_seen(cluster).await;
    let output = super::process::run(
        &cluster.gateways[0].config,
        &[
            "cluster",
            "spread",
            "--user",
            USERS[user],
            "--shards",
            &shards.to_string(),
            "--from",
            &from_text,
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!(
            "{}: logs stamped from {from_text} on spread over {shards} shards",
            USERS[user]
        )
    );
    wait_for_spread(cluster, seen).await;
    from
}

/// Spreads `user`'s logs over `shards` shards from `from` (nanoseconds) on, which may be past,
/// as a cluster that spread it back then holds it (the command asks for a cut-over ahead);
/// written to etcd as the command writes it, which a plaintext cluster lets the test do. Waits
/// until every gateway knows it.
pub async fn spread_since(cluster: &TestCluster, user: usize, shards: u32, from: u64) {
    use base64::Engine as _;
    assert!(
        cluster.tls.is_none(),
        "the test writes to etcd in plaintext"
    );
    let seen = spreads_seen(cluster).await;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let key = format!("/logbridge/logbridge/spreads/{}", USERS[user]);
    let value = serde_json::to_vec(&[logbridge::cluster::Spread { from, shards }]).unwrap();
    let response = cluster
        .client
        .post(format!("{}/v3/kv/put", cluster.etcd.url))
        .json(&serde_json::json!({ "key": b64(key.as_bytes()), "value": b64(&value) }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "etcd took the spread");
    wait_for_spread(cluster, seen).await;
}

/// How many spread users each gateway knows of.
async fn spreads_seen(cluster: &TestCluster) -> Vec<f64> {
    let mut seen = Vec::new();
    for gateway in &cluster.gateways {
        seen.push(
            cluster
                .metric(gateway, "logbridge_cluster_spread_users")
                .await,
        );
    }
    seen
}

/// Waits until each gateway knows of more spread users than `seen`.
async fn wait_for_spread(cluster: &TestCluster, seen: Vec<f64>) {
    for (gateway, before) in cluster.gateways.iter().zip(seen) {
        let deadline = Instant::now() + PATIENCE;
        while cluster
            .metric(gateway, "logbridge_cluster_spread_users")
            .await
            <= before
        {
            assert!(
                Instant::now() < deadline,
                "{} never saw the spread",
                gateway.api
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
