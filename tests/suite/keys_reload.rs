//! Keys without restarts: the running binary follows its keys file (changes and `SIGHUP`), keeps
//! the last good set when the file breaks, and `keys list` / `keys revoke` manage it. What
//! `SIGHUP` does is shown with the file watcher held off (`LB_TEST_WATCH_POLL_MS`): a change only
//! it applies.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::PATIENCE;
use common::process::{
    Served, Setup, run, serve, serve_with_env, start, wait_ready, write_config, write_key,
};
use logbridge::auth::Secret;
use logbridge::lifecycle::watch::POLL_INTERVAL;

/// Runs `logbridge --config CONFIG keys ARGS`; panics unless it succeeds; stdout.
fn keys(config: &Path, args: &[&str]) -> String {
    let output = run(config, &[&["keys"], args].concat());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The status of `GET /logs` with `secret`, and the body's message.
async fn status(api: &str, secret: &str) -> (u16, String) {
    let response = common::client()
        .get(format!("http://{api}/logs?limit=1"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Polls until `secret` gets `expected`, for the patience at most; how long that took.
async fn until_status(api: &str, secret: &str, expected: u16) -> Duration {
    let started = Instant::now();
    loop {
        let (got, message) = status(api, secret).await;
        if got == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "never answered {expected}; last {got} {message:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `SIGHUP` to the server.
fn hang_up(served: &Served) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The next line the server prints that contains `text`.
fn printed(served: &Served, text: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let line = served
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("never printed {text:?}"));
        if line.contains(text) {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_added_and_revoked_without_a_restart() {
    let Setup {
        dir: _dir,
        config,
        secret: owner,
        served,
    } = start().await;

    // requests with the owner's key run without pause while the file changes under them
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (api, secret) = (served.api.clone(), owner.expose().to_owned());
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let counter = if status(&api, &secret).await.0 == 200 {
                    &ok
                } else {
                    &failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let mut delays = Vec::new();
    for round in 0..3 {
        let name = format!("dash-{round}");
        let secret = keys(&config, &["add", "--user", "u", "--name", &name]);
        let secret = secret.trim();
        let added = until_status(&served.api, secret, 200).await;
        let line = printed(&served, "keys file reloaded");
        assert!(
            line.contains("added=1") && line.contains("trigger=changed"),
            "{line}"
        );
        keys(&config, &["revoke", &name]);
        let revoked = until_status(&served.api, secret, 401).await;
        let line = printed(&served, "keys file reloaded");
        assert!(line.contains("removed=1"), "{line}");
        assert_eq!(
            status(&served.api, secret).await.1,
            "unknown API key",
            "round {round}"
        );
        delays.extend([added, revoked]);
        // the owner's requests went on through the swaps
        let before = ok.load(Ordering::Relaxed);
        let deadline = Instant::now() + PATIENCE;
        while ok.load(Ordering::Relaxed) < before + 2 {
            assert!(
                Instant::now() < deadline,
                "the owner's requests stopped after round {round}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    // each waited for with the patience as deadline: how long is a figure, not a contract
    println!("reload delays: {delays:?}");
    println!("{ok:?} of the owner's requests ran during the swaps");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during swaps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_what_the_file_watcher_has_not_seen() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let owner = Secret::generate();
    write_key(dir.path(), &owner);
    // the watcher looks at the file once at start, then not for an hour: only SIGHUP reloads it
    let served = serve_with_env(&config, &[("LB_TEST_WATCH_POLL_MS", "3600000")]);
    wait_ready(&served.api).await;
    let unknown = (401, "unknown API key".to_owned());

    // a key added to the file is not known until SIGHUP, then works
    let added = keys(&config, &["add", "--user", "u", "--name", "dash"]);
    let added = added.trim();
    // six polls of the watcher's usual interval go by: it does not apply the change (this can
    // only pass more surely on a slower machine)
    tokio::time::sleep(6 * POLL_INTERVAL).await;
    assert_eq!(status(&served.api, added).await, unknown, "before SIGHUP");
    hang_up(&served);
    let took = until_status(&served.api, added, 200).await;
    println!("the added key worked {took:?} after SIGHUP");
    assert_eq!(status(&served.api, owner.expose()).await.0, 200);

    // a key revoked in the file keeps working until SIGHUP, then is refused
    keys(&config, &["revoke", "dash"]);
    tokio::time::sleep(6 * POLL_INTERVAL).await;
    assert_eq!(status(&served.api, added).await.0, 200, "before SIGHUP");
    hang_up(&served);
    let took = until_status(&served.api, added, 401).await;
    println!("the revoked key was refused {took:?} after SIGHUP");
    assert_eq!(status(&served.api, added).await, unknown);
    assert_eq!(status(&served.api, owner.expose()).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_keys_file_keeps_the_last_good_keys() {
    let Setup {
        dir,
        config: _,
        secret: owner,
        served,
    } = start().await;
    let api = format!("http://{}", served.api);
    let keys_file = dir.path().join("keys.toml");
    let good = std::fs::read_to_string(&keys_file).unwrap();

    std::fs::write(&keys_file, "[[keys]\nname = ").unwrap();
    let line = printed(&served, "keys file not reloaded");
    assert!(line.contains("the last good keys stay in use"), "{line}");
    assert_eq!(
        common::metric(&api, "logbridge_keys_file_invalid").await,
        1.0
    );
    assert_eq!(
        common::metric(&api, "logbridge_keys_reload_failures_total").await,
        1.0
    );
    assert_eq!(status(&served.api, owner.expose()).await.0, 200);

    std::fs::write(&keys_file, good).unwrap();
    printed(&served, "keys file reloaded");
    assert_eq!(
        common::metric(&api, "logbridge_keys_file_invalid").await,
        0.0
    );
    assert_eq!(common::metric(&api, "logbridge_keys_loaded").await, 1.0);
    assert_eq!(status(&served.api, owner.expose()).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_list_shows_no_secrets_and_expired_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let owner = Secret::generate();
    write_key(dir.path(), &owner);
    let expired = keys(
        &config,
        &[
            "add",
            "--user",
            "u",
            "--name",
            "old dashboard",
            "--expires-at",
            "2020-01-31T00:00:00Z",
        ],
    );
    let later = keys(
        &config,
        &[
            "add",
            "--user",
            "acme",
            "--scope",
            "read,delete",
            "--name",
            "acme eraser",
            "--expires-at",
            "2999-01-01T00:00:00+02:00",
        ],
    );
    let list = keys(&config, &["list"]);
    assert_eq!(
        list,
        "NAME\tUSER\tSCOPES\tEXPIRES\n\
         u\tu\tread,ingest,delete,alerts\tnever\n\
         old dashboard\tu\tread\t2020-01-31T00:00:00Z (expired)\n\
         acme eraser\tacme\tread,delete\t2998-12-31T22:00:00Z\n"
    );
    for secret in [&expired, &later] {
        assert!(!list.contains(secret.trim()));
    }

    let served = serve(&config);
    wait_ready(&served.api).await;
    assert_eq!(
        status(&served.api, expired.trim()).await,
        (
            401,
            "this API key expired at 2020-01-31T00:00:00Z".to_owned()
        )
    );
    assert_eq!(status(&served.api, later.trim()).await.0, 200);
    let output = run(&config, &["keys", "revoke", "nobody"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no key named \"nobody\""), "{stderr}");
}
