//! The dashboard in a real headless Chromium, driven through chromedriver
//! (WebDriver), against the real Redis with a running worker: the overview
//! shows a queue with the right counts; a dead letter replayed with a click
//! is processed by the worker; the abort button stops a running job; a form
//! posted without its CSRF token is refused.
//!
//! Chromium and chromedriver come from the Debian packages `chromium` and
//! `chromium-driver`, which `scripts/services` installs; without them these
//! tests fail and say so.
//!
//! `screenshots` (ignored; `scripts/screenshots` runs it) writes the PNGs
//! of `docs/img/`.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::{App, BoxError, SendOptions, ShutdownHandle, WorkerError, WorkerReport};
use dramaturg_web::Dashboard;
use fantoccini::{Client, ClientBuilder, Locator};
use serde::{Deserialize, Serialize};

use support::{run_until_dead, unique, REDIS};

/// Whether `Charge` fails (it does until a test fixes it).
static BROKEN: AtomicBool = AtomicBool::new(true);
/// How many `Charge` attempts succeeded.
static CHARGED: AtomicU64 = AtomicU64::new(0);
/// Set when a `Crunch` starts; `Crunch` never ends by itself within a test.
static CRUNCHING: AtomicBool = AtomicBool::new(false);

/// Fails while [`BROKEN`]; no retries, so a failure is a dead letter.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "e2e-billing", max_retries = 0)]
struct Charge {
    customer: String,
    cents: u64,
}

impl Charge {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        if BROKEN.load(Ordering::SeqCst) {
            return Err(format!("payment gateway refused {} for {}", self.cents, self.customer).into());
        }
        CHARGED.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Runs for ten minutes unless aborted.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "e2e-reports", max_retries = 0, time_limit = "15m")]
struct Crunch {
    report: String,
}

impl Crunch {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        CRUNCHING.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(600)).await;
        std::hint::black_box(self.report);
        Ok(())
    }
}

/// chromedriver on a free port, ended when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped (Chromium's fresh profile).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The path of `program` on `PATH`, or a failure that says how to get it.
fn installed(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "`{program}` is not installed: the dashboard's browser tests need Chromium and chromedriver \
                 (Debian packages `chromium` and `chromium-driver`); run scripts/services to install them"
            )
        })
}

/// Starts chromedriver and a Chromium session (headless, a fresh profile).
async fn browser() -> (Driver, Client) {
    let chromium = installed("chromium");
    let chromedriver = installed("chromedriver");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let profile = TempDir(std::env::temp_dir().join(format!("dramaturg-e2e-{}", unique())));
    let driver = Driver { child, port, _profile: profile };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", driver.port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on port {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let args = [
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--window-size=1280,900".to_owned(),
        format!("--user-data-dir={}", driver._profile.0.display()),
    ];
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({ "binary": chromium.display().to_string(), "args": args }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("cannot start a Chromium session through chromedriver: {e}"));
    (driver, client)
}

/// Serves `dashboard` on a free loopback port; the address.
async fn serve(dashboard: Dashboard) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(dashboard.serve(listener, std::future::pending()));
    address
}

/// A worker running in the background.
type Running = (ShutdownHandle, tokio::task::JoinHandle<Result<WorkerReport, WorkerError>>);

fn start(app: &App) -> Running {
    let worker = Worker::new(app.clone()).concurrency(8);
    let handle = worker.shutdown_handle();
    (handle, tokio::spawn(worker.run()))
}

async fn stop(running: Running) -> WorkerReport {
    running.0.shutdown();
    running.1.await.unwrap().unwrap()
}

/// Waits up to 20 s for `done`.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text of the first element `css` finds, once it holds `expected`:
/// the page a click leads to may not have loaded yet (an element of the
/// page before is then stale).
async fn text_once(client: &Client, css: &str, expected: &str) -> String {
    let mut text = String::new();
    eventually(&format!("{css} holds {expected:?}"), async || {
        text = match client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.contains(expected)
    })
    .await;
    text
}

/// The texts of the cells of the overview's row for `queue`.
async fn overview_cells(client: &Client, base: &str, queue: &str) -> Vec<String> {
    client.goto(&format!("{base}/")).await.unwrap();
    let row = client.find(Locator::Css(&format!("tr[data-queue=\"{queue}\"]"))).await.unwrap();
    let mut texts = Vec::new();
    for cell in row.find_all(Locator::Css("td")).await.unwrap() {
        texts.push(cell.text().await.unwrap());
    }
    texts
}

async fn redis_app(namespace: &str) -> App {
    let url = format!("{REDIS}?namespace={namespace}");
    dramaturg::app(dramaturg::redis::RedisBroker::connect(&url).await.unwrap())
        .actor::<Charge>()
        .actor::<Crunch>()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium() {
    let (_driver, client) = browser().await;
    let namespace = format!("e2e-{}", unique());
    let app = redis_app(&namespace).await;
    let base = format!("http://{}", serve(Dashboard::new(app.clone())).await);

    // The overview shows the queue with the right counts.
    BROKEN.store(true, Ordering::SeqCst);
    Charge { customer: "ada".into(), cents: 100 }.send(&app).await.unwrap();
    run_until_dead(&app, "e2e-billing", 1).await;
    for cents in [250, 999] {
        Charge { customer: "ada".into(), cents }.send(&app).await.unwrap();
    }
    Charge { customer: "bob".into(), cents: 5 }
        .send_with(&app, SendOptions::default().with_delay(Duration::from_secs(600)))
        .await
        .unwrap();
    assert_eq!(overview_cells(&client, &base, "e2e-billing").await, ["e2e-billing", "2", "1", "0", "1", "running"]);
    app.admin().unwrap().purge("e2e-billing").await.unwrap();
    app.dead_letters().unwrap().delete("e2e-billing", dramaturg::Replay::All).await.unwrap();

    // A job fails into the dead letters; fixed, it is replayed with a click
    // and the running worker processes it.
    BROKEN.store(true, Ordering::SeqCst);
    let running = start(&app);
    let failed = Charge { customer: "cy".into(), cents: 4200 }.send(&app).await.unwrap().id();
    eventually("the job is dead-lettered", async || app.stats("e2e-billing").await.unwrap().dead == 1).await;
    BROKEN.store(false, Ordering::SeqCst);
    client.goto(&format!("{base}/queues/e2e-billing/dead")).await.unwrap();
    let page = client.source().await.unwrap();
    assert!(page.contains(&failed.to_string()) && page.contains("payment gateway refused 4200 for cy"), "{page}");
    let charged = CHARGED.load(Ordering::SeqCst);
    client.find(Locator::XPath("//table[@id='dead']//button[text()='Replay']")).await.unwrap().click().await.unwrap();
    let note = text_once(&client, "p.note", "Replayed").await;
    assert_eq!(note, "Replayed 1 dead letters.");
    eventually("the worker processes the replayed job", async || CHARGED.load(Ordering::SeqCst) == charged + 1).await;
    eventually("the dead letters are empty", async || app.stats("e2e-billing").await.unwrap().dead == 0).await;
    assert_eq!(overview_cells(&client, &base, "e2e-billing").await, ["e2e-billing", "0", "0", "0", "0", "running"]);

    // The abort button stops a running job (after the browser's confirmation).
    let crunch = Crunch { report: "q4".into() }.send(&app).await.unwrap().id();
    eventually("the job runs", async || CRUNCHING.load(Ordering::SeqCst)).await;
    // The workers page shows the worker's concurrency and the running job.
    client.goto(&format!("{base}/workers")).await.unwrap();
    let concurrency = client.find(Locator::Css("tr[data-worker] td.concurrency")).await.unwrap().text().await.unwrap();
    assert_eq!(concurrency, "8");
    let held = client.find(Locator::Css("tr[data-worker] ul.held")).await.unwrap().text().await.unwrap();
    assert!(held.contains(&format!("{crunch} crunch on e2e-reports")), "{held}");
    client.goto(&format!("{base}/lookup?id={crunch}")).await.unwrap();
    let whereabouts = client.find(Locator::Id("whereabouts")).await.unwrap().text().await.unwrap();
    assert_eq!(whereabouts, "held by a worker (running, or fetched and waiting for a slot)");
    let started = Instant::now();
    client.find(Locator::XPath("//button[text()='Abort']")).await.unwrap().click().await.unwrap();
    client.accept_alert().await.unwrap();
    let note = text_once(&client, "p.note", "Abort requested").await;
    assert!(note.starts_with("Abort requested"), "{note}");
    eventually("the aborted job leaves the queue", async || app.stats("e2e-reports").await.unwrap().in_flight == 0)
        .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    let report = stop(running).await;
    assert_eq!((report.aborted, report.failed, report.succeeded), (1, 1, 1), "{report:?}");

    // The chart of the workers' counts per minute: the three failures and
    // the replayed job's success (the abort is in neither), drawn.
    client.goto(&format!("{base}/")).await.unwrap();
    let chart = client.find(Locator::Css("figure#outcomes")).await.unwrap();
    assert_eq!(chart.attr("data-processed").await.unwrap().as_deref(), Some("3"));
    assert_eq!(chart.attr("data-failed").await.unwrap().as_deref(), Some("2"));
    let processed = chart.find(Locator::Css("polyline.s-processed")).await.unwrap();
    let points = processed.attr("points").await.unwrap().unwrap_or_default();
    assert_eq!(points.split(' ').count(), dramaturg::OUTCOME_MINUTES, "{points}");
    assert!(chart.text().await.unwrap().contains("processed"));

    // A form posted without its CSRF token is refused, and changes nothing.
    Charge { customer: "dee".into(), cents: 1 }.send(&app).await.unwrap();
    client.goto(&format!("{base}/queues/e2e-billing")).await.unwrap();
    client.execute("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())", vec![]).await.unwrap();
    client
        .execute("document.querySelectorAll('form').forEach(f => f.removeAttribute('data-confirm'))", vec![])
        .await
        .unwrap();
    client.find(Locator::XPath("//button[text()='Purge ready and delayed']")).await.unwrap().click().await.unwrap();
    let refused = text_once(&client, "body", "403").await;
    assert!(refused.contains("refused: the form carries no CSRF token"), "{refused}");
    assert_eq!(app.stats("e2e-billing").await.unwrap().ready, 1);
    app.admin().unwrap().purge("e2e-billing").await.unwrap();
    client.close().await.unwrap();
}

/// Writes the screenshots of `docs/img/`: run by `scripts/screenshots`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/img/; run by scripts/screenshots"]
async fn screenshots() {
    let (_driver, client) = browser().await;
    let namespace = format!("shots-{}", unique());
    let app = redis_app(&namespace).await;
    let dashboard = Dashboard::new(app.clone()).sample_every(Duration::from_secs(1));
    let base = format!("http://{}", serve(dashboard).await);
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/img");
    std::fs::create_dir_all(&img).unwrap();

    // Some history for the chart: messages arrive, some fail, a worker drains them.
    BROKEN.store(true, Ordering::SeqCst);
    let customers = ["ada", "bob", "cy", "dee", "eve", "<script>alert('x')</script>"];
    let mut crunches = Vec::new();
    for round in 0..12u64 {
        for (i, customer) in customers.iter().enumerate() {
            Charge { customer: (*customer).to_owned(), cents: round * 100 + i as u64 }.send(&app).await.unwrap();
        }
        if round % 4 == 0 {
            crunches.push(Crunch { report: format!("daily-{round}") }.send(&app).await.unwrap().id());
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let shot = async |path: &str, file: &str| {
        client.goto(&format!("{base}{path}")).await.unwrap();
        std::fs::write(img.join(file), client.screenshot().await.unwrap()).unwrap();
    };
    shot("/queues/e2e-billing", "dashboard-queue.png").await;
    let running = start(&app);
    tokio::time::sleep(Duration::from_secs(6)).await;
    for i in 0..40u64 {
        Charge { customer: format!("later-{i}"), cents: i }
            .send_with(&app, SendOptions::default().with_delay(Duration::from_secs(900 + i * 30)))
            .await
            .unwrap();
    }
    BROKEN.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;

    shot("/", "dashboard-overview.png").await;
    shot("/queues/e2e-billing/dead", "dashboard-dead-letters.png").await;
    shot("/workers", "dashboard-workers.png").await;
    shot(&format!("/lookup?id={}", crunches[0]), "dashboard-lookup.png").await;
    stop(running).await;
    app.admin().unwrap().purge("e2e-billing").await.unwrap();
    app.admin().unwrap().purge("e2e-reports").await.unwrap();
    app.dead_letters().unwrap().delete("e2e-billing", dramaturg::Replay::All).await.unwrap();
    client.close().await.unwrap();
}
