//! The Redis broker under hostile operating conditions, each against a
//! private `redis-server` started by the test: a server full to
//! `maxmemory`, a server that evicts keys, a server too old, and a primary
//! demoted to a replica under a running worker.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::redis::{RedisBroker, RedisConfig};
use dramaturg::{BoxError, Broker, BrokerError, EnqueueError, Outgoing};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `redis-server` of the test's own, on a free loopback port.
struct Server {
    port: u16,
    child: Child,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let port = free_port();
        // Replication writes an RDB file even without `save`: keep it out
        // of the source tree.
        let dir = std::env::temp_dir().join(format!("dramaturg-redis-hostile-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await.unwrap()
    }

    async fn info_field(&self, section: &str, name: &str) -> String {
        let info: String = self.cmd(&["INFO", section]).await;
        let line = info.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap();
        line.split_once(':').unwrap().1.trim().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn config(url: &str) -> RedisConfig {
    RedisConfig::new(url)
        .namespace(format!("test-{}", dramaturg::MessageId::new()))
        .heartbeat(Duration::from_millis(200), Duration::from_secs(1))
        .max_block(Duration::from_secs(1))
}

/// Work that counts its runs by tag and sleeps `millis`.
#[derive(Actor, Serialize, Deserialize)]
struct Counted {
    tag: String,
    millis: u64,
    padding: String,
}

static RUNS: Mutex<Option<HashMap<String, (u32, u32)>>> = Mutex::new(None);

/// Starts and ends of the work tagged `tag`.
fn runs(tag: &str) -> (u32, u32) {
    RUNS.lock().unwrap().as_ref().and_then(|m| m.get(tag).copied()).unwrap_or_default()
}

/// The tags starting with `prefix` and their runs.
fn runs_of(prefix: &str) -> Vec<(String, (u32, u32))> {
    let runs = RUNS.lock().unwrap();
    let mut found: Vec<_> = runs
        .as_ref()
        .map(|m| m.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default();
    found.sort();
    found
}

impl Counted {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        RUNS.lock().unwrap().get_or_insert_with(HashMap::new).entry(self.tag.clone()).or_default().0 += 1;
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        RUNS.lock().unwrap().get_or_insert_with(HashMap::new).entry(self.tag).or_default().1 += 1;
        Ok(())
    }
}

fn job(tag: String, millis: u64) -> Counted {
    Counted { tag, millis, padding: "x".repeat(100) }
}

fn broker_error(error: EnqueueError) -> BrokerError {
    match error {
        EnqueueError::Broker(error) => error,
        other => panic!("not a broker error: {other}"),
    }
}

/// An evicting Redis (3 MB, `allkeys-lru`) takes 20,000
/// sends without an error and loses many of them. The broker refuses such
/// a server at connect with a typed error; with the explicit opt-out it
/// connects (and the loss is shown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_refused_at_connect_unless_allowed() {
    let server = Server::start(&["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"]);
    let error = RedisBroker::with_config(config(&server.url())).await.unwrap_err();
    assert!(error.is_unsuitable(), "{error}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("allkeys-lru") && error.to_string().contains("noeviction"), "{error}");

    let namespace = format!("test-{}", dramaturg::MessageId::new());
    let broker =
        RedisBroker::with_config(config(&server.url()).namespace(&namespace).allow_eviction(true)).await.unwrap();
    let body = vec![b'x'; 200];
    for chunk in 0..20 {
        let batch: Vec<Outgoing> = (0..1000).map(|_| Outgoing::new("evicted", body.clone())).collect();
        broker.enqueue_many(batch).await.unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{namespace}:*msgs");
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.unwrap();
    let mut kept = 0u64;
    for key in keys {
        kept += redis::cmd("HLEN").arg(key).query_async::<u64>(&mut conn).await.unwrap();
    }
    let evicted: u64 = server.info_field("stats", "evicted_keys").await.parse().unwrap();
    println!("allkeys-lru, 3 MB: 20000 sends succeeded, {kept} messages kept, {evicted} keys evicted");
    assert!(kept < 20_000, "the evicting server kept every message ({kept})");
}

/// With CONFIG renamed away, the policy is read from INFO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_is_read_from_info_when_config_is_disabled() {
    let server =
        Server::start(&["--maxmemory", "3mb", "--maxmemory-policy", "volatile-lru", "--rename-command", "CONFIG", ""]);
    let error = RedisBroker::with_config(config(&server.url())).await.unwrap_err();
    assert!(error.is_unsuitable() && error.to_string().contains("volatile-lru"), "{error}");
    let ok = Server::start(&["--rename-command", "CONFIG", ""]);
    RedisBroker::with_config(config(&ok.url())).await.unwrap();
}

/// A server that says it is Redis 6.2.6 (a fake
/// speaking just enough RESP) is refused with a typed error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_older_than_7_is_refused_naming_its_version() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                while let Ok(n) = socket.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    let request = String::from_utf8_lossy(&buffer[..n]).to_uppercase();
                    // One reply per command in the chunk (pipelines arrive at once).
                    let mut reply = String::new();
                    for command in request.split('*').filter(|c| c.contains("\r\n$")) {
                        if command.contains("INFO") {
                            let info = "# Server\r\nredis_version:6.2.6\r\n# Memory\r\nmaxmemory_policy:noeviction\r\n";
                            reply.push_str(&format!("${}\r\n{info}\r\n", info.len()));
                        } else {
                            reply.push_str("+OK\r\n");
                        }
                    }
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let error = RedisBroker::with_config(config(&format!("redis://127.0.0.1:{port}"))).await.unwrap_err();
    assert!(error.is_unsuitable(), "{error}");
    assert!(error.to_string().contains("6.2.6") && error.to_string().contains("7.0"), "{error}");
}

/// A 4 MB `noeviction` Redis filled by a backlog until it
/// refuses sends (`OOM`, a typed, fast error); a worker started then drains
/// every accepted job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_sends_with_a_typed_error_and_is_drained() {
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_test_writer().try_init();
    let server = Server::start(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let app = dramaturg::app(RedisBroker::with_config(config(&server.url())).await.unwrap())
        .actor::<Counted>()
        .build()
        .unwrap();
    let prefix = format!("full-{}-", dramaturg::MessageId::new());
    let mut accepted = 0u64;
    let refusal = loop {
        let batch: Vec<Counted> = (accepted..accepted + 100).map(|i| job(format!("{prefix}{i}"), 0)).collect();
        match app.send_many(&batch).await {
            Ok(_) => accepted += 100,
            Err(error) => break broker_error(error),
        }
        assert!(accepted < 1_000_000, "the server never filled up");
    };
    assert!(refusal.is_full(), "a full server is a typed error: {refusal:?}");
    assert!(refusal.to_string().contains("OOM"), "{refusal}");
    // Whatever of the refused batch got in before the refusal counts too.
    let accepted = app.stats(&app.queues()[0]).await.unwrap().ready;
    let started = Instant::now();
    let error = broker_error(job(format!("{prefix}late"), 0).send(&app).await.unwrap_err());
    assert!(error.is_full() && started.elapsed() < Duration::from_secs(1), "{error} after {:?}", started.elapsed());
    println!("a 4 MB noeviction Redis took {accepted} messages, then refused sends: {refusal}");

    let report = Worker::new(app.clone()).concurrency(8).run_until_drained(Duration::from_secs(60)).await.unwrap();
    assert_eq!(report.succeeded, accepted, "{report:?}");
    let runs = runs_of(&prefix);
    assert_eq!(runs.len() as u64, accepted);
    assert!(runs.iter().all(|(_, (started, ended))| (*started, *ended) == (1, 1)), "a job ran twice");
    assert!(app.stats(&app.queues()[0]).await.unwrap().is_drained());
    job(format!("{prefix}after"), 0).send(&app).await.unwrap();
}

/// A worker started against a read-only replica
/// does not exit; it logs why and waits, and consumes once the server is a
/// primary again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_against_a_replica_waits_for_a_primary() {
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_test_writer().try_init();
    // A replica of a primary that is not there: it keeps its (empty) data
    // and refuses writes.
    let server = Server::start(&["--replicaof", "127.0.0.1", &free_port().to_string()]);
    assert_eq!(server.info_field("replication", "role").await, "slave");
    let app = dramaturg::app(RedisBroker::with_config(config(&server.url())).await.unwrap())
        .actor::<Counted>()
        .build()
        .unwrap();
    let error = broker_error(job("x".into(), 0).send(&app).await.unwrap_err());
    assert_eq!(error.kind(), dramaturg::BrokerErrorKind::Unavailable, "{error:?}");
    assert!(error.is_retryable() && error.to_string().contains("read only replica"), "{error:?}");
    let worker = Worker::new(app.clone()).concurrency(2);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!running.is_finished(), "the worker exited against a replica: {:?}", running.await);
    let _: String = server.cmd(&["REPLICAOF", "NO", "ONE"]).await;
    let tag = format!("replica-{}", dramaturg::MessageId::new());
    job(tag.clone(), 0).send(&app).await.unwrap();
    app.join(Duration::from_secs(15)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.succeeded, runs(&tag)), (1, (1, 1)), "{report:?}");
}

/// The primary is demoted to a replica (`FAILOVER` to a
/// replica of its own) for 3 s under a running worker, while its jobs
/// finish. Their acks are refused (`READONLY`) and retried until the
/// server is a primary again: each job runs exactly once, also after a
/// second worker has had the time to recover anything stranded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_finished_while_the_primary_is_demoted_run_exactly_once() {
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_test_writer().try_init();
    let primary = Server::start(&[]);
    let replica = Server::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    // `FAILOVER TO` needs the primary to see the replica online, which it
    // may do a moment after the replica sees its link up: wait for both.
    let online = format!("port={},state=online", replica.port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.info_field("replication", "master_link_status").await != "up"
        || !primary.cmd::<String>(&["INFO", "replication"]).await.contains(&online)
    {
        assert!(Instant::now() < deadline, "the replica did not sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let config = config(&primary.url());
    let app =
        dramaturg::app(RedisBroker::with_config(config.clone()).await.unwrap()).actor::<Counted>().build().unwrap();
    let prefix = format!("failover-{}-", dramaturg::MessageId::new());
    // 16 jobs of 1 s on 8 slots: the first 8 end during the demotion.
    let batch: Vec<Counted> = (0..16).map(|i| job(format!("{prefix}{i}"), 1000)).collect();
    app.send_many(&batch).await.unwrap();
    let worker = Worker::new(app.clone()).concurrency(8);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let started = || runs_of(&prefix).iter().map(|(_, (s, _))| *s).sum::<u32>();
    let wait = Instant::now() + Duration::from_secs(10);
    while started() < 8 {
        assert!(Instant::now() < wait, "the jobs did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: String = primary.cmd(&["FAILOVER", "TO", "127.0.0.1", &replica.port.to_string()]).await;
    let wait = Instant::now() + Duration::from_secs(5);
    while primary.info_field("replication", "role").await != "slave" {
        assert!(Instant::now() < wait, "the primary was not demoted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let demoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _: String = primary.cmd(&["REPLICAOF", "NO", "ONE"]).await;
    let _: String = replica.cmd(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()]).await;
    println!("the primary was a replica for {:?}", demoted.elapsed());
    let ended = || runs_of(&prefix).iter().filter(|(_, (_, e))| *e > 0).count();
    let wait = Instant::now() + Duration::from_secs(30);
    while ended() < 16 {
        assert!(Instant::now() < wait, "the jobs did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not unwrapped: before the fix, given-up acks left jobs in flight.
    let drained = app.join(Duration::from_secs(20)).await;
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    println!("{report:?}");

    // A second worker on the same namespace, for longer than the heartbeat
    // timeout: anything stranded by the first would run again here.
    let second = dramaturg::app(RedisBroker::with_config(config).await.unwrap()).actor::<Counted>().build().unwrap();
    let worker = Worker::new(second.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let drained_again = second.join(Duration::from_secs(10)).await;
    shutdown.shutdown();
    let again = running.await.unwrap().unwrap();

    let runs = runs_of(&prefix);
    assert_eq!(runs.len(), 16);
    let twice: Vec<_> = runs.iter().filter(|(_, (s, _))| *s != 1).collect();
    assert!(
        twice.is_empty(),
        "{} jobs ran more than once: {twice:?}; first worker {report:?} (drained: {drained:?}), second {again:?}",
        twice.len()
    );
    drained.unwrap();
    drained_again.unwrap();
    assert_eq!((report.succeeded, again.succeeded, report.stale), (16, 0, 0));
    assert!(second.stats(&second.queues()[0]).await.unwrap().is_drained());
}

/// Counts its runs by tag, as [`Counted`] does, and keeps its result: 2 KB,
/// more than its message takes, so that a full server stays full as its
/// messages are acked.
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = String, store_results)]
struct KeptCounted {
    tag: String,
    padding: String,
}

impl KeptCounted {
    async fn perform(self, _ctx: &Context) -> Result<String, BoxError> {
        let mut runs = RUNS.lock().unwrap();
        let counts = runs.get_or_insert_with(HashMap::new).entry(self.tag).or_default();
        counts.0 += 1;
        counts.1 += 1;
        Ok("r".repeat(2048))
    }
}

/// An app on the broker of `config` whose results go in its store (with the
/// acks).
async fn results_app(config: RedisConfig) -> App {
    let broker = std::sync::Arc::new(RedisBroker::with_config(config).await.unwrap());
    dramaturg::app_shared(broker.clone())
        .insert_before(dramaturg::middleware::names::CALLBACKS, dramaturg::results::Results::for_broker(&*broker))
        .actor::<KeptCounted>()
        .build()
        .unwrap()
}

/// A Redis full to `maxmemory` (noeviction) refuses the results that go
/// with acks; the acks are settled all the same: every message runs once
/// and the queue drains (no message is redelivered because its result
/// could not be kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_results_but_settles_their_acks() {
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_test_writer().try_init();
    let server = Server::start(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let app = results_app(config(&server.url())).await;
    let prefix = format!("full-results-{}-", dramaturg::MessageId::new());
    let mut sent = Vec::new();
    loop {
        let batch: Vec<KeptCounted> = (sent.len()..sent.len() + 100)
            .map(|i| KeptCounted { tag: format!("{prefix}{i}"), padding: "x".repeat(100) })
            .collect();
        match app.send_many(&batch).await {
            Ok(ids) => sent.extend(ids.iter().map(|s| s.id())),
            Err(error) => {
                assert!(broker_error(error).is_full());
                break;
            }
        }
        assert!(sent.len() < 1_000_000, "the server never filled up");
    }
    let accepted = app.stats(&app.queues()[0]).await.unwrap().ready;
    let report = Worker::new(app.clone()).concurrency(8).run_until_drained(Duration::from_secs(60)).await.unwrap();
    assert_eq!((report.succeeded, report.stale), (accepted, 0), "{report:?}");
    let runs = runs_of(&prefix);
    assert_eq!(runs.len() as u64, accepted);
    assert!(runs.iter().all(|(_, (started, ended))| (*started, *ended) == (1, 1)), "a job ran twice");
    assert!(app.stats(&app.queues()[0]).await.unwrap().is_drained());
    let mut kept = 0;
    for id in &sent {
        if dramaturg::results::ResultHandle::<String>::new(&app, *id).get().await.is_ok() {
            kept += 1;
        }
    }
    println!("a 4 MB noeviction Redis ran {accepted} messages once each and kept {kept} of their results");
    assert!(kept < accepted, "a full server kept every result: the test did not fill it");
}

/// After `SCRIPT FLUSH` (as after a restart of Redis), acks that carry
/// results load their script again and apply, results kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_with_results_survive_a_script_flush() {
    use dramaturg::results::SentExt;
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_test_writer().try_init();
    let server = Server::start(&[]);
    let app = results_app(config(&server.url())).await;
    let worker = Worker::new(app.clone()).concurrency(4);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let prefix = format!("flush-{}-", dramaturg::MessageId::new());
    for round in 0..3 {
        let _: String = server.cmd(&["SCRIPT", "FLUSH"]).await;
        for i in 0..5 {
            let tag = format!("{prefix}{round}-{i}");
            let sent = KeptCounted { tag: tag.clone(), padding: String::new() }.send(&app).await.unwrap();
            sent.result(&app).wait(Duration::from_secs(10)).await.unwrap();
            assert_eq!(runs(&tag), (1, 1));
        }
    }
    app.join(Duration::from_secs(10)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.succeeded, report.stale), (15, 0), "{report:?}");
}

/// Scripts flushed over and over (`SCRIPT FLUSH` every millisecond, so
/// that one is often flushed again between its reload and its second try)
/// while a worker starts, sends are made and results kept: every script
/// call that meets `NOSCRIPT` twice fails with a retryable error and is
/// tried again, so the worker starts, every message runs once and every
/// result is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_flushed_over_and_over_stop_nothing_and_lose_nothing() {
    use dramaturg::results::SentExt;
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_test_writer().try_init();
    let server = std::sync::Arc::new(Server::start(&[]));
    // Sends meet NOSCRIPT twice too: they are retried like any other
    // retryable failure.
    let app = results_app(config(&server.url()).retry_enqueue_for(Duration::from_secs(10))).await;
    let flushing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flusher = tokio::spawn({
        let (server, flushing) = (std::sync::Arc::clone(&server), std::sync::Arc::clone(&flushing));
        async move {
            let client = redis::Client::open(server.url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let mut flushes = 0_u64;
            while flushing.load(std::sync::atomic::Ordering::SeqCst) {
                redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut conn).await.unwrap();
                flushes += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            flushes
        }
    });
    let worker = Worker::new(app.clone()).concurrency(4);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let prefix = format!("flushing-{}-", dramaturg::MessageId::new());
    let mut sent = Vec::new();
    for i in 0..200 {
        let tag = format!("{prefix}{i}");
        sent.push((KeptCounted { tag: tag.clone(), padding: String::new() }.send(&app).await.unwrap(), tag));
    }
    for (handle, tag) in &sent {
        assert_eq!(handle.result(&app).wait(Duration::from_secs(30)).await.unwrap().len(), 2048);
        assert_eq!(runs(tag), (1, 1), "{tag}");
    }
    flushing.store(false, std::sync::atomic::Ordering::SeqCst);
    let flushes = flusher.await.unwrap();
    assert!(flushes > 10, "{flushes} flushes");
    app.join(Duration::from_secs(10)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap().expect("the worker started and ran");
    assert_eq!((report.succeeded, report.stale), (200, 0), "{report:?}");
}
