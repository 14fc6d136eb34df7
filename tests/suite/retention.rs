//! Retention: logs past their user's retention leave every endpoint within a sweep, their disk
//! space comes back through merges, and logs that arrive already expired are rejected.

use crate::common;

use std::time::{Duration, Instant};

use common::{
    AppOptions, PATIENCE, activity, days_ago, dir_bytes, metric, spawn_app, spawn_app_with, text,
    with_attr,
};

fn retention(days: u64, users: &str, sweep_interval_ms: u64) -> AppOptions {
    AppOptions {
        settings: vec![
            ("LOGBRIDGE_RETENTION_DAYS", days.to_string()),
            ("LOGBRIDGE_RETENTION_USERS", users.to_owned()),
            (
                "LOGBRIDGE_RETENTION_SWEEP_INTERVAL_MS",
                sweep_interval_ms.to_string(),
            ),
        ],
        ..AppOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_logs_leave_every_endpoint_and_their_space_comes_back() {
    let mut app = spawn_app().await;
    // kept forever at first: alice's logs of 40 days ago and of yesterday, interleaved, in
    // several segments; bob's of 40 days ago
    // words that do not compress away, as real messages
    let mut seed = 7u64;
    let mut word = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        format!("{:x}", seed >> 24)
    };
    for round in 0..4u64 {
        let records = (0..1000u64)
            .map(|i| {
                let age = if i % 2 == 0 { 40.0 } else { 1.0 };
                let words: Vec<String> = (0..30).map(|_| word()).collect();
                let message = format!("r{round}-{i} {}", words.join(" "));
                activity("tool_call", days_ago(age) + round * 1000 + i, &message)
            })
            .collect();
        app.ingest(&app.keys.alice, records).await;
    }
    let old = (0..100u64)
        .map(|i| activity("tool_call", days_ago(40.0) + i, &format!("bob {i}")))
        .collect();
    app.ingest(&app.keys.bob, old).await;
    assert_eq!(app.logs(&app.keys.alice, "").await["total"], 4000);
    let before = dir_bytes(&app.index_path());

    // 30 days for everyone, 60 for bob: the first sweep runs at start
    app.restart_with(&retention(30, r#"{ "user-bob" = 60 }"#, 30_000))
        .await;
    let alice = app.logs(&app.keys.alice, "limit=100").await;
    assert_eq!(alice["total"], 2000);
    let newest_first = common::messages(&alice);
    assert!(newest_first.iter().all(|m| {
        let i: u64 = m.split(['-', ' ']).nth(1).unwrap().parse().unwrap();
        i % 2 == 1
    }));
    // a window over the expired days finds nothing either
    let window = "start_time=2000-01-01T00:00:00Z&end_time=2100-01-01T00:00:00Z&q=r0";
    assert_eq!(app.logs(&app.keys.alice, window).await["total"], 500);
    assert_eq!(app.logs(&app.keys.bob, "").await["total"], 100);
    assert_eq!(
        metric(&app.api_url, "logbridge_records_expired_total").await,
        2000.0
    );
    let swept = metric(
        &app.api_url,
        "logbridge_retention_last_sweep_timestamp_seconds",
    )
    .await;
    assert!(swept > days_ago(0.01) as f64 / 1e9, "last sweep at {swept}");

    // the half-deleted segments are merged and their files removed
    let deadline = Instant::now() + PATIENCE;
    let mut after = dir_bytes(&app.index_path());
    while after * 10 > before * 7 {
        assert!(
            Instant::now() < deadline,
            "index still {after} bytes, {before} before the sweep"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = dir_bytes(&app.index_path());
    }
    println!("index {before} bytes before the sweep, {after} after the merges");
    assert_eq!(app.logs(&app.keys.alice, "").await["total"], 2000);
}

#[tokio::test]
async fn records_already_past_retention_are_rejected_at_ingest() {
    let app = spawn_app_with(retention(30, r#"{ "user-bob" = 60 }"#, 30_000)).await;
    let records = vec![
        activity("tool_call", days_ago(40.0), "forty days old"),
        activity("tool_call", days_ago(1.0), "yesterday"),
        activity("tool_call", days_ago(31.0), "a month old"),
    ];
    let response = app.export(&app.keys.alice, records.clone()).await.unwrap();
    let partial = response.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_log_records, 2);
    assert_eq!(
        partial.error_message,
        "2 of 3 log records rejected: record 0: timestamp is older than the user's retention \
         of 30 days; record 2: timestamp is older than the user's retention of 30 days"
    );
    // bob keeps 60 days: all three are his
    let response = app.export(&app.keys.bob, records).await.unwrap();
    assert_eq!(response.partial_success, None);
    app.flush().await;
    assert_eq!(
        common::messages(&app.logs(&app.keys.alice, "").await),
        ["yesterday"]
    );
    assert_eq!(app.logs(&app.keys.bob, "").await["total"], 3);
    assert_eq!(
        metric(
            &app.api_url,
            "logbridge_records_rejected_total{reason=\"expired\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_expire_while_the_server_runs() {
    let app = spawn_app_with(retention(1, "{}", 200)).await;
    let fresh = activity("tool_call", days_ago(1.0 / 24.0), "an hour old");
    app.ingest(&app.keys.alice, vec![fresh]).await;
    // one that turns a day old `margin` after it is stamped: taken if it arrives before then (it
    // must, to expire while the server runs). A machine slow enough for it to arrive expired
    // gets it again with a longer margin: what is asserted does not depend on the pace.
    let mut margin = Duration::from_secs(2);
    let stamped = loop {
        let stamped = Instant::now();
        let soon = with_attr(
            activity(
                "tool_call",
                days_ago(1.0) + margin.as_nanos() as u64,
                "expires soon",
            ),
            "activity.room_name",
            text("room-9"),
        );
        let response = app.export(&app.keys.alice, vec![soon]).await.unwrap();
        match response.partial_success {
            None => break stamped,
            Some(partial) => {
                assert_eq!(
                    partial.error_message,
                    "1 of 1 log records rejected: record 0: timestamp is older than the user's \
                     retention of 1 days",
                    "only an arrival past its expiry is refused"
                );
                assert!(margin < 10 * PATIENCE, "never arrived within {margin:?}");
                margin *= 4;
            }
        }
    };
    app.flush().await;
    assert_eq!(
        app.logs(&app.keys.alice, "room_name=room-9").await["total"],
        1
    );
    // it expires `margin` after it was stamped, and the next sweep (every 200 ms) takes it
    let deadline = stamped + margin + PATIENCE;
    while app.logs(&app.keys.alice, "room_name=room-9").await["total"] != 0 {
        assert!(Instant::now() < deadline, "the log never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        common::messages(&app.logs(&app.keys.alice, "").await),
        ["an hour old"]
    );
    // the sweep counts what it deleted once its commit is done, which readers may see first
    let expired = loop {
        let expired = metric(&app.api_url, "logbridge_records_expired_total").await;
        if expired != 0.0 || Instant::now() >= deadline {
            break expired;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(expired, 1.0);
}
