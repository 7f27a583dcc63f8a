//! The Redis broker in Python Dramatiq's layout (`?protocol=dramatiq`)
//! against the real Redis at 127.0.0.1:6379 and the real Python Dramatiq:
//! messages both ways, delays, retries and dead letters Python can read, a
//! worker killed with SIGKILL, both languages side by side, garbage, the
//! idle cost, and the broker conformance suite. Each test has a namespace
//! of its own.
//!
//! `DRAMATURG_INTEROP_MESSAGES` (default 200) sets how many messages the
//! interoperability tests send, `DRAMATURG_INTEROP_SECS` (default 5) how
//! long the side-by-side test runs.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::redis::{Protocol, RedisBroker, RedisConfig};
use dramaturg::{BoxError, Broker, BrokerErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

use support::{namespace, python, KillOnDrop, Numbered};

const URL: &str = "redis://127.0.0.1:6379";

/// The tests' settings: short heartbeats (dead after 1 s) and polls.
fn config(namespace: &str) -> RedisConfig {
    RedisConfig::new(format!("{URL}?protocol=dramatiq"))
        .namespace(namespace)
        .heartbeat(Duration::from_millis(200), Duration::from_secs(1))
        .max_poll(Duration::from_millis(100))
        .retry_enqueue_for(Duration::from_secs(10))
}

async fn broker(namespace: &str) -> RedisBroker {
    RedisBroker::with_config(config(namespace)).await.expect("Redis runs on 127.0.0.1:6379")
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// The head of a Python script: a Dramatiq Redis broker on namespace
/// `sys.argv[1]`.
const PY_BROKER: &str = r#"
import json, sys, time
import dramatiq, redis
from dramatiq.brokers.redis import RedisBroker
broker = RedisBroker(url="redis://127.0.0.1:6379", namespace=sys.argv[1])
dramatiq.set_broker(broker)
"#;

// --- Python sends, Rust processes -----------------------------------------

#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "interop_step", queue = "interop")]
struct InteropStep {
    seq: u64,
    text: String,
    data: serde_json::Value,
}

static STEPS: Mutex<Vec<(u64, String, serde_json::Value)>> = Mutex::new(Vec::new());

impl InteropStep {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        STEPS.lock().unwrap().push((self.seq, self.text, self.data));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sends_and_rust_processes_each_message_once() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let n = python::messages();
    let script = format!(
        r#"{PY_BROKER}
@dramatiq.actor(actor_name="interop_step", queue_name="interop")
def interop_step(seq, text, data):
    pass
for i in range(int(sys.argv[2])):
    data = {{"nested": [i, {{"k": "v", "u": "\u00e9\u2603"}}], "none": None}}
    if i % 2:
        interop_step.send(i, f"h\u00e9llo \u2603 {{i}}", data)
    else:
        interop_step.send_with_options(kwargs={{"seq": i, "text": f"h\u00e9llo \u2603 {{i}}", "data": data}})
"#
    );
    python::run(&script, &[&namespace, &n.to_string()]);
    let app = dramaturg::app(broker(&namespace).await).actor::<InteropStep>().build().unwrap();
    let report = Worker::new(app).concurrency(8).run_until_drained(Duration::from_secs(60)).await.unwrap();
    assert_eq!(report.succeeded, n, "{report:?}");
    let steps = STEPS.lock().unwrap();
    let mut seen = HashMap::new();
    for (seq, text, data) in steps.iter() {
        *seen.entry(*seq).or_insert(0) += 1;
        assert_eq!(text, &format!("héllo ☃ {seq}"));
        assert_eq!(data, &json!({"nested": [seq, {"k": "v", "u": "é☃"}], "none": null}));
    }
    assert_eq!(seen.len() as u64, n);
    assert!(seen.values().all(|&count| count == 1), "each message once");
}

// --- Rust sends, Python processes -----------------------------------------

/// Python's actor, seen from Rust: only ever sent.
#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "py_record", queue = "to_python")]
struct PyRecord {
    seq: u64,
    path: String,
}

impl PyRecord {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Err("runs in Python".into())
    }
}

fn python_worker_module(namespace: &str) -> String {
    format!(
        r#"
import dramatiq
from dramatiq.brokers.redis import RedisBroker
dramatiq.set_broker(RedisBroker(url="redis://127.0.0.1:6379", namespace="{namespace}"))

@dramatiq.actor(actor_name="py_record", queue_name="to_python", max_retries=0)
def py_record(seq, path):
    with open(path, "a") as f:
        f.write(f"{{seq}}\n")
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sends_and_python_processes_each_message() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let n = python::messages();
    let path = support::temp_log("to-python");
    let app = dramaturg::app(broker(&namespace).await).actor::<PyRecord>().build().unwrap();
    let path_text = path.display().to_string();
    let batch: Vec<PyRecord> = (0..n).map(|seq| PyRecord { seq, path: path_text.clone() }).collect();
    app.send_many(&batch).await.unwrap();
    let _worker = python::spawn_worker(&python_worker_module(&namespace), &["--processes", "1", "--threads", "4"]);
    support::wait_for("Python to process every message", Duration::from_secs(60), || {
        python::lines(&path).len() as u64 == n
    })
    .await;
    let counts = python::lines(&path);
    assert!(counts.values().all(|&c| c == 1), "each once");
    let _ = std::fs::remove_file(&path);
}

// --- Delays from Python ---------------------------------------------------

#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "interop_later", queue = "later")]
struct Later {
    tag: u64,
}

static LATER: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

impl Later {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        LATER.lock().unwrap().push((
            self.tag,
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
        ));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_from_python_run_on_time_never_early() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let app = dramaturg::app(broker(&namespace).await).actor::<Later>().build().unwrap();
    let worker = Worker::new(app.clone()).concurrency(4);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let script = format!(
        r#"{PY_BROKER}
@dramatiq.actor(actor_name="interop_later", queue_name="later")
def interop_later(tag):
    pass
out = []
for tag, delay in enumerate([300, 800, 1500, 2500]):
    sent = int(time.time() * 1000)
    message = interop_later.send_with_options(args=(tag,), delay=delay)
    out.append([tag, sent + delay, message.options["eta"]])
print(json.dumps(out))
"#
    );
    let sent: Vec<(u64, u64, u64)> = serde_json::from_str(python::run(&script, &[&namespace]).trim()).unwrap();
    support::wait_for("every delayed message", Duration::from_secs(10), || LATER.lock().unwrap().len() == 4).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    let ran: HashMap<u64, u64> = LATER.lock().unwrap().iter().copied().collect();
    for (tag, not_before, eta) in sent {
        let at = ran[&tag];
        assert!(at >= not_before && at >= eta, "message {tag} ran {} ms early", eta.max(not_before) - at);
        let late = at - eta;
        println!("delayed message {tag}: ran {late} ms after its eta");
        assert!(late < 300, "message {tag} ran {late} ms late");
    }
}

// --- Retries and dead letters Python can read ------------------------------

#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "interop_fails", queue = "fails", max_retries = 2, min_backoff = "50ms", max_backoff = "100ms")]
struct Fails {
    key: String,
}

static ATTEMPTS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[derive(Debug, thiserror::Error)]
#[error("the disk is on fire")]
struct OnFire;

impl Fails {
    async fn perform(self, ctx: &Context) -> Result<(), Fail> {
        ATTEMPTS.lock().unwrap().push(ctx.retries());
        Err(OnFire.into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_dramatiqs_retries_and_dead_lettered_where_python_finds_them() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let app = dramaturg::app(broker(&namespace).await).actor::<Fails>().build().unwrap();
    Fails { key: "k".into() }.send(&app).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(20)).await.unwrap();
    assert_eq!((report.retried, report.failed), (2, 1), "{report:?}");
    assert_eq!(*ATTEMPTS.lock().unwrap(), [0, 1, 2], "options.retries counts the attempts");
    let script = format!(
        r#"{PY_BROKER}
r = redis.Redis(host="127.0.0.1", port=6379)
ids = r.zrange(sys.argv[1] + ":fails.XQ", 0, -1)
message = dramatiq.Message.decode(r.hget(sys.argv[1] + ":fails.XQ.msgs", ids[0]))
print(json.dumps({{"count": len(ids), "actor": message.actor_name, "queue": message.queue_name,
    "retries": message.options.get("retries"), "traceback": message.options.get("traceback"),
    "kwargs": message.kwargs}}))
"#
    );
    let found: serde_json::Value = serde_json::from_str(python::run(&script, &[&namespace]).trim()).unwrap();
    assert_eq!(found["count"], 1, "{found}");
    assert_eq!(found["actor"], "interop_fails");
    assert_eq!(found["queue"], "fails");
    assert_eq!(found["retries"], 2);
    assert_eq!(found["kwargs"], json!({"key": "k"}));
    assert!(found["traceback"].as_str().unwrap().contains("the disk is on fire"), "{found}");
}

// --- A worker killed with SIGKILL ------------------------------------------

/// The child: a Rust worker in Dramatiq's layout, until SIGTERM.
#[test]
fn dramatiq_worker_child() {
    support::run_worker_child(|namespace| async move {
        dramaturg::app(broker(&namespace).await).actor::<Numbered>().build().unwrap()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_worker_killed_with_sigkill_loses_nothing() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let app = dramaturg::app(broker(&namespace).await).actor::<Numbered>().build().unwrap();
    // The helper kills one of two workers after 300 messages.
    let total = python::messages().max(1000);
    let (duplicates, recovery) =
        support::kill_one_of_two_workers(&app, "dramatiq_worker_child", &namespace, total).await;
    println!(
        "{total} of {total} processed at least once, {duplicates} duplicates, all done {recovery:?} after the kill"
    );
    let stats = app.admin().unwrap().stats(&app.queues()[0]).await.unwrap();
    assert!(stats.is_drained(), "{stats:?}");
}

// --- Python and Rust side by side ------------------------------------------

#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "rust_side", queue = "rust_side")]
struct RustSide {
    seq: u64,
}

static RUST_SIDE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

impl RustSide {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        RUST_SIDE.lock().unwrap().push(self.seq);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_workers_share_a_namespace_and_lose_nothing() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let secs: u64 = std::env::var("DRAMATURG_INTEROP_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let path = support::temp_log("side-by-side");
    let path_text = path.display().to_string();
    let app = dramaturg::app(broker(&namespace).await).actor::<RustSide>().actor::<PyRecord>().build().unwrap();
    // The Rust worker serves only its queue; the Python one its own.
    let worker_app = dramaturg::app(broker(&namespace).await).actor::<RustSide>().build().unwrap();
    let worker = Worker::new(worker_app).concurrency(8);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let _python = python::spawn_worker(
        &python_worker_module(&namespace),
        &["--processes", "1", "--threads", "4", "--queues", "to_python"],
    );
    // Python sends to the Rust side too, while Rust sends to both.
    let python_sender = format!(
        r#"{PY_BROKER}
@dramatiq.actor(actor_name="rust_side", queue_name="rust_side")
def rust_side(seq):
    pass
for i in range(1_000_000, 1_000_000 + int(sys.argv[2])):
    rust_side.send(i)
"#
    );
    let from_python = python::messages();
    let ns = namespace.clone();
    let python_sends =
        tokio::task::spawn_blocking(move || python::run(&python_sender, &[&ns, &from_python.to_string()]));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0u64;
    while Instant::now() < until {
        RustSide { seq: sent }.send(&app).await.unwrap();
        PyRecord { seq: sent, path: path_text.clone() }.send(&app).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    python_sends.await.unwrap();
    support::wait_for("both sides to finish", Duration::from_secs(60), || {
        RUST_SIDE.lock().unwrap().len() as u64 == sent + from_python && python::lines(&path).len() as u64 == sent
    })
    .await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    let rust_side = RUST_SIDE.lock().unwrap().clone();
    let mut unique = rust_side.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), rust_side.len(), "each Rust-side message once");
    assert!(python::lines(&path).values().all(|&c| c == 1), "each Python-side message once");
    println!("{sent} messages each way from Rust, {from_python} from Python, in {secs} s, none lost");
    let _ = std::fs::remove_file(&path);
}

// --- Garbage ----------------------------------------------------------------

#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "interop_ok", queue = "garbage")]
struct Ok1 {
    n: u64,
}

impl Ok1 {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_pushed_dramatiqs_way_is_dead_lettered_with_a_reason() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let mut conn = redis_conn().await;
    let garbage: [(&str, &[u8]); 3] = [
        ("g-bytes", b"\x01\xffcertainly not a message"),
        ("g-shape", br#"{"queue_name":"garbage","hello":"world"}"#),
        ("g-array", b"[1,2,3]"),
    ];
    for (id, body) in garbage {
        redis::pipe()
            .hset(format!("{namespace}:garbage.msgs"), id, body)
            .rpush(format!("{namespace}:garbage"), id)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let app = dramaturg::app(broker(&namespace).await).actor::<Ok1>().build().unwrap();
    Ok1 { n: 1 }.send(&app).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!((report.rejected, report.succeeded), (3, 1), "{report:?}");
    let dead: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{namespace}:garbage.XQ"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    let letters = app.broker().dead_letters().unwrap().list("garbage", 10).await.unwrap();
    assert_eq!(letters.len(), 3);
    for letter in &letters {
        assert!(letter.reason.starts_with("undecodable message"), "{}: {}", letter.key, letter.reason);
    }
    let raw = letters.iter().find(|l| l.key == "g-bytes").unwrap();
    assert_eq!(&raw.body[..], garbage[0].1, "the raw bytes are kept");
    let shaped = letters.iter().find(|l| l.key == "g-shape").unwrap();
    let body: serde_json::Value = serde_json::from_slice(&shaped.body).unwrap();
    assert!(body["options"]["traceback"].as_str().unwrap().starts_with("undecodable message"), "{body}");
}

// --- Settings ----------------------------------------------------------------

#[tokio::test]
async fn the_protocol_comes_from_the_url_or_the_config() {
    if support::is_child() {
        return;
    }
    let error = RedisBroker::connect(&format!("{URL}?protocol=celery")).await.unwrap_err();
    assert_eq!(error.kind(), BrokerErrorKind::InvalidInput, "{error}");
    let broker = RedisBroker::connect(&format!("{URL}/0?protocol=dramatiq")).await.unwrap();
    assert_eq!(broker.protocol(), Protocol::Dramatiq);
    assert!(broker.encoder().is_some());
    let config = broker.config();
    assert!(format!("{config:?}").contains("namespace: \"dramatiq\""), "{config:?}");
    let native = RedisConfig::new(URL).protocol(Protocol::Dramatiq).namespace("mine").protocol(Protocol::Dramatiq);
    assert!(format!("{native:?}").contains("namespace: \"mine\""));
    assert_eq!(RedisBroker::connect(URL).await.unwrap().protocol(), Protocol::Native);
}

/// `?namespace=` in the URL puts the keys where Python's broker of that
/// namespace has them, and a worker that stops cleanly leaves Dramatiq's
/// heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_comes_from_the_url_and_a_clean_stop_leaves_the_heartbeats() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let send = r#"
@dramatiq.actor(actor_name="orphan", queue_name="orphans")
def orphan(seq):
    pass
orphan.send(41)
"#;
    python::run(&format!("{PY_BROKER}{send}"), &[&namespace]);
    let mut conn = redis_conn().await;
    let heartbeats = format!("{namespace}:__heartbeats__");
    // Python's producer beats too (every command of Dramatiq's is a beat).
    let python: Vec<String> =
        redis::cmd("ZRANGE").arg(&heartbeats).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    let broker = dramaturg::connect(&format!("{URL}?protocol=dramatiq&namespace={namespace}")).await.unwrap();
    let app = dramaturg::app_shared(broker).actor::<Orphan>().build().unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert!(ORPHANS.lock().unwrap().contains(&41));
    let beating: Vec<String> =
        redis::cmd("ZRANGE").arg(&heartbeats).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    assert_eq!(beating, python, "a worker that stopped cleanly is still in the heartbeats");
}

// --- The idle cost -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_costs_a_few_commands_a_second() {
    if support::is_child() {
        return;
    }
    // A server of the test's own, so that no other test's commands count.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _server = KillOnDrop(child);
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Dramatiq's defaults: a poll a second at most, a heartbeat every 5 s.
    let broker = RedisBroker::with_config(RedisConfig::new(format!("{url}?protocol=dramatiq"))).await.unwrap();
    let app = dramaturg::app(broker).actor::<Ok1>().build().unwrap();
    let worker = Worker::new(app);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_secs(3)).await; // past the backoff's climb
    let mut conn = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    // Redis counts the commands a script runs as well as the script call.
    let field = |info: &str, name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_start_matches("calls=").split(',').next().map(str::to_owned))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let read = |info: String| (field(&info, "total_commands_processed:"), field(&info, "cmdstat_evalsha:"));
    let info = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move { redis::cmd("INFO").arg("everything").query_async::<String>(&mut conn).await.unwrap() }
    };
    let (commands_before, scripts_before) = read(info(&mut conn).await);
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let (commands_after, scripts_after) = read(info(&mut conn).await);
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    let seconds = window.as_secs_f64();
    let commands = (commands_after - commands_before - 1) as f64 / seconds;
    let scripts = (scripts_after - scripts_before) as f64 / seconds;
    println!(
        "an idle worker on one queue: {scripts:.1} script calls/s, {commands:.1} commands/s (script bodies included)"
    );
    assert!(scripts <= 3.0, "{scripts} script calls/s");
    assert!(commands <= 12.0, "{commands} commands/s");
}

// --- The conformance suite -----------------------------------------------------

mod conformance {
    use super::*;

    async fn conformance_broker() -> RedisBroker {
        broker(&namespace()).await
    }

    dramaturg_core::broker_conformance!(conformance_broker());
}

// --- Liveness across languages ---------------------------------------------

static HOGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Holds its thread for 3 s, as CPU-bound work does.
#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "hog", queue = "hogs", blocking)]
struct Hog;

impl Hog {
    fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        HOGS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(3));
        Ok(())
    }
}

/// Python's maintenance on every command, taking a worker for dead after
/// 1 s without a heartbeat, runs beside a Rust worker whose handler holds
/// its thread: it never takes the Rust worker for dead, so the message is
/// not given to anyone else while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pythons_maintenance_never_takes_a_busy_rust_worker_for_dead() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let app = dramaturg::app(broker(&namespace).await).actor::<Hog>().build().unwrap();
    Hog.send(&app).await.unwrap();
    let worker = tokio::spawn(Worker::new(app.clone()).run_until_drained(Duration::from_secs(30)));
    support::wait_for("the hog to start", Duration::from_secs(10), || {
        HOGS.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    // For 2.5 s, 20 maintenance passes a second on the hog's queue, looking
    // whether the running message was put back. (`qsize` counts messages
    // in flight too.)
    let maintenance = r#"
broker = RedisBroker(url="redis://127.0.0.1:6379", namespace=sys.argv[1], heartbeat_timeout=1000,
                     maintenance_chance=1000000)
client = redis.Redis.from_url("redis://127.0.0.1:6379")
longest, stalest, others = 0, 0, 0
for _ in range(50):
    broker.do_qsize("hogs")
    longest = max(longest, client.llen(f"{sys.argv[1]}:hogs"))
    beats = client.zrange(f"{sys.argv[1]}:__heartbeats__", 0, -1, withscores=True)
    ages = [time.time() * 1000 - score for member, score in beats if member.decode() != broker.broker_id]
    others = max(others, len(ages))
    stalest = max([stalest] + ages)
    time.sleep(0.05)
print(longest, others, int(stalest))
"#;
    let out = python::run(&format!("{PY_BROKER}{maintenance}"), &[&namespace]);
    let seen: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(seen[0], 0, "Python's maintenance put the running message back in the queue");
    assert_eq!(seen[1], 1, "the Rust worker is not in Dramatiq's heartbeats: {out}");
    assert!(seen[2] < 1000, "the Rust worker's heartbeat went stale while its handler ran: {out}");
    worker.await.unwrap().unwrap();
    assert_eq!(HOGS.load(std::sync::atomic::Ordering::SeqCst), 1, "the message ran twice");
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "orphan", queue = "orphans")]
struct Orphan {
    seq: u64,
}

static ORPHANS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

impl Orphan {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        ORPHANS.lock().unwrap().push(self.seq);
        Ok(())
    }
}

/// A Python worker killed with SIGKILL while it holds messages: a Rust
/// worker gives them back once the Python worker's heartbeat lapses, and
/// runs each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_python_workers_messages_come_back_to_rust() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let module = format!(
        r#"
import time, dramatiq
from dramatiq.brokers.redis import RedisBroker
dramatiq.set_broker(RedisBroker(url="redis://127.0.0.1:6379", namespace="{namespace}"))

@dramatiq.actor(actor_name="orphan", queue_name="orphans")
def orphan(seq):
    time.sleep(60)
"#
    );
    let mut python_worker = python::spawn_worker(&module, &["--processes", "1", "--threads", "2"]);
    let send = r#"
@dramatiq.actor(actor_name="orphan", queue_name="orphans")
def orphan(seq):
    pass
for seq in range(3):
    orphan.send(seq)
"#;
    python::run(&format!("{PY_BROKER}{send}"), &[&namespace]);
    // The Python worker takes all three (two run, one is prefetched: its
    // prefetch is twice its threads).
    let mut conn = redis_conn().await;
    let list = format!("{namespace}:orphans");
    let started = Instant::now();
    loop {
        let len: u64 = redis::cmd("LLEN").arg(&list).query_async(&mut conn).await.unwrap();
        if len == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the Python worker never took the messages");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    python_worker.kill();
    let app = dramaturg::app(broker(&namespace).await).actor::<Orphan>().build().unwrap();
    let worker = Worker::new(app);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    support::wait_for("the orphans to run in Rust", Duration::from_secs(20), || ORPHANS.lock().unwrap().len() >= 3)
        .await;
    stop.shutdown();
    running.await.unwrap().unwrap();
    let mut seen = ORPHANS.lock().unwrap().clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, [0, 1, 2]);
}

// --- Results in Dramatiq's layout -----------------------------------------

#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "interop_square", queue = "results", output = u64, store_results, max_retries = 0)]
struct InteropSquare {
    n: u64,
}

impl InteropSquare {
    async fn perform(self, _ctx: &Context) -> Result<u64, BoxError> {
        if self.n == 13 {
            return Err("unlucky".into());
        }
        Ok(self.n * self.n)
    }
}

/// Python's actor, seen from Rust: only ever sent; Python keeps its result.
#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "py_double", queue = "py_results", output = u64, store_results)]
struct PyDouble(u64);

impl PyDouble {
    async fn perform(self, _ctx: &Context) -> Result<u64, BoxError> {
        Err("runs in Python".into())
    }
}

/// An app on `namespace` keeping results in Dramatiq's layout under
/// `results_namespace`.
async fn results_app(namespace: &str, results_namespace: &str) -> App {
    let broker = broker(namespace).await;
    let layout = dramaturg::results::DramatiqResults::connect(URL).await.unwrap().namespace(results_namespace);
    let results = dramaturg::results::Results::for_broker(&broker).dramatiq_layout(layout);
    dramaturg::app(broker)
        .insert_before("callbacks", results)
        .actor::<InteropSquare>()
        .actor::<PyDouble>()
        .build()
        .unwrap()
}

/// Python's results middleware on namespace `sys.argv[1]`, results under
/// `sys.argv[2]`.
const PY_RESULTS: &str = r#"
from dramatiq.results import Results, ResultFailure
from dramatiq.results.backends import RedisBackend
backend = RedisBackend(url="redis://127.0.0.1:6379", namespace=sys.argv[2])
broker.add_middleware(Results(backend=backend))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reads_the_results_of_messages_rust_ran() {
    if support::is_child() {
        return;
    }
    let (namespace, results_namespace) = (namespace(), namespace());
    let app = results_app(&namespace, &results_namespace).await;
    let worker = Worker::new(app.clone()).concurrency(4);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let script = format!(
        r#"{PY_BROKER}{PY_RESULTS}
@dramatiq.actor(actor_name="interop_square", queue_name="results", store_results=True)
def interop_square(n):
    pass
ok = [interop_square.send_with_options(kwargs={{"n": n}}) for n in range(5)]
print(json.dumps([m.get_result(block=True, timeout=20000) for m in ok]))
try:
    interop_square.send_with_options(kwargs={{"n": 13}}).get_result(block=True, timeout=20000)
    print("no failure")
except ResultFailure as e:
    print(json.dumps([e.orig_exc_type, e.orig_exc_msg]))
"#
    );
    let output =
        tokio::task::spawn_blocking(move || python::run(&script, &[&namespace, &results_namespace])).await.unwrap();
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "[0, 1, 4, 9, 16]", "{output}");
    let failure: Vec<String> = serde_json::from_str(lines[1]).unwrap();
    assert!(failure[1].contains("unlucky"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_reads_the_results_of_messages_python_ran() {
    if support::is_child() {
        return;
    }
    use dramaturg::results::{ResultError, SentExt};
    let (namespace, results_namespace) = (namespace(), namespace());
    let app = results_app(&namespace, &results_namespace).await;
    let sent: Vec<_> = send_doubles(&app).await;
    let module = format!(
        r#"
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend
broker = RedisBroker(url="redis://127.0.0.1:6379", namespace="{namespace}")
broker.add_middleware(Results(backend=RedisBackend(url="redis://127.0.0.1:6379", namespace="{results_namespace}")))
dramatiq.set_broker(broker)

@dramatiq.actor(actor_name="py_double", queue_name="py_results", store_results=True, max_retries=0)
def py_double(n):
    if n == 7:
        raise ValueError("seven is not allowed")
    return n * 2
"#
    );
    let _worker = python::spawn_worker(&module, &["--processes", "1", "--threads", "2"]);
    for (n, sent) in sent {
        let result = sent.result(&app).wait(Duration::from_secs(30)).await;
        match (n, result) {
            (7, Err(ResultError::Failed { record, .. })) => {
                assert_eq!(record.type_name, "ValueError");
                assert_eq!(record.message, "seven is not allowed");
            }
            (n, Ok(doubled)) => assert_eq!(doubled, n * 2),
            (n, other) => panic!("{n}: {other:?}"),
        }
    }
}

/// Sends `PyDouble(0..10)`, returning each number with its handle.
async fn send_doubles(app: &App) -> Vec<(u64, dramaturg::Sent<PyDouble>)> {
    let mut sent = Vec::new();
    for n in 0..10 {
        sent.push((n, PyDouble(n).send(app).await.unwrap()));
    }
    sent
}
