//! The engines under cluster mode, as real processes on loopback with their own folders: three
//! NATS servers (JetStream clustered) and one etcd, on free ports below the system's ephemeral
//! range. The cluster tests (`tests/suite/common/cluster.rs`) and the cluster benchmark run on
//! them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::blackhole::Blackhole;
use super::certs::TlsFiles;

/// The NATS server the engines run: the release `tests/tools/install` installs from PyPI, unless
/// this variable names another binary (an older release, say).
pub const NATS_SERVER_VARIABLE: &str = "NATS_SERVER_BINARY";

/// A port nobody listens on now, for servers that must know each other's ports before they
/// start (NATS routes, etcd peers) or keep them across a restart. It is taken below the range the
/// system hands out itself (`net.ipv4.ip_local_port_range`): a port from that range, released
/// here, could be given to any client's outgoing connection or another server's port 0 before
/// the daemon binds it. A port is handed out once among all the processes on this machine while
/// the one it was handed to lives, even once its server is down (killed by a test, to be
/// restarted on it): the process holds a lock on a file named after it
/// ([`PORT_LOCKS`] under the temp dir), which the system releases when the process ends. Tests
/// run in processes of their own, several at once.
pub fn free_port() -> u16 {
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    assert!(
        ephemeral_low > 12_000,
        "the ephemeral port range starts at {ephemeral_low}: no room below it for the engines' ports"
    );
    let locks = std::env::temp_dir().join(PORT_LOCKS);
    std::fs::create_dir_all(&locks)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", locks.display()));
    let range = 10_000..ephemeral_low;
    let mut held = HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..1000 {
        let port = rand::random_range(range.clone());
        let path = locks.join(port.to_string());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        // a lock this process holds already conflicts too: it is per open file
        if fs4::fs_std::FileExt::try_lock_exclusive(&file).unwrap_or(false)
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            held.push(file);
            return port;
        }
    }
    panic!("no free port in {range:?} after 1000 tries")
}

/// The folder, under the temp dir, of the files whose locks reserve [`free_port`]'s ports.
pub const PORT_LOCKS: &str = "logbridge-test-ports";

/// A program the cluster runs on, killed when dropped.
struct Daemon {
    child: Option<Child>,
    program: String,
    args: Vec<String>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(program: impl Into<String>, args: Vec<String>, log: PathBuf) -> Self {
        let program = program.into();
        let mut daemon = Self {
            child: None,
            program,
            args,
            log,
        };
        daemon.start();
        daemon
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): tests/tools/install installs it",
                    self.program
                )
            });
        self.child = Some(child);
    }

    /// How it ended, if it has.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `url` until it answers 200 with a body containing `expected`; fails, with the end of
/// its log, if `daemon` exits first.
async fn wait_healthy(daemon: &mut Daemon, url: &str, expected: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = super::plain_http().build().expect("an HTTP client");
    loop {
        // first whether it ended: another program could be answering on its port
        if let Some(status) = daemon.exited() {
            panic!(
                "{what} exited ({status}) before it was healthy; its log ends:\n{}",
                log_tail(&daemon.log)
            );
        }
        if let Ok(response) = client.get(url).send().await
            && response.status() == 200
            && response.text().await.unwrap_or_default().contains(expected)
        {
            return;
        }
        if Instant::now() >= deadline {
            let answer = match client.get(url).send().await {
                Ok(response) => format!(
                    "{} {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                ),
                Err(e) => e.to_string(),
            };
            panic!(
                "{what} did not become healthy at {url} in 60 s: it answers {answer}; its log ends:\n{}",
                log_tail(&daemon.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last 20 lines of the log at `path`.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The NATS server binary the engines run: [`NATS_SERVER_VARIABLE`]'s, else the one
/// `tests/tools/install` installed, else `nats-server` on the PATH.
pub fn nats_server() -> String {
    if let Ok(program) = std::env::var(NATS_SERVER_VARIABLE) {
        return program;
    }
    let installed = super::tool_venv("NATS_SERVER_VERSION", "nats-server").join("bin/nats-server");
    if installed.is_file() {
        return installed.display().to_string();
    }
    "nats-server".to_owned()
}

/// What `program --version` prints, e.g. `nats-server: v2.9.10`.
pub fn nats_version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Whether the server takes `sync_interval` (2.10 and later).
fn sync_always_supported(program: &str) -> bool {
    let version = nats_version(program);
    let numbers: Vec<u32> = version
        .rsplit('v')
        .next()
        .unwrap_or_default()
        .split('.')
        .filter_map(|n| n.parse().ok())
        .collect();
    numbers.as_slice() >= [2, 10].as_slice()
}

/// Three NATS servers with JetStream, clustered.
pub struct Nats {
    servers: Vec<Daemon>,
    pub client_ports: Vec<u16>,
    monitor_ports: Vec<u16>,
    /// Whether clients and routes speak TLS.
    tls: bool,
    /// With [`Nats::start_partitionable`]: the proxy each server's route to another goes
    /// through, as (from, to, proxy).
    routes: Vec<(usize, usize, Blackhole)>,
}

impl Nats {
    /// Starts the three servers in folders under `dir`, with `sync_interval: always` (an fsync
    /// before every acknowledgement) where the server has it (2.10 and later), and waits until
    /// each is healthy. With `tls`, clients must connect over TLS with a certificate of its CA,
    /// and the servers' routes to each other are TLS too, verified both ways.
    pub async fn start(dir: &Path, tls: Option<&TlsFiles>) -> Self {
        Self::start_with(dir, tls, false).await
    }

    /// [`Nats::start`] with every route between two servers through a proxy, so that a test can
    /// cut a server off from its peers ([`Nats::isolate`]); the servers ping each other every
    /// second, so that a silent route is given up within seconds.
    pub async fn start_partitionable(dir: &Path, tls: Option<&TlsFiles>) -> Self {
        Self::start_with(dir, tls, true).await
    }

    async fn start_with(dir: &Path, tls: Option<&TlsFiles>, partitionable: bool) -> Self {
        let program = nats_server();
        let sync = if sync_always_supported(&program) {
            ", sync_interval: always"
        } else {
            ""
        };
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let monitor_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut route_proxies = Vec::new();
        if partitionable {
            for from in 0..3 {
                for to in (0..3).filter(|&to| to != from) {
                    let proxy =
                        Blackhole::start(free_port(), format!("127.0.0.1:{}", cluster_ports[to]))
                            .await;
                    route_proxies.push((from, to, proxy));
                }
            }
        }
        // server n's routes: straight to the others' cluster ports, or through its proxies
        let routes = |n: usize| -> String {
            let ports: Vec<u16> = if partitionable {
                route_proxies
                    .iter()
                    .filter(|(from, _, _)| *from == n)
                    .map(|(_, _, proxy)| proxy.port)
                    .collect()
            } else {
                cluster_ports.clone()
            };
            ports
                .iter()
                .map(|p| format!("\"nats://127.0.0.1:{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let pings = if partitionable {
            "ping_interval: \"1s\"\nping_max: 3\n"
        } else {
            ""
        };
        // gossip would have the servers also meet at their real cluster ports, past the
        // proxies: they advertise a port nobody listens on, so that they meet only through them
        let no_advertise = if partitionable {
            format!(
                ", no_advertise: true, advertise: \"127.0.0.1:{}\"",
                free_port()
            )
        } else {
            String::new()
        };
        let tls_block = tls.map_or(String::new(), |files| {
            format!(
                "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true }}",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            )
        });
        // a name of this cluster's own: a server of another test's cluster that a route
        // reached anyway would be refused, not merged with this one
        let name = format!("logbridge-{}", cluster_ports[0]);
        let mut servers = Vec::new();
        for n in 0..3 {
            let folder = dir.join(format!("nats-{n}"));
            std::fs::create_dir_all(&folder).unwrap();
            let config = folder.join("nats.conf");
            std::fs::write(
                &config,
                format!(
                    "server_name: n{n}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n{tls_block}\n{pings}\
                     jetstream {{ store_dir: \"{}\"{sync} }}\n\
                     cluster {{ name: {name}, listen: 127.0.0.1:{}, routes: [{}]{no_advertise}\n{tls_block}\n}}\n",
                    client_ports[n],
                    monitor_ports[n],
                    folder.join("jetstream").display(),
                    cluster_ports[n],
                    routes(n)
                ),
            )
            .unwrap();
            servers.push(Daemon::spawn(
                program.clone(),
                vec!["-c".to_owned(), config.display().to_string()],
                folder.join("nats.log"),
            ));
        }
        let mut nats = Self {
            servers,
            client_ports,
            monitor_ports,
            tls: tls.is_some(),
            routes: route_proxies,
        };
        for n in 0..3 {
            nats.wait_healthy(n).await;
        }
        nats
    }

    async fn wait_healthy(&mut self, n: usize) {
        let url = format!("http://127.0.0.1:{}/healthz", self.monitor_ports[n]);
        wait_healthy(
            &mut self.servers[n],
            &url,
            "ok",
            &format!("nats-server n{n}"),
        )
        .await;
    }

    /// The servers' process ids (of those running).
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().filter_map(Daemon::pid).collect()
    }

    /// The client URLs: `tls://` when clients must speak TLS.
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls { "tls" } else { "nats" };
        self.client_ports
            .iter()
            .map(|p| format!("{scheme}://127.0.0.1:{p}"))
            .collect()
    }

    /// Cuts server `n` off from its peers, both ways: it is the minority side of a partition,
    /// its clients still connected to it.
    pub fn isolate(&self, n: usize) {
        assert!(!self.routes.is_empty(), "started without route proxies");
        for (from, to, proxy) in &self.routes {
            if *from == n || *to == n {
                proxy.cut();
            }
        }
    }

    /// Heals what [`Nats::isolate`] cut.
    pub fn rejoin(&self, n: usize) {
        for (from, to, proxy) in &self.routes {
            if *from == n || *to == n {
                proxy.heal();
            }
        }
    }

    /// `kill -9` of server `n`.
    pub fn kill(&mut self, n: usize) {
        self.servers[n].kill();
    }

    pub async fn restart(&mut self, n: usize) {
        self.servers[n].start();
        self.wait_healthy(n).await;
    }

    /// The server that leads the stream `stream`, as its monitor reports it.
    pub async fn stream_leader(&self, stream: &str) -> usize {
        self.stream_leader_seen_by(0, stream, None).await
    }

    /// The server that leads the stream `stream` as server `by` sees it; with `not`, once it is
    /// another than that one (a new leader elected).
    pub async fn stream_leader_seen_by(
        &self,
        by: usize,
        stream: &str,
        not: Option<usize>,
    ) -> usize {
        let url = format!(
            "http://127.0.0.1:{}/jsz?accounts=true&streams=true",
            self.monitor_ports[by]
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = super::plain_http().build().expect("an HTTP client");
        loop {
            let jsz: Json = client.get(&url).send().await.unwrap().json().await.unwrap();
            let streams = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default());
            for detail in streams {
                if detail["name"] == stream
                    && let Some(leader) = detail["cluster"]["leader"].as_str()
                    && let Some(n) = leader.strip_prefix('n').and_then(|n| n.parse().ok())
                    && not != Some(n)
                {
                    return n;
                }
            }
            assert!(Instant::now() < deadline, "no leader of {stream}: {jsz}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One etcd member.
pub struct Etcd {
    daemon: Daemon,
    pub url: String,
    /// Plain HTTP, for the health check whether clients speak TLS or not.
    metrics_url: String,
}

impl Etcd {
    /// Starts the member in `dir`. With `tls`, clients must connect over HTTPS with a certificate
    /// of its CA, and its peer listener is TLS too.
    pub async fn start(dir: &Path, tls: Option<&TlsFiles>) -> Self {
        let (client, peer, metrics) = (free_port(), free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("{scheme}://127.0.0.1:{peer}");
        let metrics_url = format!("http://127.0.0.1:{metrics}");
        let mut args: Vec<String> = [
            "--name",
            "e0",
            "--data-dir",
            &dir.join("etcd").display().to_string(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("e0={peer_url}"),
            "--listen-metrics-urls",
            &metrics_url,
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(files) = tls {
            let (cert, key, ca) = (
                files.cert.display().to_string(),
                files.key.display().to_string(),
                files.ca.display().to_string(),
            );
            for (flag, value) in [
                ("--cert-file", &cert),
                ("--key-file", &key),
                ("--trusted-ca-file", &ca),
                ("--peer-cert-file", &cert),
                ("--peer-key-file", &key),
                ("--peer-trusted-ca-file", &ca),
            ] {
                args.extend([flag.to_owned(), value.clone()]);
            }
            args.extend(["--client-cert-auth", "--peer-client-cert-auth"].map(str::to_owned));
        }
        let mut etcd = Self {
            daemon: Daemon::spawn("etcd", args, dir.join("etcd.log")),
            url,
            metrics_url,
        };
        etcd.wait_healthy().await;
        etcd
    }

    async fn wait_healthy(&mut self) {
        let url = format!("{}/health", self.metrics_url);
        wait_healthy(&mut self.daemon, &url, "true", "etcd").await;
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    pub async fn restart(&mut self) {
        self.daemon.start();
        self.wait_healthy().await;
    }
}
