//! The explorer's alert rules, in headless Chromium: a rule made of the filters applied, its
//! alert firing on the page once its logs arrive, deleting it, and no card for a key that may
//! not manage rules.

use crate::common;
use crate::explorer::{browser, click, driver, sign_in_at, text_of};

use common::harness::browser::{js, wait_for};
use common::{AppOptions, activity, now_nanos, spawn_app_with, text, with_attr};
use fantoccini::Locator;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_is_made_of_the_filters_applied_and_shows_its_alert_firing() {
    let app = spawn_app_with(AppOptions {
        commit_interval_ms: 100,
        settings: vec![("LOGBRIDGE_ALERTS_EVALUATION_INTERVAL_MS", "1000".to_owned())],
        ..AppOptions::default()
    })
    .await;
    let now = now_nanos();
    app.ingest(
        &app.keys.alice,
        vec![activity("tool_call", now, "weather fetched")],
    )
    .await;
    let driver = driver().await;
    let client = browser(&driver, 1280, 900).await;
    sign_in_at(&client, &app.api_url, &app.keys.alice, 1).await;
    wait_for(&client, "!document.getElementById('alerts').hidden").await;
    assert_eq!(
        text_of(&client, "#alerts-empty").await,
        "No alert rules yet."
    );

    // the failed webhooks of the last minute: more than none fires
    client
        .goto(&format!(
            "{}/?log_type=end_call_webhook&status=error",
            app.api_url
        ))
        .await
        .unwrap();
    wait_for(
        &client,
        "document.getElementById('total').textContent === '0'",
    )
    .await;
    let name = client.find(Locator::Css("#a-name")).await.unwrap();
    name.send_keys("CRM webhooks failing").await.unwrap();
    client
        .find(Locator::Css("#a-threshold"))
        .await
        .unwrap()
        .send_keys("0")
        .await
        .unwrap();
    client
        .find(Locator::Css("#a-window option[value='1m']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    click(&client, "#a-create").await;
    wait_for(
        &client,
        "document.querySelectorAll('#alert-rules li.alert-rule').length === 1",
    )
    .await;
    assert_eq!(
        text_of(&client, "#alert-rules .alert-condition").await,
        "count > 0 over 1m · log_type=end_call_webhook status=error"
    );
    wait_for(
        &client,
        "document.querySelector('#alert-rules .alert-rule').dataset.status === 'inactive'",
    )
    .await;

    // one failed webhook: the rule fires, and the page shows it on its next read
    let now = now_nanos();
    let failed = with_attr(
        activity("end_call_webhook", now, "CRM answered 502"),
        "activity.status",
        text("error"),
    );
    app.ingest(&app.keys.alice, vec![failed]).await;
    wait_for(
        &client,
        "document.querySelector('#alert-rules .alert-rule').dataset.status === 'firing'",
    )
    .await;
    assert_eq!(
        text_of(&client, "#alert-rules .alert-status").await,
        "firing"
    );
    assert!(
        text_of(&client, "#alert-rules .alert-facts")
            .await
            .starts_with("now 1 · fired "),
    );

    // a latency rule over every type is refused with the server's message
    client
        .goto(&format!("{}/?status=error", app.api_url))
        .await
        .unwrap();
    wait_for(&client, "!document.getElementById('alerts').hidden").await;
    client
        .find(Locator::Css("#a-name"))
        .await
        .unwrap()
        .send_keys("latency")
        .await
        .unwrap();
    client
        .find(Locator::Css("#a-measure option[value='latency_p95']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .find(Locator::Css("#a-threshold"))
        .await
        .unwrap()
        .send_keys("500")
        .await
        .unwrap();
    click(&client, "#a-create").await;
    wait_for(&client, "!document.getElementById('alert-error').hidden").await;
    assert_eq!(
        text_of(&client, "#alert-error").await,
        "measure latency_p95 needs filters.log_type: latencies are kept per type"
    );

    // deleted: gone from the page and from the API
    click(&client, "#alert-rules .alert-delete").await;
    wait_for(
        &client,
        "document.querySelectorAll('#alert-rules li.alert-rule').length === 0",
    )
    .await;
    let listed: serde_json::Value = app
        .client
        .get(format!("{}/alerts", app.api_url))
        .bearer_auth(app.keys.alice.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"]["rules"], json!([]));

    // a key that only reads logs sees no rules card
    click(&client, "#forget-key").await;
    sign_in_at(&client, &app.api_url, &app.keys.alice_reader, 2).await;
    wait_for(
        &client,
        "document.getElementById('alerts').dataset.read === 'hidden'",
    )
    .await;
    assert_eq!(
        js(&client, "document.getElementById('alerts').hidden").await,
        json!(true)
    );
}
