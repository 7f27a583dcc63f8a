//! The RabbitMQ broker against the real server: a worker killed with
//! SIGKILL, dropped connections, a server restart, an undecodable message,
//! delayed messages across worker restarts, `consumer_timeout`, priorities,
//! and secrets kept out of errors. Tests that disrupt the server take the
//! lock exclusively; the others share it.

#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dramaturg::amqp::{AmqpBroker, AmqpConfig, OnBlocked};
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
    support::run_worker_child(|prefix| async move {
        dramaturg::app(broker().await).queue_prefix(prefix).actor::<Numbered>().build().unwrap()
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
    mark(tag.clone()).send_with(&app, SendOptions::default().with_delay(Duration::from_millis(2500))).await.unwrap();
    let mut succeeded = 0;
    for _ in 0..2 {
        // Workers come and go before the message is due.
        let worker = Worker::new(app.clone());
        let shutdown = worker.shutdown_handle();
        let running = tokio::spawn(worker.run());
        tokio::time::sleep(Duration::from_millis(400)).await;
        shutdown.shutdown();
        succeeded += running.await.unwrap().unwrap().succeeded;
        if sent.elapsed() < Duration::from_millis(2000) {
            let stats = app.stats(&app.queues()[0]).await.unwrap();
            assert_eq!((stats.ready, stats.in_flight), (0, 0), "held by the server, not a worker: {stats:?}");
        }
    }
    // On a loaded machine the restarts may outlast the delay; the message
    // runs once all the same.
    succeeded += Worker::new(app).run_until_drained(Duration::from_secs(20)).await.unwrap().succeeded;
    assert_eq!(succeeded, 1);
    assert_eq!(marks(&tag), 2);
    assert!(sent.elapsed() >= Duration::from_millis(2500));
}

/// The child that sends one delayed message, `prefix|tag|delay_ms`, its
/// clock skewed by libfaketime, and exits.
#[test]
fn amqp_skewed_producer_child() {
    let Ok(spec) = std::env::var(support::CHILD) else { return };
    let parts: Vec<&str> = spec.split('|').collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let app = dramaturg::app(broker().await).queue_prefix(parts[0]).actor::<Mark>().build().unwrap();
        let delay = Duration::from_millis(parts[2].parse().unwrap());
        mark(parts[1].to_owned()).send_with(&app, SendOptions::default().with_delay(delay)).await.unwrap();
    });
}

/// Runs this test binary as [`amqp_skewed_producer_child`] with its clock
/// `skew` off (e.g. `"+30s"`) through libfaketime.
fn spawn_skewed_producer(skew: &str, spec: &str) -> std::process::Child {
    support::spawn_skewed("amqp_skewed_producer_child", spec, skew)
}

/// A producer whose clock is `skew` off sends a message delayed by
/// `delay`; a worker here runs it after about `delay`, whatever the skew.
async fn a_delay_does_not_follow_the_producer_clock(skew: &str, delay: Duration) {
    let _shared = SERVER.read().await;
    let prefix = prefix();
    let app = dramaturg::app(broker().await).queue_prefix(&prefix).actor::<Mark>().build().unwrap();
    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let tag = format!("{prefix}skewed");
    let mut child = spawn_skewed_producer(skew, &format!("{prefix}|{tag}|{}", delay.as_millis()));
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    // The send returned (confirmed) just before the child exited.
    let sent = Instant::now();
    assert!(status.success(), "the producer failed: {status}");
    let tolerance = Duration::from_millis(1500);
    // Late by this much at most: far below the skew the test is about,
    // and wide enough for a machine busy with other builds.
    let late = Duration::from_secs(5);
    let started = format!("{tag}:start");
    let within = delay + late + Duration::from_secs(3);
    let ran = tokio::time::timeout(within, async {
        while marks(&started) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent.elapsed()
    })
    .await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    let ran = ran.unwrap_or_else(|_| panic!("a {delay:?} delay sent {skew} off had not run after {within:?}"));
    println!("a {delay:?} delay sent by a producer {skew} off ran after {ran:?}");
    assert!(ran + tolerance >= delay && ran <= delay + late, "{skew}: a {delay:?} delay ran after {ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_30_s_fast_does_not_hold_a_1_s_delay_for_31_s() {
    if support::is_child() {
        return;
    }
    a_delay_does_not_follow_the_producer_clock("+30s", Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_30_s_slow_does_not_run_a_10_s_delay_early() {
    if support::is_child() {
        return;
    }
    a_delay_does_not_follow_the_producer_clock("-30s", Duration::from_secs(10)).await;
}

/// Every ERROR event of this process, formatted, from any thread (lapin
/// logs from its own I/O thread, so the subscriber is the global one).
static ERROR_LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct ErrorLog;

impl std::io::Write for ErrorLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        ERROR_LOG.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The ERROR lines logged so far that mention `text`.
fn errors_mentioning(text: &str) -> Vec<String> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .with_ansi(false)
            .with_writer(|| ErrorLog)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    let log = ERROR_LOG.lock().unwrap();
    String::from_utf8_lossy(&log).lines().filter(|line| line.contains(text)).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_and_join_log_no_errors_for_delay_buckets_not_declared_yet() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let prefix = prefix();
    assert!(errors_mentioning(&prefix).is_empty(), "the subscriber is installed");
    let here = broker().await;
    let app = dramaturg::app(here.clone()).queue_prefix(&prefix).actor::<Mark>().build().unwrap();
    let queue = app.queues()[0].clone();
    let stats = app.stats(&queue).await.unwrap();
    assert_eq!((stats.ready, stats.delayed, stats.in_flight, stats.dead), (0, 0, 0, 0), "{stats:?}");
    app.join(Duration::from_secs(1)).await.unwrap();

    // Another process declares a bucket and puts a message in it: this
    // one still counts it.
    let producer = dramaturg::app(broker().await).queue_prefix(&prefix).actor::<Mark>().build().unwrap();
    let tag = format!("{prefix}delayed");
    mark(tag.clone()).send_with(&producer, SendOptions::default().with_delay(Duration::from_secs(2))).await.unwrap();
    let stats = app.stats(&queue).await.unwrap();
    assert_eq!((stats.ready, stats.delayed), (0, 1), "{stats:?}");
    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    app.join(Duration::from_secs(10)).await.unwrap();
    shutdown.shutdown();
    assert_eq!(running.await.unwrap().unwrap().succeeded, 1);
    assert_eq!(marks(&format!("{tag}:start")), 1);
    let stats = app.stats(&queue).await.unwrap();
    assert!(stats.is_drained(), "{stats:?}");
    assert_eq!(dramaturg::QueueAdmin::purge(&here, &queue).await.unwrap(), 0);

    let errors = errors_mentioning(&prefix);
    assert!(errors.is_empty(), "{} ERROR lines, the first: {:?}", errors.len(), errors.first());
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

// ---------------------------------------------------------------------------
// Nothing lost, nothing run twice: fencing, bounded headers, names, mandatory
// publishes, lazy buckets, streaming replay, priorities from the URL.

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// The names of the server's queues that start with `prefix`.
fn server_queues(prefix: &str) -> Vec<String> {
    let listed = rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name"]);
    let mut names: Vec<String> =
        listed.lines().map(str::trim).filter(|name| name.starts_with(prefix)).map(str::to_owned).collect();
    names.sort();
    names
}

async fn next_delivery(consumer: &mut dyn dramaturg::Consumer) -> dramaturg::Delivery {
    tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.expect("a delivery within 5 s").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_in_flight_returns_only_this_process_deliveries_and_stale_receipts_send_nothing() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let queue = format!("{}fence", prefix());
    let (here, elsewhere) = (broker().await, broker().await);
    here.declare_queue(&queue).await.unwrap();
    for body in ["a", "b", "c", "theirs"] {
        here.enqueue(Outgoing::new(queue.as_str(), body.as_bytes().to_vec())).await.unwrap();
    }
    let mut mine = here.consume(&queue, 3).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_delivery(mine.as_mut()).await);
    }
    let mut theirs = elsewhere.consume(&queue, 1).await.unwrap();
    let other = next_delivery(theirs.as_mut()).await;
    assert_eq!(text(other.body()), "theirs");

    // Only this broker value's deliveries go back; the other process keeps its own.
    assert_eq!(dramaturg::QueueAdmin::requeue_in_flight(&here, &queue).await.unwrap(), 3);
    let mut again = Vec::new();
    for _ in 0..3 {
        let delivery = next_delivery(mine.as_mut()).await;
        assert!(delivery.redelivered());
        again.push(delivery);
    }
    let mut bodies: Vec<String> = again.iter().map(|d| text(d.body())).collect();
    bodies.sort();
    assert_eq!(bodies, ["a", "b", "c"]);

    // The stale receipts send nothing: no dead letter, no rescheduled copy,
    // no ack on the new channel (an unknown tag there would close it).
    let stale = [
        dramaturg::Settlement::DeadLetter("stale".into()),
        dramaturg::Settlement::Reschedule { body: "copy".into(), delay: Duration::from_millis(10) },
        dramaturg::Settlement::Ack,
    ];
    for (delivery, settlement) in held.into_iter().zip(stale) {
        assert_eq!(delivery.settle(settlement).await.unwrap(), dramaturg_core::Settled::Stale);
    }
    let stats = dramaturg::QueueAdmin::stats(&here, &queue).await.unwrap();
    assert_eq!((stats.ready, stats.delayed, stats.in_flight, stats.dead), (0, 0, 3, 0), "{stats:?}");
    for delivery in again {
        assert_eq!(delivery.settle(dramaturg::Settlement::Ack).await.unwrap(), dramaturg_core::Settled::Applied);
    }
    assert_eq!(other.settle(dramaturg::Settlement::Ack).await.unwrap(), dramaturg_core::Settled::Applied);
    mine.close().await.unwrap();
    theirs.close().await.unwrap();
    dramaturg::QueueAdmin::join(&here, &queue, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kb_reason_is_bounded_at_the_header_and_the_connection_stays_up() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let queue = format!("{}huge-reason", prefix());
    let broker = broker().await;
    broker.declare_queue(&queue).await.unwrap();
    broker.enqueue(Outgoing::new(queue.as_str(), &b"poison"[..])).await.unwrap();
    let mut consumer = broker.consume(&queue, 1).await.unwrap();
    let delivery = next_delivery(consumer.as_mut()).await;
    // A reason bounded by nobody: the broker must bound it itself.
    let reason = dramaturg_core::Bounded::new(&format!("unknown actor {}", "x".repeat(200_000)), usize::MAX);
    let settled = delivery.settle(dramaturg::Settlement::DeadLetter(reason)).await.unwrap();
    assert_eq!(settled, dramaturg_core::Settled::Applied);
    let dead = broker.list(&queue, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.starts_with("unknown actor xxx"), "{}", &dead[0].reason[..40]);
    assert!(dead[0].reason.len() <= dramaturg_core::MAX_REASON_BYTES, "{} bytes", dead[0].reason.len());
    // The connection carries on.
    broker.enqueue(Outgoing::new(queue.as_str(), &b"next"[..])).await.unwrap();
    let next = next_delivery(consumer.as_mut()).await;
    assert_eq!(text(next.body()), "next");
    assert!(!next.redelivered(), "the poison message did not come back");
    next.settle(dramaturg::Settlement::Ack).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kb_actor_name_is_dead_lettered_once_and_the_connection_stays_up() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let prefix = prefix();
    // Through a proxy of its own, so that a reconnection is seen whatever
    // other tests do with their connections meanwhile.
    let proxy = support::CountingProxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let broker =
        AmqpBroker::with_config(AmqpConfig::new(&url).expire_unused_queues(Duration::from_secs(120))).await.unwrap();
    let app = dramaturg::app(broker.clone()).queue_prefix(&prefix).actor::<Mark>().build().unwrap();
    let queue = app.queues()[0].clone();
    // A foreign producer's message for an actor nobody has, named with 200,000 bytes.
    let poison = dramaturg::Message::new(queue.as_str(), "x".repeat(200_000), Default::default());
    let encoded = app.encoder().encode_message(&poison).unwrap();
    broker.enqueue(Outgoing::new(queue.as_str(), encoded)).await.unwrap();
    mark(format!("{prefix}after-poison")).send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(10)).await.unwrap();
    // A connection torn down under the worker would have made its
    // settlement of the poison message stale and brought the message back.
    assert_eq!((report.rejected, report.succeeded, report.stale), (1, 1, 0), "{report:?}");
    let dead = broker.list(&queue, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "dead-lettered once");
    assert!(dead[0].reason.len() <= dramaturg_core::MAX_REASON_BYTES, "{} bytes", dead[0].reason.len());
    // One publishing and one consuming connection, neither opened again.
    assert_eq!(proxy.accepted(), 2, "a connection was torn down and opened again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_up_to_246_bytes_work_and_longer_ones_are_typed_errors() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let prefix = prefix();
    let broker = broker().await;
    let name = |len: usize| format!("{prefix}{}", "n".repeat(len - prefix.len()));
    let fits = name(dramaturg::amqp::MAX_QUEUE_NAME_BYTES);
    broker.enqueue(Outgoing::new(fits.as_str(), &b"now"[..])).await.unwrap();
    broker
        .enqueue(Outgoing::new(fits.as_str(), &b"later"[..]).with_delay(Some(Duration::from_secs(3600))))
        .await
        .unwrap();
    assert_eq!(dramaturg::QueueAdmin::purge(&broker, &fits).await.unwrap(), 2);
    for len in [247, 250, 255, 256, 300] {
        let long = name(len);
        let delayed = Outgoing::new(long.as_str(), &b"later"[..]).with_delay(Some(Duration::from_secs(1)));
        let errors = [
            broker.enqueue(Outgoing::new(long.as_str(), &b"now"[..])).await.unwrap_err(),
            broker.enqueue(delayed).await.unwrap_err(),
            broker.enqueue_many(vec![Outgoing::new(long.as_str(), &b"now"[..])]).await.unwrap_err(),
            broker.declare_queue(&long).await.unwrap_err(),
            broker.consume(&long, 1).await.map(|_| ()).unwrap_err(),
            dramaturg::QueueAdmin::stats(&broker, &long).await.unwrap_err(),
            broker.list(&long, 1).await.unwrap_err(),
        ];
        for error in errors {
            assert_eq!(error.kind(), dramaturg::BrokerErrorKind::InvalidInput, "{len}: {error}");
            assert!(error.to_string().contains("246 bytes"), "{error}");
            assert!(!error.is_retryable());
        }
    }
    // The broker still works.
    broker.enqueue(Outgoing::new(fits.as_str(), &b"still"[..])).await.unwrap();
    // A vhost too long for AMQP is refused, not a panic inside lapin.
    let error =
        AmqpBroker::connect(&format!("amqp://guest:guest@127.0.0.1:5672/{}", "v".repeat(300))).await.unwrap_err();
    assert_eq!(error.kind(), dramaturg::BrokerErrorKind::InvalidInput, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_a_deleted_queue_declare_it_again_instead_of_dropping() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let queue = format!("{}deleted", prefix());
    let broker = broker().await;
    broker.declare_queue(&queue).await.unwrap();
    broker.enqueue(Outgoing::new(queue.as_str(), &b"first"[..])).await.unwrap();
    let mut consumer = broker.consume(&queue, 1).await.unwrap();

    // The dead-letter queue is deleted behind the broker's back.
    let delivery = next_delivery(consumer.as_mut()).await;
    rabbitmqctl(&["delete_queue", &format!("{queue}.dq")]);
    delivery.settle(dramaturg::Settlement::DeadLetter("failed".into())).await.unwrap();
    let dead = broker.list(&queue, 10).await.unwrap();
    assert_eq!(dead.iter().map(|d| text(&d.body)).collect::<Vec<_>>(), ["first"], "the dead letter was not lost");

    // A delay bucket used before is deleted; a delayed send still arrives.
    let delayed = |body: &'static str| {
        Outgoing::new(queue.as_str(), body.as_bytes()).with_delay(Some(Duration::from_millis(200)))
    };
    broker.enqueue(delayed("delayed once")).await.unwrap();
    let once = next_delivery(consumer.as_mut()).await;
    assert_eq!(text(once.body()), "delayed once");
    once.settle(dramaturg::Settlement::Ack).await.unwrap();
    for bucket in server_queues(&format!("{queue}.delay.")) {
        rabbitmqctl(&["delete_queue", &bucket]);
    }
    broker.enqueue(delayed("delayed twice")).await.unwrap();
    let arrived = next_delivery(consumer.as_mut()).await;
    assert_eq!(text(arrived.body()), "delayed twice", "the delayed message was not lost");
    arrived.settle(dramaturg::Settlement::Ack).await.unwrap();
    consumer.close().await.unwrap();

    // The queue itself is deleted; a send declares it again.
    rabbitmqctl(&["delete_queue", &queue]);
    broker.enqueue(Outgoing::new(queue.as_str(), &b"after delete"[..])).await.unwrap();
    let stats = dramaturg::QueueAdmin::stats(&broker, &queue).await.unwrap();
    assert_eq!(stats.ready, 1, "{stats:?}");

    // Again, under a batch of concurrent publishes (RabbitMQ acknowledges
    // them with `multiple` acks): every one arrives, exactly once.
    rabbitmqctl(&["delete_queue", &queue]);
    let batch = (0..300).map(|i| Outgoing::new(queue.as_str(), format!("m{i}").into_bytes())).collect();
    broker.enqueue_many(batch).await.unwrap();
    let stats = dramaturg::QueueAdmin::stats(&broker, &queue).await.unwrap();
    assert_eq!(stats.ready, 300, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_buckets_are_declared_when_first_used() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let queue = format!("{}lazy", prefix());
    let broker = broker().await;
    broker.declare_queue(&queue).await.unwrap();
    broker.enqueue(Outgoing::new(queue.as_str(), &b"now"[..])).await.unwrap();
    assert_eq!(server_queues(&queue), [queue.clone(), format!("{queue}.dq")]);
    // An hour goes to the 43.7 min bucket (10 ms × 2^18) first.
    let later = Outgoing::new(queue.as_str(), &b"later"[..]).with_delay(Some(Duration::from_secs(3600)));
    broker.enqueue(later).await.unwrap();
    assert_eq!(server_queues(&queue), [queue.clone(), format!("{queue}.delay.18"), format!("{queue}.dq")]);
    let stats = dramaturg::QueueAdmin::stats(&broker, &queue).await.unwrap();
    assert_eq!((stats.ready, stats.delayed), (1, 1), "{stats:?}");
    assert_eq!(dramaturg::QueueAdmin::purge(&broker, &queue).await.unwrap(), 2);
}

/// The largest resident set size of this process, in KiB, seen while `run` runs.
async fn peak_rss_growth_kib<T>(run: impl std::future::Future<Output = T>) -> (T, u64) {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
    let before = rss_kib();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib());
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let result = run.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    (result, peak.saturating_sub(before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_streams_the_dead_letter_queue_in_bounded_memory() {
    if support::is_child() {
        return;
    }
    // Exclusive: the memory of the whole test process is measured.
    let _exclusive = SERVER.write().await;
    let queue = format!("{}replay-stream", prefix());
    let broker = broker().await;
    broker.declare_queue(&queue).await.unwrap();
    let (count, size) = (48, 1 << 20);
    let mut consumer = broker.consume(&queue, 1).await.unwrap();
    for i in 0..count {
        let mut body = vec![b'.'; size];
        body[..8].copy_from_slice(format!("{i:08}").as_bytes());
        broker.enqueue(Outgoing::new(queue.as_str(), body)).await.unwrap();
        let delivery = next_delivery(consumer.as_mut()).await;
        delivery.settle(dramaturg::Settlement::DeadLetter(format!("dead {i}").into())).await.unwrap();
    }
    consumer.close().await.unwrap();
    let keys: Vec<String> = broker.list(&queue, 2).await.unwrap().into_iter().map(|d| d.key).collect();

    // Looking for the last one reads every dead letter before it.
    let last = broker.list(&queue, count).await.unwrap().pop().unwrap().key;
    let (replayed, growth) = peak_rss_growth_kib(broker.replay(&queue, dramaturg::Replay::One(last))).await;
    assert_eq!(replayed.unwrap(), 1);
    println!("replaying the last of {count} dead letters of 1 MiB: peak RSS growth {growth} KiB");
    assert!(growth < 16 * 1024, "replay held {growth} KiB");
    // The others are back in order.
    let left = broker.list(&queue, count).await.unwrap();
    assert_eq!(left.len(), count - 1);
    assert_eq!(left.iter().map(|d| d.key.clone()).take(2).collect::<Vec<_>>(), keys);

    let (replayed, growth) = peak_rss_growth_kib(broker.replay(&queue, dramaturg::Replay::All)).await;
    assert_eq!(replayed.unwrap(), count as u64 - 1);
    println!("replaying {} dead letters of 1 MiB: peak RSS growth {growth} KiB", count - 1);
    assert!(growth < 16 * 1024, "replay held {growth} KiB");
    assert_eq!(dramaturg::QueueAdmin::purge(&broker, &queue).await.unwrap(), count as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_priority_comes_from_the_url_and_priorities_without_it_are_refused() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let queue = format!("{}url-prio", prefix());
    let prioritised = AmqpBroker::connect(&format!("{URL}?max_priority=10")).await.unwrap();
    assert_eq!(prioritised.config().priorities(), Some(10));
    prioritised.declare_queue(&queue).await.unwrap();
    for (body, priority) in [("low", 1), ("high", 9), ("middle", 5)] {
        prioritised
            .enqueue(Outgoing::new(queue.as_str(), body.as_bytes().to_vec()).with_priority(Some(priority)))
            .await
            .unwrap();
    }
    let mut consumer = prioritised.consume(&queue, 1).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        let delivery = next_delivery(consumer.as_mut()).await;
        order.push(text(delivery.body()));
        delivery.settle(dramaturg::Settlement::Ack).await.unwrap();
    }
    assert_eq!(order, ["high", "middle", "low"]);
    rabbitmqctl(&["delete_queue", &queue]);

    // Through the facade's connect too.
    let any = dramaturg::connect(&format!("{URL}?heartbeat=30&max_priority=3")).await.unwrap();
    any.declare_queue(&format!("{queue}-facade")).await.unwrap();
    rabbitmqctl(&["delete_queue", &format!("{queue}-facade")]);

    let error = AmqpBroker::connect(&format!("{URL}?max_priority=300")).await.unwrap_err();
    assert_eq!(error.kind(), dramaturg::BrokerErrorKind::InvalidInput, "{error}");

    let plain = broker().await;
    let unordered = format!("{queue}-plain");
    let error =
        plain.enqueue(Outgoing::new(unordered.as_str(), &b"urgent"[..]).with_priority(Some(5))).await.unwrap_err();
    assert_eq!(error.kind(), dramaturg::BrokerErrorKind::InvalidInput, "{error}");
    assert!(error.to_string().contains("max_priority"), "{error}");
    plain.enqueue(Outgoing::new(unordered.as_str(), &b"plain"[..]).with_priority(Some(0))).await.unwrap();
    assert_eq!(dramaturg::QueueAdmin::purge(&plain, &unordered).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_dropped_unsettled_comes_back_instead_of_holding_its_prefetch_slot() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let queue = format!("{}dropped", prefix());
    let broker = broker().await;
    broker.declare_queue(&queue).await.unwrap();
    broker.enqueue(Outgoing::new(queue.as_str(), &b"dropped"[..])).await.unwrap();
    let mut consumer = broker.consume(&queue, 1).await.unwrap();
    drop(next_delivery(consumer.as_mut()).await);
    let again = next_delivery(consumer.as_mut()).await;
    assert_eq!(text(again.body()), "dropped");
    assert!(again.redelivered());
    again.settle(dramaturg::Settlement::Ack).await.unwrap();
    consumer.close().await.unwrap();
    dramaturg::QueueAdmin::join(&broker, &queue, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_publishes_keeps_its_order() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let queue = format!("{}order", prefix());
    let broker = broker().await;
    broker.declare_queue(&queue).await.unwrap();
    let sent: Vec<String> = (0..500).map(|i| format!("m{i}")).collect();
    broker
        .enqueue_many(sent.iter().map(|t| Outgoing::new(queue.as_str(), t.clone().into_bytes())).collect())
        .await
        .unwrap();
    let mut consumer = broker.consume(&queue, 50).await.unwrap();
    let mut received = Vec::new();
    for _ in 0..sent.len() {
        let delivery = next_delivery(consumer.as_mut()).await;
        received.push(text(delivery.body()));
        delivery.settle(dramaturg::Settlement::Ack).await.unwrap();
    }
    assert_eq!(received, sent);
    consumer.close().await.unwrap();
}

/// A RabbitMQ node of this test's own (its own ports, data directory and
/// Erlang cookie), for raising resource alarms that must not reach the
/// tests sharing the server on 5672. Stopped and removed on drop, also when
/// the test fails.
struct PrivateNode {
    name: String,
    port: u16,
    dir: std::path::PathBuf,
    server: std::process::Child,
}

/// RabbitMQ's own scripts (`/usr/sbin`'s wrappers switch to the `rabbitmq`
/// user and its cookie).
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PrivateNode {
    fn start() -> Self {
        let (port, dist_port) = (free_port(), free_port());
        let name = format!("dramaturg-test-{port}@localhost");
        let dir = std::env::temp_dir().join(format!("dramaturg-rabbit-{}", dramaturg::MessageId::new()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rabbitmq.conf"), format!("listeners.tcp.local = 127.0.0.1:{port}\n")).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        // Written before anything starts, so that the server and
        // rabbitmqctl agree on it (Erlang would create one on first use).
        let cookie = dir.join(".erlang.cookie");
        std::fs::write(&cookie, dramaturg::MessageId::new().to_string().replace('-', "")).unwrap();
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
        let log = std::fs::File::create(dir.join("server.out")).unwrap();
        let server = Command::new(format!("{RABBITMQ_BIN}/rabbitmq-server"))
            .envs(Self::environment(&dir, &name))
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server is installed (scripts/services installs it)");
        let node = Self { name, port, dir, server };
        let pid_file = node.dir.join("pid");
        node.ctl(&["wait", "--timeout", "60", pid_file.to_str().unwrap()]);
        node
    }

    /// What both the server and rabbitmqctl need to find this node.
    fn environment(dir: &std::path::Path, name: &str) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            ("HOME", dir.into()),
            ("RABBITMQ_NODENAME", name.into()),
            // Not the shared node's settings in /etc/rabbitmq.
            ("RABBITMQ_CONF_ENV_FILE", "/dev/null".into()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
        ]
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn ctl(&self, args: &[&str]) -> String {
        let output = Command::new(format!("{RABBITMQ_BIN}/rabbitmqctl"))
            .envs(Self::environment(&self.dir, &self.name))
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("rabbitmqctl is installed");
        let log = std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?}: {}\nserver output:\n{log}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn memory_alarm(&self) -> bool {
        self.ctl(&["eval", "rabbit_alarm:get_alarms()."]).contains("memory")
    }

    /// (ready, unacknowledged) messages of `queue`, as the server counts them.
    fn queue_counts(&self, queue: &str) -> (u64, u64) {
        let listed =
            self.ctl(&["list_queues", "-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"]);
        let line = listed.lines().find(|line| line.split_whitespace().next() == Some(queue)).unwrap();
        let counts: Vec<u64> = line.split_whitespace().skip(1).map(|n| n.parse().unwrap()).collect();
        (counts[0], counts[1])
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let _ = Command::new(format!("{RABBITMQ_BIN}/rabbitmqctl"))
            .envs(Self::environment(&self.dir, &self.name))
            .args(["-n", &self.name, "stop"])
            .output();
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How often `tag` ran to its end.
fn runs(tag: &str) -> usize {
    MARKS.lock().unwrap().iter().filter(|m| *m == tag).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_fails_sends_by_their_deadline_and_the_worker_goes_on() {
    if support::is_child() {
        return;
    }
    let node = PrivateNode::start();
    let timeout = Duration::from_secs(2);
    let broker = AmqpBroker::with_config(AmqpConfig::new(node.url()).send_timeout(timeout)).await.unwrap();
    let prefix = prefix();
    let app = dramaturg::app(broker).queue_prefix(&prefix).actor::<Mark>().build().unwrap();
    let queue = app.queues()[0].clone();
    let queued = 300;
    for i in 0..queued {
        mark(format!("{prefix}queued-{i}")).send(&app).await.unwrap();
    }

    node.ctl(&["set_vm_memory_high_watermark", "absolute", "1"]);
    wait_for("the memory alarm", Duration::from_secs(10), || node.memory_alarm()).await;

    // (a) Sends end by their deadline: the first one publishes and is
    // caught by the block (it may have been taken); the next ones are
    // refused before publishing anything.
    let mut refused = Vec::new();
    for i in 0..3 {
        let tag = format!("{prefix}during-{i}");
        let started = Instant::now();
        let error = match mark(tag.clone()).send(&app).await {
            Ok(_) => panic!("a send during the memory alarm succeeded"),
            Err(dramaturg::EnqueueError::Broker(error)) => error,
            Err(other) => panic!("{other}"),
        };
        let took = started.elapsed();
        println!("send {i} during the alarm failed after {took:?}: {error}");
        assert!(error.is_blocked() || error.is_timeout(), "{error}");
        assert!(error.is_retryable(), "{error}");
        assert!(took < timeout + Duration::from_millis(500), "a send took {took:?}, past its {timeout:?} deadline");
        if i > 0 {
            assert!(error.is_blocked() && error.to_string().contains("not sent"), "{error}");
            assert!(took < Duration::from_millis(200), "a send on a blocked connection took {took:?}");
        }
        refused.push(tag);
    }

    // (b) The worker of the same app processes and acknowledges what was
    // queued, while the alarm lasts.
    let worker = Worker::new(app.clone()).concurrency(4);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let started = Instant::now();
    let queued_prefix = format!("{prefix}queued-");
    wait_for("the queued messages", Duration::from_secs(20), || {
        MARKS.lock().unwrap().iter().filter(|m| m.starts_with(&queued_prefix) && !m.ends_with(":start")).count()
            == queued
    })
    .await;
    let took = started.elapsed();
    println!(
        "{queued} queued messages processed during the alarm in {took:?} ({:.0}/s)",
        queued as f64 / took.as_secs_f64()
    );
    wait_for("the acknowledgements", Duration::from_secs(5), || node.queue_counts(&queue) == (0, 0)).await;
    assert!(node.memory_alarm(), "the alarm lasted through the processing");

    // With `OnBlocked::Wait`, a send caught by the block waits for its
    // confirm until its deadline, then times out (its message may have
    // been taken: it is counted below, sent again after the alarm).
    let short = AmqpConfig::new(node.url()).send_timeout(Duration::from_secs(1)).on_blocked(OnBlocked::Wait);
    let short_app = dramaturg::app(AmqpBroker::with_config(short).await.unwrap())
        .queue_prefix(&prefix)
        .actor::<Mark>()
        .build()
        .unwrap();
    let timed_out = format!("{prefix}timed-out");
    let started = Instant::now();
    let error = match mark(timed_out.clone()).send(&short_app).await {
        Err(dramaturg::EnqueueError::Broker(error)) => error,
        other => panic!("expected a broker error, got {other:?}"),
    };
    let took = started.elapsed();
    println!("a waiting send with a 1 s deadline failed after {took:?}: {error}");
    assert!(error.is_timeout() && error.is_retryable(), "{error}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1500), "{took:?}");
    refused.push(timed_out);

    // With `OnBlocked::Wait`, a send waits through the block and succeeds
    // when the alarm clears within its deadline.
    let waiting = AmqpConfig::new(node.url()).send_timeout(Duration::from_secs(20)).on_blocked(OnBlocked::Wait);
    let waiting_app = dramaturg::app(AmqpBroker::with_config(waiting).await.unwrap())
        .queue_prefix(&prefix)
        .actor::<Mark>()
        .build()
        .unwrap();
    let waited = format!("{prefix}waited");
    let pending = tokio::spawn(mark(waited.clone()).send(&waiting_app));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "a send with OnBlocked::Wait returned while publishing was blocked");

    // (c) After the alarm, sends succeed; the caller sends the refused
    // messages again.
    node.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    let cleared = Instant::now();
    pending.await.unwrap().unwrap();
    println!("the waiting send succeeded {:?} after the alarm was cleared", cleared.elapsed());
    let after = format!("{prefix}after");
    loop {
        match mark(after.clone()).send(&app).await {
            Ok(_) => break,
            Err(error) => {
                assert!(cleared.elapsed() < Duration::from_secs(15), "sends still fail after the alarm: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    println!("sends succeed again {:?} after the alarm was cleared", cleared.elapsed());
    for tag in &refused {
        mark(tag.clone()).send(&app).await.unwrap();
    }
    wait_for("the messages sent after the alarm", Duration::from_secs(20), || {
        runs(&after) == 1 && runs(&waited) == 1 && refused.iter().all(|tag| runs(tag) >= 1)
    })
    .await;
    // Anything still buffered would arrive by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    for i in 0..queued {
        assert_eq!(runs(&format!("{prefix}queued-{i}")), 1, "queued-{i}");
    }
    assert_eq!((runs(&after), runs(&waited)), (1, 1));
    let counts: Vec<usize> = refused.iter().map(|tag| runs(tag)).collect();
    println!("runs of the sends refused during the alarm (each sent again after it): {counts:?}; {report:?}");
    // The first may have been taken before the block (then it ran twice),
    // and so may the one that timed out; the ones refused on the blocked
    // connection had sent nothing.
    assert!((1..=2).contains(&counts[0]), "{counts:?}");
    assert!(counts[1..3].iter().all(|&count| count == 1), "{counts:?}");
    assert!((1..=2).contains(&counts[3]), "{counts:?}");
}

/// Dead-letters `bodies` on `queue`, one at a time and in order, with the
/// body as the reason.
async fn dead_letter_all(broker: &AmqpBroker, queue: &str, bodies: &[Vec<u8>]) {
    broker.declare_queue(queue).await.unwrap();
    let mut consumer = broker.consume(queue, 1).await.unwrap();
    for body in bodies {
        broker.enqueue(Outgoing::new(queue, body.clone())).await.unwrap();
        let delivery = next_delivery(consumer.as_mut()).await;
        assert_eq!(delivery.body().as_ref(), body.as_slice());
        let reason = text(body).into();
        assert_eq!(
            delivery.settle(dramaturg::Settlement::DeadLetter(reason)).await.unwrap(),
            dramaturg_core::Settled::Applied
        );
    }
    consumer.close().await.unwrap();
}

/// The reasons of `queue`'s dead letters, oldest first.
async fn dead_reasons(broker: &AmqpBroker, queue: &str) -> Vec<String> {
    broker.list(queue, 100).await.unwrap().into_iter().map(|d| d.reason).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_caps_keep_only_the_newest_dead_letters() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let defaults = config();
    assert_eq!(defaults.dead_letter_limits(), (50_000, 64 << 20), "the Redis broker's defaults");

    // By count: at most 3.
    let queue = format!("{}dq-count-cap", prefix());
    let broker = AmqpBroker::with_config(config().dead_letter_caps(3, 1 << 20)).await.unwrap();
    let bodies: Vec<Vec<u8>> = (0..5).map(|i| format!("dead-{i}").into_bytes()).collect();
    dead_letter_all(&broker, &queue, &bodies).await;
    assert_eq!(dead_reasons(&broker, &queue).await, ["dead-2", "dead-3", "dead-4"]);
    assert_eq!(dramaturg::QueueAdmin::stats(&broker, &queue).await.unwrap().dead, 3);

    // By bytes: a cap below one message's worth counts as 1 MiB (RabbitMQ
    // would drop every dead letter larger than the cap), which holds 2 of
    // 400 KiB (headers do not count).
    let queue = format!("{}dq-bytes-cap", prefix());
    let broker = AmqpBroker::with_config(config().dead_letter_caps(1_000, 350)).await.unwrap();
    assert_eq!(broker.config().dead_letter_limits(), (1_000, dramaturg::amqp::MIN_DEAD_LETTER_MAX_BYTES));
    let bodies: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            let mut body = format!("big-{i}.").into_bytes();
            body.resize(400 * 1024, b'.');
            body
        })
        .collect();
    dead_letter_all(&broker, &queue, &bodies).await;
    let reasons = dead_reasons(&broker, &queue).await;
    assert_eq!(reasons.len(), 2, "{:?}", reasons.iter().map(|r| &r[..8]).collect::<Vec<_>>());
    assert!(reasons.iter().zip(3..).all(|(reason, i)| reason.starts_with(&format!("big-{i}."))));

    // A `.dq` declared with other caps is not changed: the declaration fails
    // with a typed error that says what to do, and nothing is dropped.
    let other = AmqpBroker::with_config(config().dead_letter_caps(10, 1 << 20)).await.unwrap();
    let error = other.declare_queue(&queue).await.unwrap_err();
    assert_eq!(error.kind(), dramaturg::BrokerErrorKind::Unsuitable, "{error}");
    let text = error.to_string();
    assert!(text.contains(".dq") && text.contains("x-max-length") && text.contains("dead_letter_caps"), "{text}");
    assert!(text.contains("drain the queue") && text.contains("delete it"), "{text}");
    assert_eq!(dead_reasons(&broker, &queue).await.len(), 2);
    // The broker with other caps still works for its own queues.
    let fresh = format!("{}dq-fresh", prefix());
    other.declare_queue(&fresh).await.unwrap();
    other.enqueue(Outgoing::new(fresh.as_str(), &b"fine"[..])).await.unwrap();
    assert_eq!(dramaturg::QueueAdmin::purge(&other, &fresh).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_refuses_an_actor_queue_too_long_for_rabbitmq() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let broker = broker().await;
    let queue = dramaturg::app(broker.clone()).actor::<Mark>().build().unwrap().queues()[0].clone();
    // 246 bytes with the prefix: the longest RabbitMQ can take with `.delay.22`.
    let fits = "p".repeat(dramaturg::amqp::MAX_QUEUE_NAME_BYTES - queue.len());
    let app = dramaturg::app(broker.clone()).queue_prefix(&fits).actor::<Mark>().build().unwrap();
    assert_eq!(app.queues()[0].len(), 246);

    let too_long = format!("{fits}p");
    let error = dramaturg::app(broker).queue_prefix(&too_long).actor::<Mark>().build().unwrap_err();
    let dramaturg::ConfigError::QueueName { actor, queue: refused, source } = &error else { panic!("{error:?}") };
    assert_eq!(actor, Mark::NAME);
    assert_eq!(refused, &format!("{too_long}{queue}"));
    assert_eq!(refused.len(), 247);
    assert_eq!(source.kind(), dramaturg::BrokerErrorKind::InvalidInput);
    let text = error.to_string();
    assert!(text.contains("246 bytes") && text.contains(Mark::NAME), "{text}");
    assert!(text.len() < 600, "{} bytes: {text}", text.len());
}

/// Acks settled together go as one `multiple` ack where they can, and
/// never cover a delivery that is still running or was returned: with the
/// first and a middle delivery still held and one requeued, acking all
/// the others at once and then closing the channel brings exactly those
/// three back, and the channel survives the acks (a `multiple` ack past
/// an unknown tag would have closed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_acks_never_cover_a_running_or_returned_delivery() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let queue = format!("{}coalesced", prefix());
    let broker = broker().await;
    broker.declare_queue(&queue).await.unwrap();
    let bodies: Vec<Outgoing> = (0..60).map(|i| Outgoing::new(queue.as_str(), format!("m{i}").into_bytes())).collect();
    broker.enqueue_many(bodies).await.unwrap();
    let mut consumer = broker.consume(&queue, 60).await.unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..60 {
        deliveries.push(next_delivery(consumer.as_mut()).await);
    }
    let held_first = deliveries.remove(0);
    let held_middle = deliveries.remove(29);
    let returned = deliveries.remove(9);
    let (held, requeued) = (text(held_middle.body()), text(returned.body()));
    assert_eq!(returned.settle(dramaturg::Settlement::Requeue).await.unwrap(), dramaturg_core::Settled::Applied);
    // All the others at once, so that they share batches.
    let acks = deliveries.into_iter().map(|d| async move { d.settle(dramaturg::Settlement::Ack).await.unwrap() });
    for settled in futures_util::future::join_all(acks).await {
        assert_eq!(settled, dramaturg_core::Settled::Applied);
    }
    // Closing the channel returns what it holds: the two held (the
    // requeued one too, if it came back to this consumer meanwhile).
    assert_eq!(dramaturg::QueueAdmin::requeue_in_flight(&broker, &queue).await.unwrap(), 2);
    let mut back = Vec::new();
    for _ in 0..3 {
        back.push(next_delivery(consumer.as_mut()).await);
    }
    let mut bodies: Vec<String> = back.iter().map(|d| text(d.body())).collect();
    bodies.sort();
    let mut expected = vec![text(held_first.body()), held, requeued];
    expected.sort();
    assert_eq!(bodies, expected);
    let more = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(more.is_err(), "nothing else came back");
    for delivery in back {
        assert_eq!(delivery.settle(dramaturg::Settlement::Ack).await.unwrap(), dramaturg_core::Settled::Applied);
    }
    assert!(dramaturg::QueueAdmin::stats(&broker, &queue).await.unwrap().is_drained());
}

/// Without `frame_max` in its URL the broker asks RabbitMQ for frames of
/// `DEFAULT_FRAME_MAX` bytes, not the server's 131,072 (lapin keeps 32
/// frames of buffer a direction for each connection: an idle worker's
/// memory); with it, for what the URL says. Read from `rabbitmqctl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_ask_for_small_frames_unless_the_url_sets_them() {
    if support::is_child() {
        return;
    }
    let _shared = SERVER.read().await;
    let _default = AmqpBroker::connect(URL).await.unwrap();
    let _set = AmqpBroker::connect(&format!("{URL}?frame_max=65536")).await.unwrap();
    let listed = Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "--no-table-headers", "client_properties", "frame_max"])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let frames: Vec<u32> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|line| line.contains("dramaturg (publishing)"))
        .filter_map(|line| line.rsplit('\t').next()?.trim().parse().ok())
        .collect();
    assert!(frames.contains(&dramaturg::amqp::DEFAULT_FRAME_MAX), "{frames:?}");
    assert!(frames.contains(&65536), "{frames:?}");
    assert!(!frames.contains(&131_072), "a broker asked for the server's largest frames: {frames:?}");
}
