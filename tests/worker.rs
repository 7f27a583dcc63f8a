//! The worker: bad input, isolation of panics, hangs and failures, blocking
//! actors, graceful shutdown, tracing.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::{BoxError, DeadLetters, Json, Outgoing, QueueAdmin};
use serde::{Deserialize, Serialize};

/// Counts successful runs of [`Echo`]; tests filter by their own key.
static ECHOED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn echoed(key: &str) -> usize {
    ECHOED.lock().unwrap().iter().filter(|k| k.as_str() == key).count()
}

#[derive(Actor, Serialize, Deserialize)]
struct Echo {
    key: String,
}

impl Echo {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        ECHOED.lock().unwrap().push(self.key);
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
struct Panics;

impl Panics {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        panic!("this actor always panics")
    }
}

#[derive(Actor, Serialize, Deserialize)]
struct Hangs;

impl Hangs {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
struct Fails {
    n: u32,
}

impl Fails {
    async fn perform(self, _ctx: &Context) -> Result<(), String> {
        Err(format!("failure number {}", self.n))
    }
}

fn app(broker: &MemoryBroker, prefix: &str) -> App {
    App::builder(broker.clone())
        .queue_prefix(prefix)
        .actor::<Echo>()
        .actor::<Panics>()
        .actor::<Hangs>()
        .actor::<Fails>()
        .build()
        .unwrap()
}

async fn dead_reasons(broker: &MemoryBroker, queue: &str) -> Vec<String> {
    broker.list(queue, 100).await.unwrap().into_iter().map(|d| d.reason).collect()
}

#[tokio::test]
async fn undecodable_bytes_are_dead_lettered_and_the_worker_goes_on() {
    let broker = MemoryBroker::new();
    let app = app(&broker, "garbage-");
    let queue = "garbage-default";
    dramaturg::Broker::enqueue(&broker, Outgoing::new(queue, &b"\xc1\xffnot msgpack"[..])).await.unwrap();
    Echo { key: "after-garbage".into() }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.rejected, report.succeeded), (1, 1), "{report:?}");
    assert_eq!(echoed("after-garbage"), 1);
    let reasons = dead_reasons(&broker, queue).await;
    assert!(reasons[0].starts_with("undecodable message (13 bytes): cannot decode"), "{reasons:?}");
}

#[tokio::test]
async fn unknown_actors_are_dead_lettered_with_their_name() {
    let broker = MemoryBroker::new();
    let sender = app(&broker, "unknown-");
    // A worker that knows only Echo receives a message for Fails.
    let worker_app = App::builder(broker.clone()).queue_prefix("unknown-").actor::<Echo>().build().unwrap();
    Fails { n: 1 }.send(&sender).await.unwrap();
    Echo { key: "after-unknown".into() }.send(&sender).await.unwrap();
    let report = Worker::new(worker_app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.rejected, report.succeeded), (1, 1), "{report:?}");
    assert_eq!(dead_reasons(&broker, "unknown-default").await, [r#"no actor named "fails" is registered in this app"#]);
}

/// Same name as [`Echo`], different argument shape.
#[derive(Actor, Serialize, Deserialize)]
#[actor(name = "echo")]
struct EchoV2 {
    key: u64,
    extra: Vec<u8>,
}

impl EchoV2 {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test]
async fn arguments_of_the_wrong_shape_are_dead_lettered() {
    let broker = MemoryBroker::new();
    let sender = App::builder(broker.clone()).queue_prefix("shape-").actor::<EchoV2>().build().unwrap();
    EchoV2 { key: 1, extra: vec![1] }.send(&sender).await.unwrap();
    let app = app(&broker, "shape-");
    Echo { key: "after-shape".into() }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.rejected, report.succeeded), (1, 1), "{report:?}");
    let reasons = dead_reasons(&broker, "shape-default").await;
    assert!(reasons[0].starts_with(r#"invalid arguments for actor "echo": cannot decode"#), "{reasons:?}");
}

#[tokio::test]
async fn options_of_the_wrong_type_are_dead_lettered_with_the_option_named() {
    let broker = MemoryBroker::new();
    let app = App::builder(broker.clone()).queue_prefix("opt-").encoder(Json).actor::<Echo>().build().unwrap();
    let body = format!(
        r#"{{"id":"{}","queue":"opt-default","actor":"echo","args":{{"key":"x"}},"options":{{"max_retries":"five"}},"enqueued_at_ms":0,"retries":0}}"#,
        dramaturg::MessageId::new()
    );
    dramaturg::Broker::enqueue(&broker, Outgoing::new("opt-default", body.into_bytes())).await.unwrap();
    Echo { key: "after-option".into() }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.rejected, report.succeeded), (1, 1), "{report:?}");
    let reasons = dead_reasons(&broker, "opt-default").await;
    assert!(reasons[0].contains("option `max_retries` has a value of the wrong type"), "{reasons:?}");
}

#[tokio::test]
async fn a_panicking_actor_fails_its_message_only() {
    let broker = MemoryBroker::new();
    let app = app(&broker, "panic-");
    for _ in 0..3 {
        Panics.send(&app).await.unwrap();
    }
    for _ in 0..10 {
        Echo { key: "after-panic".into() }.send(&app).await.unwrap();
    }
    let report = Worker::new(app).concurrency(2).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.failed, report.succeeded), (3, 10), "{report:?}");
    assert_eq!(echoed("after-panic"), 10);
    assert!(dead_reasons(&broker, "panic-default").await.iter().all(|r| r == "panic: this actor always panics"));
}

#[tokio::test]
async fn a_hung_actor_does_not_block_others_nor_shutdown() {
    let broker = MemoryBroker::new();
    let app = app(&broker, "hang-");
    Hangs.send(&app).await.unwrap();
    for _ in 0..50 {
        Echo { key: "beside-hang".into() }.send(&app).await.unwrap();
    }
    let worker = Worker::new(app.clone()).concurrency(2).grace_period(Duration::from_millis(300));
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let deadline = Instant::now() + Duration::from_secs(5);
    while echoed("beside-hang") < 50 {
        assert!(Instant::now() < deadline, "the other messages were blocked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopping = Instant::now();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    let took = stopping.elapsed();
    assert!(took < Duration::from_millis(300 + 250), "shutdown took {took:?}");
    assert_eq!((report.succeeded, report.requeued), (50, 1), "{report:?}");
    let stats = broker.stats("hang-default").await.unwrap();
    assert_eq!((stats.ready, stats.in_flight), (1, 0), "the hung message is back in its queue");
}

#[tokio::test]
async fn a_thousand_failures_do_not_stop_the_rest() {
    let broker = MemoryBroker::new();
    let app = app(&broker, "failures-");
    for n in 0..1000 {
        Fails { n }.send(&app).await.unwrap();
        if n % 10 == 0 {
            Echo { key: "between-failures".into() }.send(&app).await.unwrap();
        }
    }
    let report = Worker::new(app).concurrency(8).run_until_drained(Duration::from_secs(20)).await.unwrap();
    assert_eq!((report.failed, report.succeeded), (1000, 100), "{report:?}");
    let dead = broker.list("failures-default", 10_000).await.unwrap();
    assert_eq!(dead.len(), 1000);
    assert!(dead[0].reason.ends_with(": failure number 0"), "{}", dead[0].reason);
}

#[derive(Actor, Serialize, Deserialize)]
struct Slow {
    millis: u64,
}

static SLOW_DONE: AtomicU64 = AtomicU64::new(0);

impl Slow {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        SLOW_DONE.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn nothing_is_lost_across_a_shutdown() {
    let broker = MemoryBroker::new();
    let app = App::builder(broker.clone()).queue_prefix("lost-").actor::<Slow>().build().unwrap();
    let total = 200;
    for i in 0..total {
        // A mix: most finish within the grace period, some do not.
        Slow { millis: if i % 7 == 0 { 2_000 } else { 20 } }.send(&app).await.unwrap();
    }
    let worker = Worker::new(app).concurrency(16).grace_period(Duration::from_millis(200));
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(150)).await;
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    let stats = broker.stats("lost-default").await.unwrap();
    let done = SLOW_DONE.load(Ordering::SeqCst);
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    assert!(report.requeued > 0, "some messages were interrupted: {report:?}");
    assert_eq!(report.succeeded, done);
    assert_eq!(done + stats.ready, total, "processed {done} + back in the queue {} = {total}", stats.ready);
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(blocking, output = u64)]
struct Checksum {
    rounds: u64,
}

impl Checksum {
    fn perform(self, ctx: &Context) -> Result<u64, BoxError> {
        let mut x = u64::from(ctx.retries()) + 1;
        for i in 0..self.rounds {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        if self.rounds == 0 {
            panic!("no rounds");
        }
        Ok(x)
    }
}

#[tokio::test]
async fn blocking_actors_run_on_the_blocking_pool_and_panics_are_caught() {
    let broker = MemoryBroker::new();
    let app = App::builder(broker.clone()).queue_prefix("blocking-").actor::<Checksum>().build().unwrap();
    assert!(app.actor("checksum").unwrap().blocking());
    for rounds in [10_000, 20_000, 0] {
        Checksum { rounds }.send(&app).await.unwrap();
    }
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.succeeded, report.failed), (2, 1), "{report:?}");
    assert_eq!(dead_reasons(&broker, "blocking-default").await, ["panic: no rounds"]);
}

#[tokio::test]
async fn json_encoded_apps_work_end_to_end() {
    let broker = MemoryBroker::new();
    let app = App::builder(broker.clone()).queue_prefix("json-").encoder(Json).actor::<Echo>().build().unwrap();
    Echo { key: "json".into() }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.succeeded, 1);
    assert_eq!(echoed("json"), 1);
}

#[tokio::test]
async fn delayed_messages_run_after_their_delay() {
    let broker = MemoryBroker::new();
    let app = app(&broker, "delay-");
    let sent = Instant::now();
    Echo { key: "delayed".into() }
        .send_with(&app, SendOptions::default().with_delay(Duration::from_millis(300)))
        .await
        .unwrap();
    Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(echoed("delayed"), 1);
    assert!(sent.elapsed() >= Duration::from_millis(300));
}

#[test]
fn every_message_has_a_span_with_id_actor_queue_and_retries() {
    let captured = support::Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber(tracing::Level::DEBUG));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let id = runtime.block_on(async {
        let broker = MemoryBroker::new();
        let app = app(&broker, "traced-");
        let id = Fails { n: 9 }.send(&app).await.unwrap();
        Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
        id
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let span = format!("message{{id={id} actor=fails queue=traced-default retries=0}}");
    for event in ["message started", "message failed"] {
        assert!(text.lines().any(|l| l.contains(&span) && l.contains(event)), "no {event:?} in {span}:\n{text}");
    }
    assert!(text.contains("elapsed="), "{text}");
    assert!(text.contains("error=alloc::string::String: failure number 9"), "{text}");
}

/// What tracing printed while `run` ran on a current-thread runtime.
fn logged<F: std::future::Future>(run: impl FnOnce() -> F) -> String {
    let captured = support::Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber(tracing::Level::WARN));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(run());
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    text
}

#[test]
fn a_worker_warns_once_when_its_app_has_no_error_capture() {
    let bare = logged(|| async {
        let app = App::builder(MemoryBroker::new()).queue_prefix("bare-").actor::<Echo>().build().unwrap();
        Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    });
    assert_eq!(bare.matches("no middleware named error_capture").count(), 1, "{bare}");
    let defaults = logged(|| async {
        let app = dramaturg::app(MemoryBroker::new()).queue_prefix("full-").actor::<Echo>().build().unwrap();
        Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    });
    assert!(!defaults.contains("error_capture"), "{defaults}");
}

/// Sleeps past its time limit.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "observed", time_limit = "50ms", max_retries = 0)]
struct Overruns;

impl Overruns {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok(())
    }
}

/// Records the ends of attempts it observes; not part of the chain.
#[derive(Default)]
struct Observer {
    started: AtomicU64,
    ended: Mutex<Vec<&'static str>>,
    handled: AtomicU64,
}

#[async_trait]
impl Middleware for Observer {
    fn name(&self) -> &'static str {
        "observer"
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        self.handled.fetch_add(1, Ordering::Relaxed);
        next.run(ctx).await
    }

    fn wraps(&self) -> bool {
        false
    }

    fn observes_attempts(&self) -> bool {
        true
    }

    fn on_attempt_start(&self, _ctx: &Context) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    fn on_attempt_end(&self, _ctx: &Context, outcome: &Outcome) {
        self.ended.lock().unwrap().push(outcome.label());
    }
}

/// An observer sees both ends of every attempt wherever it is in the
/// stack — innermost here, where a wrapping middleware would not see the
/// time limit cut the attempt short — and is not called as a link of the
/// chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_sees_every_attempt_without_being_in_the_chain() {
    let observer = Arc::new(Observer::default());
    let app = dramaturg::app(MemoryBroker::new())
        .middleware(Arc::clone(&observer))
        .actor::<Overruns>()
        .actor_in::<Echo>("observed")
        .build()
        .unwrap();
    assert_eq!(app.middleware_names().last(), Some(&"observer"));
    Overruns.send(&app).await.unwrap();
    Echo { key: "observed".into() }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(30)).await.unwrap();
    assert_eq!((report.succeeded, report.failed), (1, 1), "{report:?}");
    assert_eq!(observer.started.load(Ordering::Relaxed), 2);
    let mut ended = observer.ended.lock().unwrap().clone();
    ended.sort_unstable();
    assert_eq!(ended, ["failed", "succeeded"]);
    assert_eq!(observer.handled.load(Ordering::Relaxed), 0);
}
