//! Metrics: a worker on the real Redis with the Prometheus exporter is
//! scraped over HTTP, and the exposition text is parsed and checked
//! against what the worker processed.
//!
//! A process has one metrics recorder, so this file has one test.

#![cfg(all(feature = "prometheus", feature = "redis"))]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use dramaturg::metrics::{names, prometheus, Metrics};
use dramaturg::prelude::*;
use dramaturg::{Message, Outgoing};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const URL: &str = "redis://127.0.0.1:6379";

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "metrics-work")]
struct Works {
    n: u64,
}

impl Works {
    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        tokio::time::sleep(Duration::from_millis(self.n)).await;
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "metrics-work", max_retries = 1, min_backoff = "10ms", max_backoff = "20ms")]
struct Fails;

impl Fails {
    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        Err(std::io::Error::other("always"))
    }
}

/// Lets [`Holds`] finish.
static RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Runs until the test releases it: in progress meanwhile.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "metrics-work")]
struct Holds;

impl Holds {
    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        RELEASE.notified().await;
        Ok(())
    }
}

/// One sample of the exposition: a metric's name and labels.
type Series = (String, BTreeMap<String, String>);

/// Parses Prometheus's text format: `name{label="value",…} value` lines.
fn parse(text: &str) -> BTreeMap<Series, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap();
                (key.to_owned(), value.trim_matches('"').to_owned())
            })
            .collect();
        samples.insert((name.to_owned(), labels), value.parse().unwrap());
    }
    samples
}

/// `GET path` over plain HTTP/1.1: the status line and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of `name` with exactly `labels`, 0 when absent.
fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    samples.get(&(name.to_owned(), labels)).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_what_the_worker_processed() {
    let server = prometheus::serve("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    let broker = support::redis_broker(URL, &support::namespace()).await;
    let metrics = Metrics::new().sample_queues_every(Some(Duration::from_millis(100)));
    let app =
        dramaturg::app(broker).middleware(metrics).actor::<Works>().actor::<Fails>().actor::<Holds>().build().unwrap();
    Holds.send(&app).await.unwrap();
    for n in 0..5 {
        Works { n }.send(&app).await.unwrap();
    }
    Works { n: 0 }.send_with(&app, SendOptions::default().with_delay(Duration::from_millis(300))).await.unwrap();
    Fails.send(&app).await.unwrap();
    Fails.send(&app).await.unwrap();
    // A message for an actor nobody registered: rejected, dead-lettered.
    let ghost = Message::new("metrics-work", "ghost", Default::default());
    let body = app.encoder().encode_message(&ghost).unwrap();
    app.broker().enqueue(Outgoing::new("metrics-work", body)).await.unwrap();

    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let (works, fails) =
        ([("actor", "works"), ("queue", "metrics-work")], [("actor", "fails"), ("queue", "metrics-work")]);
    // A scrape counts what runs now (the middleware counts on each thread
    // apart; the endpoint flushes before it renders).
    let holds = [("actor", "holds"), ("queue", "metrics-work")];
    let mut running_seen = false;
    for _ in 0..300 {
        let (_, body) = get(addr, "/metrics").await;
        if value(&parse(&body), names::MESSAGES_IN_PROGRESS, &holds) == 1.0 {
            running_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(running_seen, "the running message shows in progress");
    RELEASE.notify_one();
    let mut samples = BTreeMap::new();
    for _ in 0..300 {
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        samples = parse(&body);
        // The counters are final, and a depth sample was taken after the
        // last settlement (samples run every 100 ms, on their own time).
        let settled = [("ready", 0.0), ("delayed", 0.0), ("in_flight", 0.0), ("dead", 3.0)].iter().all(|(state, n)| {
            value(&samples, names::QUEUE_MESSAGES, &[("queue", "metrics-work"), ("state", state)]) == *n
        });
        let done = value(&samples, names::MESSAGES_PROCESSED, &[works[0], works[1], ("outcome", "succeeded")]) == 6.0
            && value(&samples, names::MESSAGES_DEAD_LETTERED, &fails) == 2.0
            && settled;
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.succeeded, report.retried, report.failed), (7, 2, 2), "{report:?}");

    let outcome = |labels: [(&'static str, &'static str); 2], outcome| {
        value(&samples, names::MESSAGES_PROCESSED, &[labels[0], labels[1], ("outcome", outcome)])
    };
    assert_eq!(value(&samples, names::MESSAGES_RECEIVED, &works), 6.0);
    assert_eq!(outcome(works, "succeeded"), 6.0);
    assert_eq!(outcome(works, "failed"), 0.0);
    assert_eq!(value(&samples, names::MESSAGES_RECEIVED, &fails), 4.0);
    assert_eq!(outcome(fails, "retried"), 2.0);
    assert_eq!(outcome(fails, "failed"), 2.0);
    assert_eq!(value(&samples, names::MESSAGES_DEAD_LETTERED, &fails), 2.0);
    assert_eq!(value(&samples, names::MESSAGES_DEAD_LETTERED, &works), 0.0);
    let ghost = [("actor", names::UNKNOWN), ("queue", "metrics-work")];
    assert_eq!(outcome(ghost, "rejected"), 1.0);
    assert_eq!(value(&samples, names::MESSAGES_DEAD_LETTERED, &ghost), 1.0);
    assert_eq!(value(&samples, names::MESSAGES_IN_PROGRESS, &works), 0.0);
    assert_eq!(value(&samples, names::MESSAGES_IN_PROGRESS, &holds), 0.0);

    // Every attempt is timed; only first attempts have a start delay.
    let count = |name: &str, labels| value(&samples, &format!("{name}_count"), labels);
    assert_eq!(count(names::MESSAGE_DURATION, &works), 6.0);
    assert_eq!(count(names::MESSAGE_DURATION, &fails), 4.0);
    assert_eq!(count(names::MESSAGE_START_DELAY, &works), 6.0);
    assert_eq!(count(names::MESSAGE_START_DELAY, &fails), 2.0);
    // Works sleeps 0–4 ms: at least 10 ms in all, well under a minute.
    let total = value(&samples, &format!("{}_sum", names::MESSAGE_DURATION), &works);
    assert!((0.01..60.0).contains(&total), "{total}");
    let infinite = [works[0], works[1], ("le", "+Inf")];
    assert_eq!(value(&samples, &format!("{}_bucket", names::MESSAGE_DURATION), &infinite), 6.0);

    for (state, expected) in [("ready", 0.0), ("delayed", 0.0), ("in_flight", 0.0), ("dead", 3.0)] {
        let labels = [("queue", "metrics-work"), ("state", state)];
        assert_eq!(value(&samples, names::QUEUE_MESSAGES, &labels), expected, "{state}");
    }

    let (_, text) = get(addr, "/metrics").await;
    assert!(text.contains(&format!("# TYPE {} histogram", names::MESSAGE_DURATION)), "{text}");
    assert!(text.contains(&format!("# TYPE {} counter", names::MESSAGES_PROCESSED)), "{text}");
    let (status, _) = get(addr, "/elsewhere").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // One recorder per process: a second install says so.
    assert!(matches!(prometheus::install(), Err(prometheus::ExporterError::RecorderInstalled)));
}
