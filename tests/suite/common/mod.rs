//! A real logbridge on ephemeral ports with a temporary index, and clients to talk to it.

pub mod cluster;
#[path = "../../../benches/harness/mod.rs"]
pub mod harness;
pub mod process;
pub mod sse;
pub mod tmpfs;
pub mod tools;
pub mod webhooks;
pub mod window;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logbridge::auth::{KeyRecord, Scope, Secret};
use logbridge::config::Config;
use logbridge::faults::Faults;
use logbridge::server::{self, Listeners, RunningServer};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use serde_json::Value as Json;
use tempfile::TempDir;
use tokio::net::TcpListener;

/// The keys every test app knows.
pub struct Keys {
    /// Ingest only, no user: records must carry user.id.
    pub platform: Secret,
    /// Read, ingest and alert rules for user-alice.
    pub alice: Secret,
    /// Read, ingest and alert rules for user-bob.
    pub bob: Secret,
    /// Read only, for user-alice.
    pub alice_reader: Secret,
    /// Ingest only, for user-carol.
    pub carol_ingest: Secret,
    /// Read and delete, for user-alice.
    pub alice_eraser: Secret,
}

impl Keys {
    fn new() -> Self {
        Self {
            platform: Secret::generate(),
            alice: Secret::generate(),
            bob: Secret::generate(),
            alice_reader: Secret::generate(),
            carol_ingest: Secret::generate(),
            alice_eraser: Secret::generate(),
        }
    }

    pub fn records(&self) -> Vec<KeyRecord> {
        let key = |name: &str, secret: &Secret, scopes: &[Scope], user: Option<&str>| KeyRecord {
            name: name.to_owned(),
            sha256: secret.sha256(),
            scopes: scopes.to_vec(),
            user_id: user.map(str::to_owned),
            expires_at: None,
        };
        vec![
            key("platform", &self.platform, &[Scope::Ingest], None),
            key(
                "alice",
                &self.alice,
                &[Scope::Read, Scope::Ingest, Scope::Alerts],
                Some("user-alice"),
            ),
            key(
                "bob",
                &self.bob,
                &[Scope::Read, Scope::Ingest, Scope::Alerts],
                Some("user-bob"),
            ),
            key(
                "alice-reader",
                &self.alice_reader,
                &[Scope::Read],
                Some("user-alice"),
            ),
            key(
                "carol-ingest",
                &self.carol_ingest,
                &[Scope::Ingest],
                Some("user-carol"),
            ),
            key(
                "alice-eraser",
                &self.alice_eraser,
                &[Scope::Read, Scope::Delete],
                Some("user-alice"),
            ),
        ]
    }
}

/// A running logbridge and what a test needs to talk to it.
pub struct TestApp {
    pub server: Option<RunningServer>,
    pub dir: TempDir,
    pub keys: Keys,
    pub grpc_url: String,
    pub http_url: String,
    pub api_url: String,
    pub client: reqwest::Client,
}

/// Options of a test app.
pub struct AppOptions {
    pub commit_interval_ms: u64,
    pub max_message_bytes: usize,
    pub max_inflight_bytes: usize,
    /// Storage faults the test arms on command.
    pub faults: Faults,
    pub max_concurrent_searches: usize,
    /// More settings, as `LOGBRIDGE_<SECTION>_<KEY>` overrides.
    pub settings: Vec<(&'static str, String)>,
    /// The send buffer of the REST API's connections, when set: small, what the server sends
    /// is what its client takes, not what the kernel's buffers (megabytes on loopback) hold.
    pub api_send_buffer_bytes: Option<u32>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            commit_interval_ms: 60_000,
            max_message_bytes: 16 * 1024 * 1024,
            max_inflight_bytes: 256 * 1024 * 1024,
            faults: Faults::none(),
            max_concurrent_searches: 8,
            settings: Vec::new(),
            api_send_buffer_bytes: None,
        }
    }
}

/// Starts logbridge with default test options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// Starts logbridge on port 0 everywhere, with a temporary index and keys file.
pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    init_test_logging();
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = Keys::new();
    write_keys_file(&dir.path().join("keys.toml"), &keys.records());
    let mut app = TestApp {
        server: None,
        dir,
        keys,
        grpc_url: String::new(),
        http_url: String::new(),
        api_url: String::new(),
        client: client(),
    };
    app.start(&options).await;
    app
}

/// An HTTP client whose every wait (to connect, for the next bytes) fails after [`PATIENCE`]:
/// a server that stops answering fails the test rather than hanging it.
pub fn client() -> reqwest::Client {
    harness::plain_http()
        .connect_timeout(PATIENCE)
        .read_timeout(PATIENCE)
        .build()
        .expect("an HTTP client")
}

fn init_test_logging() {
    // the HTTPS clients of the tests take the process's rustls provider
    logbridge::server::install_provider();
    // TEST_LOG=debug shows the server's logs while tests run.
    if let Ok(level) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_test_writer()
            .try_init();
    }
}

pub fn write_keys_file(path: &Path, keys: &[KeyRecord]) {
    let mut text = String::new();
    for key in keys {
        let scopes: Vec<String> = key
            .scopes
            .iter()
            .map(|s| format!("\"{}\"", s.as_str()))
            .collect();
        text.push_str(&format!(
            "[[keys]]\nname = \"{}\"\nsha256 = \"{}\"\nscopes = [{}]\n",
            key.name,
            hex::encode(key.sha256),
            scopes.join(", ")
        ));
        if let Some(user) = &key.user_id {
            text.push_str(&format!("user_id = \"{user}\"\n"));
        }
        if let Some(at) = &key.expires_at {
            text.push_str(&format!("expires_at = \"{}\"\n", at.to_rfc3339()));
        }
    }
    std::fs::write(path, text).expect("write keys file");
}

impl TestApp {
    /// The config of this app: everything on 127.0.0.1:0, data in the temp dir.
    pub fn config(&self, options: &AppOptions) -> Config {
        let env: HashMap<String, String> = [
            ("LOGBRIDGE_OTLP_GRPC_LISTEN", "127.0.0.1:0".to_owned()),
            ("LOGBRIDGE_OTLP_HTTP_LISTEN", "127.0.0.1:0".to_owned()),
            (
                "LOGBRIDGE_OTLP_MAX_MESSAGE_BYTES",
                options.max_message_bytes.to_string(),
            ),
            ("LOGBRIDGE_API_LISTEN", "127.0.0.1:0".to_owned()),
            (
                "LOGBRIDGE_API_MAX_CONCURRENT_SEARCHES",
                options.max_concurrent_searches.to_string(),
            ),
            (
                "LOGBRIDGE_INDEX_PATH",
                self.index_path().display().to_string(),
            ),
            (
                "LOGBRIDGE_INDEX_COMMIT_INTERVAL_MS",
                options.commit_interval_ms.to_string(),
            ),
            ("LOGBRIDGE_INDEX_WRITER_MEMORY_MB", "32".to_owned()),
            (
                "LOGBRIDGE_OTLP_MAX_INFLIGHT_BYTES",
                options.max_inflight_bytes.to_string(),
            ),
            (
                "LOGBRIDGE_AUTH_KEYS_FILE",
                self.dir.path().join("keys.toml").display().to_string(),
            ),
        ]
        .into_iter()
        .chain(options.settings.iter().cloned())
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Config::load(
            Some(Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/logbridge.toml"
            ))),
            &env,
        )
        .expect("test config")
    }

    pub fn index_path(&self) -> PathBuf {
        self.dir.path().join("index")
    }

    async fn start(&mut self, options: &AppOptions) {
        let config = self.config(options);
        let listeners = Listeners {
            grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            api: match options.api_send_buffer_bytes {
                None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
                Some(bytes) => {
                    // accepted connections inherit the listening socket's buffer size
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.set_send_buffer_size(bytes).unwrap();
                    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
                    socket.listen(1024).unwrap()
                }
            },
        };
        let server = server::start_with_faults(&config, listeners, options.faults.clone())
            .await
            .expect("server starts");
        assert!(server.ready().await, "the writer starts");
        let addresses = server.addresses;
        self.grpc_url = format!("http://{}", addresses.grpc);
        self.http_url = format!("http://{}", addresses.http);
        self.api_url = format!("http://{}", addresses.api);
        self.server = Some(server);
    }

    /// Shuts the server down cleanly and starts it again on the same index.
    pub async fn restart(&mut self) {
        self.restart_with(&AppOptions::default()).await;
    }

    /// Shuts the server down cleanly and starts it again on the same index with `options`.
    pub async fn restart_with(&mut self, options: &AppOptions) {
        self.server.take().expect("running").shutdown().await;
        self.start(options).await;
    }

    /// Commits what was accepted so far, so `/logs` shows it.
    pub async fn flush(&self) {
        self.server
            .as_ref()
            .expect("running")
            .flush()
            .await
            .expect("flush");
    }

    /// A gRPC client of the OTLP logs service.
    pub async fn grpc_client(&self) -> LogsServiceClient<tonic::transport::Channel> {
        LogsServiceClient::connect(self.grpc_url.clone())
            .await
            .expect("grpc connect")
    }

    /// Exports records over gRPC with `key`.
    pub async fn export(
        &self,
        key: &Secret,
        records: Vec<LogRecord>,
    ) -> Result<ExportLogsServiceResponse, tonic::Status> {
        let request = authorized(request_of(records), key);
        self.grpc_client()
            .await
            .export(request)
            .await
            .map(|r| r.into_inner())
    }

    /// Exports `body`, an `ExportLogsServiceRequest` encoded beforehand (or bytes no client
    /// would send), over gRPC with alice's key.
    pub async fn export_raw(&self, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        let channel = tonic::transport::Channel::from_shared(self.grpc_url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let authorization = format!("Bearer {}", self.keys.alice.expose());
        harness::raw_grpc::export(channel, &authorization, body.into()).await
    }

    /// Exports records with `key` and commits them; panics unless all are accepted.
    pub async fn ingest(&self, key: &Secret, records: Vec<LogRecord>) {
        let response = self.export(key, records).await.expect("export");
        assert_eq!(response.partial_success, None, "every record is accepted");
        self.flush().await;
    }

    /// Ingests `count` tool calls (`log 0`, `log 1`, ...) with `key`, 5,000 an export, and
    /// commits them.
    pub async fn ingest_many(&self, key: &Secret, count: u64) {
        for first in (0..count).step_by(5_000) {
            let records = (first..count.min(first + 5_000))
                .map(|n| activity("tool_call", at_ms(n), &format!("log {n}")))
                .collect();
            self.ingest(key, records).await;
        }
    }

    /// `GET /logs?{query}` with `key`: status and JSON body.
    pub async fn get_logs(&self, key: Option<&Secret>, query: &str) -> (u16, Json) {
        self.call_logs(reqwest::Method::GET, key, query).await
    }

    /// `DELETE /logs?{query}` with `key`: status and JSON body.
    pub async fn delete_logs(&self, key: Option<&Secret>, query: &str) -> (u16, Json) {
        self.call_logs(reqwest::Method::DELETE, key, query).await
    }

    async fn call_logs(
        &self,
        method: reqwest::Method,
        key: Option<&Secret>,
        query: &str,
    ) -> (u16, Json) {
        let url = format!("{}/logs?{query}", self.api_url);
        let mut request = self.client.request(method.clone(), url);
        if let Some(key) = key {
            request = request.bearer_auth(key.expose());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} /logs: {e}"));
        let status = response.status().as_u16();
        let body = response.json::<Json>().await.expect("JSON body");
        (status, body)
    }

    /// `GET /logs` that must succeed: the `data` object.
    pub async fn logs(&self, key: &Secret, query: &str) -> Json {
        let (status, body) = self.get_logs(Some(key), query).await;
        assert_eq!(status, 200, "{body}");
        body["data"].clone()
    }
}

/// `GET /readyz`: status and body.
pub async fn readyz(api_url: &str) -> (u16, String) {
    let response = client()
        .get(format!("{api_url}/readyz"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Polls `/readyz` until it answers `status`; panics after [`PATIENCE`].
pub async fn wait_for_readyz(api_url: &str, status: u16) -> (u16, String) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let answer = readyz(api_url).await;
        if answer.0 == status {
            return answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never answered {status}; last: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gRPC request carrying `key` as its bearer token.
pub fn authorized<T>(message: T, key: &Secret) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", key.expose()).parse().unwrap(),
    );
    request
}

/// The value of one sample line of `/metrics` at `api_url`, e.g. `logbridge_index_logs`; the
/// test fails when the server does not serve it (a renamed or missing metric).
pub async fn metric(api_url: &str, sample: &str) -> f64 {
    metric_of(&client(), api_url, sample).await
}

/// [`metric`], asked with `client` (one that trusts a server's TLS certificate, say).
pub async fn metric_of(client: &reqwest::Client, api_url: &str, sample: &str) -> f64 {
    let text = metrics_text(client, api_url).await;
    sample_value(&text, sample).unwrap_or_else(|| panic!("/metrics has no {sample}:\n{text}"))
}

/// The value of a sample of a labeled family, e.g. `logbridge_otlp_exports_total{...}`: 0 while
/// nothing with those labels was counted, but the test fails when the family itself is not
/// served.
pub async fn labeled_metric(api_url: &str, sample: &str) -> f64 {
    labeled_metric_of(&client(), api_url, sample).await
}

/// [`labeled_metric`], asked with `client`.
pub async fn labeled_metric_of(client: &reqwest::Client, api_url: &str, sample: &str) -> f64 {
    let text = metrics_text(client, api_url).await;
    let name = sample.split('{').next().unwrap_or(sample);
    let family = name.strip_suffix("_total").unwrap_or(name);
    assert!(
        text.lines()
            .any(|line| line.starts_with(&format!("# TYPE {family} "))),
        "/metrics has no family {family}:\n{text}"
    );
    sample_value(&text, sample).unwrap_or(0.0)
}

async fn metrics_text(client: &reqwest::Client, api_url: &str) -> String {
    client
        .get(format!("{api_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// One export request holding `records` under one resource and scope.
pub fn request_of(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: None,
            scope_logs: vec![ScopeLogs {
                scope: None,
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn text(s: &str) -> Value {
    Value::StringValue(s.to_owned())
}

/// An activity log record: `log_type` at `time_unix_nano` with `message`, assistant `asst-1`
/// and room `room-1`; add attributes with [`with_attr`].
pub fn activity(log_type: &str, time_unix_nano: u64, message: &str) -> LogRecord {
    LogRecord {
        time_unix_nano,
        severity_number: 9,
        severity_text: "INFO".to_owned(),
        body: Some(AnyValue {
            value: Some(text(message)),
        }),
        attributes: vec![
            kv("activity.log_type", text(log_type)),
            kv("activity.assistant_id", text("asst-1")),
            kv("activity.room_name", text("room-1")),
            kv("activity.latency_ms", Value::IntValue(100)),
        ],
        ..Default::default()
    }
}

/// The record with one more attribute (replacing one of the same key).
pub fn with_attr(mut record: LogRecord, key: &str, value: Value) -> LogRecord {
    record.attributes.retain(|kv| kv.key != key);
    record.attributes.push(kv(key, value));
    record
}

/// Now, in nanoseconds since the epoch.
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// `days` days before now, in nanoseconds since the epoch.
pub fn days_ago(days: f64) -> u64 {
    now_nanos() - (days * 86_400e9) as u64
}

/// Bytes of the files under `dir`, recursively. The index deletes files
/// while it is walked (merges and garbage collection): one gone between its
/// listing and its size holds no bytes any more.
pub fn dir_bytes(dir: &Path) -> u64 {
    fn gone(err: &std::io::Error) -> bool {
        err.kind() == std::io::ErrorKind::NotFound
    }
    let entries = match std::fs::read_dir(dir) {
        Err(err) if gone(&err) => return 0,
        listing => listing.unwrap(),
    };
    entries
        .map(|entry| {
            let entry = entry.unwrap();
            match entry.metadata() {
                Err(err) if gone(&err) => 0,
                Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
                meta => meta.unwrap().len(),
            }
        })
        .sum()
}

/// 2026-03-10T09:15:42.000Z plus `offset_ms` milliseconds, in nanoseconds.
pub fn at_ms(offset_ms: u64) -> u64 {
    1_773_134_142_000_000_000 + offset_ms * 1_000_000
}

/// Panics unless every message of `acked` is in `stored` and none of `stored` is there twice;
/// `when` says at which point of the test.
pub fn assert_each_acknowledged_once(stored: &[String], acked: &[String], when: &str) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for message in stored {
        *counts.entry(message).or_default() += 1;
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(3).collect();
    assert!(doubled.is_empty(), "{when}: stored twice: {doubled:?}");
    let lost: Vec<_> = acked
        .iter()
        .filter(|m| !counts.contains_key(m.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{when}: {} of {} acknowledged records lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
}

/// Exports refused for overload or failing storage so far: gRPC `UNAVAILABLE` and HTTP 503.
pub async fn refused_exports(api_url: &str) -> f64 {
    labeled_metric(
        api_url,
        "logbridge_otlp_exports_total{transport=\"grpc\",status=\"UNAVAILABLE\"}",
    )
    .await
        + labeled_metric(
            api_url,
            "logbridge_otlp_exports_total{transport=\"http\",status=\"503\"}",
        )
        .await
}

/// The `message` of every log of a `/logs` page, in order.
pub fn messages(data: &Json) -> Vec<String> {
    data["logs"]
        .as_array()
        .expect("logs array")
        .iter()
        .map(|log| log["message"].as_str().expect("message").to_owned())
        .collect()
}

/// How long a test waits for something that should take far less.
pub const PATIENCE: Duration = Duration::from_secs(20);
