//! The `logbridge` binary as an operator runs it: first start, `emit`, `keys add`, SIGTERM.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::PATIENCE;
use common::process::{BIN, serve, stored_messages, terminate, write_config};
use logbridge::auth::Secret;

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
    let key = Secret::new(secret.clone());
    while stored_messages(&served.api, &key).await.len() != 80 {
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
    assert_eq!(stored_messages(&served.api, &key).await.len(), 80);
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

    // an empty user is refused here, not when the server next starts
    let output = Command::new(BIN)
        .args(["keys", "add", "--user", "", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).lines().next(),
        Some("Error: cannot add the key: the user must not be empty")
    );
    assert_eq!(
        logbridge::auth::load_keys(&dir.path().join("keys.toml"))
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn emit_reads_its_key_from_the_environment_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let secret = Secret::generate();
    common::process::write_key(dir.path(), &secret);
    let served = serve(&config);
    common::process::wait_ready(&served.api).await;
    let endpoint = format!("http://{}", served.grpc);

    let from_env = Command::new(BIN)
        .args(["emit", "--count", "5", "--endpoint", &endpoint])
        .env("LOGBRIDGE_KEY", secret.expose())
        .output()
        .unwrap();
    assert!(
        from_env.status.success(),
        "{}",
        String::from_utf8_lossy(&from_env.stderr)
    );
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{}\n", secret.expose())).unwrap();
    // the file wins over the environment
    let from_file = Command::new(BIN)
        .args([
            "emit",
            "--count",
            "7",
            "--endpoint",
            &endpoint,
            "--key-file",
        ])
        .arg(&key_file)
        .env("LOGBRIDGE_KEY", "lb_not-this-one")
        .output()
        .unwrap();
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    let deadline = Instant::now() + PATIENCE;
    while common::process::total(&served.api, &secret).await != 12 {
        assert!(Instant::now() < deadline, "emitted records never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // a key file that is missing says so
    let missing = Command::new(BIN)
        .args(["emit", "--endpoint", &endpoint, "--key-file"])
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read the key file"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

#[test]
fn a_write_ahead_log_that_cannot_be_replayed_stops_the_process_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let secret = Secret::generate();
    common::process::write_key(dir.path(), &secret);
    // a segment that cannot be read: a folder where a file should be
    std::fs::create_dir_all(dir.path().join("index/wal/wal-00000000000000000001.log")).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a server that cannot ingest kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "Error: the index writer stopped: cannot replay the write-ahead log: Is a directory"
        ),
        "{stderr}"
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
