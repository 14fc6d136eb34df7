//! The explorer at `/`, driven in headless Chromium through WebDriver: a person types a key,
//! filters, searches, expands a row, opens a call, scrolls past the first page and watches a
//! live log arrive; the tests assert what the page shows.

use crate::common;

use common::harness::browser::{self, Driver, js, wait_for};
use common::{
    AppOptions, PATIENCE, TestApp, activity, at_ms, spawn_app_with, text, tools, with_attr,
};
use fantoccini::{Client, Locator};
use logbridge::auth::Secret;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::{Value as Json, json};

pub(crate) async fn driver() -> Driver {
    browser::driver(&tools::installed().chromedriver).await
}

pub(crate) async fn browser(driver: &Driver, width: u32, height: u32) -> Client {
    browser::browser(driver, &tools::installed().chromium, width, height).await
}

pub(crate) async fn click(client: &Client, css: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let element = client.find(Locator::Css(css)).await.unwrap();
        match element.click().await {
            Ok(_) => return,
            // the page drew it anew between the find and the click (lists are read again
            // every few seconds): found again
            Err(e) if e.is_stale_element_reference() && std::time::Instant::now() < deadline => {}
            Err(e) => panic!("click {css}: {e}"),
        }
    }
}

pub(crate) async fn text_of(client: &Client, css: &str) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let element = client.find(Locator::Css(css)).await.unwrap();
        match element.text().await {
            Ok(text) => return text,
            // drawn anew between the find and the read, as for a click
            Err(e) if e.is_stale_element_reference() && std::time::Instant::now() < deadline => {}
            Err(e) => panic!("text of {css}: {e}"),
        }
    }
}

/// The messages of the rows of a table, top to bottom.
pub(crate) async fn messages(client: &Client, table: &str) -> Vec<String> {
    let script = format!(
        "[...document.querySelectorAll('{table} tr.log-row .c-message')].map(c => c.textContent)"
    );
    serde_json::from_value(js(client, &script).await).unwrap()
}

/// The message of log `i`.
fn message(i: u64) -> String {
    if i % 10 == 7 {
        format!("log {i}: refund issued")
    } else {
        format!("log {i}: done")
    }
}

/// Log `i`: one a second from 09:15:42; every fifth failed; rooms of ten; the 7th of each
/// ten mentions a refund.
fn record(i: u64) -> LogRecord {
    let types = ["tool_call", "end_call_webhook", "inbound_context_lookup"];
    let mut record = activity(types[(i % 3) as usize], at_ms(i * 1000), &message(i));
    record = with_attr(
        record,
        "activity.room_name",
        text(&format!("room-{}", i / 10)),
    );
    record = with_attr(
        record,
        "activity.request_data",
        text(&format!(r#"{{"order": {i}, "items": ["a", "b"]}}"#)),
    );
    if i % 5 == 0 {
        record = with_attr(record, "activity.status", text("error"));
    }
    record
}

const LOGS: u64 = 130;

async fn app_with_logs() -> TestApp {
    let app = spawn_app_with(AppOptions {
        commit_interval_ms: 1000,
        ..AppOptions::default()
    })
    .await;
    app.ingest(&app.keys.alice, (0..LOGS).map(record).collect())
        .await;
    app.ingest(&app.keys.bob, vec![record(1000)]).await;
    app
}

async fn sign_in(client: &Client, app: &TestApp) {
    sign_in_at(client, &app.api_url, &app.keys.alice, 50).await;
}

/// Signs in with `key` to the page at `base`: its first `rows` rows show.
pub(crate) async fn sign_in_at(client: &Client, base: &str, key: &Secret, rows: usize) {
    client.goto(&format!("{base}/")).await.unwrap();
    let field = client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("#key"))
        .await
        .unwrap();
    field.send_keys(key.expose()).await.unwrap();
    click(client, "#key-submit").await;
    wait_for(
        client,
        &format!("document.querySelectorAll('#logs tr.log-row').length === {rows}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_filters_searches_and_reads_one_call() {
    let app = app_with_logs().await;
    let driver = driver().await;
    let client = browser(&driver, 1280, 900).await;

    // a wrong key is refused on the page, and the form stays
    client.goto(&format!("{}/", app.api_url)).await.unwrap();
    let key = client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("#key"))
        .await
        .unwrap();
    key.send_keys("lb_not_a_key").await.unwrap();
    click(&client, "#key-submit").await;
    wait_for(&client, "!document.getElementById('key-error').hidden").await;
    assert_eq!(
        text_of(&client, "#key-error").await,
        "This key was refused: unknown API key"
    );
    assert_eq!(
        js(&client, "sessionStorage.getItem('logbridge.key')").await,
        Json::Null
    );

    // the right key: the newest 50 of alice's 130, newest first; bob's is not there
    sign_in(&client, &app).await;
    assert_eq!(text_of(&client, "#total").await, "130");
    let expected: Vec<String> = (80..LOGS).rev().map(message).collect();
    assert_eq!(messages(&client, "#logs").await, expected);
    assert_eq!(text_of(&client, "#shown").await, "Showing 50 of 130");
    // the key lives in this tab's session only
    assert_eq!(
        js(&client, "sessionStorage.getItem('logbridge.key')").await,
        json!(app.keys.alice.expose())
    );
    assert_eq!(js(&client, "localStorage.length").await, json!(0));
    // the histogram: bars of both statuses; the latency table: a row per type
    assert!(
        js(
            &client,
            "document.querySelectorAll('#histogram rect.bar.error').length"
        )
        .await
        .as_u64()
        .unwrap()
            > 0
    );
    assert_eq!(
        js(
            &client,
            "document.querySelectorAll('#latency tr[data-log-type]').length"
        )
        .await,
        json!(3)
    );

    // filter by status: 26 failed logs, every row says error, and the URL holds the filter
    click(&client, "#f-status option[value=error]").await;
    wait_for(
        &client,
        "document.getElementById('total').textContent === '26'",
    )
    .await;
    let statuses: Vec<String> = serde_json::from_value(
        js(&client, "[...document.querySelectorAll('#logs tr.log-row .c-status')].map(c => c.textContent.trim())").await,
    )
    .unwrap();
    assert_eq!(statuses.len(), 26);
    assert!(
        statuses.iter().all(|s| s.ends_with("error")),
        "{statuses:?}"
    );
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .query()
            .unwrap()
            .contains("status=error")
    );

    // full text, with the filter: failed logs mentioning a refund (7, 17, ... none divisible by 5)
    let search = client.find(Locator::Css("#f-q")).await.unwrap();
    search.send_keys("refund\u{E007}").await.unwrap();
    wait_for(
        &client,
        "document.getElementById('total').textContent === '0'",
    )
    .await;
    wait_for(&client, "!document.getElementById('empty').hidden").await;
    assert_eq!(
        text_of(&client, "#empty").await,
        "No logs match these filters."
    );
    // any status: the 13 refunds
    click(&client, "#f-status option[value='']").await;
    wait_for(
        &client,
        "document.getElementById('total').textContent === '13'",
    )
    .await;
    let refunds: Vec<String> = (0..LOGS)
        .rev()
        .filter(|i| i % 10 == 7)
        .map(message)
        .collect();
    assert_eq!(messages(&client, "#logs").await, refunds);

    // a shared URL restores the view
    let url = client.current_url().await.unwrap();
    client.goto(url.as_str()).await.unwrap();
    wait_for(
        &client,
        "document.getElementById('total').textContent === '13'",
    )
    .await;
    assert_eq!(
        js(&client, "document.getElementById('f-q').value").await,
        json!("refund")
    );

    // expand a row: the request data, pretty-printed
    let first = client.find(Locator::Css("#logs tr.log-row")).await.unwrap();
    first.click().await.unwrap();
    wait_for(
        &client,
        "document.querySelector('#logs tr.log-detail pre.request-data') !== null",
    )
    .await;
    assert_eq!(
        text_of(&client, "#logs tr.log-detail pre.request-data").await,
        "{\n  \"order\": 127,\n  \"items\": [\n    \"a\",\n    \"b\"\n  ]\n}"
    );
    assert_eq!(
        first.attr("aria-expanded").await.unwrap().as_deref(),
        Some("true")
    );

    // the call view: every log of room-12, oldest first
    click(&client, "#logs tr.log-row button.room-link").await;
    wait_for(&client, "!document.getElementById('call-view').hidden").await;
    wait_for(
        &client,
        "document.querySelectorAll('#call-logs tr.log-row').length === 10",
    )
    .await;
    assert!(text_of(&client, "#call-title").await.contains("room-12"));
    let call: Vec<String> = (120..130).map(message).collect();
    assert_eq!(messages(&client, "#call-logs").await, call);
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .query()
            .unwrap()
            .contains("room=room-12")
    );
    click(&client, "#close-call").await;
    wait_for(&client, "document.getElementById('call-view').hidden").await;

    // a bar of the histogram narrows the range to its bucket, within the range shown: from
    // 09:15:43, two-second buckets start at 09:15:42, and the first one zooms to 09:15:43-44
    client
        .goto(&format!(
            "{}/?start_time=2026-03-10T09:15:43Z&end_time=2026-03-10T09:17:00Z",
            app.api_url
        ))
        .await
        .unwrap();
    wait_for(
        &client,
        "document.getElementById('total').textContent === '77'",
    )
    .await;
    click(&client, "#histogram g.bucket rect.hit").await;
    wait_for(
        &client,
        "document.getElementById('total').textContent === '1'",
    )
    .await;
    assert_eq!(messages(&client, "#logs").await, vec![message(1)]);
    let query = client
        .current_url()
        .await
        .unwrap()
        .query()
        .unwrap()
        .to_owned();
    assert!(
        query.contains("start_time=2026-03-10T09:15:43")
            && query.contains("end_time=2026-03-10T09:15:44"),
        "{query}"
    );

    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrolling_reads_on_and_a_live_log_arrives() {
    let app = app_with_logs().await;
    let driver = driver().await;
    let client = browser(&driver, 1280, 900).await;
    sign_in(&client, &app).await;

    // scrolling to the end reads the next page through the cursor, then the last
    js(&client, "window.scrollTo(0, document.body.scrollHeight)").await;
    wait_for(
        &client,
        "document.querySelectorAll('#logs tr.log-row').length === 100",
    )
    .await;
    js(&client, "window.scrollTo(0, document.body.scrollHeight)").await;
    wait_for(
        &client,
        "document.querySelectorAll('#logs tr.log-row').length === 130",
    )
    .await;
    let all: Vec<String> = (0..LOGS).rev().map(message).collect();
    assert_eq!(messages(&client, "#logs").await, all);
    assert_eq!(text_of(&client, "#shown").await, "Showing 130 of 130");
    wait_for(&client, "document.getElementById('load-more').hidden").await;

    // a log committed after the page was read, before live tail is on: the tail follows on
    // from the page, so it arrives too
    let between = activity("tool_call", at_ms(400_000), "committed in between");
    app.ingest(&app.keys.alice, vec![between]).await;
    click(&client, "#live").await;
    wait_for(&client, "document.getElementById('live').checked").await;
    wait_for(
        &client,
        "document.querySelector('#logs tr.log-row .c-message').textContent === 'committed in between'",
    )
    .await;
    // live tail on: a log sent now appears on top, marked live, and the total follows
    let live = activity("tool_call", at_ms(500_000), "a live one");
    let response = app.export(&app.keys.alice, vec![live]).await.unwrap();
    assert_eq!(response.partial_success, None);
    wait_for(
        &client,
        "document.querySelector('#logs tr.log-row .c-message').textContent === 'a live one'",
    )
    .await;
    assert_eq!(
        js(
            &client,
            "[...document.querySelectorAll('#logs tr.log-row')].slice(0, 3)\
             .map(r => [r.classList.contains('live'), r.querySelector('.c-message').textContent])"
        )
        .await,
        json!([
            [true, "a live one"],
            [true, "committed in between"],
            [false, "log 129: done"]
        ])
    );
    wait_for(
        &client,
        "document.getElementById('total').textContent === '132'",
    )
    .await;

    // the keyboard: '/' goes to the search box
    client
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("/")
        .await
        .unwrap();
    wait_for(&client, "document.activeElement.id === 'f-q'").await;

    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_width_page_fits_and_errors_say_so() {
    let app = app_with_logs().await;
    let driver = driver().await;
    let client = browser(&driver, 375, 800).await;
    sign_in(&client, &app).await;
    // nothing wider than the screen but the scrolling table
    assert_eq!(
        js(
            &client,
            "document.documentElement.scrollWidth <= window.innerWidth"
        )
        .await,
        json!(true)
    );

    // a bad filter in a shared URL is answered by the server, and the page says what it said
    client
        .goto(&format!(
            "{}/?start_time=2026-03-10T10:00:00Z&end_time=2026-03-10T09:00:00Z",
            app.api_url
        ))
        .await
        .unwrap();
    wait_for(&client, "!document.getElementById('error').hidden").await;
    assert!(
        text_of(&client, "#error")
            .await
            .contains("400: start_time must be before end_time"),
        "{}",
        text_of(&client, "#error").await
    );

    // the server going away: the page says it cannot reach it
    let mut app = app;
    if let Some(server) = app.server.take() {
        server.shutdown().await;
    }
    click(&client, "#apply").await;
    wait_for(
        &client,
        "/Cannot reach logbridge/.test(document.getElementById('error').textContent)",
    )
    .await;
    client.close().await.unwrap();
}

/// The explorer of a cluster's gateway, for a user spread over three shards: the page, its
/// statistics, scrolling through cursors that go on across shards, and the live tail following
/// on from the page, all as for a user of one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_spread_over_shards_reads_the_explorer_as_on_one_node() {
    use common::cluster::{TestCluster, USERS, export_until_acknowledged, spread};
    // plaintext: the browser trusts no test CA
    let cluster = TestCluster::start_plaintext(1, 2).await;
    let from = spread(&cluster, 0, 3).await;
    // the data set of the other tests, stamped past the cut-over: on all three shards
    let spread_record = |i: u64| {
        let mut record = record(i);
        record.time_unix_nano = from + i * 1_000_000_000;
        with_attr(record, "user.id", text(USERS[0]))
    };
    let grpc = cluster.grpc();
    let records = (0..LOGS).map(spread_record).collect();
    export_until_acknowledged(&grpc, 0, &cluster.ingest, records).await;
    let gateway = cluster.api_url(&cluster.gateways[0]);
    common::cluster::wait_for_total(&cluster, &cluster.gateways[0], 0, LOGS as usize).await;

    let driver = driver().await;
    let client = browser(&driver, 1280, 900).await;
    sign_in_at(&client, &gateway, &cluster.readers[0], 50).await;
    assert_eq!(text_of(&client, "#total").await, "130");
    let newest: Vec<String> = (80..LOGS).rev().map(message).collect();
    assert_eq!(messages(&client, "#logs").await, newest);
    // the statistics, gathered: bars of both statuses, a latency row per type
    wait_for(
        &client,
        "document.querySelectorAll('#histogram rect.bar.error').length > 0",
    )
    .await;
    assert_eq!(
        js(
            &client,
            "document.querySelectorAll('#latency tr[data-log-type]').length"
        )
        .await,
        json!(3)
    );
    // filtered: the 26 failed logs
    click(&client, "#f-status option[value=error]").await;
    wait_for(
        &client,
        "document.getElementById('total').textContent === '26'",
    )
    .await;
    click(&client, "#f-status option[value='']").await;
    wait_for(
        &client,
        "document.getElementById('total').textContent === '130'",
    )
    .await;
    // scrolling reads on through cursors across the shards
    for shown in [100, 130] {
        js(&client, "window.scrollTo(0, document.body.scrollHeight)").await;
        wait_for(
            &client,
            &format!("document.querySelectorAll('#logs tr.log-row').length === {shown}"),
        )
        .await;
    }
    let all: Vec<String> = (0..LOGS).rev().map(message).collect();
    assert_eq!(messages(&client, "#logs").await, all);

    // a log acknowledged after the page was read, then the live tail: it follows on from the
    // page in every shard, so that log arrives, then one sent while live
    let between = with_attr(
        activity("tool_call", from + 400_000_000_000, "committed in between"),
        "user.id",
        text(USERS[0]),
    );
    export_until_acknowledged(&grpc, 0, &cluster.ingest, vec![between]).await;
    common::cluster::wait_for_total(&cluster, &cluster.gateways[0], 0, 131).await;
    click(&client, "#live").await;
    wait_for(&client, "document.getElementById('live').checked").await;
    wait_for(
        &client,
        "document.querySelector('#logs tr.log-row .c-message').textContent === 'committed in between'",
    )
    .await;
    let live = with_attr(
        activity("tool_call", from + 500_000_000_000, "a live one"),
        "user.id",
        text(USERS[0]),
    );
    export_until_acknowledged(&grpc, 0, &cluster.ingest, vec![live]).await;
    wait_for(
        &client,
        "document.querySelector('#logs tr.log-row .c-message').textContent === 'a live one'",
    )
    .await;
    wait_for(
        &client,
        "document.getElementById('total').textContent === '132'",
    )
    .await;
    client.close().await.unwrap();
}
