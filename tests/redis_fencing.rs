//! Fenced settlement and recovery on the real Redis: a stalled worker
//! cannot settle a message it lost, a claim whose reply is lost comes back,
//! an outage longer than the heartbeat timeout recovers no live worker, and
//! clients' clocks decide nothing.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::{Broker, DeadLetters, Fail, Outgoing, QueueAdmin, Settled, Settlement};
use serde::{Deserialize, Serialize};
use support::{append, logged, temp_log};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const URL: &str = "redis://127.0.0.1:6379";
const CHILD_TEST: &str = "fencing_child";

use support::{namespace, redis_broker as broker_in};

/// Work that logs its start and end (with the process id) to `log`, then
/// fails for good if `fail`.
#[derive(Actor, Serialize, Deserialize)]
struct Logged {
    log: String,
    millis: u64,
    fail: bool,
}

impl Logged {
    async fn perform(self, _ctx: &Context) -> Result<(), Fail> {
        append(&self.log, "start");
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        append(&self.log, "end");
        if self.fail {
            return Err(Fail::permanent("the job failed for good"));
        }
        Ok(())
    }
}

/// The child: `work|namespace|report` runs a worker until SIGTERM and
/// writes its report; `produce|namespace|log|delay_ms` sends one delayed
/// message.
#[test]
fn fencing_child() {
    let Ok(spec) = std::env::var(support::CHILD) else { return };
    let parts: Vec<&str> = spec.split('|').collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let app = dramaturg::app(broker_in(URL, parts[1]).await).actor::<Logged>().build().unwrap();
        match parts[0] {
            "work" => {
                let report = Worker::new(app).concurrency(1).run_until_signal().await.unwrap();
                let line = format!("stale={} failed={} succeeded={}", report.stale, report.failed, report.succeeded);
                std::fs::write(parts[2], line).unwrap();
            }
            _ => {
                let delay = Duration::from_millis(parts[3].parse().unwrap());
                let job = Logged { log: parts[2].to_owned(), millis: 0, fail: false };
                job.send_with(&app, dramaturg::SendOptions::default().with_delay(delay)).await.unwrap();
            }
        }
    });
}

/// Runs this test binary as a child with `spec`, its clock skewed by
/// `skew` (e.g. `"-30s"`) through libfaketime if given. The library is
/// preloaded directly, rather than through the `faketime` wrapper, so that
/// signals reach the child itself.
fn spawn_child(spec: &str, skew: Option<&str>) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    if let Some(skew) = skew {
        command.env("LD_PRELOAD", support::faketime_library()).env("FAKETIME", skew).env("FAKETIME_DONT_RESET", "1");
    }
    command
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(support::CHILD, spec)
        .stdout(Stdio::null())
        .spawn()
        .expect("the test binary can be run")
}

fn signal(child: &Child, signal: &str) {
    Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
}

/// Worker A claims a job and stalls (SIGSTOP) past its
/// heartbeat timeout; worker B recovers and runs it; A resumes and
/// dead-letters it. A's settlement is stale and changes nothing: the one
/// dead letter is B's, with the real message — not an empty body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_cannot_settle_a_message_that_was_recovered() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let log = temp_log("fencing");
    let report = temp_log("fencing");
    let broker = broker_in(URL, &namespace).await;
    let app = dramaturg::app(broker.clone()).actor::<Logged>().build().unwrap();
    Logged { log: log.display().to_string(), millis: 2000, fail: true }.send(&app).await.unwrap();

    let mut stalled = spawn_child(&format!("work|{namespace}|{}", report.display()), None);
    support::wait_for("the job to start", Duration::from_secs(20), || !logged(&log, "start").is_empty()).await;
    signal(&stalled, "-STOP");
    let worker = Worker::new(app.clone()).concurrency(1);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    signal(&stalled, "-CONT");
    support::wait_for("both runs to end", Duration::from_secs(15), || logged(&log, "end").len() == 2).await;
    app.join(Duration::from_secs(10)).await.unwrap();
    support::terminate(&mut stalled);
    shutdown.shutdown();
    let here = running.await.unwrap().unwrap();

    let there = std::fs::read_to_string(&report).unwrap();
    assert_eq!(
        there, "stale=1 failed=0 succeeded=0",
        "the stalled worker's report: its late dead letter counts as stale only"
    );
    assert_eq!((here.failed, here.stale, here.rejected), (1, 0, 0), "{here:?}");
    let dead = broker.list("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let message = app.encoder().decode_message(&dead[0].body).expect("the dead letter is the real message");
    assert_eq!(message.actor, "logged");
    assert!(dead[0].reason.contains("the job failed for good"), "{}", dead[0].reason);
    assert!(broker.stats("default").await.unwrap().is_drained());
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&report);
}

/// A TCP proxy in front of Redis that, once armed with a marker, closes the
/// connection in place of the first reply that contains it; and that can
/// cut every connection and refuse new ones for a while (an outage).
struct Proxy {
    port: u16,
    armed: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    cut: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Self { port, armed: Arc::default(), cut: Arc::default(), down: Arc::default() };
        let (armed, cut, down) = (Arc::clone(&proxy.armed), Arc::clone(&proxy.cut), Arc::clone(&proxy.down));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if down.load(Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let server = TcpStream::connect(upstream).await.unwrap();
                tokio::spawn(relay(client, server, Arc::clone(&armed), Arc::clone(&cut), Arc::clone(&down)));
            }
        });
        proxy
    }

    fn arm(&self, marker: &str) {
        *self.armed.lock().unwrap() = Some(marker.as_bytes().to_vec());
    }

    /// Cuts every connection and refuses new ones for `outage`.
    async fn outage(&self, outage: Duration) {
        self.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(outage).await;
        self.down.store(false, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    cut: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = server_read.read(&mut buffer) => read,
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                if down.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
        };
        let Ok(n) = read else { break };
        if n == 0 || down.load(Ordering::SeqCst) {
            break;
        }
        let chunk = &buffer[..n];
        let lose = {
            let mut armed = armed.lock().unwrap();
            let hit = armed.as_ref().is_some_and(|marker| chunk.windows(marker.len()).any(|w| w == marker));
            if hit {
                *armed = None;
            }
            hit
        };
        if lose {
            cut.store(true, Ordering::SeqCst);
            break; // the reply is lost with the connection
        }
        if client_write.write_all(chunk).await.is_err() {
            break;
        }
    }
    upstream.abort();
}

/// The connection closes in place of the reply to the claim.
/// The claimed message is found again and processed at once — not stranded
/// until the worker stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_is_lost_is_processed_soon() {
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let namespace = namespace();
    let broker = broker_in(&proxy.url(), &namespace).await;
    let app = dramaturg::app(broker.clone()).actor::<Logged>().build().unwrap();
    let log = temp_log("fencing");
    let marker = log.file_name().unwrap().to_str().unwrap().to_owned();
    let worker = Worker::new(app.clone()).concurrency(1);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.arm(&marker);
    let sent = Instant::now();
    Logged { log: log.display().to_string(), millis: 0, fail: false }.send(&app).await.unwrap();
    support::wait_for("the job to run", Duration::from_secs(8), || !logged(&log, "end").is_empty()).await;
    println!("processed {:?} after the send, its first claim's reply lost", sent.elapsed());
    assert!(proxy.cut.load(Ordering::SeqCst), "the proxy lost a reply");
    app.join(Duration::from_secs(5)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!(logged(&log, "start").len(), 1);
    assert_eq!(report.succeeded, 1, "{report:?}");
    let _ = std::fs::remove_file(&log);
}

/// Redis is away for longer than the heartbeat timeout while
/// two workers each run a job; it comes back for one worker 600 ms before
/// the other. The first back does not "recover" the other, which is alive:
/// each job runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_longer_than_the_timeout_no_live_worker_is_recovered() {
    let namespace = namespace();
    let log = temp_log("fencing");
    let mut proxies = Vec::new();
    let mut handles = Vec::new();
    let mut apps = Vec::new();
    for _ in 0..2 {
        let proxy = Proxy::start("127.0.0.1:6379").await;
        let app = dramaturg::app(broker_in(&proxy.url(), &namespace).await).actor::<Logged>().build().unwrap();
        let worker = Worker::new(app.clone()).concurrency(1);
        handles.push((worker.shutdown_handle(), tokio::spawn(worker.run())));
        apps.push(app);
        proxies.push(proxy);
    }
    for _ in 0..2 {
        Logged { log: log.display().to_string(), millis: 5000, fail: false }.send(&apps[0]).await.unwrap();
    }
    support::wait_for("both jobs to start", Duration::from_secs(10), || logged(&log, "start").len() == 2).await;
    tokio::join!(proxies[0].outage(Duration::from_millis(2500)), proxies[1].outage(Duration::from_millis(3100)));
    support::wait_for("both jobs to end", Duration::from_secs(20), || logged(&log, "end").len() >= 2).await;
    apps[0].join(Duration::from_secs(20)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(logged(&log, "start").len(), 2, "a job ran twice: {:?}", logged(&log, ""));
    for (shutdown, running) in handles {
        shutdown.shutdown();
        let report = running.await.unwrap().unwrap();
        assert_eq!((report.succeeded, report.stale), (1, 0), "{report:?}");
    }
    let _ = std::fs::remove_file(&log);
}

/// Workers with different heartbeat settings share a queue: one beats
/// every 2 s with a 6 s timeout (for long blocking work), the other every
/// 200 ms with a 1 s timeout. The second judges the first by the first's
/// own timeout, so a 4 s job between two of its beats runs once (judged by
/// its own 1 s, the second took it for dead and ran it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_different_heartbeat_timeouts_judge_each_other_by_their_own() {
    let namespace = namespace();
    let log = temp_log("fencing");
    let slow_beats = dramaturg::redis::RedisConfig::new(URL)
        .namespace(&namespace)
        .heartbeat(Duration::from_secs(2), Duration::from_secs(6))
        .max_block(Duration::from_secs(1));
    let slow = dramaturg::redis::RedisBroker::with_config(slow_beats).await.unwrap();
    let slow = dramaturg::app(slow).actor::<Logged>().build().unwrap();
    let fast = dramaturg::app(broker_in(URL, &namespace).await).actor::<Logged>().build().unwrap();
    let slow_worker = Worker::new(slow.clone()).concurrency(1);
    let slow_handle = (slow_worker.shutdown_handle(), tokio::spawn(slow_worker.run()));
    Logged { log: log.display().to_string(), millis: 4000, fail: false }.send(&slow).await.unwrap();
    support::wait_for("the job to start", Duration::from_secs(10), || logged(&log, "start").len() == 1).await;
    let fast_worker = Worker::new(fast.clone()).concurrency(1);
    let fast_handle = (fast_worker.shutdown_handle(), tokio::spawn(fast_worker.run()));
    support::wait_for("the job to end", Duration::from_secs(20), || !logged(&log, "end").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(logged(&log, "start").len(), 1, "the job ran twice: {:?}", logged(&log, ""));
    for (name, (shutdown, running)) in [("slow", slow_handle), ("fast", fast_handle)] {
        shutdown.shutdown();
        let report = running.await.unwrap().unwrap();
        assert_eq!(report.stale, 0, "{name}: {report:?}");
    }
    let _ = std::fs::remove_file(&log);
}

/// A worker whose clock is 30 s behind runs a job while a
/// worker with the right time watches for dead workers. Heartbeats carry
/// the server's time, so the slow clock does not make it look dead: the
/// job runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_slow_clock_is_not_taken_for_dead() {
    if support::is_child() {
        return;
    }
    let namespace = namespace();
    let log = temp_log("fencing");
    let report = temp_log("fencing");
    let app = dramaturg::app(broker_in(URL, &namespace).await).actor::<Logged>().build().unwrap();
    let mut skewed = spawn_child(&format!("work|{namespace}|{}", report.display()), Some("-30s"));
    Logged { log: log.display().to_string(), millis: 3000, fail: false }.send(&app).await.unwrap();
    support::wait_for("the job to start", Duration::from_secs(20), || !logged(&log, "start").is_empty()).await;
    let worker = Worker::new(app.clone()).concurrency(1);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    support::wait_for("the job to end", Duration::from_secs(15), || !logged(&log, "end").is_empty()).await;
    app.join(Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(logged(&log, "start").len(), 1, "the job ran twice");
    support::terminate(&mut skewed);
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "stale=0 failed=0 succeeded=1");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&report);
}

/// Runs a worker here, and a producer whose clock is `skew` off that sends
/// one message delayed by `delay_ms`; returns how long after the send it
/// started (measured from the producer's exit, which comes after the send,
/// so it is at most the real delay).
async fn delay_sent_with_skew(skew: &str, delay_ms: u64) -> Duration {
    let namespace = namespace();
    let log = temp_log("fencing");
    let app = dramaturg::app(broker_in(URL, &namespace).await).actor::<Logged>().build().unwrap();
    let worker = Worker::new(app.clone()).concurrency(1);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let mut producer = spawn_child(&format!("produce|{namespace}|{}|{delay_ms}", log.display()), Some(skew));
    assert!(producer.wait().unwrap().success(), "the skewed producer sent its message");
    let sent = Instant::now();
    assert!(logged(&log, "start").is_empty(), "the delayed job ran before its producer even exited");
    support::wait_for("the delayed job", Duration::from_secs(15), || !logged(&log, "start").is_empty()).await;
    let ran = sent.elapsed();
    println!("a {delay_ms} ms delay sent with a clock {skew} off ran {ran:?} after the send");
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    let _ = std::fs::remove_file(&log);
    ran
}

/// A producer whose clock is 30 s ahead sends a message delayed by one
/// second. The server's clock decides when it is due: it runs about a
/// second later, not 31.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_with_a_fast_clock_cannot_make_a_delay_late() {
    if support::is_child() {
        return;
    }
    let ran = delay_sent_with_skew("+30s", 1000).await;
    assert!(ran < Duration::from_secs(10), "a 1 s delay ran after {ran:?}: late");
}

/// A producer whose clock is 30 s behind sends a message delayed by 3 s.
/// Due by its own clock, the message would be 27 s overdue the moment it
/// landed and run at once; the server's clock decides, so it runs about 3 s
/// after the send — never before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_with_a_slow_clock_cannot_make_a_delay_early() {
    if support::is_child() {
        return;
    }
    let ran = delay_sent_with_skew("-30s", 3000).await;
    assert!(ran >= Duration::from_millis(2500), "a 3 s delay ran after {ran:?}: early");
}

/// Sends `n` messages to `queue` and claims them all with one consumer of
/// `prefetch`; returns the consumer and the deliveries.
async fn claim_all(
    broker: &dramaturg::redis::RedisBroker,
    queue: &str,
    n: usize,
    prefetch: usize,
) -> (Box<dyn dramaturg::Consumer>, Vec<dramaturg::Delivery>) {
    let bodies: Vec<Outgoing> = (0..n).map(|i| Outgoing::new(queue, format!("m{i}").into_bytes())).collect();
    broker.enqueue_many(bodies).await.unwrap();
    let mut consumer = broker.consume(queue, prefetch).await.unwrap();
    let mut deliveries = Vec::with_capacity(n);
    for _ in 0..n {
        deliveries.push(consumer.next().await.unwrap());
    }
    (consumer, deliveries)
}

/// Acks are settled many to a script call; each still gets its own answer.
/// Here 500 deliveries of one consumer are acked at once from 64 tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_acks_each_get_their_answer() {
    if support::is_child() {
        return;
    }
    let broker = broker_in(URL, &namespace()).await;
    let (consumer, deliveries) = claim_all(&broker, "many", 500, 500).await;
    let mut shares: Vec<Vec<dramaturg::Delivery>> = (0..64).map(|_| Vec::new()).collect();
    for (i, delivery) in deliveries.into_iter().enumerate() {
        shares[i % 64].push(delivery);
    }
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| {
            tokio::spawn(async move {
                let mut acks = tokio::task::JoinSet::new();
                for delivery in share {
                    acks.spawn(delivery.settle(Settlement::Ack));
                }
                acks.join_all().await
            })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        for settled in task.await.unwrap() {
            assert_eq!(settled.unwrap(), Settled::Applied);
            applied += 1;
        }
    }
    assert_eq!(applied, 500);
    let stats = broker.stats("many").await.unwrap();
    assert!(stats.is_drained(), "{stats:?}");
    consumer.close().await.unwrap();
}

/// A batch of acks that mixes current and lapsed claims applies the
/// current ones and reports only the lapsed ones stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_acks_reports_only_its_lapsed_claims_stale() {
    if support::is_child() {
        return;
    }
    let broker = broker_in(URL, &namespace()).await;
    let (mut consumer, lapsed) = claim_all(&broker, "mixed", 200, 400).await;
    // Every claim lapses; the same consumer claims the messages again.
    assert_eq!(broker.requeue_in_flight("mixed").await.unwrap(), 200);
    let mut current = std::collections::HashMap::new();
    for _ in 0..200 {
        let delivery = consumer.next().await.unwrap();
        assert!(delivery.redelivered());
        current.insert(delivery.body().clone(), delivery);
    }
    // Old and new receipts of the same messages, interleaved, all at once.
    let ack = |delivery: dramaturg::Delivery, expected: Settled| async move {
        (delivery.settle(Settlement::Ack).await.unwrap(), expected)
    };
    let mut acks = tokio::task::JoinSet::new();
    for old in lapsed {
        let new = current.remove(old.body()).unwrap();
        acks.spawn(ack(old, Settled::Stale));
        acks.spawn(ack(new, Settled::Applied));
    }
    for (settled, expected) in acks.join_all().await {
        assert_eq!(settled, expected);
    }
    let stats = broker.stats("mixed").await.unwrap();
    assert!(stats.is_drained(), "{stats:?}");
    consumer.close().await.unwrap();
}

/// Acks settled together take their ids out of the consumer's in-flight
/// list, and only theirs: the deliveries still held stay in flight (they
/// come back, and only they, when the in-flight messages are requeued).
/// A batch of many acks rewrites the list in one go; a few go with an
/// `LREM` each; both paths run here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_acks_leave_every_held_delivery_in_flight() {
    if support::is_child() {
        return;
    }
    let broker = broker_in(URL, &namespace()).await;
    let (mut consumer, deliveries) = claim_all(&broker, "held", 64, 64).await;
    let mut held = std::collections::HashSet::new();
    let mut acks = tokio::task::JoinSet::new();
    for (i, delivery) in deliveries.into_iter().enumerate() {
        // Every third held, the rest acked at once.
        if i % 3 == 0 {
            held.insert(delivery.body().clone());
            std::mem::forget(delivery);
        } else {
            acks.spawn(delivery.settle(Settlement::Ack));
        }
    }
    for settled in acks.join_all().await {
        assert_eq!(settled.unwrap(), Settled::Applied);
    }
    assert_eq!(broker.requeue_in_flight("held").await.unwrap(), held.len() as u64);
    let mut back = std::collections::HashSet::new();
    for _ in 0..held.len() {
        let delivery = consumer.next().await.unwrap();
        back.insert(delivery.body().clone());
        assert_eq!(delivery.settle(Settlement::Ack).await.unwrap(), Settled::Applied);
    }
    assert_eq!(back, held);
    let stats = broker.stats("held").await.unwrap();
    assert!(stats.is_drained(), "{stats:?}");
    consumer.close().await.unwrap();
}
