//! Cancelling and aborting messages, on the in-memory broker and store,
//! on Redis and RabbitMQ with the Redis store, and on PostgreSQL with its
//! own store.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

#[cfg(feature = "postgres")]
mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dramaturg::abort::{abort, AbortOptions};
use dramaturg::prelude::*;
use dramaturg::retries::Retries;
use dramaturg::{BoxError, DeadLetters, MessageId, ShutdownHandle, WorkerReport};
use serde::{Deserialize, Serialize};

/// What actors did, by tag: "start", "tick", "end", "dropped", "saw <ms>".
static EVENTS: Mutex<Vec<(String, String, Instant)>> = Mutex::new(Vec::new());

fn event(tag: &str, what: impl Into<String>) {
    EVENTS.lock().unwrap().push((tag.to_owned(), what.into(), Instant::now()));
}

fn events(tag: &str) -> Vec<String> {
    EVENTS.lock().unwrap().iter().filter(|(t, ..)| t == tag).map(|(_, w, _)| w.clone()).collect()
}

fn when(tag: &str, what: &str) -> Option<Instant> {
    EVENTS.lock().unwrap().iter().find(|(t, w, _)| t == tag && w == what).map(|(.., at)| *at)
}

struct DropProbe(String);

impl Drop for DropProbe {
    fn drop(&mut self) {
        event(&self.0, "dropped");
    }
}

/// Loops on short sleeps until told to stop, or fails on its first attempt.
#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = 3, min_backoff = "800ms", max_backoff = "800ms")]
struct Looper {
    tag: String,
    /// Stop by itself once an abort is requested.
    polite: bool,
    fail_first: bool,
    ticks: u32,
}

impl Looper {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        event(&self.tag, "start");
        let _probe = DropProbe(self.tag.clone());
        if self.fail_first && ctx.retries() == 0 {
            return Err("first attempt fails".into());
        }
        for _ in 0..self.ticks {
            if let Some(left) = ctx.abort_requested() {
                event(&self.tag, format!("saw {}", dramaturg::time::millis(left) / 100 * 100));
                if self.polite {
                    event(&self.tag, "end");
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        event(&self.tag, "end");
        Ok(())
    }
}

fn looper(tag: &str) -> Looper {
    Looper { tag: tag.to_owned(), polite: false, fail_first: false, ticks: 2000 }
}

fn tag() -> String {
    MessageId::new().to_string()
}

async fn wait_for_event(tag: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while when(tag, what).is_none() {
        assert!(Instant::now() < deadline, "no {what:?} for {tag}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn memory_app(broker: &MemoryBroker) -> App {
    dramaturg::app(broker.clone()).actor::<Looper>().actor::<Crunch>().build().unwrap()
}

/// A worker running in the background.
type Running = (ShutdownHandle, tokio::task::JoinHandle<Result<WorkerReport, dramaturg::WorkerError>>);

/// Runs a worker on `app` in the background.
fn start(app: &App) -> Running {
    let worker = Worker::new(app.clone()).concurrency(8);
    let handle = worker.shutdown_handle();
    (handle, tokio::spawn(worker.run()))
}

async fn finish(app: &App, running: Running) -> WorkerReport {
    app.join(Duration::from_secs(20)).await.unwrap();
    running.0.shutdown();
    running.1.await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_message_that_has_not_started_is_skipped_and_acknowledged() {
    let broker = MemoryBroker::new();
    let app = memory_app(&broker);
    let tag = tag();
    let id = looper(&tag).send_with(&app, SendOptions::default().with_delay(Duration::from_millis(300))).await.unwrap();
    abort(&app, id, AbortOptions::cancel()).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.aborted, report.succeeded, report.failed), (1, 0, 0), "{report:?}");
    assert!(events(&tag).is_empty(), "it never ran");
    assert!(broker.list("default", 10).await.unwrap().is_empty(), "not dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_running_actor_is_interrupted_at_once_and_never_retried() {
    let broker = MemoryBroker::new();
    let app = memory_app(&broker);
    let running = start(&app);
    let tag = tag();
    let id = looper(&tag).send(&app).await.unwrap();
    wait_for_event(&tag, "start").await;
    let asked = Instant::now();
    abort(&app, id, AbortOptions::abort()).await.unwrap();
    wait_for_event(&tag, "dropped").await;
    assert!(when(&tag, "dropped").unwrap() - asked < Duration::from_millis(50));
    let report = finish(&app, running).await;
    assert_eq!((report.aborted, report.retried, report.failed), (1, 0, 0), "{report:?}");
    assert!(!events(&tag).contains(&"end".to_owned()));
    assert_eq!(events(&tag).iter().filter(|e| *e == "start").count(), 1, "never retried");
    assert!(broker.list("default", 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_is_visible_to_the_actor_before_it_is_interrupted() {
    let broker = MemoryBroker::new();
    let app = memory_app(&broker);
    let running = start(&app);
    let (polite, stubborn) = (tag(), tag());
    let polite_id = Looper { polite: true, ..looper(&polite) }.send(&app).await.unwrap();
    let stubborn_id = looper(&stubborn).send(&app).await.unwrap();
    wait_for_event(&polite, "start").await;
    wait_for_event(&stubborn, "start").await;
    let asked = Instant::now();
    let grace = AbortOptions::abort().with_grace(Duration::from_millis(400));
    abort(&app, polite_id, grace).await.unwrap();
    abort(&app, stubborn_id, grace).await.unwrap();
    let report = finish(&app, running).await;
    // The polite one saw about 400 ms left and stopped cleanly.
    assert_eq!(events(&polite)[1], "saw 300", "{:?}", events(&polite));
    assert!(events(&polite).contains(&"end".to_owned()));
    // The stubborn one was interrupted when the grace period ran out.
    let interrupted = when(&stubborn, "dropped").unwrap() - asked;
    assert!(interrupted >= Duration::from_millis(400) && interrupted < Duration::from_millis(500), "{interrupted:?}");
    assert!(!events(&stubborn).contains(&"end".to_owned()));
    assert_eq!((report.succeeded, report.aborted), (1, 1), "{report:?}");
}

/// Runs a subprocess that must die with the actor.
#[derive(Actor, Serialize, Deserialize)]
struct Subprocess {
    tag: String,
}

impl Subprocess {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        let child = tokio::process::Command::new("sleep").arg("30").kill_on_drop(true).spawn()?;
        event(&self.tag, format!("pid {}", child.id().unwrap_or(0)));
        child.wait_with_output().await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subprocess_spawned_with_kill_on_drop_dies_with_the_aborted_actor() {
    let app = dramaturg::app(MemoryBroker::new()).actor::<Subprocess>().build().unwrap();
    let running = start(&app);
    let tag = tag();
    let id = Subprocess { tag: tag.clone() }.send(&app).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = events(&tag).iter().find_map(|e| e.strip_prefix("pid ").map(str::to_owned)) {
            break pid;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    abort(&app, id, AbortOptions::abort()).await.unwrap();
    let report = finish(&app, running).await;
    assert_eq!(report.aborted, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    // The child is gone (kill -0 fails once it has been reaped).
    while std::process::Command::new("kill")
        .args(["-0", &pid])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "the subprocess outlived its actor");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A blocking actor that stops when asked.
#[derive(Actor, Serialize, Deserialize)]
#[actor(blocking)]
struct Crunch {
    tag: String,
}

impl Crunch {
    fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        event(&self.tag, "start");
        for _ in 0..1000 {
            if ctx.abort_requested().is_some() {
                event(&self.tag, "stopped");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        event(&self.tag, "end");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_actor_stops_cooperatively() {
    let app = memory_app(&MemoryBroker::new());
    let running = start(&app);
    let tag = tag();
    let id = Crunch { tag: tag.clone() }.send(&app).await.unwrap();
    wait_for_event(&tag, "start").await;
    abort(&app, id, AbortOptions::abort()).await.unwrap();
    wait_for_event(&tag, "stopped").await;
    let report = finish(&app, running).await;
    assert_eq!(report.aborted, 1, "{report:?}");
    assert!(!events(&tag).contains(&"end".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outlive_their_ttl_until_a_delayed_or_retrying_message_is_due() {
    let broker = MemoryBroker::new();
    let app = memory_app(&broker);
    let (delayed, retrying) = (tag(), tag());
    let short = AbortOptions::cancel().with_ttl(Duration::from_millis(100));
    let id =
        looper(&delayed).send_with(&app, SendOptions::default().with_delay(Duration::from_millis(700))).await.unwrap();
    abort(&app, id, short).await.unwrap();

    let running = start(&app);
    let id = Looper { fail_first: true, ticks: 1, ..looper(&retrying) }.send(&app).await.unwrap();
    wait_for_event(&retrying, "dropped").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    abort(&app, id, short).await.unwrap();
    let report = finish(&app, running).await;
    assert!(events(&delayed).is_empty(), "the delayed message was cancelled");
    assert_eq!(events(&retrying).iter().filter(|e| *e == "start").count(), 1, "its retry was cancelled");
    assert_eq!((report.aborted, report.retried), (2, 1), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_finished_and_repeated_aborts_are_harmless() {
    let app = memory_app(&MemoryBroker::new());
    abort(&app, MessageId::new(), AbortOptions::abort()).await.unwrap();
    let tag = tag();
    let id = Looper { ticks: 1, ..looper(&tag) }.send(&app).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.succeeded, 1);
    abort(&app, id, AbortOptions::abort()).await.unwrap();
    abort(&app, id, AbortOptions::abort()).await.unwrap();
    let bare = App::builder(MemoryBroker::new()).build().unwrap();
    assert!(matches!(abort(&bare, id, AbortOptions::abort()).await, Err(dramaturg::abort::AbortError::NotConfigured)));
}

/// Cannot be aborted.
#[derive(Actor, Serialize, Deserialize)]
#[actor(abortable = false)]
struct Vital {
    tag: String,
}

impl Vital {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        event(&self.tag, "start");
        tokio::time::sleep(Duration::from_millis(200)).await;
        event(&self.tag, "end");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_and_messages_can_opt_out() {
    let app = dramaturg::app(MemoryBroker::new()).actor::<Vital>().actor::<Looper>().build().unwrap();
    let running = start(&app);
    let (vital, opted_out) = (tag(), tag());
    let vital_id = Vital { tag: vital.clone() }.send(&app).await.unwrap();
    let options = SendOptions::default().with_options(|o| o.with_extra("abortable", false));
    let opted_out_id = Looper { ticks: 40, ..looper(&opted_out) }.send_with(&app, options).await.unwrap();
    wait_for_event(&vital, "start").await;
    wait_for_event(&opted_out, "start").await;
    abort(&app, vital_id, AbortOptions::abort()).await.unwrap();
    abort(&app, opted_out_id, AbortOptions::abort()).await.unwrap();
    let report = finish(&app, running).await;
    assert_eq!((report.succeeded, report.aborted), (2, 0), "{report:?}");
}

/// A producer and a worker that share only the servers; with `events`,
/// each is given its abort middleware (a store of its own), otherwise they
/// keep the default stack's, on the broker's store.
#[cfg(any(feature = "redis", feature = "postgres"))]
async fn abort_across_processes(
    worker_broker: impl dramaturg::Broker + Clone,
    producer_broker: impl dramaturg::Broker,
    events: Option<[dramaturg::abort::Abortable; 2]>,
) {
    let prefix = format!("abort-{}-", MessageId::new());
    let mut worker_app = dramaturg::app(worker_broker.clone())
        .queue_prefix(&prefix)
        .replace("retries", Retries::new().max_retries(0))
        .actor::<Looper>();
    let mut producer = dramaturg::app(producer_broker).queue_prefix(&prefix).actor::<Looper>();
    if let Some([for_worker, for_producer]) = events {
        worker_app = worker_app.replace("abort", for_worker);
        producer = producer.replace("abort", for_producer);
    }
    let (worker_app, producer) = (worker_app.build().unwrap(), producer.build().unwrap());
    let running = start(&worker_app);
    let tag = tag();
    let id = looper(&tag).send(&producer).await.unwrap();
    wait_for_event(&tag, "start").await;
    let asked = Instant::now();
    abort(&producer, id, AbortOptions::abort()).await.unwrap();
    wait_for_event(&tag, "dropped").await;
    assert!(when(&tag, "dropped").unwrap() - asked < Duration::from_millis(100));
    let report = finish(&worker_app, running).await;
    assert_eq!(report.aborted, 1, "{report:?}");
    let stats = worker_broker.admin().unwrap().stats(&worker_app.queues()[0]).await.unwrap();
    assert!(stats.is_drained() && stats.dead == 0, "{stats:?}");
}

#[cfg(feature = "redis")]
mod across_processes {
    use dramaturg::abort::Abortable;
    use dramaturg::redis::RedisStore;

    use super::*;

    /// An abort middleware for the worker and one for the producer, each
    /// on a Redis store of its own.
    async fn redis_events() -> Option<[Abortable; 2]> {
        let events = || async { Abortable::new(RedisStore::connect("redis://127.0.0.1:6379").await.unwrap()) };
        Some([events().await, events().await])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_the_redis_broker() {
        let broker = || async { dramaturg::redis::RedisBroker::connect("redis://127.0.0.1:6379").await.unwrap() };
        abort_across_processes(broker().await, broker().await, redis_events().await).await;
    }

    /// `dramaturg::app` on a Redis broker keeps abort requests in that
    /// Redis, so a producer's `abort` reaches a worker elsewhere (two apps
    /// that share nothing but the server).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_default_stack_on_the_redis_broker_aborts_across_processes() {
        let broker = || async { dramaturg::redis::RedisBroker::connect("redis://127.0.0.1:6379").await.unwrap() };
        abort_across_processes(broker().await, broker().await, None).await;
    }

    /// The same on the local Redis Cluster of scripts/services: the abort
    /// requests' keys lie in slots apart from the queue's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_default_stack_on_a_redis_cluster_aborts_across_processes() {
        let url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002/";
        let broker = || async { dramaturg::redis::RedisBroker::connect(url).await.unwrap() };
        abort_across_processes(broker().await, broker().await, None).await;
    }

    /// A worker looks for a message's request only while the namespace
    /// may hold one (see the crate docs): a cancel made by another process
    /// while the worker idles in a namespace that never held a request
    /// still reaches it, and the message due a moment later is skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_made_while_the_worker_idles_reaches_it() {
        use dramaturg::redis::{RedisBroker, RedisConfig};

        let namespace = format!("test-{}", MessageId::new());
        let config = RedisConfig::new("redis://127.0.0.1:6379").namespace(&namespace);
        let worker_app =
            dramaturg::app(RedisBroker::with_config(config.clone()).await.unwrap()).actor::<Looper>().build().unwrap();
        let producer =
            dramaturg::app(RedisBroker::with_config(config).await.unwrap()).actor::<Looper>().build().unwrap();
        let running = start(&worker_app);
        // The worker finds no request in its namespace and waits for one.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tag = tag();
        let delayed = SendOptions::default().with_delay(Duration::from_millis(300));
        let id = looper(&tag).send_with(&producer, delayed).await.unwrap();
        abort(&producer, id, AbortOptions::cancel()).await.unwrap();
        let report = finish(&worker_app, running).await;
        assert_eq!((report.aborted, report.succeeded), (1, 0), "{report:?}");
        assert!(events(&tag).is_empty(), "it never ran");
    }

    #[cfg(feature = "amqp")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_the_amqp_broker() {
        let config = || {
            dramaturg::amqp::AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")
                .expire_unused_queues(Duration::from_secs(120))
        };
        let broker = || async { dramaturg::amqp::AmqpBroker::with_config(config()).await.unwrap() };
        abort_across_processes(broker().await, broker().await, redis_events().await).await;
    }

    /// With RabbitMQ and no shared store, `abort` says what to
    /// configure instead of returning `Ok` for a request no other process
    /// would hear of; the explicit opt-in for one process still works.
    #[cfg(feature = "amqp")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_default_stack_on_the_amqp_broker_refuses_aborts_it_cannot_deliver() {
        use dramaturg::abort::AbortError;

        let config = dramaturg::amqp::AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")
            .expire_unused_queues(Duration::from_secs(120));
        let broker = dramaturg::amqp::AmqpBroker::with_config(config).await.unwrap();
        let prefix = format!("abort-{}-", MessageId::new());
        let app = dramaturg::app(broker.clone()).queue_prefix(&prefix).actor::<Looper>().build().unwrap();
        let error = abort(&app, MessageId::new(), AbortOptions::abort()).await.unwrap_err();
        assert!(matches!(error, AbortError::EventsNotShared { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.contains("RedisStore") && text.contains("process_local_events"), "{text}");
        assert!(!text.contains("guest:guest"), "no password in {text}");

        let one_process = dramaturg::app(broker)
            .queue_prefix(&prefix)
            .replace("abort", Abortable::new(dramaturg::MemoryStore::new()).process_local_events())
            .actor::<Looper>()
            .build()
            .unwrap();
        abort(&one_process, MessageId::new(), AbortOptions::abort()).await.unwrap();
    }
}

/// The default stack on the PostgreSQL broker keeps abort requests in its
/// database (its store), so a producer's `abort` reaches a worker that
/// shares nothing with it but the database, and interrupts the running
/// actor at once.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_stack_on_the_postgres_broker_aborts_a_running_message_across_processes() {
    use support::postgres::{broker_in, own_schema};

    let (schema, _drop) = own_schema();
    abort_across_processes(broker_in(&schema).await, broker_in(&schema).await, None).await;
}
