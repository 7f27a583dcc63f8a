//! Batch actors against the real Redis and RabbitMQ: batches of at most
//! `max`, each message settled on its own (acknowledged, retried alone,
//! dead-lettered alone), `wait`, a time limit and a panic of the batch, an
//! undecodable message, and middleware that see every message.

#![cfg(any(feature = "redis", feature = "amqp"))]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::{BoxError, Call};
use serde::{Deserialize, Serialize};

/// One handler call as a batch actor saw it, by test key.
#[derive(Debug, Clone)]
struct Seen {
    /// (seq, retries) of each message, in order.
    items: Vec<(u64, u32)>,
    /// How long after the first message's attempt started the call came.
    waited: Duration,
}

static CALLS: Mutex<Vec<(String, Seen)>> = Mutex::new(Vec::new());

fn record<A>(key: &str, batch: &Batch<A>, seq: impl Fn(&A) -> u64) {
    let first = batch.contexts().iter().map(Context::started_at).min().unwrap();
    let items = batch.iter().map(|(args, ctx)| (seq(args), ctx.retries())).collect();
    CALLS.lock().unwrap().push((key.to_owned(), Seen { items, waited: first.elapsed() }));
}

fn calls(key: &str) -> Vec<Seen> {
    CALLS.lock().unwrap().iter().filter(|(k, _)| k == key).map(|(_, c)| c.clone()).collect()
}

/// Rows for a bulk write: `fail` says which fail, and how.
#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(max = 100, wait = "200ms"), max_retries = 2, min_backoff = "100ms", max_backoff = "200ms")]
struct Row {
    key: String,
    seq: u64,
    /// `""`: succeeds; `"once"`: fails on its first attempt; `"always"`: fails every time.
    fail: String,
}

impl Row {
    async fn perform(batch: Batch<Self>) -> Result<BatchOutcome, BoxError> {
        record(&batch.args()[0].key, &batch, |row| row.seq);
        let mut outcome = BatchOutcome::new();
        for (index, (row, ctx)) in batch.iter().enumerate() {
            match row.fail.as_str() {
                "once" if ctx.retries() == 0 => outcome.fail(index, format!("row {} failed once", row.seq)),
                "always" => outcome.fail(index, format!("row {} always fails", row.seq)),
                _ => &mut outcome,
            };
        }
        Ok(outcome)
    }
}

/// A batch that runs past its time limit on its first attempt, or panics.
#[derive(Actor, Serialize, Deserialize)]
#[actor(
    batch(max = 10, wait = "100ms"),
    time_limit = "1s",
    max_retries = 1,
    min_backoff = "100ms",
    max_backoff = "100ms"
)]
struct Slow {
    key: String,
    seq: u64,
    /// `"sleep"` or `"panic"` on the first attempt.
    mode: String,
}

impl Slow {
    async fn perform(batch: Batch<Self>) -> Result<(), BoxError> {
        record(&batch.args()[0].key, &batch, |slow| slow.seq);
        if batch.contexts().iter().any(|ctx| ctx.retries() == 0) {
            if batch.args()[0].mode == "panic" {
                panic!("the batch handler panicked");
            }
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        Ok(())
    }
}

/// A batch that would wait 30 s for more messages.
#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(max = 100, wait = "30s"))]
struct Patient {
    key: String,
    seq: u64,
}

impl Patient {
    async fn perform(batch: Batch<Self>) -> Result<(), BoxError> {
        record(&batch.args()[0].key, &batch, |patient| patient.seq);
        Ok(())
    }
}

/// A batch that waits a second for more messages.
#[derive(Actor, Serialize, Deserialize)]
#[actor(batch(max = 100, wait = "1s"))]
struct Gathered {
    key: String,
    seq: u64,
}

impl Gathered {
    async fn perform(batch: Batch<Self>) -> Result<(), BoxError> {
        record(&batch.args()[0].key, &batch, |gathered| gathered.seq);
        Ok(())
    }
}

/// Counts the messages its `handle` sees.
#[derive(Default)]
struct Counting(AtomicU64);

#[async_trait]
impl Middleware for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        self.0.fetch_add(1, Ordering::Relaxed);
        next.run(ctx).await
    }
}

fn key() -> String {
    dramaturg::MessageId::new().to_string()
}

fn rows(key: &str, seqs: std::ops::Range<u64>, fail: impl Fn(u64) -> &'static str) -> Vec<Row> {
    seqs.map(|seq| Row { key: key.to_owned(), seq, fail: fail(seq).to_owned() }).collect()
}

/// Runs a worker of concurrency 100 on `app` until its queues are drained.
async fn drain(app: &App) -> dramaturg::WorkerReport {
    Worker::new(app.clone()).concurrency(100).run_until_drained(Duration::from_secs(60)).await.unwrap()
}

/// Waits until a worker has taken every ready message of the app's queue,
/// and a little longer for them to reach their batch.
async fn taken(app: &App) {
    let queue = app.queues()[0].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.stats(&queue).await.unwrap().ready > 0 {
        assert!(Instant::now() < deadline, "the worker did not take the messages");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// 250 messages with max 100: calls of at most 100, every message once,
/// each acknowledged; the middleware saw 250 messages, not one per batch.
async fn batches_hold_at_most_max_and_settle_each_message(app: App, counting: Arc<Counting>) {
    let key = key();
    app.send_many(&rows(&key, 0..250, |_| "")).await.unwrap();
    let report = drain(&app).await;
    let calls = calls(&key);
    assert!(calls.iter().all(|c| !c.items.is_empty() && c.items.len() <= 100), "{calls:?}");
    let mut seen: Vec<u64> = calls.iter().flat_map(|c| c.items.iter().map(|(seq, _)| *seq)).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..250).collect::<Vec<_>>(), "every message exactly once");
    assert!(calls.len() < 250 / 2, "messages were batched: {} calls", calls.len());
    assert_eq!(report.succeeded, 250, "{report:?}");
    assert_eq!(counting.0.load(Ordering::Relaxed), 250);
    let stats = app.stats(app.queues()[0].as_str()).await.unwrap();
    assert!(stats.is_drained() && stats.dead == 0, "{stats:?}");
}

/// One item fails once: only it is retried, in a later batch; one fails
/// every time: only it is dead-lettered; the others are acknowledged once.
async fn a_failing_item_is_retried_and_dead_lettered_alone(app: App, _counting: Arc<Counting>) {
    let key = key();
    let fail = |seq| match seq {
        3 => "once",
        7 => "always",
        _ => "",
    };
    app.send_many(&rows(&key, 0..10, fail)).await.unwrap();
    let report = drain(&app).await;
    let calls = calls(&key);
    let mut attempts: HashMap<u64, Vec<(u32, usize)>> = HashMap::new();
    for (n, call) in calls.iter().enumerate() {
        for (seq, retries) in &call.items {
            attempts.entry(*seq).or_default().push((*retries, n));
        }
    }
    for seq in (0..10).filter(|s| ![3, 7].contains(s)) {
        assert_eq!(attempts[&seq].len(), 1, "row {seq} ran once: {attempts:?}");
    }
    let flaky = &attempts[&3];
    assert_eq!(flaky.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [0, 1], "{attempts:?}");
    assert!(flaky[1].1 > flaky[0].1, "the retry ran in a later batch: {attempts:?}");
    assert_eq!(attempts[&7].iter().map(|(r, _)| *r).collect::<Vec<_>>(), [0, 1, 2], "{attempts:?}");
    assert_eq!((report.succeeded, report.retried, report.failed), (9, 3, 1), "{report:?}");
    let queue = app.queues()[0].clone();
    let stats = app.stats(&queue).await.unwrap();
    assert_eq!((stats.dead, stats.ready, stats.in_flight), (1, 0, 0), "{stats:?}");
    let dead = app.dead_letters().unwrap().list(&queue, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("row 7 always fails"), "{}", dead[0].reason);
}

/// Fewer messages than max are handed over once `wait` has passed.
async fn a_short_batch_is_called_after_its_wait(app: App, _counting: Arc<Counting>) {
    let key = key();
    app.send_many(&rows(&key, 0..5, |_| "")).await.unwrap();
    let report = drain(&app).await;
    let calls = calls(&key);
    assert_eq!(calls.iter().map(|c| c.items.len()).sum::<usize>(), 5, "{calls:?}");
    for call in &calls {
        assert!(call.waited >= Duration::from_millis(190), "called {:?} after the first message", call.waited);
        assert!(call.waited < Duration::from_secs(3), "called {:?} after the first message", call.waited);
    }
    assert_eq!(report.succeeded, 5);
}

/// A batch past its time limit is stopped: every message of it fails (the
/// first with its time limit, the others as stopped with it) and is
/// retried; the retries succeed, long before the handler's 20 s sleep.
async fn a_batch_past_its_time_limit_is_stopped(app: App, _counting: Arc<Counting>) {
    let key = key();
    let slow: Vec<Slow> = (0..3).map(|seq| Slow { key: key.clone(), seq, mode: "sleep".into() }).collect();
    let started = Instant::now();
    app.send_many(&slow).await.unwrap();
    let report = drain(&app).await;
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!((report.retried, report.succeeded, report.failed), (3, 3, 0), "{report:?}");
    let calls = calls(&key);
    assert!(calls.iter().any(|c| c.items.iter().all(|(_, r)| *r == 1)), "{calls:?}");
}

/// A handler that panics fails every message of its batch with the panic.
async fn a_panicking_batch_fails_each_message(app: App, _counting: Arc<Counting>) {
    let key = key();
    let slow: Vec<Slow> = (0..4).map(|seq| Slow { key: key.clone(), seq, mode: "panic".into() }).collect();
    app.send_many(&slow).await.unwrap();
    let report = drain(&app).await;
    assert_eq!((report.retried, report.succeeded), (4, 4), "{report:?}");
}

/// A message whose arguments do not decode is dead-lettered alone; the
/// others of its batch succeed.
async fn an_undecodable_item_fails_alone(app: App, _counting: Arc<Counting>) {
    let key = key();
    let queue = app.queues()[0].clone();
    app.send_many(&rows(&key, 0..4, |_| "")).await.unwrap();
    let bad =
        Call::keywords(serde_json::json!({"key": key, "seq": "not a number", "fail": ""}).as_object().unwrap().clone());
    app.send_call(Row::NAME, Row::QUEUE, &bad, SendOptions::default()).await.unwrap();
    let report = drain(&app).await;
    assert_eq!((report.succeeded, report.rejected), (4, 1), "{report:?}");
    let seen: usize = calls(&key).iter().map(|c| c.items.len()).sum();
    assert_eq!(seen, 4);
    let dead = app.dead_letters().unwrap().list(&queue, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("invalid arguments"), "{}", dead[0].reason);
}

/// At shutdown a batch still collecting is called at once with what it
/// has, rather than after its 30 s wait (or never, past the grace period).
async fn a_collecting_batch_is_called_at_shutdown(app: App, _counting: Arc<Counting>) {
    let key = key();
    let patient: Vec<Patient> = (0..3).map(|seq| Patient { key: key.clone(), seq }).collect();
    app.send_many(&patient).await.unwrap();
    let worker = Worker::new(app.clone()).concurrency(100);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    taken(&app).await;
    let stopping = Instant::now();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5), "shut down in {:?}", stopping.elapsed());
    assert_eq!(report.succeeded, 3, "{report:?}");
    assert_eq!(calls(&key).iter().map(|c| c.items.len()).collect::<Vec<_>>(), [3]);
}

/// A message aborted while its batch collects leaves it: it is settled as
/// aborted, and the handler is called with the others.
async fn an_aborted_item_leaves_its_batch(app: App, _counting: Arc<Counting>) {
    let key = key();
    let mut ids = Vec::new();
    for seq in 0..3 {
        ids.push(Gathered { key: key.clone(), seq }.send(&app).await.unwrap().id());
    }
    let worker = tokio::spawn(Worker::new(app.clone()).concurrency(100).run_until_drained(Duration::from_secs(30)));
    taken(&app).await;
    dramaturg::abort::abort(&app, ids[1], dramaturg::abort::AbortOptions::abort()).await.unwrap();
    let report = worker.await.unwrap().unwrap();
    assert_eq!((report.aborted, report.succeeded), (1, 2), "{report:?}");
    let calls = calls(&key);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let mut seen: Vec<u64> = calls[0].items.iter().map(|(seq, _)| *seq).collect();
    seen.sort_unstable();
    assert_eq!(seen, [0, 2], "the aborted message never reached the handler");
}

/// The app of the tests: the actors, and `counting` innermost in the stack.
fn with_actors(builder: dramaturg::AppBuilder, counting: Arc<Counting>) -> App {
    builder.middleware(counting).actor::<Row>().actor::<Slow>().actor::<Patient>().actor::<Gathered>().build().unwrap()
}

/// The tests, in a module whose `app(counting)` makes an app on its broker
/// (with its own namespace or queue prefix) with `counting` in its stack:
/// `name => scenario`, each scenario taking the app and the counter.
macro_rules! batch_tests {
    ($($name:ident => $scenario:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let counting = Arc::new(Counting::default());
                $scenario(app(Arc::clone(&counting)).await, counting).await;
            }
        )*
    };
}

/// Every scenario, in the module of a broker.
macro_rules! all_batch_tests {
    () => {
        batch_tests! {
            batches_hold_at_most_max => batches_hold_at_most_max_and_settle_each_message,
            a_failing_item_alone => a_failing_item_is_retried_and_dead_lettered_alone,
            wait => a_short_batch_is_called_after_its_wait,
            time_limit => a_batch_past_its_time_limit_is_stopped,
            panic => a_panicking_batch_fails_each_message,
            undecodable => an_undecodable_item_fails_alone,
            abort => an_aborted_item_leaves_its_batch,
            shutdown => a_collecting_batch_is_called_at_shutdown,
        }
    };
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;

    async fn app(counting: Arc<Counting>) -> App {
        let broker = support::redis_broker("redis://127.0.0.1:6379", &support::namespace()).await;
        with_actors(dramaturg::app(broker), counting)
    }

    all_batch_tests!();
}

#[cfg(feature = "amqp")]
mod amqp {
    use super::*;

    async fn app(counting: Arc<Counting>) -> App {
        let config = dramaturg::amqp::AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")
            .expire_unused_queues(Duration::from_secs(120));
        let broker = dramaturg::amqp::AmqpBroker::with_config(config).await.unwrap();
        let prefix = format!("test-{}-", dramaturg::MessageId::new());
        // Abort requests in this process's memory: RabbitMQ has no store,
        // and the worker of these tests runs in this process.
        let abortable = dramaturg::abort::Abortable::new(dramaturg::store::MemoryStore::new()).process_local_events();
        let builder = dramaturg::app(broker).replace(dramaturg::middleware::names::ABORT, abortable);
        with_actors(builder.queue_prefix(&prefix), counting)
    }

    all_batch_tests!();
}
