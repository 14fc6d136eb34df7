//! The `logbridge` binary as a child process, as an operator runs it.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use logbridge::auth::{KeyRecord, Scope, Secret};

use super::{PATIENCE, messages};

use super::harness::rss;

pub const BIN: &str = env!("CARGO_BIN_EXE_logbridge");

/// A keys file in `dir` with one key, `secret`, that reads, ingests, erases and manages alert
/// rules for user `u`.
pub fn write_key(dir: &Path, secret: &Secret) {
    super::write_keys_file(
        &dir.join("keys.toml"),
        &[KeyRecord {
            name: "u".to_owned(),
            sha256: secret.sha256(),
            scopes: vec![Scope::Read, Scope::Ingest, Scope::Delete, Scope::Alerts],
            user_id: Some("u".to_owned()),
            expires_at: None,
        }],
    );
}

/// A config file in `dir` that listens on port 0 everywhere, with the index in `dir/index`.
pub fn write_config(dir: &Path) -> PathBuf {
    write_config_with(dir, &dir.join("index"), "commit_interval_ms = 100", "")
}

/// A config file in `dir` that listens on port 0 everywhere, with the index at `index` and
/// `index_settings` in its section, and `extra` TOML (other sections) at the end.
pub fn write_config_with(dir: &Path, index: &Path, index_settings: &str, extra: &str) -> PathBuf {
    let path = dir.join("logbridge.toml");
    std::fs::write(
        &path,
        format!(
            "[otlp]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n\
             [index]\npath = \"{}\"\n{index_settings}\n\
             [auth]\nkeys_file = \"{}\"\n{extra}",
            index.display(),
            dir.join("keys.toml").display()
        ),
    )
    .unwrap();
    path
}

/// A running `logbridge serve` and what it printed at start.
pub struct Served {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub grpc: String,
    pub http: String,
    pub api: String,
    pub printed: Vec<String>,
}

pub fn field(line: &str, name: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))
        .map(str::to_owned)
}

pub fn serve(config: &Path) -> Served {
    serve_with_env(config, &[])
}

/// [`serve`] with more environment variables.
pub fn serve_with_env(config: &Path, env: &[(&str, &str)]) -> Served {
    // the tests' HTTP clients take the process's rustls provider
    logbridge::server::install_provider();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take();
    let (tx, lines) = mpsc::channel();
    // from here on, dropping `served` stops the child
    let mut served = Served {
        child,
        lines,
        grpc: String::new(),
        http: String::new(),
        api: String::new(),
        printed: Vec::new(),
    };
    let stderr = stderr.expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    loop {
        let line = served
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no listening line; printed: {:#?}", served.printed));
        served.printed.push(line.clone());
        if line.contains("logbridge listening") {
            served.grpc = field(&line, "otlp_grpc").unwrap();
            served.http = field(&line, "otlp_http").unwrap();
            served.api = field(&line, "api").unwrap();
            return served;
        }
    }
}

impl Drop for Served {
    /// A failing test leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// The first line printed that contains `needle`, waiting up to [`PATIENCE`] for it; fails
    /// with what was printed.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.printed.iter().find(|line| line.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!("no line with {needle:?}; printed: {:#?}", self.printed)
                });
            self.printed.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The peak resident memory of the server so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let peak = rss::peak_rss(self.child.id());
        assert!(peak > 0, "cannot read the server's VmHWM");
        peak
    }

    /// A line of the server's `/proc/PID/status` (`VmHWM`, `RssAnon`, `RssFile`, ...), in bytes.
    pub fn status_bytes(&self, name: &str) -> u64 {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb = status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
        kb * 1024
    }

    /// Resets the server's peak resident memory (`VmHWM`) to its current resident memory, so
    /// that the peak read later is that of what ran since (needs root, as CI runs).
    pub fn reset_peak_rss(&self) {
        let pid = self.child.id();
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .unwrap_or_else(|e| panic!("cannot reset the peak RSS of {pid} (needs root): {e}"));
        let (peak, now) = (self.status_bytes("VmHWM"), self.status_bytes("VmRSS"));
        assert!(
            peak <= now + 4 * 1024 * 1024,
            "VmHWM {peak} not reset to VmRSS {now}"
        );
    }
}

/// Sends SIGTERM and waits for a clean exit; what the server printed since start-up.
pub fn terminate(served: &mut Served) -> Vec<String> {
    sigterm(served);
    wait_for_clean_exit(served)
}

pub fn sigterm(served: &Served) {
    signal(served, "TERM");
}

/// Sends `SIG{name}` (`TERM`, `STOP`, `CONT`) to the server.
pub fn signal(served: &Served, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Waits for the server to exit with status 0; what it printed since start-up.
pub fn wait_for_clean_exit(served: &mut Served) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    let exit = loop {
        if let Some(exit) = served.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
    served.lines.try_iter().collect()
}

/// Polls `/readyz` until it answers 200.
pub async fn wait_ready(api: &str) {
    super::wait_for_readyz(&format!("http://{api}"), 200).await;
}

/// `GET /logs?{query}` with `secret`: the JSON body.
async fn get_logs(api: &str, secret: &Secret, query: &str) -> serde_json::Value {
    logs_request(reqwest::Method::GET, api, secret, query).await
}

/// `METHOD /logs?{query}` with `secret`: the JSON body.
pub async fn logs_request(
    method: reqwest::Method,
    api: &str,
    secret: &Secret,
    query: &str,
) -> serde_json::Value {
    super::client()
        .request(method, format!("http://{api}/logs?{query}"))
        .bearer_auth(secret.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A served binary on port 0 with one key (see [`write_key`]), ready.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub secret: Secret,
    pub served: Served,
}

/// Starts the binary with the config of [`write_config`], and waits until it is ready.
pub async fn start() -> Setup {
    start_with("commit_interval_ms = 100", "").await
}

/// Starts the binary with the config of [`write_config_with`] (the index in `dir/index`), and
/// waits until it is ready.
pub async fn start_with(index_settings: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), &dir.path().join("index"), index_settings, extra);
    let secret = Secret::generate();
    write_key(dir.path(), &secret);
    let served = serve(&config);
    wait_ready(&served.api).await;
    Setup {
        dir,
        config,
        secret,
        served,
    }
}

/// Runs `logbridge --config CONFIG ARGS` to its end.
pub fn run(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// How many logs `secret`'s user has.
pub async fn total(api: &str, secret: &Secret) -> u64 {
    get_logs(api, secret, "limit=1").await["data"]["total"]
        .as_u64()
        .expect("a total")
}

/// Every message stored for `secret`'s user, newest first, by walking all pages with cursors.
pub async fn stored_messages(api: &str, secret: &Secret) -> Vec<String> {
    let mut all = Vec::new();
    let mut query = "limit=100".to_owned();
    loop {
        let body = get_logs(api, secret, &query).await;
        let data = &body["data"];
        all.extend(messages(data));
        let total = data["total"].as_u64().expect("a total") as usize;
        assert!(all.len() <= total, "pages past the total of {total}");
        match data["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=100&cursor={cursor}"),
            None => {
                assert_eq!(data["total"].as_u64().unwrap() as usize, all.len());
                return all;
            }
        }
    }
}
