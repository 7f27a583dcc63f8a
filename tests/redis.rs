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
    support::run_worker_child(|namespace| async move {
        dramaturg::app(broker_in(URL, &namespace).await).actor::<Numbered>().build().unwrap()
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

/// An id twice in the ready list (written by hand, or by a bug) is
/// claimed twice in one batch: the second claim voids the first, so only
/// one of the two deliveries can settle the message. (The other copy of the
/// id stays in the in-flight list until the consumer closes, and is then
/// dropped as an id without a message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_claimed_twice_in_one_batch_settles_once() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let broker = broker_in(URL, &namespace).await;
    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = format!("{namespace}:{{twice}}");
    redis::pipe()
        .hset(format!("{prefix}:msgs"), "twice-1", b"body".as_slice())
        .rpush(format!("{prefix}:ready"), "twice-1")
        .rpush(format!("{prefix}:ready"), "twice-1")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let mut consumer = broker.consume("twice", 4).await.unwrap();
    let first = consumer.next().await.unwrap();
    let second = consumer.next().await.unwrap();
    assert_eq!((&first.body()[..], &second.body()[..]), (&b"body"[..], &b"body"[..]));
    assert_eq!(first.settle(dramaturg::Settlement::Ack).await.unwrap(), dramaturg::Settled::Stale);
    assert_eq!(second.settle(dramaturg::Settlement::Ack).await.unwrap(), dramaturg::Settled::Applied);
    let kept: bool =
        redis::cmd("HEXISTS").arg(format!("{prefix}:msgs")).arg("twice-1").query_async(&mut conn).await.unwrap();
    assert!(!kept, "the acked message is still kept");
    consumer.close().await.unwrap();
}

/// A broker of a namespace of its own whose `queue` holds entries `ids`
/// in that order (an id twice: claimed twice, the first claim stale),
/// each with a body; and its store.
async fn with_ready(queue: &str, ids: &[&str]) -> (RedisBroker, Arc<dyn dramaturg::Store>) {
    let namespace = namespace();
    let broker = broker_in(URL, &namespace).await;
    let store = broker.store().unwrap();
    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = format!("{namespace}:{{{queue}}}");
    for id in ids {
        redis::pipe()
            .hset(format!("{prefix}:msgs"), *id, b"body".as_slice())
            .rpush(format!("{prefix}:ready"), *id)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    (broker, store)
}

/// A store write that goes with an ack (a message's result) is made with
/// the ack, only if the ack applies: a stale attempt writes nothing. The
/// same id claimed twice in one batch gives a stale and a current claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_ack_writes_nothing() {
    if support::is_child() {
        return;
    }
    let (broker, store) = with_ready("written", &["written-1", "written-1"]).await;
    let mut consumer = broker.consume("written", 4).await.unwrap();
    let (stale, current) = (consumer.next().await.unwrap(), consumer.next().await.unwrap());
    let write =
        |value: &'static [u8]| [dramaturg::store::StoreWrite::new("result:written-1", value, Duration::from_secs(60))];
    let settled = stale.settle_writing(dramaturg::Settlement::Ack, &write(b"stale"), &*store).await.unwrap();
    assert_eq!(settled, dramaturg::Settled::Stale);
    assert_eq!(store.get("result:written-1").await.unwrap(), None, "a stale ack wrote its result");
    let settled = current.settle_writing(dramaturg::Settlement::Ack, &write(b"current"), &*store).await.unwrap();
    assert_eq!(settled, dramaturg::Settled::Applied);
    assert_eq!(store.get("result:written-1").await.unwrap().as_deref(), Some(&b"current"[..]));
    consumer.close().await.unwrap();
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
    // The client reads `user`, `pass` and `db` from the query of a Unix
    // socket URL only: over TCP they are refused (a password given there
    // would never be sent), and never shown.
    for url in ["redis://127.0.0.1:6379/?user=app&pass=hunter2", "redis://127.0.0.1:6379/?db=3"] {
        let err = RedisBroker::connect(url).await.unwrap_err();
        assert_eq!(err.kind(), dramaturg::BrokerErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("Unix socket"), "{err}");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    }
    let err = RedisBroker::connect("redis+unix:///nonexistent/redis.sock?pass=hunter2").await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
}

/// A CA and a server certificate for 127.0.0.1, made for a test in a
/// directory of its own (returned).
#[cfg(feature = "redis-tls")]
fn make_certificates() -> std::path::PathBuf {
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
    dir
}

/// A TLS-only redis-server on `port` with the certificates in `dir`, and
/// `extra` arguments; returns once it accepts connections.
#[cfg(feature = "redis-tls")]
fn tls_server(dir: &std::path::Path, port: u16, extra: &[&str]) -> Child {
    let server = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--tls-cert-file", "server.pem", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem"])
        .args(["--tls-auth-clients", "no"])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the TLS redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// Sends a message through `config`'s broker and takes it back: its body.
#[cfg(feature = "redis-tls")]
async fn tls_round_trip(config: RedisConfig) -> Result<Vec<u8>, dramaturg::BrokerError> {
    let round_trip = async {
        let broker = RedisBroker::with_config(config).await?;
        broker.enqueue(Outgoing::new("tls", &b"over tls"[..])).await?;
        let mut consumer = broker.consume("tls", 1).await?;
        let delivery = consumer.next().await?;
        let body = delivery.body().to_vec();
        delivery.settle(dramaturg::Settlement::Ack).await?;
        Ok::<_, dramaturg::BrokerError>(body)
    };
    tokio::time::timeout(Duration::from_secs(10), round_trip).await.expect("the round trip over TLS hung")
}

#[cfg(feature = "redis-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_connect_over_tls() {
    if support::is_child() {
        return;
    }
    let dir = make_certificates();
    let port = 16392;
    let mut server = tls_server(&dir, port, &[]);
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let config = RedisConfig::new(format!("rediss://127.0.0.1:{port}")).namespace(namespace()).tls_root_certificate(ca);
    let body = tls_round_trip(config).await;
    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(&body.unwrap()[..], b"over tls");
}

/// A Redis Cluster over TLS (one master with every slot, its cluster bus
/// on TLS too), through `rediss+cluster://` and a private CA.
#[cfg(feature = "redis-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_urls_connect_over_tls() {
    if support::is_child() {
        return;
    }
    let dir = make_certificates();
    let port = 16393;
    let mut server = tls_server(&dir, port, &["--cluster-enabled", "yes", "--tls-cluster", "yes"]);
    let slots = Command::new("redis-cli")
        .args(["--tls", "--cacert", "ca.pem", "-p", &port.to_string(), "CLUSTER", "ADDSLOTSRANGE", "0", "16383"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&slots.stdout).contains("OK"), "{slots:?}");
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let url = format!("rediss+cluster://127.0.0.1:{port}/");
    let config = RedisConfig::new(url).namespace(namespace()).tls_root_certificate(ca);
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        // The cluster says ok once its single node has taken the slots.
        match tls_round_trip(config.clone()).await {
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            result => break result,
        }
    };
    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(&body.unwrap()[..], b"over tls");
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

/// A delayed send whose delay exceeds `max_age` was acked and
/// skipped with only a warning. It is refused at send when the message or
/// its actor sets the max_age, and dead-lettered with the reason when only
/// the age-limit middleware's default does; a replay with the retries reset
/// sends it anew.
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

    // Replayed with its retries reset, it is sent anew: its age counts from
    // the replay and its first delay is over, so it runs.
    let report = app.replay_dead_letters("default", dramaturg::Replay::All, dramaturg::ReplayRetries::Reset).await;
    assert_eq!(report.unwrap().replayed, 1);
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!((report.failed, report.skipped, report.succeeded), (0, 0, 1), "{report:?}");
    assert_eq!(marks(&tag), 1);
}

/// An idle worker on 200 queues held 200 extra connections
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
    // wake-up connections, and its store's subscription (on which the abort
    // middleware waits for requests).
    assert!(clients <= 5, "{clients} connections for a worker on 200 queues");
    let tag = format!("wide-{namespace}");
    let sent = Instant::now();
    Mark { tag: tag.clone() }.send(&app).await.unwrap();
    support::wait_for("the message on the 151st queue", Duration::from_secs(2), || marks(&tag) == 1).await;
    println!("{clients} connections on 200 queues; a message ran {:?} after its send", sent.elapsed());
    shutdown.shutdown();
    running.await.unwrap().unwrap();
}

/// A clean shutdown left the worker registered, so the next
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

/// Code after `next.run()` in a middleware never ran when
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

/// `priority` was accepted and ignored on Redis. The Redis
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

/// A failure whose retry would fall due past the
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

/// Takes the next delivery of `consumer` and dead-letters it with
/// `reason`; returns its body.
async fn dead_letter_next(consumer: &mut Box<dyn dramaturg::Consumer>, reason: &str) -> Vec<u8> {
    let delivery = consumer.next().await.unwrap();
    let body = delivery.body().to_vec();
    let settled = delivery.settle(dramaturg::Settlement::DeadLetter(reason.to_owned().into())).await.unwrap();
    assert_eq!(settled, dramaturg::Settled::Applied);
    body
}

/// The dead letters of `queue`, oldest first, as (body, reason).
async fn dead_letters(broker: &RedisBroker, queue: &str) -> Vec<(String, String)> {
    let letters = broker.list(queue, 1000).await.unwrap().into_iter();
    letters.map(|d| (String::from_utf8(d.body.to_vec()).unwrap(), d.reason)).collect()
}

/// The byte count the broker keeps for the dead letters of `queue`.
async fn dead_bytes(namespace: &str, queue: &str) -> Option<u64> {
    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET").arg(format!("{namespace}:{{{queue}}}:dead-bytes")).query_async(&mut conn).await.unwrap()
}

/// A broker under `namespace` with the tests' heartbeat and dead letters
/// capped at `max_count` and `max_bytes`.
async fn capped_broker(namespace: &str, max_count: u64, max_bytes: u64) -> RedisBroker {
    let config = RedisConfig::new(URL)
        .namespace(namespace)
        .heartbeat(Duration::from_millis(200), Duration::from_secs(1))
        .max_block(Duration::from_secs(1))
        .dead_letter_caps(max_count, max_bytes);
    RedisBroker::with_config(config).await.unwrap()
}

/// Dead letters past the count cap: the oldest go, the newest stay, and the
/// cap holds right after each write (the timer trims a minute later).
/// Dead letters written within one millisecond keep their order too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_dead_letter_count_cap_the_oldest_go_at_write_time() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let broker = capped_broker(&namespace, 5, u64::MAX).await;
    let bodies: Vec<String> = (0..200).map(|i| format!("dead-{i:03}")).collect();
    broker
        .enqueue_many(bodies.iter().map(|b| Outgoing::new("capped", b.clone().into_bytes())).collect())
        .await
        .unwrap();
    let mut consumer = broker.consume("capped", 1).await.unwrap();
    let expected = |last: usize| -> Vec<(String, String)> {
        let first = (last + 1).saturating_sub(5);
        (first..=last).map(|j| (bodies[j].clone(), format!("reason {j}"))).collect()
    };
    for (i, body) in bodies.iter().enumerate().take(8) {
        assert_eq!(dead_letter_next(&mut consumer, &format!("reason {i}")).await, body.as_bytes(), "in order");
        let kept = dead_letters(&broker, "capped").await;
        assert_eq!(kept, expected(i), "after dead letter {i}: the newest 5, oldest first");
        let bytes: u64 = kept.iter().map(|(body, _)| body.len() as u64).sum();
        assert_eq!(dead_bytes(&namespace, "capped").await, Some(bytes));
    }
    // The rest back to back: several land in one millisecond.
    for (i, body) in bodies.iter().enumerate().skip(8) {
        assert_eq!(dead_letter_next(&mut consumer, &format!("reason {i}")).await, body.as_bytes(), "in order");
    }
    assert_eq!(dead_letters(&broker, "capped").await, expected(bodies.len() - 1), "the newest 5, oldest first");
    consumer.close().await.unwrap();
    assert_eq!(broker.stats("capped").await.unwrap().dead, 5);
}

/// Dead letters past the byte cap: the oldest go until the bodies fit; a
/// dead letter larger than the cap on its own is kept alone (never taking
/// itself with the older ones), and goes when a newer one arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_dead_letter_byte_cap_the_oldest_go_at_write_time() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let broker = capped_broker(&namespace, 1000, 100).await;
    let mut bodies: Vec<String> = (0..6).map(|i| format!("{i:0>30}")).collect();
    bodies.push("L".repeat(150));
    bodies.push(format!("{:0>30}", "after"));
    broker
        .enqueue_many(bodies.iter().map(|b| Outgoing::new("capped", b.clone().into_bytes())).collect())
        .await
        .unwrap();
    let mut consumer = broker.consume("capped", 1).await.unwrap();
    let mut kept_after = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(dead_letter_next(&mut consumer, &format!("reason {i}")).await, body.as_bytes(), "in order");
        let kept: Vec<String> = dead_letters(&broker, "capped").await.into_iter().map(|(body, _)| body).collect();
        let bytes: u64 = kept.iter().map(|body| body.len() as u64).sum();
        assert_eq!(dead_bytes(&namespace, "capped").await, Some(bytes), "after dead letter {i}");
        kept_after.push(kept);
    }
    consumer.close().await.unwrap();
    for (i, kept) in kept_after.iter().enumerate().take(6) {
        // Three of 30 bytes fit in 100.
        let first = (i + 1).saturating_sub(3);
        assert_eq!(kept, &bodies[first..=i], "after dead letter {i}: the newest that fit, oldest first");
    }
    assert_eq!(kept_after[6], &bodies[6..7], "a 150-byte dead letter stays alone");
    assert_eq!(kept_after[7], &bodies[7..8], "and goes when a newer one arrives");
}

/// Sends `n` messages to `queue` and dead-letters them through a consumer,
/// which it returns (still open).
async fn dead_letter_n(broker: &RedisBroker, queue: &str, n: usize) -> Box<dyn dramaturg::Consumer> {
    let messages = (0..n).map(|i| Outgoing::new(queue, format!("{queue}-{i}").into_bytes())).collect();
    broker.enqueue_many(messages).await.unwrap();
    let mut consumer = broker.consume(queue, 1).await.unwrap();
    for _ in 0..n {
        dead_letter_next(&mut consumer, "doomed").await;
    }
    consumer
}

/// Waits until `queue` has no dead letter, failing after `within`; returns
/// how long it took.
async fn wait_for_no_dead_letters(broker: &RedisBroker, queue: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while !dead_letters(broker, queue).await.is_empty() {
        assert!(started.elapsed() < within, "the dead letters of {queue} are still there after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Dead letters past their retention go on the worker's timer even when no
/// new dead letter arrives — for the queues the worker consumes. Those of a
/// queue no consumer of the worker holds stay, until a worker consumes it:
/// its first heartbeat then trims them, not a period later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_past_their_retention_are_trimmed_on_a_timer_for_the_queues_consumed() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let config = |trim_every| {
        RedisConfig::new(URL)
            .namespace(&namespace)
            .heartbeat(Duration::from_millis(200), Duration::from_secs(1))
            .max_block(Duration::from_secs(1))
            .dead_letter_ttl(Duration::from_secs(2))
            .dead_letter_trim_every(trim_every)
    };
    let broker = RedisBroker::with_config(config(Duration::from_millis(300))).await.unwrap();
    // "left": its consumer closes; "kept": its consumer stays.
    dead_letter_n(&broker, "left", 3).await.close().await.unwrap();
    let kept = dead_letter_n(&broker, "kept", 3).await;
    let written = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dead_letters(&broker, "kept").await.len(), 3, "trimmed within their retention");
    let trimmed = written.elapsed() + wait_for_no_dead_letters(&broker, "kept", Duration::from_secs(10)).await;
    println!("dead letters kept 2 s were trimmed {trimmed:?} after they were written, with no new one");
    assert_eq!(dead_bytes(&namespace, "kept").await, None, "the byte count went with them");
    // Well past their retention, with the timer running every 300 ms.
    assert_eq!(dead_letters(&broker, "left").await.len(), 3, "a queue this worker does not consume is trimmed");

    // A worker that starts consuming "left" trims it at its first beat,
    // although its timer would run only in an hour.
    let late = RedisBroker::with_config(config(Duration::from_secs(3600))).await.unwrap();
    let consumer = late.consume("left", 1).await.unwrap();
    let took = wait_for_no_dead_letters(&late, "left", Duration::from_secs(5)).await;
    println!("the dead letters of a queue were trimmed {took:?} after a worker started consuming it");
    consumer.close().await.unwrap();
    kept.close().await.unwrap();
}

/// A purge larger than one batch (1,000 per script call) removes every
/// ready and delayed message, with their claims and redelivery marks, in
/// one short script call per batch; a claimed message stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_of_thousands_removes_every_ready_and_delayed_message_in_batches() {
    if support::is_child() {
        return;
    }
    // A server of the test's own, so that its command statistics count
    // only this test's calls.
    let server = OwnRedis::start(free_port());
    let namespace = namespace();
    // Beats a minute apart: the heartbeat thread runs no script while the
    // purge is counted (its first tick only connects, and trims once).
    let config = RedisConfig::new(server.url())
        .namespace(&namespace)
        .heartbeat(Duration::from_secs(60), Duration::from_secs(120));
    let broker = RedisBroker::with_config(config).await.unwrap();
    let ready = (0..2500).map(|i| Outgoing::new("purged", format!("r{i}").into_bytes()));
    broker.enqueue_many(ready.collect()).await.unwrap();
    let later = |i| Outgoing::new("purged", format!("d{i}").into_bytes()).with_delay(Some(Duration::from_secs(3600)));
    broker.enqueue_many((0..1500).map(later).collect()).await.unwrap();
    // Four claimed: three come back (claims counted, marked redelivered),
    // one stays claimed.
    let mut consumer = broker.consume("purged", 4).await.unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..4 {
        deliveries.push(consumer.next().await.unwrap());
    }
    let held = deliveries.pop().unwrap();
    for delivery in deliveries {
        delivery.settle(dramaturg::Settlement::Requeue).await.unwrap();
    }
    assert_eq!(broker.stats("purged").await.unwrap(), dramaturg::QueueStats::new(2499, 1500, 1, 0));

    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Loads the purge script (a purge of an empty queue), lets the
    // heartbeat thread's first tick pass, then counts.
    assert_eq!(broker.purge("empty").await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis::cmd("CONFIG").arg("RESETSTAT").query_async::<()>(&mut conn).await.unwrap();
    assert_eq!(broker.purge("purged").await.unwrap(), 2499 + 1500);
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    let calls: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(calls, 6, "3 batches of ready messages, 2 of delayed, 1 call that finds nothing");

    let prefix = format!("{namespace}:{{purged}}");
    let (msgs, claims, ready_len, delayed_len, redelivered): (u64, u64, u64, u64, u64) = redis::pipe()
        .hlen(format!("{prefix}:msgs"))
        .hlen(format!("{prefix}:claims"))
        .llen(format!("{prefix}:ready"))
        .zcard(format!("{prefix}:delayed"))
        .scard(format!("{prefix}:redelivered"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (msgs, claims, ready_len, delayed_len, redelivered),
        (1, 1, 0, 0, 0),
        "only the claimed message is left"
    );
    assert_eq!(held.settle(dramaturg::Settlement::Ack).await.unwrap(), dramaturg::Settled::Applied);
    consumer.close().await.unwrap();
    assert!(broker.stats("purged").await.unwrap().is_drained());
}

/// A message larger than the app's `max_message_size` that another
/// producer put in the queue (the broker does not check sizes) is
/// dead-lettered as it was, with the reason, and the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_from_another_producer_is_dead_lettered_and_the_worker_goes_on() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let broker = broker_in(URL, &namespace).await;
    let app = dramaturg::app(broker.clone()).actor::<Mark>().max_message_size(1024).build().unwrap();
    // A valid message for this app, but of over 2,000 bytes, sent through
    // the broker directly.
    let args = app.encoder().encode_args(&Mark { tag: "x".repeat(2000) }).unwrap();
    let large = dramaturg::Message::new("default", "mark", args.into());
    let body = app.encoder().encode_message(&large).unwrap();
    assert!(body.len() > 2000);
    broker.enqueue(Outgoing::new("default", body.clone())).await.unwrap();
    let tag = format!("after-large-{namespace}");
    Mark { tag: tag.clone() }.send(&app).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!((report.rejected, report.succeeded, report.failed), (1, 1, 0), "{report:?}");
    assert_eq!(marks(&tag), 1, "the message after it ran");
    let dead = broker.list("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].body, body, "dead-lettered as it was");
    let expected = format!("message of {} bytes exceeds this app's max_message_size of 1024 bytes", body.len());
    assert_eq!(dead[0].reason, expected);
    assert!(broker.stats("default").await.unwrap().is_drained());
}

/// The worker listing (three round trips for any number of workers) names
/// each worker with the queues it consumes and what it holds of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_listing_names_each_worker_and_its_queues() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let mut running = Vec::new();
    for (queues, concurrency) in [(vec!["listing-a"], 3), (vec!["listing-b", "listing-c"], 5)] {
        let app = dramaturg::app(broker_in(URL, &namespace).await).actor::<Mark>().build().unwrap();
        let worker = Worker::new(app).queues(queues).concurrency(concurrency);
        running.push((worker.shutdown_handle(), tokio::spawn(worker.run())));
    }
    let admin = broker_in(URL, &namespace).await;
    let mut workers = Vec::new();
    for _ in 0..100 {
        workers = admin.workers().await.unwrap();
        // Registered first, their consumers a moment later.
        if workers.len() == 2 && workers.iter().map(|w| w.in_flight.len()).sum::<usize>() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut consumed: Vec<Vec<&str>> =
        workers.iter().map(|w| w.in_flight.keys().map(String::as_str).collect()).collect();
    consumed.sort();
    assert_eq!(consumed, [vec!["listing-a"], vec!["listing-b", "listing-c"]], "{workers:?}");
    assert!(workers.iter().all(|w| w.in_flight.values().all(|held| *held == 0)), "{workers:?}");
    let mut concurrency: Vec<Option<usize>> = workers.iter().map(|w| w.concurrency).collect();
    concurrency.sort();
    assert_eq!(concurrency, [Some(3), Some(5)], "told with the heartbeat");
    for (shutdown, run) in running {
        shutdown.shutdown();
        run.await.unwrap().unwrap();
    }
    assert!(admin.workers().await.unwrap().is_empty(), "a clean stop leaves the registry");
}

/// Fails every time, with no retry: each message goes straight to the dead
/// letters.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "always-fails", max_retries = 0)]
struct AlwaysFails {
    n: u64,
}

impl AlwaysFails {
    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        Err(std::io::Error::other(format!("message {} failed", self.n)))
    }
}

/// Replaying all dead letters with their retries reset, while a worker
/// fails the replayed messages again at once, replays those there at the
/// start once each: more than a page of them (1,000), whose new dead
/// letters (under new keys) came after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_replay_of_all_takes_what_was_dead_when_it_started() {
    if support::is_child() {
        return;
    }
    const LETTERS: u64 = 1_500;
    let namespace = namespace();
    let app = dramaturg::app(broker_in(URL, &namespace).await).actor::<AlwaysFails>().build().unwrap();
    let messages: Vec<AlwaysFails> = (0..LETTERS).map(|n| AlwaysFails { n }).collect();
    app.send_many(&messages).await.unwrap();
    let worker = Worker::new(app.clone()).concurrency(8);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let dead = || async { app.stats("always-fails").await.unwrap().dead };
    for _ in 0..600 {
        if dead().await == LETTERS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead().await, LETTERS);
    let report =
        app.replay_dead_letters("always-fails", dramaturg::Replay::All, dramaturg::ReplayRetries::Reset).await.unwrap();
    assert_eq!(report.replayed, LETTERS, "each dead letter replayed once");
    app.join(Duration::from_secs(60)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.failed, 2 * LETTERS, "each message ran twice: sent, then replayed: {report:?}");
    assert_eq!(dead().await, LETTERS);
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "outcomes", max_retries = 0)]
struct Ending {
    millis: u64,
    fail: bool,
}

impl Ending {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        if self.fail {
            return Err("told to fail".into());
        }
        Ok(())
    }
}

/// The counts of `queue` summed over the last hour.
async fn outcomes_of(broker: &RedisBroker, queue: &str) -> dramaturg::OutcomeCounts {
    let minutes = broker.outcomes_per_minute().await.unwrap();
    assert_eq!(minutes.len(), dramaturg::OUTCOME_MINUTES);
    assert!(minutes.windows(2).all(|w| w[1].minute.duration_since(w[0].minute).unwrap() == Duration::from_secs(60)));
    let (succeeded, failed) = minutes
        .iter()
        .filter_map(|m| m.queues.get(queue))
        .fold((0, 0), |(s, f), counts| (s + counts.succeeded, f + counts.failed));
    dramaturg::OutcomeCounts::new(succeeded, failed)
}

/// A worker tells the broker its concurrency and what it holds (listed
/// with the bodies, bounded), and publishes its outcomes per queue, which
/// the broker keeps per minute (one hash a minute, expiring in ~2 h).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_publish_their_outcomes_per_minute_and_show_what_they_hold() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let broker = broker_in(URL, &namespace).await;
    let app = dramaturg::app(broker.clone()).actor::<Ending>().build().unwrap();
    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(Ending { millis: 1500, fail: false }.send(&app).await.unwrap().id().to_string());
    }
    let worker = Worker::new(app.clone()).concurrency(2);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let admin = broker_in(URL, &namespace).await;
    let mut held = Vec::new();
    for _ in 0..100 {
        let workers = admin.workers().await.unwrap();
        if let [worker] = workers.as_slice() {
            assert_eq!(worker.concurrency, Some(2));
            if worker.held.len() >= 2 {
                assert_eq!(worker.held.len() as u64, worker.in_flight["outcomes"], "{worker:?}");
                held.clone_from(&worker.held);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(held.len() >= 2, "the worker holds the slow messages: {held:?}");
    for message in &held {
        assert_eq!(message.queue, "outcomes");
        let decoded = app.encoder().decode_message(message.body.as_ref().unwrap()).unwrap();
        assert_eq!(decoded.actor, "ending");
        assert!(slow.contains(&decoded.id.to_string()), "{message:?} {slow:?}");
    }
    for _ in 0..2 {
        Ending { millis: 0, fail: true }.send(&app).await.unwrap();
    }
    app.join(Duration::from_secs(20)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.succeeded, report.failed), (3, 2), "{report:?}");
    // The last outcomes went with the flush at stop.
    assert_eq!(outcomes_of(&admin, "outcomes").await, dramaturg::OutcomeCounts::new(3, 2));

    // Deltas add up in the current minute, in a hash that expires.
    let mut counts = std::collections::BTreeMap::new();
    counts.insert("other".to_owned(), dramaturg::OutcomeCounts::new(5, 1));
    admin.record_outcomes(&counts).await.unwrap();
    admin.record_outcomes(&counts).await.unwrap();
    assert_eq!(outcomes_of(&admin, "other").await, dramaturg::OutcomeCounts::new(10, 2));
    let minute = broker.now_ms() / 60_000;
    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{namespace}:{{registry}}:outcomes:{minute}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((7000..=7200).contains(&ttl), "{ttl}");
}

/// Dead letters are read a page at a time, from any offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_read_a_page_at_a_time() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let broker = broker_in(URL, &namespace).await;
    let app = dramaturg::app(broker.clone()).actor::<Ending>().build().unwrap();
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(Ending { millis: 0, fail: true }.send(&app).await.unwrap().id().to_string());
    }
    Worker::new(app.clone()).concurrency(1).run_until_drained(Duration::from_secs(20)).await.unwrap();
    let all: Vec<String> = broker.list("outcomes", 100).await.unwrap().into_iter().map(|d| d.key).collect();
    assert_eq!(all.len(), 7);
    let page: Vec<String> = broker.page("outcomes", 2, 3).await.unwrap().into_iter().map(|d| d.key).collect();
    assert_eq!(page, all[2..5]);
    assert_eq!(broker.page("outcomes", 6, 3).await.unwrap().len(), 1);
    assert!(broker.page("outcomes", 7, 3).await.unwrap().is_empty());
}

/// A failure's result goes with its dead letter, in the dead letter's own
/// script call, only if the dead letter applies: a stalled attempt that
/// fails after its message succeeded elsewhere cannot overwrite the
/// success. The same id claimed twice gives a stale and a current claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_dead_letter_writes_nothing() {
    if support::is_child() {
        return;
    }
    use dramaturg::store::StoreWrite;
    use dramaturg::{DeadLetters as _, Settled, Settlement};
    let (broker, store) = with_ready("failing", &["failing-1", "failing-2", "failing-1"]).await;
    let key = "result:failing-1";
    let write = |value: &'static [u8]| [StoreWrite::new(key, value, Duration::from_secs(60))];
    let mut consumer = broker.consume("failing", 4).await.unwrap();
    let (stale, other, owner) =
        (consumer.next().await.unwrap(), consumer.next().await.unwrap(), consumer.next().await.unwrap());
    let (succeeded, failure) = (write(b"succeeded"), write(b"failed"));
    assert_eq!(owner.settle_writing(Settlement::Ack, &succeeded, &*store).await.unwrap(), Settled::Applied);
    let failed = stale.settle_writing(Settlement::DeadLetter("failed late".into()), &failure, &*store).await;
    assert_eq!(failed.unwrap(), Settled::Stale);
    assert_eq!(
        store.get(key).await.unwrap().as_deref(),
        Some(&b"succeeded"[..]),
        "a stale failure overwrote the result"
    );
    // A current dead letter keeps its failure's result.
    let other_key = [StoreWrite::new("result:failing-2", &b"failed"[..], Duration::from_secs(60))];
    let dead = other.settle_writing(Settlement::DeadLetter("failed".into()), &other_key, &*store).await;
    assert_eq!(dead.unwrap(), Settled::Applied);
    assert_eq!(store.get("result:failing-2").await.unwrap().as_deref(), Some(&b"failed"[..]));
    assert_eq!(broker.list("failing", 10).await.unwrap().len(), 1);
    consumer.close().await.unwrap();
}
