//! The benchmark harness: a logbridge server as a child process, pre-encoded OTLP traffic from the
//! deterministic workload, and timed ingest and query runs. `benches/ingest.rs` and
//! `benches/query.rs` drive it at full size; `tests/suite/bench_smoke.rs` at a tiny one.
#![allow(dead_code)] // each driver uses its own part

pub mod blackhole;
pub mod browser;
pub mod certs;
pub mod engines;
pub mod flood;
pub mod raw_grpc;
pub mod rss;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use logbridge::auth::Secret;
use logbridge::workload::Workload;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use prost::Message as _;

/// 2026-03-10T00:00:00Z: the generated traffic starts here, one record per millisecond.
pub const BASE_NANOS: u64 = 1_773_100_800_000_000_000;
/// The user who owns about 30% of the records, and a small one.
pub const LARGE_USER: &str = "user-000";
pub const SMALL_USER: &str = "user-090";
/// Seed of the benchmark traffic.
pub const SEED: u64 = 42;
/// Records per export, as SDK batch processors send them.
pub const BATCH: usize = 512;

/// An HTTP client builder for the servers here, which speak plain HTTP on loopback: it trusts
/// no certificate, so a client is built without reading and parsing the system's CA bundle (tens
/// of milliseconds in a debug build, where the tests build many).
pub fn plain_http() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_certs_only([])
}

/// Where `tests/tools/install` puts the virtualenv of a tool it installs from PyPI: the user's
/// cache folder, `logbridge/<name>-<version>`, the version being the script's `<variable>=`.
pub fn tool_venv(variable: &str, name: &str) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/install");
    let install = std::fs::read_to_string(script).expect("tests/tools/install is readable");
    let version = install
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{variable}=")))
        .unwrap_or_else(|| panic!("tests/tools/install names no {variable}"));
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    cache.join(format!("logbridge/{name}-{version}"))
}

/// A logbridge child process with its keys.
pub struct Server {
    child: Child,
    pub dir: PathBuf,
    pub grpc: String,
    pub http: String,
    pub api: String,
    /// Bearer header of the platform ingest key.
    pub ingest: String,
    /// Read keys of [`LARGE_USER`], [`SMALL_USER`] and `probe`.
    pub large_reader: String,
    pub small_reader: String,
    pub probe: String,
    /// Time from spawn to `/readyz` answering 200.
    pub startup: Duration,
}

fn bearer(secret: &Secret) -> String {
    format!("Bearer {}", secret.expose())
}

/// The keys of a benchmark's servers: a platform ingest key and read keys of [`LARGE_USER`],
/// [`SMALL_USER`] and `probe`.
pub struct BenchKeys {
    secrets: Vec<Secret>,
}

impl BenchKeys {
    pub fn generate() -> Self {
        Self {
            secrets: (0..4).map(|_| Secret::generate()).collect(),
        }
    }

    /// Writes the keys file `dir/keys.toml`.
    pub fn write(&self, dir: &Path) {
        let key = |name: &str, secret: &Secret, scopes: &str, user: Option<&str>| {
            let user = user.map_or(String::new(), |u| format!("user_id = \"{u}\"\n"));
            format!(
                "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [{scopes}]\n{user}",
                hex::encode(secret.sha256())
            )
        };
        let secrets = &self.secrets;
        let keys = [
            key("ingest", &secrets[0], "\"ingest\"", None),
            key(
                "large",
                &secrets[1],
                "\"read\", \"ingest\"",
                Some(LARGE_USER),
            ),
            key("small", &secrets[2], "\"read\"", Some(SMALL_USER)),
            key("probe", &secrets[3], "\"read\", \"ingest\"", Some("probe")),
        ]
        .join("\n");
        std::fs::write(dir.join("keys.toml"), keys).unwrap();
    }
}

impl Server {
    /// Starts `bin` on `dir` (created if needed; an index there is reused) on ephemeral ports.
    pub async fn start(bin: &str, dir: &Path, commit_interval_ms: u64) -> Server {
        let index = format!("commit_interval_ms = {commit_interval_ms}");
        Self::start_with(bin, dir, &index, &BenchKeys::generate(), "").await
    }

    /// Starts `bin` on `dir` with `keys`, `index` settings in its `[index]` section and `extra`
    /// TOML (other sections) in its config.
    pub async fn start_with(
        bin: &str,
        dir: &Path,
        index: &str,
        keys: &BenchKeys,
        extra: &str,
    ) -> Server {
        // the HTTP clients take the process's rustls provider
        logbridge::server::install_provider();
        std::fs::create_dir_all(dir).unwrap();
        keys.write(dir);
        let secrets = &keys.secrets;
        let config = dir.join("logbridge.toml");
        std::fs::write(
            &config,
            format!(
                "[otlp]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
                 [api]\nlisten = \"127.0.0.1:0\"\n\
                 [index]\npath = \"{}\"\n{index}\n\
                 [auth]\nkeys_file = \"{}\"\n[log]\nlevel = \"warn,logbridge::server=info,logbridge::cluster=info\"\n{extra}",
                dir.join("index").display(),
                dir.join("keys.toml").display()
            ),
        )
        .unwrap();
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn logbridge");
        let stderr = BufReader::new(child.stderr.take().expect("piped"));
        let mut lines = stderr.lines();
        let listening = loop {
            let line = lines
                .next()
                .expect("logbridge exited before listening")
                .unwrap();
            if line.contains("logbridge listening") {
                break line;
            }
        };
        // keep draining stderr so the server never blocks on it
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        let field = |name: &str| {
            listening
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .expect("address in the listening line")
                .to_owned()
        };
        let mut server = Server {
            child,
            dir: dir.to_owned(),
            grpc: format!("http://{}", field("otlp_grpc")),
            http: format!("http://{}/v1/logs", field("otlp_http")),
            api: format!("http://{}", field("api")),
            ingest: bearer(&secrets[0]),
            large_reader: bearer(&secrets[1]),
            small_reader: bearer(&secrets[2]),
            probe: bearer(&secrets[3]),
            startup: Duration::ZERO,
        };
        let client = plain_http().build().expect("an HTTP client");
        loop {
            let ready = client
                .get(format!("{}/readyz", server.api))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(600), "never ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.startup = started.elapsed();
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the server so far, in bytes (Linux `VmHWM`).
    pub fn peak_rss_bytes(&self) -> u64 {
        rss::peak_rss(self.child.id())
    }

    /// The value of a sample in the server's `/metrics` (a gauge, a counter, a histogram's
    /// `_count` or `_sum`).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = plain_http()
            .build()
            .expect("an HTTP client")
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    /// Waits for the server's first warm-up of the index it opened (the block statistics of its
    /// large users) and returns how long that took, as the server measured it. An index without
    /// a user of 65,536 logs in one segment has nothing to warm: this then panics after a minute.
    pub async fn warmed(&self) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .metric("logbridge_index_warm_duration_seconds_count")
            .await
            < 1.0
        {
            assert!(
                Instant::now() < deadline,
                "no warm-up in a minute: has a user 65,536 logs in a segment?"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seconds = self
            .metric("logbridge_index_warm_duration_seconds_sum")
            .await;
        Duration::from_secs_f64(seconds)
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Bytes of the files under `dir`.
pub fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Encodes the workload into export requests of [`BATCH`] records, continuing where it stopped;
/// record n is stamped [`BASE_NANOS`] + n ms.
pub struct RequestEncoder {
    workload: Workload,
    encoded: u64,
    base_nanos: u64,
    /// Every record's user, in place of the workload's.
    user: Option<String>,
}

impl RequestEncoder {
    pub fn new(seed: u64) -> Self {
        Self {
            workload: Workload::new(seed),
            encoded: 0,
            base_nanos: BASE_NANOS,
            user: None,
        }
    }

    /// An encoder of `user`'s records only, naming `assistants` assistants, record n stamped
    /// `base_nanos` + n ms.
    pub fn of_user(seed: u64, user: &str, assistants: usize, base_nanos: u64) -> Self {
        Self {
            workload: Workload::with_assistants(seed, assistants),
            encoded: 0,
            base_nanos,
            user: Some(user.to_owned()),
        }
    }

    /// The next `count` records (the last request may be shorter than a batch).
    pub fn encode(&mut self, count: usize) -> Vec<Bytes> {
        let mut requests = Vec::with_capacity(count.div_ceil(BATCH));
        let mut left = count;
        while left > 0 {
            let size = left.min(BATCH);
            let records = (0..size)
                .map(|_| {
                    self.encoded += 1;
                    let mut activity = self.workload.next_activity();
                    if let Some(user) = &self.user {
                        activity.user_id.clone_from(user);
                    }
                    activity.to_log_record(self.base_nanos + self.encoded * 1_000_000)
                })
                .collect();
            let request = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: records,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            requests.push(Bytes::from(request.encode_to_vec()));
            left -= size;
        }
        requests
    }
}

/// How exports travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
}

/// The figures of one ingest run.
#[derive(Debug, Clone)]
pub struct IngestReport {
    pub records: usize,
    pub bytes: usize,
    pub seconds: f64,
    pub export_p50: Duration,
    pub export_p99: Duration,
    pub visible_p50: Duration,
    pub visible_p99: Duration,
    pub refused: usize,
    /// `GET /logs` requests the visibility probe sent.
    pub probe_requests: u64,
}

impl IngestReport {
    pub fn records_per_second(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    pub fn mb_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

/// Records in an encoded export request.
fn record_count(body: &Bytes) -> usize {
    ExportLogsServiceRequest::decode(body.clone())
        .map(|r| {
            r.resource_logs
                .iter()
                .flat_map(|rl| &rl.scope_logs)
                .map(|sl| sl.log_records.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `p`-th percentile (0..=100) of `samples`, sorted in place.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// Sends every request with `exporters` concurrent clients, each waiting for its answer before
/// the next (as SDK exporters do), while a probe measures how long an acknowledged record takes
/// to show in `/logs`. Refused exports (overload) are retried after the advertised second.
pub async fn ingest(
    server: &Server,
    requests: Vec<Bytes>,
    exporters: usize,
    transport: Transport,
) -> IngestReport {
    let records: usize = requests.iter().map(record_count).sum();
    let bytes: usize = requests.iter().map(Bytes::len).sum();
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let http = plain_http().build().expect("an HTTP client");

    let probe = tokio::spawn(probe_visibility(
        channel.clone(),
        server.probe.clone(),
        server.api.clone(),
        done.clone(),
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..exporters {
        let (requests, next, refused) = (requests.clone(), next.clone(), refused.clone());
        let channel = channel.clone();
        let http = http.clone();
        let (url, key) = (server.http.clone(), server.ingest.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = requests.get(i) else {
                    return latencies;
                };
                loop {
                    let sent = Instant::now();
                    let accepted = match transport {
                        Transport::Grpc => {
                            match raw_grpc::export(channel.clone(), &key, body.clone()).await {
                                Ok(_) => true,
                                Err(s) if s.code() == tonic::Code::Unavailable => false,
                                Err(s) => panic!("export failed: {s:?}"),
                            }
                        }
                        Transport::HttpProtobuf => {
                            let response = http
                                .post(&url)
                                .header("authorization", &key)
                                .header("content-type", "application/x-protobuf")
                                .body(body.clone())
                                .send()
                                .await
                                .expect("HTTP export");
                            match response.status().as_u16() {
                                200 => true,
                                429 | 503 => false,
                                other => panic!("export failed with HTTP {other}"),
                            }
                        }
                    };
                    if accepted {
                        latencies.push(sent.elapsed());
                        break;
                    }
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let mut visible = probe.await.unwrap();
    IngestReport {
        records,
        bytes,
        seconds,
        export_p50: percentile(&mut latencies, 50.0),
        export_p99: percentile(&mut latencies, 99.0),
        visible_p50: percentile(&mut visible, 50.0),
        visible_p99: percentile(&mut visible, 99.0),
        refused: refused.load(Ordering::Relaxed),
        probe_requests: PROBE_REQUESTS.swap(0, Ordering::Relaxed),
    }
}

/// Every 100 ms, independently of the ingest load and of earlier probes, exports one record for
/// user `probe`; returns the times from acknowledgement to visibility. One poller asks `/logs`,
/// every 5 ms, whether the oldest probe acknowledged and not seen yet shows; once it does, it asks
/// for every other one acknowledged by then at once, as a commit shows them together. (A poller
/// per probe sent a few hundred to a thousand requests a second while ingest ran, which took the
/// cores from the ingest it measures.) Its last probe starts after `done`, so when it returns
/// everything acknowledged before is visible too.
async fn probe_visibility(
    channel: tonic::transport::Channel,
    key: String,
    api: String,
    done: Arc<AtomicBool>,
) -> Vec<Duration> {
    // probes acknowledged and not seen yet: when each was acknowledged
    let acked: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let sender = tokio::spawn({
        let (acked, key) = (acked.clone(), key.clone());
        async move {
            let mut exports = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let n = PROBES.fetch_add(1, Ordering::Relaxed);
                let finishing = done.load(Ordering::Relaxed);
                let (channel, key, acked) = (channel.clone(), key.clone(), acked.clone());
                exports.spawn(async move {
                    // a probe refused for overload measures nothing
                    if export_probe(n, channel, &key).await {
                        acked.lock().unwrap().insert(n, Instant::now());
                    }
                });
                if finishing {
                    break;
                }
            }
            exports.join_all().await;
        }
    });
    let client = plain_http().build().expect("an HTTP client");
    let shows = |n: u64| {
        let (client, api, key) = (client.clone(), api.clone(), key.clone());
        async move {
            PROBE_REQUESTS.fetch_add(1, Ordering::Relaxed);
            let body: serde_json::Value = client
                .get(format!("{api}/logs?q=probe{n}&limit=1"))
                .header("authorization", key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["data"]["total"] == 1
        }
    };
    let mut samples = Vec::new();
    loop {
        let oldest = acked.lock().unwrap().pop_first();
        let Some((n, at)) = oldest else {
            if sender.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if !shows(n).await {
            acked.lock().unwrap().insert(n, at);
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        samples.push(at.elapsed());
        let others = std::mem::take(&mut *acked.lock().unwrap());
        let mut asked = tokio::task::JoinSet::new();
        for (n, at) in others {
            let shows = shows(n);
            asked.spawn(async move { (n, at, shows.await) });
        }
        for (n, at, shown) in asked.join_all().await {
            if shown {
                samples.push(at.elapsed());
            } else {
                acked.lock().unwrap().insert(n, at);
            }
        }
    }
    sender.await.unwrap();
    samples
}

/// Probes sent by this process: each probe's message is unique.
static PROBES: AtomicU64 = AtomicU64::new(0);
/// `GET /logs` requests the probes sent, since an ingest report last took them.
static PROBE_REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Exports probe record `probe{n}`; whether it was acknowledged.
async fn export_probe(n: u64, channel: tonic::transport::Channel, key: &str) -> bool {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
    let mut record = Workload::new(n).next_activity().to_log_record(BASE_NANOS);
    record.body = Some(AnyValue {
        value: Some(Value::StringValue(format!("probe{n}"))),
    });
    record.attributes.retain(|kv| kv.key != "user.id");
    let body = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![record],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec();
    raw_grpc::export(channel, key, body.into()).await.is_ok()
}

/// The figures of one query type.
#[derive(Debug, Clone)]
pub struct QueryReport {
    pub name: String,
    /// The first request: per-segment caches of this query still empty.
    pub cold: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub per_second: f64,
    pub total: u64,
}

/// Runs `GET {path}?{query}` (`/logs`, `/logs/stats`) `requests` times from `clients` concurrent
/// clients, after a warm-up of `clients` requests whose first is timed on its own.
pub async fn query(
    server: &Server,
    name: &str,
    key: &str,
    (path, query): (&str, &str),
    clients: usize,
    requests: usize,
) -> QueryReport {
    let url = format!("{}{path}?{query}", server.api);
    let client = plain_http().build().expect("an HTTP client");
    let get = |client: reqwest::Client, url: String, key: String| async move {
        let response = client
            .get(&url)
            .header("authorization", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let body: serde_json::Value = response.json().await.unwrap();
        body["data"]["total"].as_u64().unwrap()
    };
    let first = Instant::now();
    let mut total = get(client.clone(), url.clone(), key.to_owned()).await;
    let cold = first.elapsed();
    for _ in 1..clients {
        total = get(client.clone(), url.clone(), key.to_owned()).await;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, key, next) = (client.clone(), url.clone(), key.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let sent = Instant::now();
                get(client.clone(), url.clone(), key.clone()).await;
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    QueryReport {
        name: name.to_owned(),
        cold,
        p50: percentile(&mut latencies, 50.0),
        p99: percentile(&mut latencies, 99.0),
        per_second: requests as f64 / seconds,
        total,
    }
}

/// The query types of the query benchmark: name, which reader (the large user's or the small
/// one's), the path and the query string. `newest` is the timestamp of the newest record, for a
/// one-hour range ending there.
pub fn query_types(newest_nanos: u64) -> Vec<(&'static str, bool, &'static str, String)> {
    let hour_ago = newest_nanos.saturating_sub(3_600_000_000_000);
    let rfc3339 = |nanos: u64| {
        chrono::DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    // an assistant and a room of the large user, from the traffic the encoder sends
    let activity = Workload::new(SEED)
        .find(|a| a.user_id == LARGE_USER)
        .expect("the large user has records");
    let (assistant, room) = (activity.assistant_id, activity.room_name);
    // and a caller of one of its context lookups
    let caller = Workload::new(SEED)
        .filter(|a| a.user_id == LARGE_USER)
        .find_map(|a| {
            a.request_data["payload"]["caller_number"]
                .as_str()
                .map(str::to_owned)
        })
        .expect("the large user looks up callers");
    let q = |q: &str| {
        format!(
            "{}&limit=50",
            serde_urlencoded::to_string([("q", q)]).unwrap()
        )
    };
    let one_hour = format!(
        "start_time={}&end_time={}",
        rfc3339(hour_ago),
        rfc3339(newest_nanos + 1)
    );
    let logs = [
        ("no filter, large user", true, "limit=50".to_owned()),
        ("no filter, small user", false, "limit=50".to_owned()),
        (
            "log_type",
            true,
            "log_type=end_call_webhook&limit=50".to_owned(),
        ),
        ("status", true, "status=error&limit=50".to_owned()),
        (
            "assistant_id",
            true,
            format!("assistant_id={assistant}&limit=50"),
        ),
        ("room_name", true, format!("room_name={room}&limit=50")),
        (
            "log_type + status",
            true,
            "log_type=tool_call&status=error&limit=50".to_owned(),
        ),
        ("q one word", true, "q=timeout&limit=50".to_owned()),
        (
            "q two words",
            true,
            "q=webhook%20delivered&limit=50".to_owned(),
        ),
        ("q phrase", true, q("\"webhook delivery failed\"")),
        ("q exclusion", true, q("webhook -delivered")),
        ("q OR", true, q("timeout OR invalid")),
        ("q prefix", true, q("deliver*")),
        ("q field", true, q("status:error tool")),
        (
            "q group",
            true,
            q("(timeout OR invalid) -json status:error"),
        ),
        (
            "q payload value",
            true,
            q(&format!("request_data.payload.caller_number:\"{caller}\"")),
        ),
        ("q payload words", true, q("response_data.error:timeout")),
        (
            "q payload prefix",
            true,
            q("request_data.payload.caller_number:+9198123*"),
        ),
        ("time range (1 h)", true, format!("{one_hour}&limit=50")),
        (
            "deep page (offset 50,000)",
            true,
            "limit=50&page=1001".to_owned(),
        ),
    ];
    let stats = [
        ("stats, large user", true, String::new()),
        ("stats, small user", false, String::new()),
        ("stats, status=error", true, "status=error".to_owned()),
        (
            "stats, assistant_id",
            true,
            format!("assistant_id={assistant}"),
        ),
        ("stats, q one word", true, "q=timeout".to_owned()),
        ("stats, time range (1 h)", true, one_hour.clone()),
        (
            "stats, 1 h, interval=1m",
            true,
            format!("{one_hour}&interval=1m"),
        ),
    ];
    let on = |path: &'static str| move |(name, large, q)| (name, large, path, q);
    logs.into_iter()
        .map(on("/logs"))
        .chain(stats.into_iter().map(on("/logs/stats")))
        .collect()
}

/// Polls a server's `/readyz` until it answers 200 (an indexer: its replicas caught up).
pub async fn wait_ready(api: &str) {
    let client = plain_http().build().expect("an HTTP client");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !client
        .get(format!("{api}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "{api} never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fills an index of `records` generated logs in `dir` (the index in `dir/index`) through the
/// server `bin`, in chunks, a thread encoding the next chunk while the server ingests one; an
/// index built before (a marker file says so) is kept.
pub async fn build_index(bin: &str, dir: &Path, records: usize) {
    let marker = dir.join(format!("built-{records}"));
    if marker.exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    let server = Server::start(bin, dir, 1000).await;
    let (chunks, ready) = std::sync::mpsc::sync_channel(1);
    let total = records;
    std::thread::spawn(move || {
        let mut encoder = RequestEncoder::new(SEED);
        let mut left = total;
        while left > 0 {
            let size = left.min(1_000 * BATCH);
            if chunks.send(encoder.encode(size)).is_err() {
                return;
            }
            left -= size;
        }
    });
    let started = Instant::now();
    let mut done = 0;
    while let Ok(requests) = ready.recv() {
        done += ingest(&server, requests, 4, Transport::Grpc).await.records;
        eprintln!(
            "built {done} records, {:.0} records/s",
            done as f64 / started.elapsed().as_secs_f64()
        );
    }
    server.stop();
    std::fs::write(&marker, "").unwrap();
}

/// Merges every segment of the index into one, as a final merge would, and deletes the files
/// merged away; nothing to do when the index is one segment already.
pub fn final_merge(index_dir: &Path) {
    let index = tantivy::Index::open_in_dir(index_dir).expect("open the index");
    let segments = index.searchable_segment_ids().expect("segment ids");
    if segments.len() <= 1 {
        return;
    }
    let started = Instant::now();
    let mut writer: tantivy::IndexWriter = index.writer(256 << 20).expect("index writer");
    writer.merge(&segments).wait().expect("merge");
    writer
        .garbage_collect_files()
        .wait()
        .expect("garbage collection");
    writer.wait_merging_threads().expect("merge threads");
    eprintln!(
        "merged {} segments into one in {:.0} s",
        segments.len(),
        started.elapsed().as_secs_f64()
    );
}
