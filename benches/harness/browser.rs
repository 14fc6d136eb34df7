//! Headless Chromium through WebDriver (a chromedriver of its own, on a free port), for the
//! explorer's tests and its benchmark.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value as Json, json};

/// How long a condition may take to come true in the page.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A chromedriver in a process group of its own, which holds the browsers it starts: the
/// whole group is stopped when dropped, so that a session a test never closed (it failed, or
/// forgot) leaves no Chromium running behind it.
pub struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts `chromedriver` and waits until it is ready.
pub async fn driver(chromedriver: &Path) -> Driver {
    // a free port, since chromedriver cannot be told to pick one
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", chromedriver.display()));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + PATIENCE;
    let client = super::plain_http().build().expect("an HTTP client");
    loop {
        let ready = client.get(format!("{}/status", driver.url)).send().await;
        if let Ok(response) = ready
            && let Ok(status) = response.json::<Json>().await
            && status["value"]["ready"] == true
        {
            return driver;
        }
        assert!(Instant::now() < deadline, "chromedriver never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A headless Chromium session of `width` by `height` pixels.
pub async fn browser(driver: &Driver, chromium: &Path, width: u32, height: u32) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium.display().to_string(),
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", format!("--window-size={width},{height}")],
        }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// The value of a JavaScript expression in the page.
pub async fn js(client: &Client, expression: &str) -> Json {
    client
        .execute(&format!("return {expression};"), vec![])
        .await
        .unwrap()
}

/// Waits until the JavaScript expression `condition` is true in the page; panics after
/// [`PATIENCE`], saying what it waited for and what the page showed.
pub async fn wait_for(client: &Client, condition: &str) {
    let deadline = Instant::now() + PATIENCE;
    let script = format!("return Boolean({condition});");
    loop {
        if client.execute(&script, vec![]).await.unwrap() == json!(true) {
            return;
        }
        if Instant::now() > deadline {
            let shown = js(client, "document.querySelector('main').innerText").await;
            panic!("waited in vain for {condition}; the page shows:\n{shown}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
