//! The explorer's search, in headless Chromium: the grammar from a shared URL and typed in the
//! box, the matched words marked in the rows' messages, the syntax help, and a bad query's
//! message from the server.

use crate::common;
use crate::explorer::{browser, click, driver, messages, sign_in_at, text_of};
use crate::search::{FETCHED_1, RATE_4, TIMED_OUT_2, app_with_calls, encoded};

use common::harness::browser::{js, wait_for};
use fantoccini::{Client, Locator};
use serde_json::json;

/// The words marked in the messages of the main table, top to bottom.
const MARKED: &str =
    "[...document.querySelectorAll('#logs tr.log-row .c-message mark')].map(m => m.textContent)";

/// Waits until the main table's messages are `expected`, top to bottom, and the total says so.
async fn wait_for_messages(client: &Client, expected: &[&str]) {
    let shown = serde_json::to_string(&expected.join("\n")).unwrap();
    wait_for(
        client,
        &format!(
            "[...document.querySelectorAll('#logs tr.log-row .c-message')].map(c => c.textContent).join('\\n') === {shown} && document.getElementById('total').textContent === '{}'",
            expected.len()
        ),
    )
    .await;
    assert_eq!(messages(client, "#logs").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_box_takes_the_grammar_and_marks_what_matched() {
    let app = app_with_calls().await;
    let driver = driver().await;
    let client = browser(&driver, 1280, 900).await;
    sign_in_at(&client, &app.api_url, &app.keys.alice, 6).await;

    // a shared URL with operators: its logs, its words marked, the query in the box
    let q = "(Timed OR rate*) -webhook";
    client
        .goto(&format!("{}/?{}", app.api_url, encoded(q)))
        .await
        .unwrap();
    wait_for_messages(&client, &[RATE_4, TIMED_OUT_2]).await;
    assert_eq!(js(&client, MARKED).await, json!(["rate", "timed"]));
    assert_eq!(
        js(&client, "document.getElementById('f-q').value").await,
        json!(q)
    );

    // the syntax help opens beside the box
    click(&client, "#q-help").await;
    wait_for(&client, "document.getElementById('q-syntax').open").await;
    assert!(
        text_of(&client, "#q-syntax")
            .await
            .contains("request_data.payload.caller_number:\"+919876543210\"")
    );

    // a path into the request data, typed: the two calls from that number, in the URL
    let search = client.find(Locator::Css("#f-q")).await.unwrap();
    search.clear().await.unwrap();
    search
        .send_keys("request_data.payload.caller_number:\"+919876543210\" fetch*\u{E007}")
        .await
        .unwrap();
    // (the total was 2 before too: the rows tell the new answer)
    wait_for_messages(&client, &[FETCHED_1, FETCHED_1]).await;
    assert_eq!(js(&client, MARKED).await, json!(["fetched", "fetched"]));
    let url = client.current_url().await.unwrap();
    let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert!(
        q.contains(&(
            "q".to_owned(),
            "request_data.payload.caller_number:\"+919876543210\" fetch*".to_owned()
        )),
        "{url}"
    );

    // a bad query: the server's message, naming where
    search.clear().await.unwrap();
    search.send_keys("(timeout\u{E007}").await.unwrap();
    wait_for(&client, "!document.getElementById('error').hidden").await;
    assert!(
        text_of(&client, "#error")
            .await
            .contains("400: q has a '(' that is never closed (at character 1)"),
        "{}",
        text_of(&client, "#error").await
    );
    client.close().await.unwrap();
}
