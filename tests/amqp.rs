//! The RabbitMQ broker against the real server: a worker killed with
//! SIGKILL, dropped connections, a server restart, an undecodable message,
//! delayed messages across worker restarts, `consumer_timeout`, priorities,
//! and secrets kept out of errors. Tests that disrupt the server take the
//! lock exclusively; the others share it.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dramaturg::amqp::{AmqpBroker, AmqpConfig};
use dramaturg::prelude::*;
use dramaturg::{BoxError, Broker, DeadLetters, Outgoing};
use serde::{Deserialize, Serialize};
use support::{wait_for, Numbered};
use tokio::sync::RwLock;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

static SERVER: RwLock<()> = RwLock::const_new(());

fn prefix() -> String {
    format!("test-{}-", dramaturg::MessageId::new())
}

fn config() -> AmqpConfig {
    AmqpConfig::new(URL).expire_unused_queues(Duration::from_secs(120)).retry_enqueue_for(Duration::from_secs(20))
}

async fn broker() -> AmqpBroker {
    AmqpBroker::with_config(config()).await.unwrap()
}

fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl is installed");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[derive(Actor, Serialize, Deserialize)]
struct Mark {
    tag: String,
    sleep_ms: u64,
}

static MARKS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn marks(prefix: &str) -> usize {
    MARKS.lock().unwrap().iter().filter(|m| m.starts_with(prefix)).count()
}

impl Mark {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        MARKS.lock().unwrap().push(format!("{}:start", self.tag));
        tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        MARKS.lock().unwrap().push(self.tag);
        Ok(())
    }
}

fn mark(tag: String) -> Mark {
    Mark { tag, sleep_ms: 0 }
}

/// The child: a worker process recording to a file, until SIGTERM.
#[test]
fn amqp_worker_child() {
    let Some((_, prefix)) = support::child_spec() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let app = dramaturg::app(broker().await).queue_prefix(prefix).actor::<Numbered>().build().unwrap();
        Worker::new(app).concurrency(4).run_until_signal().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let prefix = prefix();
    let app = dramaturg::app(broker().await).queue_prefix(&prefix).actor::<Numbered>().build().unwrap();
    let (duplicates, recovery) = support::kill_one_of_two_workers(&app, "amqp_worker_child", &prefix, 2000).await;
    println!("2000 of 2000 processed at least once, {duplicates} duplicates, all done {recovery:?} after the kill");
    app.join(Duration::from_secs(10)).await.unwrap();
}

/// Runs a worker, sends 20 marks, disrupts the server with `disrupt`, then
/// sends 20 more and expects all of them processed.
async fn survive(disrupt: impl FnOnce()) {
    let _exclusive = SERVER.write().await;
    let prefix = prefix();
    let producer = dramaturg::app(broker().await).queue_prefix(&prefix).actor::<Mark>().build().unwrap();
    let worker_app = dramaturg::app(broker().await).queue_prefix(&prefix).actor::<Mark>().build().unwrap();
    let worker = Worker::new(worker_app).concurrency(4);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let (before, after) = (format!("{prefix}before-"), format!("{prefix}after-"));
    for i in 0..20 {
        mark(format!("{before}{i}")).send(&producer).await.unwrap();
    }
    wait_for("messages before", Duration::from_secs(10), || marks(&before) == 40).await;
    disrupt();
    // Sends retry (the producer is configured to) until the server is back.
    for i in 0..20 {
        mark(format!("{after}{i}")).send(&producer).await.unwrap();
    }
    wait_for("messages after", Duration::from_secs(60), || marks(&after) >= 40).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_workers_survive_dropped_connections() {
    if support::is_child() {
        return;
    }
    survive(|| {
        rabbitmqctl(&["close_all_connections", "dramaturg test: dropping connections"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_workers_survive_a_server_restart() {
    if support::is_child() {
        return;
    }
    survive(|| {
        rabbitmqctl(&["stop_app"]);
        std::thread::sleep(Duration::from_millis(500));
        rabbitmqctl(&["start_app"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_is_dead_lettered_and_the_worker_goes_on() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let prefix = prefix();
    let broker = broker().await;
    let app = dramaturg::app(broker.clone()).queue_prefix(&prefix).actor::<Mark>().build().unwrap();
    let queue = app.queues()[0].clone();
    broker.enqueue(Outgoing::new(queue.as_str(), &b"\xc1 not a message"[..])).await.unwrap();
    mark(format!("{prefix}after-garbage")).send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!((report.rejected, report.succeeded), (1, 1), "{report:?}");
    let dead = broker.list(&queue, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.starts_with("undecodable message"), "{}", dead[0].reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_wait_on_the_server_across_worker_restarts() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let prefix = prefix();
    let app = dramaturg::app(broker().await).queue_prefix(&prefix).actor::<Mark>().build().unwrap();
    let tag = format!("{prefix}delayed");
    let sent = Instant::now();
    mark(tag.clone()).send_with(&app, SendOptions::default().delay(Duration::from_millis(2500))).await.unwrap();
    for _ in 0..2 {
        // Workers come and go before the message is due.
        let worker = Worker::new(app.clone());
        let shutdown = worker.shutdown_handle();
        let running = tokio::spawn(worker.run());
        tokio::time::sleep(Duration::from_millis(400)).await;
        shutdown.shutdown();
        running.await.unwrap().unwrap();
        let stats = app.stats(&app.queues()[0]).await.unwrap();
        assert_eq!((stats.ready, stats.in_flight), (0, 0), "held by the server, not a worker: {stats:?}");
    }
    let report = Worker::new(app).run_until_drained(Duration::from_secs(20)).await.unwrap();
    assert_eq!(report.succeeded, 1);
    assert_eq!(marks(&tag), 2);
    assert!(sent.elapsed() >= Duration::from_millis(2500));
}

/// Sets a RabbitMQ application setting for the test and restores it after.
struct Setting {
    key: &'static str,
    previous: String,
}

impl Setting {
    fn set(key: &'static str, value: u64) -> Self {
        let previous = rabbitmqctl(&["eval", &format!("application:get_env(rabbit, {key}).")]);
        rabbitmqctl(&["eval", &format!("application:set_env(rabbit, {key}, {value}).")]);
        Self { key, previous: previous.trim().to_owned() }
    }
}

impl Drop for Setting {
    fn drop(&mut self) {
        let restore = match self.previous.strip_prefix("{ok,").and_then(|v| v.strip_suffix('}')) {
            Some(value) => format!("application:set_env(rabbit, {}, {value}).", self.key),
            None => format!("application:unset_env(rabbit, {}).", self.key),
        };
        rabbitmqctl(&["eval", &restore]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_consumer_timeout_is_reported_and_not_looped() {
    if support::is_child() {
        return;
    }
    let _exclusive = SERVER.write().await;
    let _timeout = Setting::set("consumer_timeout", 2000);
    let _tick = Setting::set("channel_tick_interval", 500);
    let prefix = prefix();
    let broker = broker().await;
    let app = dramaturg::app(broker.clone()).queue_prefix(&prefix).actor::<Mark>().build().unwrap();
    let tag = format!("{prefix}long");
    Mark { tag: tag.clone(), sleep_ms: 6000 }.send(&app).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(60)).await.unwrap();
    let queue = &app.queues()[0];
    let dead = broker.list(queue, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{report:?}");
    assert!(dead[0].reason.contains("consumer_timeout"), "{}", dead[0].reason);
    // It ran once; its redelivery was dead-lettered, not run again.
    assert_eq!(marks(&format!("{tag}:start")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_take_effect_on_queues_declared_with_them() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let queue = format!("{}prio", prefix());
    let broker = AmqpBroker::with_config(config().max_priority(10)).await.unwrap();
    broker.declare_queue(&queue).await.unwrap();
    for (body, priority) in [("low", 1), ("high", 9), ("middle", 5)] {
        broker
            .enqueue(Outgoing::new(queue.as_str(), body.as_bytes().to_vec()).with_priority(Some(priority)))
            .await
            .unwrap();
    }
    let mut consumer = broker.consume(&queue, 1).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        let delivery = consumer.next().await.unwrap();
        order.push(String::from_utf8(delivery.body().to_vec()).unwrap());
        delivery.settle(dramaturg::Settlement::Ack).await.unwrap();
    }
    assert_eq!(order, ["high", "middle", "low"]);
}

#[tokio::test]
async fn passwords_stay_out_of_errors_and_debug_output() {
    if support::is_child() {
        return;
    }
    let err = AmqpBroker::connect("amqp://guest:hunter2@127.0.0.1:1/%2f").await.unwrap_err();
    assert!(err.is_connection_lost(), "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("guest:***@127.0.0.1:1"), "{text}");
    assert!(!format!("{:?}", AmqpConfig::new("amqp://guest:hunter2@host/%2f")).contains("hunter2"));
}
