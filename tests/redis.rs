//! The Redis broker against the real server: a worker killed with SIGKILL,
//! a Redis restart, garbage in the keys, a deep queue, delayed messages
//! across restarts, and secrets kept out of errors.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::redis::{RedisBroker, RedisConfig};
use dramaturg::{BoxError, Broker, DeadLetters, Outgoing, QueueAdmin};
use serde::{Deserialize, Serialize};

use support::Numbered;

const URL: &str = "redis://127.0.0.1:6379";

use support::{namespace, redis_broker as broker_in};

/// The child: a worker process recording to a file, until SIGTERM.
#[test]
fn redis_worker_child() {
    let Some((_, namespace)) = support::child_spec() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let app = dramaturg::app(broker_in(URL, &namespace).await).actor::<Numbered>().build().unwrap();
        Worker::new(app).concurrency(4).run_until_signal().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let app = dramaturg::app(broker_in(URL, &namespace).await).actor::<Numbered>().build().unwrap();
    let (duplicates, recovery) = support::kill_one_of_two_workers(&app, "redis_worker_child", &namespace, 2000).await;
    println!("2000 of 2000 processed at least once, {duplicates} duplicates, all done {recovery:?} after the kill");
    let stats = app.admin().unwrap().stats(&app.queues()[0]).await.unwrap();
    assert!(stats.is_drained(), "{stats:?}");
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// A Redis server of the test's own, on its own port, to restart at will.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let mut server = Self { port, child: None };
        server.restart();
        server
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Actor, Serialize, Deserialize)]
struct Mark {
    tag: String,
}

static MARKS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn marks(prefix: &str) -> usize {
    MARKS.lock().unwrap().iter().filter(|m| m.starts_with(prefix)).count()
}

impl Mark {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        MARKS.lock().unwrap().push(self.tag);
        Ok(())
    }
}

use support::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_producers_carry_on_after_a_redis_restart() {
    if support::is_child() {
        return;
    }
    // Shown when the test fails.
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_test_writer().try_init();
    let mut server = OwnRedis::start(free_port());
    let namespace = namespace();
    let fail_fast = RedisConfig::new(server.url()).namespace(&namespace);
    let producer = dramaturg::app(RedisBroker::with_config(fail_fast).await.unwrap()).actor::<Mark>().build().unwrap();
    let worker_app = dramaturg::app(broker_in(&server.url(), &namespace).await).actor::<Mark>().build().unwrap();
    let worker = Worker::new(worker_app).concurrency(4);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());

    let (before, after) = (format!("before-{namespace}-"), format!("after-{namespace}-"));
    for i in 0..20 {
        Mark { tag: format!("{before}{i}") }.send(&producer).await.unwrap();
    }
    wait_for("messages before the restart", Duration::from_secs(10), || marks(&before) == 20).await;

    server.kill();
    let err = Mark { tag: "during".into() }.send(&producer).await.unwrap_err();
    let dramaturg::EnqueueError::Broker(broker_error) = &err else { panic!("{err}") };
    assert!(broker_error.is_retryable(), "a clear, retryable error: {err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();

    // Producers reconnect on their next send; the worker on its own.
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0..20 {
        loop {
            match (Mark { tag: format!("{after}{i}") }).send(&producer).await {
                Ok(_) => break,
                Err(error) => {
                    assert!(Instant::now() < deadline, "producer did not reconnect: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    wait_for("messages after the restart", Duration::from_secs(20), || marks(&after) == 20).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_keys_is_dead_lettered_ids_without_a_message_are_dropped_and_the_worker_goes_on() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let broker = broker_in(URL, &namespace).await;
    let app = dramaturg::app(broker.clone()).actor::<Mark>().build().unwrap();
    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = format!("{namespace}:{{default}}");
    redis::pipe()
        .hset(format!("{prefix}:msgs"), "garbage-1", b"\xc1\x00\xffnot a message".as_slice())
        .rpush(format!("{prefix}:ready"), "garbage-1")
        .rpush(format!("{prefix}:ready"), "no-payload")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let tag = format!("garbage-{namespace}");
    Mark { tag: tag.clone() }.send(&app).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!((report.rejected, report.succeeded), (1, 1), "{report:?}");
    assert_eq!(marks(&tag), 1);
    // The undecodable message is dead-lettered as it was; the id whose
    // message is gone is never handed out (no empty dead letter).
    let dead = broker.list("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.starts_with("undecodable message"), "{dead:?}");
    assert_eq!(&dead[0].body[..], b"\xc1\x00\xffnot a message");
    assert!(broker.stats("default").await.unwrap().is_drained());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_queue_is_fetched_in_bounded_batches() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let broker = broker_in(URL, &namespace).await;
    let total = 100_000;
    let mut batch = Vec::with_capacity(10_000);
    for chunk in 0..10 {
        batch.clear();
        batch.extend((0..10_000).map(|i| Outgoing::new("deep", format!("m{}", chunk * 10_000 + i).into_bytes())));
        broker.enqueue_many(batch.clone()).await.unwrap();
    }
    assert_eq!(broker.stats("deep").await.unwrap().ready, total);
    let mut consumer = broker.consume("deep", 10).await.unwrap();
    let started = Instant::now();
    for i in 0..25 {
        let delivery = consumer.next().await.unwrap();
        assert_eq!(&delivery.body()[..], format!("m{i}").as_bytes());
        delivery.settle(dramaturg::Settlement::Ack).await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(2), "fetching from a deep queue took {:?}", started.elapsed());
    consumer.close().await.unwrap();
    let stats = broker.stats("deep").await.unwrap();
    assert_eq!((stats.ready, stats.in_flight), (total - 25, 0), "{stats:?}");
    assert_eq!(broker.purge("deep").await.unwrap(), total - 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_wait_in_redis_across_worker_restarts() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    {
        let producer = dramaturg::app(broker_in(URL, &namespace).await).actor::<Mark>().build().unwrap();
        let tag = format!("delayed-{namespace}");
        Mark { tag }
            .send_with(&producer, SendOptions::default().with_delay(Duration::from_millis(1500)))
            .await
            .unwrap();
        // A worker that comes and goes before the message is due.
        let worker = Worker::new(producer.clone());
        let shutdown = worker.shutdown_handle();
        let running = tokio::spawn(worker.run());
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.shutdown();
        running.await.unwrap().unwrap();
        let stats = producer.stats("default").await.unwrap();
        assert_eq!((stats.delayed, stats.in_flight), (1, 0), "held by Redis, not by a worker: {stats:?}");
    }
    let app = dramaturg::app(broker_in(URL, &namespace).await).actor::<Mark>().build().unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!(report.succeeded, 1);
    assert_eq!(marks(&format!("delayed-{namespace}")), 1);
}

#[tokio::test]
async fn passwords_stay_out_of_errors_and_debug_output() {
    if support::is_child() {
        return;
    }
    let err = RedisBroker::connect("redis://:hunter2@127.0.0.1:1/0").await.unwrap_err();
    assert!(err.is_connection_lost(), "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
    let config = RedisConfig::new("redis://user:hunter2@127.0.0.1:6379");
    assert!(!format!("{config:?}").contains("hunter2"));
    let broker = RedisBroker::connect(URL).await.unwrap();
    assert!(!format!("{broker:?}").contains("hunter2"));
}

#[cfg(feature = "redis-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_connect_over_tls() {
    if support::is_child() {
        return;
    }
    // A CA and a server certificate for 127.0.0.1, made for this test.
    let dir = std::env::temp_dir().join(format!("dramaturg-tls-{}", dramaturg::MessageId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let status = Command::new("openssl").args(args).current_dir(&dir).stderr(Stdio::null()).status().unwrap();
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
    let port = 16392;
    let mut server = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--tls-cert-file", "server.pem", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem"])
        .args(["--tls-auth-clients", "no"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the TLS redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let config = RedisConfig::new(format!("rediss://127.0.0.1:{port}")).namespace(namespace()).tls_root_certificate(ca);
    let round_trip = async {
        let broker = RedisBroker::with_config(config).await?;
        broker.enqueue(Outgoing::new("tls", &b"over tls"[..])).await?;
        let mut consumer = broker.consume("tls", 1).await?;
        let delivery = consumer.next().await?;
        let body = delivery.body().clone();
        delivery.settle(dramaturg::Settlement::Ack).await?;
        Ok::<_, dramaturg::BrokerError>(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(10), round_trip).await;
    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(&body.unwrap().unwrap()[..], b"over tls");
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(max_age = "100ms")]
struct ShortLived {
    tag: String,
}

impl ShortLived {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        MARKS.lock().unwrap().push(self.tag);
        Ok(())
    }
}

/// Issue input: a delayed send whose delay exceeds `max_age` was acked and
/// skipped with only a warning. It is refused at send when the message or
/// its actor sets the max_age, and dead-lettered with the reason when only
/// the age-limit middleware's default does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_beyond_max_age_is_refused_or_dead_lettered_never_skipped() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let broker = broker_in(URL, &namespace).await;
    let age_limit = dramaturg::age_limit::AgeLimit::new().max_age(Duration::from_millis(200));
    let app = dramaturg::app(broker.clone())
        .replace("age_limit", age_limit)
        .actor::<ShortLived>()
        .actor::<Mark>()
        .build()
        .unwrap();
    let later = |millis| dramaturg::SendOptions::default().with_delay(Duration::from_millis(millis));
    let refused = ShortLived { tag: format!("refused-{namespace}") }.send_with(&app, later(1000)).await;
    assert!(
        matches!(refused, Err(dramaturg::EnqueueError::DelayBeyondMaxAge { .. })),
        "a delay beyond the actor's max_age is refused: {refused:?}"
    );
    let tag = format!("delayed-{namespace}");
    Mark { tag: tag.clone() }.send_with(&app, later(500)).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!((report.failed, report.skipped, report.succeeded), (1, 0, 0), "{report:?}");
    assert_eq!(marks(&tag), 0);
    let dead = broker.list("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("beyond its max_age"), "{}", dead[0].reason);
}

/// Issue input: an idle worker on 200 queues held 200 extra connections
/// (one blocking connection per queue). Connections no longer grow with
/// the number of queues, and a message on any of them is still taken at
/// once (woken through the worker's one subscription).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_200_queues_holds_a_few_connections_and_wakes_on_each() {
    if support::is_child() {
        return;
    }
    let server = OwnRedis::start(free_port());
    let namespace = namespace();
    let broker = broker_in(&server.url(), &namespace).await;
    let queues: Vec<String> = (0..200).map(|i| format!("q{i}")).collect();
    let app = dramaturg::app(broker).actor_in::<Mark>("q150").build().unwrap();
    let worker = Worker::new(app.clone()).queues(queues.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Let every consumer start and go idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info: String = redis::cmd("INFO").arg("clients").query_async(&mut conn).await.unwrap();
    let clients: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    // The test's own connection, and the worker's shared, heartbeat and
    // wake-up connections.
    assert!(clients <= 4, "{clients} connections for a worker on 200 queues");
    let tag = format!("wide-{namespace}");
    let sent = Instant::now();
    Mark { tag: tag.clone() }.send(&app).await.unwrap();
    support::wait_for("the message on the 151st queue", Duration::from_secs(2), || marks(&tag) == 1).await;
    println!("{clients} connections on 200 queues; a message ran {:?} after its send", sent.elapsed());
    shutdown.shutdown();
    running.await.unwrap().unwrap();
}

/// Issue input: a clean shutdown left the worker registered, so the next
/// start "recovered" it. A worker that stops cleanly leaves the registry,
/// and consumers that close holding nothing leave it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_the_registry() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let broker = broker_in(URL, &namespace).await;
    let app = dramaturg::app(broker.clone()).actor::<Mark>().build().unwrap();
    let tag = format!("registry-{namespace}");
    Mark { tag: tag.clone() }.send(&app).await.unwrap();
    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let workers_key = format!("{namespace}:{{registry}}:workers");
    let consumers_key = format!("{namespace}:{{registry}}:worker:{}:consumers", broker.worker_id());
    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    support::wait_for("the message", Duration::from_secs(5), || marks(&tag) == 1).await;
    let registered: Vec<String> =
        redis::cmd("ZRANGE").arg(&workers_key).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    assert_eq!(registered, [broker.worker_id()], "registered while it runs");
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    let registered: Vec<String> =
        redis::cmd("ZRANGE").arg(&workers_key).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    assert!(registered.is_empty(), "still registered after a clean stop: {registered:?}");
    let consumers: bool = redis::cmd("EXISTS").arg(&consumers_key).query_async(&mut conn).await.unwrap();
    assert!(!consumers, "its consumers are still listed");
}

/// Records every outcome that comes back through it.
#[derive(Debug, Default)]
struct SeesEveryEnd(Arc<Mutex<Vec<&'static str>>>);

#[dramaturg::async_trait]
impl dramaturg::Middleware for SeesEveryEnd {
    fn name(&self) -> &'static str {
        "sees_every_end"
    }

    async fn handle(&self, ctx: &Context, next: dramaturg::Next<'_>) -> dramaturg::Outcome {
        let outcome = next.run(ctx).await;
        self.0.lock().unwrap().push(outcome.label());
        outcome
    }
}

#[derive(Actor, Serialize, Deserialize)]
struct Sleepy {
    millis: u64,
}

impl Sleepy {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        Ok(())
    }
}

/// Issue input: code after `next.run()` in a middleware never ran when
/// shutdown interrupted a message (a timing middleware never saw the
/// requeued message). The interruption now comes back through the stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_interrupted_at_shutdown_comes_back_through_every_middleware() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let ends = Arc::new(Mutex::new(Vec::new()));
    let app = dramaturg::app(broker_in(URL, &namespace).await)
        .middleware(SeesEveryEnd(Arc::clone(&ends)))
        .actor::<Sleepy>()
        .build()
        .unwrap();
    Sleepy { millis: 10_000 }.send(&app).await.unwrap();
    let worker = Worker::new(app.clone()).grace_period(Duration::from_millis(200));
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.requeued, 1, "{report:?}");
    assert_eq!(*ends.lock().unwrap(), ["requeued"], "the middleware saw the interrupted message end");
    assert_eq!(app.stats("default").await.unwrap().ready, 1, "the message is back in its queue");
}

/// Issue input: `priority` was accepted and ignored on Redis. The Redis
/// broker delivers first in, first out, so a message with a priority is
/// refused with an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_the_redis_broker_cannot_honour_is_refused() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let app = dramaturg::app(broker_in(URL, &namespace).await).actor::<Sleepy>().build().unwrap();
    let urgent = dramaturg::SendOptions::default().with_options(|mut o| {
        o.priority = Some(5);
        o
    });
    let error = Sleepy { millis: 0 }.send_with(&app, urgent).await.unwrap_err();
    assert!(error.to_string().contains("first in, first out"), "{error}");
    assert!(app.stats("default").await.unwrap().is_drained(), "nothing was enqueued");
    Sleepy { millis: 0 }.send(&app).await.unwrap();
}

/// A second worker on the same broker value (after the first stopped) is
/// woken at once by a message in its empty queue, as the first was — not
/// after the longest wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_the_same_broker_wakes_at_once() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let app = dramaturg::app(broker_in(URL, &namespace).await).actor::<Mark>().build().unwrap();
    for round in 0..3 {
        let worker = Worker::new(app.clone());
        let shutdown = worker.shutdown_handle();
        let running = tokio::spawn(worker.run());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tag = format!("round-{round}-{namespace}");
        let sent = Instant::now();
        Mark { tag: tag.clone() }.send(&app).await.unwrap();
        support::wait_for("the message", Duration::from_secs(10), || marks(&tag) == 1).await;
        assert!(sent.elapsed() < Duration::from_secs(1), "round {round}: woken after {:?}", sent.elapsed());
        shutdown.shutdown();
        running.await.unwrap().unwrap();
    }
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(max_age = "2s", max_retries = 5, min_backoff = "3s")]
struct Doomed {
    tag: String,
}

impl Doomed {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        MARKS.lock().unwrap().push(self.tag);
        Err("always fails".into())
    }
}

/// Reviewer's inputs: a failure whose retry would fall due past the
/// message's max_age vanished (skipped as too old, never dead-lettered), and
/// delays near `Duration::MAX` panicked. The first now fails for good with
/// its error; the second is refused at send, and a retry that long is not
/// scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_past_max_age_and_endless_delays_fail_visibly() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let broker = broker_in(URL, &namespace).await;
    let app = dramaturg::app(broker.clone()).actor::<Doomed>().actor::<Mark>().build().unwrap();
    let tag = format!("doomed-{namespace}");
    Doomed { tag: tag.clone() }.send(&app).await.unwrap();
    let forever = dramaturg::SendOptions::default().with_delay(Duration::MAX);
    let refused = Mark { tag: "never".into() }.send_with(&app, forever).await;
    assert!(matches!(refused, Err(dramaturg::EnqueueError::DelayTooLong { .. })), "{refused:?}");
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!((report.failed, report.retried, report.skipped), (1, 0, 0), "{report:?}");
    assert_eq!(marks(&tag), 1);
    let dead = broker.list("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("always fails"), "{}", dead[0].reason);
}
