//! Long and CPU-bound jobs on the in-memory broker: blocking attempts hold
//! their slot until their thread ends, and a runtime thread held by an
//! async actor is noticed and named.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dramaturg::prelude::*;
use dramaturg::BoxError;
use serde::{Deserialize, Serialize};

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST_AT_ONCE: AtomicUsize = AtomicUsize::new(0);
static ENDED: AtomicUsize = AtomicUsize::new(0);

/// Sleeps 3 s, never looking at its context, with a 200 ms limit.
#[derive(Actor, Serialize, Deserialize)]
#[actor(blocking, time_limit = "200ms", max_retries = 3, min_backoff = "10ms", max_backoff = "20ms")]
struct Sleeper {}

impl Sleeper {
    fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        MOST_AT_ONCE.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(3));
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        ENDED.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// With `concurrency(1)`, a blocking actor with a 200 ms limit
/// and 3 retries whose body sleeps 3 s. The attempts never overlap, every
/// thread has ended when the worker returns, and the overruns are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_attempt_past_its_limit_holds_its_slot_until_its_thread_ends() {
    let broker = MemoryBroker::new();
    let app = dramaturg::app(broker.clone()).actor::<Sleeper>().build().unwrap();
    Sleeper {}.send(&app).await.unwrap();
    let worker = Worker::new(app).concurrency(1);
    let gauges = worker.gauges();
    let running = tokio::spawn(worker.run_until_drained(Duration::from_secs(30)));
    // The first attempt times out at 200 ms and its thread sleeps on: the
    // gauge shows it while it runs past its attempt.
    let mut most_overrunning = 0;
    while !running.is_finished() {
        most_overrunning = most_overrunning.max(gauges.overrunning_threads());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = running.await.unwrap().unwrap();
    assert_eq!(most_overrunning, 1, "one thread at a time overran its attempt");
    assert_eq!(gauges.overrunning_threads(), 0);
    assert_eq!(MOST_AT_ONCE.load(Ordering::SeqCst), 1, "attempts overlapped");
    assert_eq!(RUNNING.load(Ordering::SeqCst), 0, "a thread still runs after the worker returned");
    assert_eq!(ENDED.load(Ordering::SeqCst), 4);
    assert_eq!((report.retried, report.failed), (3, 1), "{report:?}");
    assert_eq!(report.overran_threads, 4, "{report:?}");
    let dead = dramaturg::DeadLetters::list(&broker, "default", 1).await.unwrap();
    assert!(dead[0].reason.contains("time limit exceeded"), "{}", dead[0].reason);
}

/// An async actor that holds its runtime thread for 600 ms.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "hogs")]
struct Hog {}

impl Hog {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        std::thread::sleep(Duration::from_millis(600));
        Ok(())
    }
}

/// An async actor that yields often: never reported.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "hogs")]
struct Polite {}

impl Polite {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(10));
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

/// An async actor that holds a runtime thread past the
/// threshold is named once, at WARN, and every such message is counted.
#[test]
fn a_blocked_runtime_thread_is_noticed_and_the_actor_named_once() {
    let captured = support::Captured::default();
    let _guard = tracing::subscriber::set_global_default(captured.subscriber(tracing::Level::WARN));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = runtime.block_on(async {
        let app = dramaturg::app(MemoryBroker::new()).actor::<Hog>().actor::<Polite>().build().unwrap();
        for _ in 0..2 {
            Hog {}.send(&app).await.unwrap();
        }
        Polite {}.send(&app).await.unwrap();
        Worker::new(app)
            .concurrency(1)
            .blocked_runtime_threshold(Duration::from_millis(200))
            .run_until_drained(Duration::from_secs(10))
            .await
            .unwrap()
    });
    assert_eq!((report.succeeded, report.blocked_runtime), (3, 2), "{report:?}");
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("blocked a runtime thread")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains(" WARN "), "{}", lines[0]);
    assert!(lines[0].contains("actor \"hog\" blocked a runtime thread for 0."), "{}", lines[0]);
    assert!(lines[0].contains("mark it `blocking` or `isolated`"), "{}", lines[0]);
}
