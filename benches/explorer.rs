//! Explorer benchmark: how long the page at `/` takes, in headless Chromium, from navigation to
//! its first view (the newest 50 logs and the statistics drawn) on the query benchmark's index,
//! for the user with three million logs and for a small one.
//!
//!     cargo bench --bench explorer -- [--dir PATH] [--runs 10]
//!
//! It needs the index `cargo bench --bench query` builds (`target/bench-index` by default), and
//! Chromium with chromedriver, which `tests/tools/install` installs first when missing.

#[path = "harness/mod.rs"]
mod harness;

#[allow(dead_code)] // the benchmark needs Chromium, not Schemathesis
#[path = "../tests/suite/common/tools.rs"]
mod tools;

use std::path::PathBuf;
use std::time::Duration;

use harness::Server;
use harness::browser::{self, js, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_logbridge");

/// Where the first view's time goes, each a time since navigation start on the page's clock
/// (medians in the table): the page received, its last module received, the first API request
/// sent and the last API answer received.
const PHASES: [(&str, &str); 4] = [
    (
        "page",
        "performance.getEntriesByType('navigation')[0].responseEnd",
    ),
    (
        "modules",
        "Math.max(...performance.getEntriesByType('resource')\
         .filter(r => r.name.includes('/explorer/')).map(r => r.responseEnd))",
    ),
    (
        "answers asked",
        "Math.min(...performance.getEntriesByType('resource')\
         .filter(r => new URL(r.name).pathname.startsWith('/logs')).map(r => r.startTime))",
    ),
    (
        "answers in",
        "Math.max(...performance.getEntriesByType('resource')\
         .filter(r => new URL(r.name).pathname.startsWith('/logs')).map(r => r.responseEnd))",
    ),
];

#[tokio::main]
async fn main() {
    let mut dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-index"));
    let mut runs = 10;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--dir" => dir = PathBuf::from(args.next().expect("--dir PATH")),
            "--runs" => runs = args.next().expect("--runs N").parse().expect("--runs N"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        dir.join("index/meta.json").exists(),
        "no index in {}: run cargo bench --bench query first",
        dir.display()
    );
    let server = Server::start(BIN, &dir, 1000).await;
    let tools = tools::installed();
    let driver = browser::driver(&tools.chromedriver).await;
    let client = browser::browser(&driver, &tools.chromium, 1280, 900).await;
    let names = PHASES.map(|(name, _)| name);
    println!(
        "| user | logs | first visit | first view p50 | min | max | {} |",
        names.join(" | ")
    );
    println!("|---|---|---|---|---|---|{}", "---|".repeat(names.len()));
    for (name, key) in [
        ("large", &server.large_reader),
        ("small", &server.small_reader),
    ] {
        let secret = key.trim_start_matches("Bearer ");
        let mut times = Vec::new();
        let mut first_visit = 0.0;
        let mut phases: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
        let mut total = String::new();
        // the first visit of each user finds the server's caches cold; it is shown apart, and the
        // runs after it are as a person's second look finds them (the browser keeps the page's
        // files from the visit that stores the key)
        for run in 0..=runs {
            client.goto(&format!("{}/", server.api)).await.unwrap();
            js(
                &client,
                &format!("sessionStorage.setItem('logbridge.key', '{secret}')"),
            )
            .await;
            client.goto(&format!("{}/", server.api)).await.unwrap();
            wait_for(
                &client,
                "document.querySelectorAll('#logs tr.log-row').length === 50 \
                 && document.querySelector('#histogram rect.bar') !== null \
                 && performance.getEntriesByName('logbridge-view-drawn').length > 0",
            )
            .await;
            // navigation start to the frame that shows the first view, as the page's clock
            // marks it (not when the harness, polling through the driver, sees it); the page
            // keeps the latest view's mark, and nothing loads a second view here
            let drawn = "performance.getEntriesByName('logbridge-view-drawn')[0].startTime";
            let took = js(&client, drawn).await.as_f64().unwrap();
            total = js(&client, "document.getElementById('total').textContent")
                .await
                .as_str()
                .unwrap()
                .to_owned();
            if run == 0 {
                first_visit = took;
            } else {
                times.push(Duration::from_secs_f64(took / 1000.0));
                for (times, (_, phase)) in phases.iter_mut().zip(PHASES) {
                    times.push(js(&client, phase).await.as_f64().unwrap());
                }
            }
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let phases: Vec<String> = phases
            .into_iter()
            .map(|times| format!("{:.0} ms", harness::median(times)))
            .collect();
        println!(
            "| {name} | {total} | {first_visit:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {} |",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1]),
            phases.join(" | ")
        );
    }
    client.close().await.unwrap();
    server.stop();
}
