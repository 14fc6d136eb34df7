//! The `logbridge` binary as an operator runs it: first start, `emit`, `keys add`, SIGTERM.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::PATIENCE;

const BIN: &str = env!("CARGO_BIN_EXE_logbridge");

/// A config file in `dir` that listens on port 0 everywhere.
fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("logbridge.toml");
    std::fs::write(
        &path,
        format!(
            "[otlp]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n\
             [index]\npath = \"{}\"\ncommit_interval_ms = 100\n\
             [auth]\nkeys_file = \"{}\"\n",
            dir.join("index").display(),
            dir.join("keys.toml").display()
        ),
    )
    .unwrap();
    path
}

/// A running `logbridge serve` and what it printed at start.
struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
    grpc: String,
    http: String,
    api: String,
    printed: Vec<String>,
}

fn field(line: &str, name: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))
        .map(str::to_owned)
}

fn serve(config: &Path) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
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

fn terminate(served: &mut Served) -> Vec<String> {
    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
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

async fn total(api: &str, key: &str) -> u64 {
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{api}/logs?limit=1"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["data"]["total"].as_u64().unwrap()
}

#[tokio::test]
async fn first_start_emit_read_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut served = serve(&config);

    // the first start created a key and printed its secret once
    let secret = served
        .printed
        .iter()
        .find_map(|line| line.trim().strip_prefix("lb_").map(|s| format!("lb_{s}")))
        .expect("a printed secret");
    assert!(
        served
            .printed
            .iter()
            .any(|l| l.contains("shown only this once"))
    );
    let keys = std::fs::read_to_string(dir.path().join("keys.toml")).unwrap();
    assert!(keys.contains("user_id = \"default\""));
    assert!(!keys.contains(&secret));

    // emit through the standard OpenTelemetry environment variables
    for (protocol, endpoint) in [
        ("grpc", format!("http://{}", served.grpc)),
        ("http/protobuf", format!("http://{}", served.http)),
    ] {
        let output = Command::new(BIN)
            .args(["emit", "--count", "40"])
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env(
                "OTEL_EXPORTER_OTLP_HEADERS",
                format!("Authorization=Bearer%20{secret}"),
            )
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // visible within the commit interval, without any flush
    let deadline = Instant::now() + PATIENCE;
    while total(&served.api, &secret).await != 80 {
        assert!(Instant::now() < deadline, "records never became visible");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let after = terminate(&mut served);
    assert!(
        after.iter().any(|l| l.contains("logbridge stopped")),
        "{after:#?}"
    );

    // a second start keeps the keys file and the data
    let mut served = serve(&config);
    assert!(
        !served
            .printed
            .iter()
            .any(|l| l.contains("shown only this once"))
    );
    assert_eq!(total(&served.api, &secret).await, 80);
    terminate(&mut served);
}

#[test]
fn keys_add_appends_a_key_and_prints_its_secret_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    // --config is global: before or after the subcommand
    let output = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args([
            "keys",
            "add",
            "--user",
            "user-acme",
            "--scope",
            "read,ingest",
            "--name",
            "acme",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let secret = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("lb_"), "{secret}");
    let output = Command::new(BIN)
        .args(["keys", "add", "--user", "user-b", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(output.status.success());

    let keys = logbridge::auth::load_keys(&dir.path().join("keys.toml")).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].name, "acme");
    assert_eq!(keys[0].user_id.as_deref(), Some("user-acme"));
    assert_eq!(
        keys[0].sha256,
        logbridge::auth::Secret::new(secret).sha256()
    );
    assert_eq!(keys[1].name, "user-b (read)");
    assert_eq!(keys[1].scopes, [logbridge::auth::Scope::Read]);

    let output = Command::new(BIN)
        .args(["keys", "add", "--user", "u", "--scope", "write", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unknown scope \"write\""),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_read_key_without_a_user_stops_start_up_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    std::fs::write(
        dir.path().join("keys.toml"),
        format!(
            "[[keys]]\nname = \"ops-dashboard\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("key \"ops-dashboard\": a key with the read scope needs a user_id"),
        "{stderr}"
    );
}
