//! Cluster mode on one machine: three NATS servers (JetStream clustered), one etcd, gateways and
//! indexers, each a real process; real faults (`kill -9`). Every test compares what `/logs`
//! serves through the gateways (totals, order, cursors, `q`) with what was acknowledged.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::PATIENCE;
use common::cluster::{
    REPLICAS, SHARDS, TestCluster, USERS, assert_exactly, differences, export_until_acknowledged,
    finished, records, start_load, wait_acked,
};
use common::process::{sigterm, wait_for_clean_exit, wait_ready};
use logbridge::emit::{EmitOptions, emit};
use logbridge::workload::Workload;
use opentelemetry_otlp::Protocol;

/// Longest wait for one export to be acknowledged, retries included.
const EXPORT_PATIENCE: Duration = Duration::from_secs(120);

/// `future`, which must end within `patience`: `what` names it when it does not.
async fn within<T>(
    patience: Duration,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(patience, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {patience:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporters_through_both_gateways_are_read_back_exactly() {
    // the exporters of `emit` speak plaintext, and so does this cluster; the other tests run
    // theirs with TLS on every hop
    let mut cluster = TestCluster::start_plaintext(2, 3).await;
    let options = |gateway: &common::cluster::Node, protocol, user: usize, seed| EmitOptions {
        protocol,
        endpoint: Some(match protocol {
            Protocol::Grpc => format!("http://{}", gateway.grpc),
            _ => format!("http://{}", gateway.served.as_ref().unwrap().http),
        }),
        key: Some(cluster.ingest.expose().to_owned()),
        count: 1500,
        user: Some(USERS[user].to_owned()),
        seed,
        gzip: seed == 3,
    };
    let sends = [
        (0, Protocol::Grpc, 0, 1),
        (1, Protocol::HttpBinary, 1, 2),
        (1, Protocol::Grpc, 2, 3),
        (0, Protocol::HttpJson, 3, 4),
    ];
    for (gateway, protocol, user, seed) in sends {
        let options = options(&cluster.gateways[gateway], protocol, user, seed);
        within(EXPORT_PATIENCE, "an SDK export", emit(&options))
            .await
            .unwrap();
    }
    let mut acked = HashMap::new();
    for (_, _, user, seed) in sends {
        let sent: Vec<String> = Workload::new(seed).take(1500).map(|a| a.message).collect();
        acked.insert(user, sent);
    }
    assert_exactly(&cluster, &acked, "after the SDK exports").await;

    // the newest page is the last sent, in order, and `q` finds exactly the matching logs
    let sent = &acked[&0];
    let (status, body) = cluster.get(&cluster.gateways[1], 0, "limit=50").await;
    assert_eq!(status, 200);
    let newest: Vec<String> = sent.iter().rev().take(50).cloned().collect();
    assert_eq!(common::messages(&body["data"]), newest);
    let word = sent[0].split_whitespace().next().unwrap().to_lowercase();
    let matching = sent
        .iter()
        .filter(|m| {
            m.to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w == word)
        })
        .count();
    let found = cluster
        .walk(&cluster.gateways[0], 0, &format!("&q={word}"))
        .await;
    assert_eq!(found.len(), matching, "q={word}");
    // statistics come from the same replica, with the same totals
    let client = cluster.http_client().timeout(PATIENCE).build().unwrap();
    let stats: serde_json::Value = client
        .get(format!(
            "{}/logs/stats",
            cluster.api_url(&cluster.gateways[0])
        ))
        .bearer_auth(cluster.readers[2].expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["data"]["total"], 1500);
    // an export streams through the gateway whole
    let export = client
        .get(format!(
            "{}/logs/export?format=ndjson",
            cluster.api_url(&cluster.gateways[1])
        ))
        .bearer_auth(cluster.readers[3].expose())
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let exported: Vec<String> = export
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["message"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(differences(&exported, &acked[&3]), (0, 0));
    assert_eq!(exported.len(), 1500);
    // a tail through the gateway follows on from a page read through it
    let page = client
        .get(format!(
            "{}/logs?limit=1",
            cluster.api_url(&cluster.gateways[0])
        ))
        .bearer_auth(cluster.readers[2].expose())
        .send()
        .await
        .unwrap();
    let sequence = page.headers()["logbridge-sequence"]
        .to_str()
        .unwrap()
        .to_owned();
    // no timeout on the whole answer, which goes on: each wait below has its deadline
    let tail = cluster
        .http_client()
        .build()
        .unwrap()
        .get(format!(
            "{}/logs/tail?cursor={sequence}",
            cluster.api_url(&cluster.gateways[0])
        ))
        .bearer_auth(cluster.readers[2].expose())
        .send();
    let mut tail = within(PATIENCE, "the tail's answer", tail).await.unwrap();
    assert_eq!(tail.status(), 200);
    assert_eq!(tail.headers()["content-type"], "text/event-stream");
    let fresh = records(USERS[2], 900_000, 3);
    export_until_acknowledged(&cluster.grpc(), 1, &cluster.ingest, fresh).await;
    let mut events = String::new();
    let mut tailed: Vec<String> = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while tailed.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, tail.chunk())
            .await
            .expect("tailed logs within the patience")
            .unwrap()
            .expect("the tail goes on");
        events.push_str(std::str::from_utf8(&chunk).unwrap());
        tailed = events
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(|data| serde_json::from_str::<serde_json::Value>(data).unwrap())
            .filter_map(|log| log["message"].as_str().map(str::to_owned))
            .collect();
    }
    let expected: Vec<String> = (900_000..900_003)
        .map(|n| format!("{} record {n}", USERS[2]))
        .collect();
    assert_eq!(
        tailed, expected,
        "the tail sends the new logs, oldest first, and nothing else"
    );
    // a gateway that shuts down ends the tail it passes on with the final event, not a cut
    sigterm(cluster.gateways[0].served.as_ref().unwrap());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, tail.chunk())
            .await
            .expect("the tail ends within the patience")
            .expect("the tail ends cleanly, not cut");
        match chunk {
            Some(chunk) => events.push_str(std::str::from_utf8(&chunk).unwrap()),
            None => break,
        }
    }
    assert!(
        events.ends_with(
            "event: end\ndata: {\"message\":\"logbridge is shutting down: reconnect with \
             Last-Event-ID to resume\",\"resumable\":true}\n\n"
        ),
        "{events}"
    );
    wait_for_clean_exit(cluster.gateways[0].served.as_mut().unwrap());
    cluster.gateways[0].restart();
    wait_ready(&cluster.gateways[0].api).await;
    // the explorer and the OpenAPI document come from the gateway itself
    let page = client
        .get(format!("{}/", cluster.api_url(&cluster.gateways[1])))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let openapi: serde_json::Value = client
        .get(format!(
            "{}/openapi.json",
            cluster.api_url(&cluster.gateways[1])
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openapi["openapi"].as_str().unwrap().get(..3), Some("3.1"));
    // a key reads its own user's logs only, through the gateway and on any replica directly
    let query = format!("q=user_id:{}", USERS[1]);
    let (_, body) = cluster.get(&cluster.gateways[0], 0, &query).await;
    assert_eq!(body["data"]["total"], 0);
    let shard_of_1 = logbridge::cluster::shard_of(USERS[1], SHARDS);
    let shard_of_0 = logbridge::cluster::shard_of(USERS[0], SHARDS);
    let mut asked = 0;
    for indexer in &cluster.indexers {
        let response = client
            .get(format!(
                "{}/shards/{shard_of_1}/logs?limit=100",
                cluster.api_url(indexer)
            ))
            .bearer_auth(cluster.readers[0].expose())
            .send()
            .await
            .unwrap();
        if response.status() != 200 {
            continue;
        }
        asked += 1;
        let body: serde_json::Value = response.json().await.unwrap();
        let mine = if shard_of_1 == shard_of_0 { 1500 } else { 0 };
        assert_eq!(
            body["data"]["total"], mine,
            "user-0's key on user-1's shard"
        );
        for message in common::messages(&body["data"]) {
            assert!(acked[&0].contains(&message), "user-0 read {message:?}");
        }
    }
    assert_eq!(asked, REPLICAS, "{REPLICAS} replicas serve user-1's shard");
}

/// Whether the record of `message` is an error: every tenth of [`records`]'s.
fn errors_of(message: &str) -> bool {
    message.starts_with("user-")
        && message.rsplit(' ').next().unwrap().parse::<u64>().unwrap() % 10 == 0
}

/// Which indexer serves which user's shard: indexer by indexer, user by user.
async fn placement(cluster: &TestCluster) -> Vec<bool> {
    let mut held = Vec::new();
    for indexer in 0..cluster.indexers.len() {
        for user in 0..USERS.len() {
            held.push(cluster.held(indexer, user).await.is_some());
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_mid_load_loses_and_doubles_nothing() {
    let mut cluster = TestCluster::start(2, 3).await;
    let shard = logbridge::cluster::shard_of(USERS[0], SHARDS);
    let (acked, load) = start_load(&cluster, 0, 60, 100);
    wait_acked(&acked, 4000).await;
    let leader = cluster
        .nats
        .stream_leader(&format!("LOGBRIDGE_logbridge_{shard}"))
        .await;
    cluster.nats.kill(leader);
    wait_acked(&acked, 12_000).await;
    cluster.nats.restart(leader).await;
    let (acked, retries) = finished(acked, load).await;
    assert_eq!(acked.values().map(Vec::len).sum::<usize>(), 24_000);
    // exports in flight when the leader died were refused and sent again
    assert!(
        retries > 0,
        "no export was refused while the stream leader was down"
    );
    eprintln!("{retries} exports sent again");
    assert_exactly(&cluster, &acked, "after the stream leader's kill -9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_indexer_mid_load_keeps_reads_and_it_catches_up() {
    let mut cluster = TestCluster::start(2, 3).await;
    let (acked, load) = start_load(&cluster, 0, 40, 100);
    wait_acked(&acked, 4000).await;
    let held_before: Vec<Option<u64>> = {
        let mut held = Vec::new();
        for user in 0..USERS.len() {
            held.push(cluster.held(0, user).await);
        }
        held
    };
    assert!(
        held_before.iter().any(Option::is_some),
        "indexer-0 serves some user"
    );
    cluster.indexers[0].kill();
    // reads go on from the other replicas while it is down and the load goes on
    wait_acked(&acked, 8000).await;
    for user in 0..USERS.len() {
        for gateway in cluster.live_gateways() {
            let (status, body) = cluster.get(gateway, user, "limit=5").await;
            assert_eq!(status, 200, "user {user} while indexer-0 is down: {body}");
        }
    }
    wait_acked(&acked, 10_000).await;
    cluster.indexers[0].restart();
    let (acked, _) = finished(acked, load).await;
    assert_exactly(&cluster, &acked, "after an indexer's kill -9").await;
    // the restarted indexer caught up on the shards it held: it serves every log of them
    let deadline = Instant::now() + PATIENCE;
    for (user, before) in held_before.iter().enumerate() {
        if before.is_none() {
            continue;
        }
        let expected = acked[&user].len() as u64;
        while cluster.held(0, user).await != Some(expected) {
            assert!(
                Instant::now() < deadline,
                "indexer-0 never caught up on user {user}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_gateway_mid_export_stores_the_retries_once() {
    let mut cluster = TestCluster::start(2, 3).await;
    // exports of 500 records, one at a time, through the gateways in turn: 20 before the kill,
    // 40 after it, half of which go to the dead gateway first
    let (acked, load) = start_load(&cluster, 0, 15, 500);
    wait_acked(&acked, 10_000).await;
    cluster.gateways[0].kill();
    let (acked, retries) = finished(acked, load).await;
    assert_eq!(acked.values().map(Vec::len).sum::<usize>(), 30_000);
    // the export in flight on the killed gateway, and every later one sent to it, went again
    // through the other
    assert!(retries > 0, "no export was sent again");
    eprintln!("{retries} exports sent again");
    assert_exactly(&cluster, &acked, "after a gateway's kill -9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_down_ingest_and_reads_go_on_and_nothing_moves() {
    let mut cluster = TestCluster::start(2, 3).await;
    let (acked, load) = start_load(&cluster, 0, 20, 100);
    wait_acked(&acked, 2000).await;
    let before = placement(&cluster).await;
    cluster.kill_etcd();
    wait_acked(&acked, 6000).await;
    // an indexer dies while etcd is down: its shards are not reassigned, reads use the other
    // replica
    cluster.indexers[2].kill();
    let (acked, _) = finished(acked, load).await;
    assert_exactly(&cluster, &acked, "with etcd down").await;
    let mut after = placement(&cluster).await;
    // the dead indexer's answers are gone; the others hold exactly what they held
    for user in 0..USERS.len() {
        after[2 * USERS.len() + user] = before[2 * USERS.len() + user];
    }
    assert_eq!(
        after, before,
        "no replica opened or closed while etcd was down"
    );
    cluster.restart_etcd().await;
    cluster.indexers[2].restart();
    let (more, load) = start_load(&cluster, 20, 5, 100);
    let (more, _) = finished(more, load).await;
    let mut all = acked;
    for (user, messages) in more {
        all.entry(user).or_default().extend(messages);
    }
    assert_exactly(&cluster, &all, "after etcd came back").await;
}

/// A page of 25 of `user`'s logs through the second gateway, from `cursor`: the messages and
/// the next cursor.
async fn page(
    cluster: &TestCluster,
    user: usize,
    cursor: &Option<String>,
) -> (Vec<String>, Option<String>) {
    let query = match cursor {
        Some(cursor) => format!("limit=25&cursor={cursor}"),
        None => "limit=25".to_owned(),
    };
    let (status, body) = cluster.get(&cluster.gateways[1], user, &query).await;
    assert_eq!(status, 200, "user {user}: {body}");
    let data = &body["data"];
    let next = data["next_cursor"].as_str().map(str::to_owned);
    (common::messages(data), next)
}

/// Which indexer should serve which user's shard, in the order of [`placement`]: its owners.
fn owned(cluster: &TestCluster) -> Vec<bool> {
    let mut owned = Vec::new();
    for indexer in 0..cluster.indexers.len() {
        for user in USERS {
            let shard = logbridge::cluster::shard_of(user, SHARDS);
            owned.push(cluster.owners(shard).contains(&indexer));
        }
    }
    owned
}

/// How long a shard's move may take under load: the join seen by every node, a copy of the
/// replica, its catching up, and the former owner letting go.
const MOVE_PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_indexer_takes_shards_while_a_cursor_walk_spans_the_move() {
    let mut cluster = TestCluster::start(2, 3).await;
    let (acked, load) = start_load(&cluster, 0, 10, 100);
    let (before, _) = finished(acked, load).await;
    assert_exactly(&cluster, &before, "before the fourth indexer").await;

    let mut cursors: Vec<Option<String>> = vec![None; USERS.len()];
    let mut walked: Vec<Vec<String>> = vec![Vec::new(); USERS.len()];
    // the first pages, then newer logs and the join while the rest of each walk goes on
    for user in 0..USERS.len() {
        let (messages, next) = page(&cluster, user, &None).await;
        walked[user].extend(messages);
        cursors[user] = next;
    }
    let (during, load) = start_load(&cluster, 10, 15, 100);
    cluster.add_node("indexer", "indexer-3");
    let joined = Instant::now();
    // the users whose shard indexer-3 takes from one of its owners
    let moving: Vec<usize> = (0..USERS.len())
        .filter(|&user| {
            let shard = logbridge::cluster::shard_of(USERS[user], SHARDS);
            cluster.owners(shard).contains(&3)
        })
        .collect();
    assert!(
        !moving.is_empty(),
        "indexer-3 owns the shard of a walked user"
    );
    // the walks go on while the shards move, up to half of each; once the move is done
    // (indexer-3 serves the shards it owns, their former owners let go of them), the rest of
    // each walk reads the shards where they are now: every walk spans the move
    let owned = owned(&cluster);
    let deadline = Instant::now() + MOVE_PATIENCE;
    loop {
        let placement = placement(&cluster).await;
        if placement == owned {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the move never ended: served {placement:?}, owned {owned:?} (indexer by indexer, user by user)"
        );
        for user in 0..USERS.len() {
            if walked[user].len() < before[&user].len() / 2
                && let Some(cursor) = cursors[user].take()
            {
                let (messages, next) = page(&cluster, user, &Some(cursor)).await;
                walked[user].extend(messages);
                cursors[user] = next;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved_after = joined.elapsed();
    let before_move: Vec<usize> = walked.iter().map(Vec::len).collect();
    while cursors.iter().any(Option::is_some) {
        for user in 0..USERS.len() {
            if let Some(cursor) = cursors[user].take() {
                let (messages, next) = page(&cluster, user, &Some(cursor)).await;
                walked[user].extend(messages);
                cursors[user] = next;
            }
        }
    }
    // the walks began before the newer logs: each is exactly the logs acknowledged before
    for (user, walk) in walked.iter().enumerate() {
        assert!(
            before_move[user] < walk.len(),
            "user {user}'s walk read on after the move"
        );
        let (lost, doubled) = differences(walk, &before[&user]);
        assert_eq!(
            (lost, doubled, walk.len()),
            (0, 0, before[&user].len()),
            "user {user}'s walk across the move: (gaps, repeats, logs)"
        );
    }
    eprintln!(
        "indexer-3 took the shards of users {moving:?}, {} ms after it joined; the walks had read {before_move:?} logs then",
        moved_after.as_millis()
    );
    let (during, _) = finished(during, load).await;
    let mut all = before;
    for (user, messages) in during {
        all.entry(user).or_default().extend(messages);
    }
    assert_exactly(&cluster, &all, "after the fourth indexer joined").await;
    // each user's shard is still served by its owners only, indexer-3 among them for the users
    // it took, and the new replicas started from copies of their peers' indexes
    assert_eq!(placement(&cluster).await, owned, "nothing moved back");
    let copies = within(
        PATIENCE,
        "indexer-3's /metrics",
        cluster.metric(
            &cluster.indexers[3],
            "logbridge_cluster_replica_copies_total",
        ),
    )
    .await;
    assert!(copies >= 1.0, "indexer-3 copied no replica from a peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_spread_over_three_shards_reads_back_as_one() {
    let cluster = TestCluster::start(2, 3).await;
    let from = common::cluster::spread(&cluster, 0, 3).await;
    let config = cluster.gateways[0].config.clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // a cut-over too soon is refused, saying why: 30 s ahead of a clock that only moves on
    let soon = chrono::DateTime::from_timestamp_nanos((now + 30_000_000_000) as i64).to_rfc3339();
    let refused = common::process::run(
        &config,
        &[
            "cluster", "spread", "--user", USERS[1], "--shards", "2", "--from", &soon,
        ],
    );
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        said.lines().next(),
        Some(
            "Error: --from must be at least 60 s ahead, so that every gateway knows the cut-over \
             before it comes"
        ),
        "{said}"
    );
    // 600 logs before the cut-over, 1,800 after, through both gateways
    let grpc = cluster.grpc();
    let base = from - 600 * 1_000_000;
    let mut sent = Vec::new();
    for batch in 0..12 {
        let records = common::cluster::records_from(USERS[0], batch * 200, 200, base);
        export_until_acknowledged(&grpc, batch as usize, &cluster.ingest, records).await;
        sent.extend((batch * 200..(batch + 1) * 200).map(|n| format!("{} record {n}", USERS[0])));
    }
    // the logs past the cut-over are on three shards, the earlier ones on the home shard only;
    // every replica of the three holds exactly its part
    let home = logbridge::cluster::shard_of(USERS[0], SHARDS);
    let spread: Vec<u32> = (0..3).map(|offset| (home + offset) % SHARDS).collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = cluster.get(&cluster.gateways[0], 0, "limit=1").await;
        if body["data"]["total"] == 2400 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gathered total never reached 2400: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let per_shard = cluster
        .assert_replicas_exact(0, &spread, &sent, "after the spread logs")
        .await;
    assert_eq!(per_shard.iter().sum::<u64>(), 2400, "{per_shard:?}");
    assert!(per_shard[0] >= 600, "{per_shard:?}");
    assert!(
        per_shard.iter().all(|&n| n > 300),
        "spread over all three: {per_shard:?}"
    );
    // through either gateway: exact totals, newest first, cursors across shards, every log once
    let mut newest_first = sent.clone();
    newest_first.reverse();
    for gateway in cluster.live_gateways() {
        let walked = cluster.walk(gateway, 0, "").await;
        assert_eq!(walked, newest_first, "walk through {}", gateway.api);
    }
    let mut small_pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("limit=7&cursor={cursor}"),
            None => "limit=7".to_owned(),
        };
        let (status, body) = cluster.get(&cluster.gateways[1], 0, &query).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["total"], 2400);
        small_pages.extend(common::messages(&body["data"]));
        match body["data"]["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(small_pages, newest_first, "pages of 7");
    // offsets, filters and text search gather the same way
    let (_, body) = cluster
        .get(&cluster.gateways[0], 0, "limit=50&page=3")
        .await;
    assert_eq!(common::messages(&body["data"]), newest_first[100..150]);
    assert_eq!(body["data"]["page"], 3);
    let (_, body) = cluster
        .get(&cluster.gateways[0], 0, "status=error&limit=100")
        .await;
    assert_eq!(body["data"]["total"], 240);
    let errors: Vec<String> = newest_first
        .iter()
        .filter(|m| errors_of(m))
        .take(100)
        .cloned()
        .collect();
    assert_eq!(common::messages(&body["data"]), errors);
    let (_, body) = cluster.get(&cluster.gateways[1], 0, "q=1234").await;
    assert_eq!(body["data"]["total"], 1);
    assert_eq!(
        common::messages(&body["data"]),
        [format!("{} record 1234", USERS[0])]
    );
    // logs of the same nanosecond on several shards keep one order, page after page
    let tied: u64 = from + 5_000 * 1_000_000;
    let ties: Vec<_> = (0..60)
        .map(|n| {
            let record = common::activity("tool_call", tied, &format!("tie {n}"));
            common::with_attr(record, "user.id", common::text(USERS[0]))
        })
        .collect();
    export_until_acknowledged(&grpc, 0, &cluster.ingest, ties).await;
    let deadline = Instant::now() + PATIENCE;
    while cluster.get(&cluster.gateways[0], 0, "q=tie").await.1["data"]["total"] != 60 {
        assert!(Instant::now() < deadline, "the tied logs never all showed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut with_ties = sent.clone();
    with_ties.extend((0..60).map(|n| format!("tie {n}")));
    let tied_shards: Vec<u64> = cluster
        .assert_replicas_exact(0, &spread, &with_ties, "after the tied logs")
        .await
        .iter()
        .zip(&per_shard)
        .map(|(total, before)| total - before)
        .collect();
    assert!(
        tied_shards.iter().filter(|&&n| n > 0).count() >= 2,
        "the tied logs span shards: {tied_shards:?}"
    );
    let one_page = cluster.walk(&cluster.gateways[0], 0, "&q=tie").await;
    assert_eq!(one_page.len(), 60);
    let mut in_sevens = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("q=tie&limit=7&cursor={cursor}"),
            None => "q=tie&limit=7".to_owned(),
        };
        let (_, body) = cluster.get(&cluster.gateways[1], 0, &query).await;
        in_sevens.extend(common::messages(&body["data"]));
        match body["data"]["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(in_sevens, one_page, "tied logs in pages of 7");
    // an erasure goes to each of the user's shards: the errors, exactly, from all three
    let (status, body) = cluster
        .delete(&cluster.gateways[1], 0, "status=error")
        .await;
    assert_eq!(
        (status, &body["data"]),
        (200, &serde_json::json!({ "deleted": 240 })),
        "{body}"
    );
    let without_errors: Vec<String> = with_ties
        .iter()
        .filter(|m| !errors_of(m))
        .cloned()
        .collect();
    cluster
        .assert_replicas_exact(0, &spread, &without_errors, "after erasing the errors")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_every_node_and_the_hops_between_them_go_on() {
    let cluster = TestCluster::start(1, 2).await;
    let nodes: Vec<&common::cluster::Node> =
        cluster.gateways.iter().chain(&cluster.indexers).collect();
    let mut before = Vec::new();
    for node in &nodes {
        before.push(cluster.served_certificate(node).await);
    }
    // the operator rotates the certificate: every node serves the new one, without a restart
    cluster.reissue_certificates();
    for (node, before) in nodes.iter().zip(&before) {
        let deadline = Instant::now() + PATIENCE;
        while cluster.served_certificate(node).await == *before {
            assert!(
                Instant::now() < deadline,
                "{} still serves the old certificate",
                node.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // and the gateway's reads reach the indexers over their new certificates
    let records = records(USERS[0], 0, 10);
    export_until_acknowledged(&cluster.grpc(), 0, &cluster.ingest, records).await;
    let sent: Vec<String> = (0..10)
        .map(|n| format!("{} record {n}", USERS[0]))
        .collect();
    let acked = HashMap::from([(0, sent)]);
    assert_exactly(&cluster, &acked, "after the certificates were rotated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_while_etcd_is_down_publishes_nothing_until_etcd_confirms_its_shards() {
    let mut cluster = TestCluster::start(1, 2).await;
    cluster.kill_etcd();
    // two gateways start without etcd: one with the cluster's shard count, one with another
    let (nats, etcd) = (cluster.nats.urls(), cluster.etcd.url.clone());
    cluster.add_node_via("gateway", "gateway-1", &nats, &etcd, &[]);
    let wrong = (SHARDS + 1).to_string();
    let env = [("LOGBRIDGE_CLUSTER_SHARDS", wrong.as_str())];
    cluster.add_node_via("gateway", "gateway-2", &nats, &etcd, &env);
    let (grpc, ingest) = (cluster.grpc(), cluster.ingest.clone());
    let export_through = async |gateway: usize, first: u64| {
        let records = records(USERS[0], first, 10);
        let mut client = grpc.connect(gateway).await.expect("a connection");
        client
            .export(common::authorized(common::request_of(records), &ingest))
            .await
    };
    for gateway in [1, 2] {
        let refused = export_through(gateway, 0).await.unwrap_err();
        assert_eq!(
            (refused.code(), refused.message()),
            (
                tonic::Code::Unavailable,
                "logbridge cannot store logs now (the cluster's shard count is not confirmed \
                 yet: etcd has not answered this node), retry later"
            ),
            "gateway-{gateway}"
        );
    }
    // etcd back: the right one takes exports, the other keeps refusing, saying why
    cluster.restart_etcd().await;
    let deadline = Instant::now() + PATIENCE;
    while export_through(1, 0).await.is_err() {
        assert!(Instant::now() < deadline, "gateway-1 never took an export");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + PATIENCE;
    let refusal = loop {
        let refused = export_through(2, 10).await.unwrap_err();
        if !refused.message().contains("not confirmed yet") {
            break refused;
        }
        assert!(Instant::now() < deadline, "gateway-2 never heard from etcd");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        refusal.message(),
        format!(
            "logbridge cannot store logs now (this cluster has {SHARDS} shards, but [cluster] \
             shards = {wrong}: the shard count is fixed for the life of a cluster), retry later"
        )
    );
    // only what gateway-1 acknowledged is stored, once
    cluster.gateways[2].kill();
    let sent: Vec<String> = (0..10)
        .map(|n| format!("{} record {n}", USERS[0]))
        .collect();
    assert_exactly(
        &cluster,
        &HashMap::from([(0, sent)]),
        "after etcd came back",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_catches_up_through_a_retention_sweep_is_ready_without_new_traffic() {
    // retention on, swept often: the commit that catches a replica up is often a sweep's
    let options = common::cluster::Options {
        cluster_settings: "\n[retention]\ndays = 3650\nsweep_interval_ms = 100",
        ..Default::default()
    };
    let mut cluster = TestCluster::start_with(1, 2, options).await;
    let grpc = cluster.grpc();
    let sent: Vec<String> = (0..300)
        .map(|n| format!("{} record {n}", USERS[0]))
        .collect();
    export_until_acknowledged(&grpc, 0, &cluster.ingest, records(USERS[0], 0, 100)).await;
    cluster.indexers[0].kill();
    for batch in 1..3 {
        let records = records(USERS[0], batch * 100, 100);
        export_until_acknowledged(&grpc, 0, &cluster.ingest, records).await;
    }
    // back, indexer-0 catches up and is ready, with no traffic after it
    cluster.indexers[0].restart();
    let acked = HashMap::from([(0, sent)]);
    assert_exactly(
        &cluster,
        &acked,
        "after indexer-0 caught up on a quiet shard",
    )
    .await;
}
