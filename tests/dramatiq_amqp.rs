//! The RabbitMQ broker in Dramatiq's layout (`?protocol=dramatiq`) against
//! the real server at 127.0.0.1:5672 and the real Python Dramatiq: Rust and
//! Python producers and workers sharing queues, delays (past the hold
//! horizon too), retries and dead letters where Python finds them, a
//! SIGKILLed worker, garbage, redeclaring Python's queues, and the broker
//! conformance suite. Each test uses queue names of its own.
//!
//! `DRAMATURG_INTEROP_MESSAGES` (default 200) sets how many messages the
//! interop tests send; `DRAMATURG_INTEROP_SECS` (default 5) how long the
//! mixed-workers test runs.

#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dramaturg::amqp::{AmqpBroker, AmqpConfig, Protocol};
use dramaturg::prelude::*;
use dramaturg::{BoxError, Broker, Outgoing};
use serde::{Deserialize, Serialize};
use support::{python, wait_for, KillOnDrop, Numbered};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The Python side's broker, as a Dramatiq user writes it.
const PY_BROKER: &str = r#"
import json, sys, time
import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
broker = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:5672/%2f")
dramatiq.set_broker(broker)
"#;

fn prefix() -> String {
    format!("dq-{}-", dramaturg::MessageId::new())
}

fn config() -> AmqpConfig {
    AmqpConfig::new(format!("{URL}?protocol=dramatiq")).retry_enqueue_for(Duration::from_secs(10))
}

async fn broker_with(config: AmqpConfig) -> AmqpBroker {
    AmqpBroker::with_config(config).await.expect("RabbitMQ runs on 127.0.0.1:5672 (scripts/services starts it)")
}

async fn broker() -> AmqpBroker {
    broker_with(config()).await
}

/// Deletes `queue`, `queue.DQ` and `queue.XQ` (with Python's pika).
fn delete_queues(queues: &[&str]) {
    let script = r#"
import sys, pika
connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f"))
channel = connection.channel()
for q in sys.argv[1:]:
    for name in (q, q + ".DQ", q + ".XQ"):
        channel.queue_delete(name)
connection.close()
"#;
    python::run(script, queues);
}

/// A Rust actor Python sends to: positional or keyword arguments, unicode,
/// nested JSON. It records what it got and when it ran.
#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "interop_record", queue = "record")]
struct Record {
    seq: u64,
    label: String,
    nested: serde_json::Value,
}

/// (label, seq, nested, ran at in ms since the epoch), of every test.
static RECORDS: Mutex<Vec<(String, u64, serde_json::Value, u64)>> = Mutex::new(Vec::new());

impl Record {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        RECORDS.lock().unwrap().push((self.label, self.seq, self.nested, dramaturg_core::now_ms()));
        Ok(())
    }
}

/// The records whose label starts with `tag`.
fn records(tag: &str) -> Vec<(String, u64, serde_json::Value, u64)> {
    RECORDS.lock().unwrap().iter().filter(|r| r.0.starts_with(tag)).cloned().collect()
}

fn record_app(broker: AmqpBroker, prefix: &str) -> App {
    dramaturg::app(broker).queue_prefix(prefix).actor::<Record>().build().unwrap()
}

/// Runs a worker on `app` in the background; returns its shutdown handle
/// and task.
fn background(app: &App) -> (dramaturg::ShutdownHandle, tokio::task::JoinHandle<dramaturg::WorkerReport>) {
    let worker = Worker::new(app.clone()).concurrency(8);
    let shutdown = worker.shutdown_handle();
    (shutdown, tokio::spawn(async move { worker.run().await.unwrap() }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sends_and_rust_runs_each_message_once_with_its_values() {
    let prefix = prefix();
    let app = record_app(broker().await, &prefix);
    let queue = app.queues()[0].clone();
    let n = python::messages();
    let script = format!(
        "{PY_BROKER}\n{}",
        r#"
q, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
@dramatiq.actor(actor_name="interop_record", queue_name=q)
def record(seq, label, nested):
    pass
for i in range(n):
    label = f"{tag}-héllo-{i}-🦀"
    nested = {"k": [i, {"x": "ü", "none": None, "f": 1.5}], "list": [[1], []]}
    if i % 2:
        record.send(i, label, nested)
    else:
        record.send(seq=i, label=label, nested=nested)
"#
    );
    let tag = prefix.clone();
    python::run(&script, &[&queue, &tag, &n.to_string()]);
    let report = Worker::new(app.clone()).concurrency(8).run_until_drained(Duration::from_secs(60)).await.unwrap();
    assert_eq!((report.succeeded, report.rejected, report.failed), (n, 0, 0), "{report:?}");
    let got = records(&tag);
    let mut seen = HashMap::new();
    for (label, seq, nested, _) in &got {
        *seen.entry(*seq).or_insert(0) += 1;
        assert_eq!(label, &format!("{tag}-héllo-{seq}-🦀"));
        let expected = serde_json::json!({"k": [seq, {"x": "ü", "none": null, "f": 1.5}], "list": [[1], []]});
        assert_eq!(nested, &expected);
    }
    assert_eq!(seen.len() as u64, n, "every message ran");
    assert!(seen.values().all(|&times| times == 1), "each exactly once");
    delete_queues(&[&queue]);
}

/// The Rust side of a Python actor: same name and queue; Rust only sends.
#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "interop_append", queue = "append")]
struct Append {
    seq: u64,
}

impl Append {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Err("runs in Python".into())
    }
}

/// A Python worker module whose actor appends each `seq` to `path`.
fn append_module(queue: &str, path: &std::path::Path) -> String {
    format!(
        r#"{PY_BROKER}
@dramatiq.actor(actor_name="interop_append", queue_name={queue:?})
def append(seq):
    with open({path:?}, "a") as f:
        f.write(f"{{seq}}\n")
"#,
        path = path.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sends_and_python_runs_them_all() {
    let prefix = prefix();
    let app = dramaturg::app(broker().await).queue_prefix(&prefix).actor::<Append>().build().unwrap();
    let queue = app.queues()[0].clone();
    let n = python::messages();
    let batch: Vec<Append> = (0..n).map(|seq| Append { seq }).collect();
    app.send_many(&batch).await.unwrap();
    let path = std::env::temp_dir().join(format!("{prefix}append.txt"));
    let _worker = python::spawn_worker(
        &append_module(&queue, &path),
        &["--processes", "1", "--threads", "4", "--queues", &queue],
    );
    wait_for("Python to run every message", Duration::from_secs(60), || python::lines(&path).len() as u64 == n).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = python::lines(&path);
    assert_eq!(counts.len() as u64, n);
    assert!(counts.values().all(|&times| times == 1), "each once: {counts:?}");
    let _ = std::fs::remove_file(&path);
    delete_queues(&[&queue]);
}

/// Sends one delayed message from Python; returns its `eta`.
fn python_sends_delayed(queue: &str, tag: &str, delay_ms: u64) -> u64 {
    let script = format!(
        "{PY_BROKER}\n{}",
        r#"
q, tag, delay = sys.argv[1], sys.argv[2], int(sys.argv[3])
@dramatiq.actor(actor_name="interop_record", queue_name=q)
def record(seq, label, nested):
    pass
message = record.send_with_options(args=(1, tag, None), delay=delay)
assert message.queue_name == q + ".DQ", message.queue_name
print(message.options["eta"])
"#
    );
    python::run(&script, &[queue, tag, &delay_ms.to_string()]).trim().parse().unwrap()
}

async fn delayed_runs_on_time(horizon: Option<Duration>, delay_ms: u64) {
    let prefix = prefix();
    let config = match horizon {
        Some(horizon) => config().delay_hold_horizon(horizon),
        None => config(),
    };
    let app = record_app(broker_with(config).await, &prefix);
    let queue = app.queues()[0].clone();
    let (shutdown, running) = background(&app);
    let eta = python_sends_delayed(&queue, &prefix, delay_ms);
    wait_for("the delayed message", Duration::from_millis(delay_ms + 10_000), || !records(&prefix).is_empty()).await;
    let ran_at = records(&prefix)[0].3;
    assert!(ran_at >= eta, "ran {} ms early", eta - ran_at);
    assert!(ran_at - eta < 500, "ran {} ms late", ran_at - eta);
    let admin = app.broker().admin().unwrap();
    admin.join(&queue, Duration::from_secs(5)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap();
    assert_eq!(report.succeeded, 1, "{report:?}");
    delete_queues(&[&queue]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_from_python_runs_on_time_never_early() {
    delayed_runs_on_time(None, 1500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_delayed_past_the_hold_horizon_still_runs_on_time() {
    delayed_runs_on_time(Some(Duration::from_secs(1)), 3200).await;
}

/// A Rust actor that always fails, retried twice 100 ms apart.
#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "interop_fail", queue = "fail", max_retries = 2, min_backoff = "100ms", max_backoff = "100ms")]
struct Fails {
    seq: u64,
}

impl Fails {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Err(format!("boom {}", self.seq).into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_count_in_dramatiqs_options_and_the_dead_letter_is_where_python_looks() {
    let prefix = prefix();
    let app = dramaturg::app(broker().await).queue_prefix(&prefix).actor::<Fails>().build().unwrap();
    let queue = app.queues()[0].clone();
    Fails { seq: 7 }.send(&app).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(30)).await.unwrap();
    assert_eq!((report.retried, report.failed), (2, 1), "{report:?}");
    let script = format!(
        "{PY_BROKER}\n{}",
        r#"
import pika
q = sys.argv[1]
connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f"))
channel = connection.channel()
method, properties, body = channel.basic_get(q + ".XQ", auto_ack=True)
message = dramatiq.Message.decode(body)
print(json.dumps({"actor": message.actor_name, "args": list(message.args), "retries": message.options.get("retries"),
                  "traceback": message.options.get("traceback"), "queue": message.queue_name,
                  "left": channel.queue_declare(q + ".XQ", passive=True).method.message_count}))
connection.close()
"#
    );
    let out: serde_json::Value = serde_json::from_str(&python::run(&script, &[&queue])).unwrap();
    assert_eq!(out["actor"], "interop_fail");
    assert_eq!(out["retries"], 2, "{out}");
    assert_eq!(out["left"], 0, "{out}");
    let traceback = out["traceback"].as_str().unwrap();
    assert!(traceback.contains("boom 7"), "{traceback}");
    delete_queues(&[&queue]);
}

/// The child: a worker process in Dramatiq's layout recording to a file,
/// until SIGTERM.
#[test]
fn dramatiq_amqp_worker_child() {
    support::run_worker_child(|prefix| async move {
        dramaturg::app(broker().await).queue_prefix(prefix).actor::<Numbered>().build().unwrap()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_loses_nothing() {
    let prefix = prefix();
    let app = dramaturg::app(broker().await).queue_prefix(&prefix).actor::<Numbered>().build().unwrap();
    let queue = app.queues()[0].clone();
    let total = python::messages().max(1000);
    let batch: Vec<Numbered> = (0..total).map(|seq| Numbered { seq }).collect();
    app.send_many(&batch).await.unwrap();
    let dir = std::env::temp_dir().join(format!("{prefix}kill"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut victim = KillOnDrop(support::spawn_worker("dramatiq_amqp_worker_child", &dir, 1, &prefix));
    wait_for("progress", Duration::from_secs(60), || support::recorded(&dir).len() as u64 >= total / 4).await;
    victim.0.kill().unwrap(); // SIGKILL
    victim.0.wait().unwrap();
    let mut survivor = KillOnDrop(support::spawn_worker("dramatiq_amqp_worker_child", &dir, 2, &prefix));
    wait_for("every message", Duration::from_secs(60), || support::recorded(&dir).len() as u64 == total).await;
    support::terminate(&mut survivor.0);
    let counts = support::recorded(&dir);
    assert_eq!(counts.len() as u64, total, "every message processed at least once");
    std::fs::remove_dir_all(&dir).unwrap();
    delete_queues(&[&queue]);
}

/// A Rust actor on a queue of its own for the mixed run.
#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "interop_rust_side", queue = "rust-side")]
struct RustSide {
    tag: String,
    seq: u64,
}

static RUST_SIDE: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

impl RustSide {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        RUST_SIDE.lock().unwrap().push((self.tag, self.seq));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_workers_run_together_on_their_queues() {
    let secs = std::env::var("DRAMATURG_INTEROP_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let prefix = prefix();
    let app =
        dramaturg::app(broker().await).queue_prefix(&prefix).actor::<Append>().actor::<RustSide>().build().unwrap();
    let (python_queue, rust_queue) = (format!("{prefix}append"), format!("{prefix}rust-side"));
    let path = std::env::temp_dir().join(format!("{prefix}mixed.txt"));
    // The Rust worker consumes only its own queue.
    let worker = Worker::new(app.clone()).concurrency(8).queues([rust_queue.clone()]);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.run().await.unwrap() });
    let _python = python::spawn_worker(
        &append_module(&python_queue, &path),
        &["--processes", "1", "--threads", "4", "--queues", &python_queue],
    );
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        let to_python: Vec<Append> = (sent..sent + 20).map(|seq| Append { seq }).collect();
        let to_rust: Vec<RustSide> = (sent..sent + 20).map(|seq| RustSide { tag: prefix.clone(), seq }).collect();
        app.send_many(&to_python).await.unwrap();
        app.send_many(&to_rust).await.unwrap();
        sent += 20;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rust_done = || RUST_SIDE.lock().unwrap().iter().filter(|(tag, _)| *tag == prefix).count() as u64;
    wait_for("the Rust worker", Duration::from_secs(60), || rust_done() == sent).await;
    wait_for("the Python worker", Duration::from_secs(60), || python::lines(&path).len() as u64 == sent).await;
    shutdown.shutdown();
    let report = running.await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    let _ = std::fs::remove_file(&path);
    delete_queues(&[&python_queue, &rust_queue]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_wrong_shaped_json_are_dead_lettered_with_a_reason() {
    let prefix = prefix();
    let broker = broker().await;
    let app = record_app(broker.clone(), &prefix);
    let queue = app.queues()[0].clone();
    let garbage: &[u8] = b"\x00\x01 certainly not a message";
    let wrong_shape: &[u8] = br#"{"hello": "world"}"#;
    let wrong_args = format!(
        r#"{{"queue_name":"{queue}","actor_name":"interop_record","args":["not a number","x",null],"kwargs":{{}},"options":{{}},"message_id":"0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a10","message_timestamp":1717000000000}}"#
    );
    for body in [garbage, wrong_shape, wrong_args.as_bytes()] {
        broker.enqueue(Outgoing::new(queue.as_str(), body.to_vec())).await.unwrap();
    }
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(30)).await.unwrap();
    assert_eq!(report.rejected, 3, "{report:?}");
    let dead = broker.dead_letters().unwrap().list(&queue, 10).await.unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead.iter().all(|letter| !letter.reason.is_empty()), "{dead:?}");
    assert!(dead.iter().any(|letter| &letter.body[..] == garbage), "the raw garbage is in q.XQ");
    let shape = dead
        .iter()
        .filter_map(|letter| serde_json::from_slice::<serde_json::Value>(&letter.body).ok())
        .find(|body| body["hello"] == "world")
        .expect("the wrong shape is in q.XQ");
    assert!(shape["options"]["traceback"].as_str().is_some_and(|t| !t.is_empty()), "{shape}");
    let body = dead
        .iter()
        .filter_map(|letter| serde_json::from_slice::<serde_json::Value>(&letter.body).ok())
        .find(|body| body["actor_name"] == "interop_record")
        .unwrap();
    let traceback = body["options"]["traceback"].as_str().unwrap();
    assert!(traceback.contains("interop_record"), "{traceback}");
    delete_queues(&[&queue]);
}

/// Python declares the queues (with or without `max_priority`); Rust
/// brokers configured either way use them without an error.
async fn redeclare_python_queues(python_max_priority: Option<u8>) {
    let prefix = prefix();
    let queue = format!("{prefix}declared");
    let script = format!(
        "{}\n{}",
        r#"
import sys
from dramatiq.brokers.rabbitmq import RabbitmqBroker
q, max_priority = sys.argv[1], sys.argv[2]
broker = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:5672/%2f",
                        max_priority=int(max_priority) if max_priority else None)
broker.declare_queue(q, ensure=True)
"#,
        ""
    );
    let priority = python_max_priority.map(|p| p.to_string()).unwrap_or_default();
    python::run(&script, &[&queue, &priority]);
    let configs = [
        config(),
        config().max_priority(10),
        config().max_priority(3).dead_letter_ttl(Duration::from_secs(60)),
        config().expire_unused_queues(Duration::from_secs(60)),
    ];
    for config in configs {
        let broker = broker_with(config).await;
        broker.declare_queue(&queue).await.unwrap();
        broker.enqueue(Outgoing::new(queue.as_str(), &b"x"[..]).with_priority(Some(2))).await.unwrap();
        broker
            .enqueue(Outgoing::new(queue.as_str(), &b"y"[..]).with_delay(Some(Duration::from_secs(60))))
            .await
            .unwrap();
        let admin = broker.admin().unwrap();
        let stats = admin.stats(&queue).await.unwrap();
        assert_eq!((stats.ready, stats.delayed), (1, 1), "{stats:?}");
        let mut consumer = broker.consume(&queue, 1).await.unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap();
        delivery.settle(dramaturg::Settlement::Ack).await.unwrap();
        consumer.close().await.unwrap();
        assert_eq!(admin.purge(&queue).await.unwrap(), 1);
    }
    // And Python declares them again, as it would on its next start.
    python::run(&script, &[&queue, &priority]);
    delete_queues(&[&queue]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_python_declared_with_max_priority_are_redeclared_without_error() {
    redeclare_python_queues(Some(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_python_declared_without_max_priority_are_redeclared_without_error() {
    redeclare_python_queues(None).await;
}

#[test]
fn an_unknown_protocol_in_the_url_is_a_typed_error() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let error = runtime.block_on(AmqpBroker::connect(&format!("{URL}?protocol=celery"))).unwrap_err();
    assert_eq!(error.kind(), dramaturg::BrokerErrorKind::InvalidInput, "{error}");
    assert!(error.to_string().contains("protocol"), "{error}");
    assert_eq!(AmqpConfig::new(format!("{URL}?protocol=dramatiq")).layout(), Protocol::Dramatiq);
    assert_eq!(AmqpConfig::new(URL).layout(), Protocol::Native);
    assert_eq!(AmqpConfig::new(URL).protocol(Protocol::Dramatiq).layout(), Protocol::Dramatiq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_chooses_the_dramatiq_encoder() {
    let app = dramaturg::app(broker().await).queue_prefix(prefix()).actor::<Record>().build().unwrap();
    assert_eq!(app.encoder().name(), "dramatiq");
}

/// The conformance suite in Dramatiq's layout. Every case applies: bodies
/// that are not Dramatiq messages (the suite's raw bytes) travel unchanged,
/// a delayed one with its due time in a header. Its queues have no
/// `x-expires` (Python declares none, and RabbitMQ refuses a redeclare that
/// differs), so they stay on the server, empty.
mod conformance {
    async fn broker() -> super::AmqpBroker {
        super::broker().await
    }

    dramaturg_core::broker_conformance!(broker());
}
