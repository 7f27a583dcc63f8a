//! The time-limit middleware on the in-memory broker.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::retries::Retries;
use dramaturg::time_limit::{Limit, TimeLimit, TimeLimitExceeded};
use dramaturg::{BoxError, DeadLetters, FailureKind, Interrupted, Interruption};
use serde::{Deserialize, Serialize};

/// What each test's actor saw, by key.
static EVENTS: Mutex<Vec<(String, &'static str, Instant)>> = Mutex::new(Vec::new());

fn event(key: &str, what: &'static str) {
    EVENTS.lock().unwrap().push((key.to_owned(), what, Instant::now()));
}

fn when(key: &str, what: &str) -> Option<Instant> {
    EVENTS.lock().unwrap().iter().find(|(k, w, _)| k == key && *w == what).map(|(.., t)| *t)
}

/// Records when the actor's future is dropped.
struct DropProbe(String);

impl Drop for DropProbe {
    fn drop(&mut self) {
        event(&self.0, "dropped");
    }
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = 0)]
struct Work {
    key: String,
    /// Total work, in 20 ms steps.
    steps: u32,
    heartbeat: bool,
    extend_ms: u64,
}

impl Work {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        event(&self.key, "started");
        let _probe = DropProbe(self.key.clone());
        ctx.extend_deadline(Duration::from_millis(self.extend_ms));
        for _ in 0..self.steps {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.heartbeat {
                ctx.heartbeat();
            }
        }
        event(&self.key, "finished");
        Ok(())
    }
}

/// Keeps what the failures looked like from outside the time limit.
struct Observe(Seen);

#[async_trait]
impl Middleware for Observe {
    fn name(&self) -> &'static str {
        "observe"
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let outcome = next.run(ctx).await;
        if let Outcome::Failed(failure) = &outcome {
            let limit = failure.downcast_ref::<TimeLimitExceeded>().map(|e| e.limit);
            self.0.lock().unwrap().push((failure.kind(), limit));
        }
        outcome
    }
}

type Seen = Arc<Mutex<Vec<(FailureKind, Option<Limit>)>>>;

fn app(limits: TimeLimit, seen: &Seen) -> App {
    dramaturg::app(MemoryBroker::new())
        .replace("time_limit", limits)
        .insert_before("time_limit", Observe(Arc::clone(seen)))
        .actor::<Work>()
        .actor::<Crunch>()
        .build()
        .unwrap()
}

fn work(key: &str, steps: u32, heartbeat: bool, extend_ms: u64) -> Work {
    Work { key: key.into(), steps, heartbeat, extend_ms }
}

#[tokio::test]
async fn an_async_actor_is_stopped_within_50ms_of_its_deadline() {
    let seen = Seen::default();
    let app = app(TimeLimit::new().time_limit(Duration::from_millis(200)), &seen);
    work("deadline", 500, false, 0).send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    let started = when("deadline", "started").unwrap();
    let dropped = when("deadline", "dropped").unwrap();
    let late = dropped - started - Duration::from_millis(200);
    assert!(late < Duration::from_millis(50), "stopped {late:?} after the deadline");
    assert!(when("deadline", "finished").is_none());
    assert_eq!(*seen.lock().unwrap(), [(FailureKind::TimeLimitExceeded, Some(Limit::Duration))]);
}

#[tokio::test]
async fn heartbeats_keep_a_long_job_alive_past_its_idle_timeout() {
    let seen = Seen::default();
    let app = app(TimeLimit::new().idle_timeout(Duration::from_millis(100)), &seen);
    work("alive", 30, true, 0).send(&app).await.unwrap();
    work("silent", 30, false, 0).send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.succeeded, report.failed), (1, 1), "{report:?}");
    let alive = when("alive", "finished").unwrap() - when("alive", "started").unwrap();
    assert!(alive >= Duration::from_millis(600), "{alive:?}");
    let silent = when("silent", "dropped").unwrap() - when("silent", "started").unwrap();
    assert!(silent >= Duration::from_millis(100) && silent < Duration::from_millis(160), "{silent:?}");
    assert_eq!(*seen.lock().unwrap(), [(FailureKind::TimeLimitExceeded, Some(Limit::Inactivity))]);
}

#[tokio::test]
async fn an_actor_can_extend_its_deadline() {
    let seen = Seen::default();
    let app = app(TimeLimit::new().time_limit(Duration::from_millis(150)), &seen);
    work("extended", 20, false, 500).send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn message_options_and_actor_attributes_set_the_limit() {
    let seen = Seen::default();
    let app = app(TimeLimit::new().time_limit(Duration::from_millis(50)), &seen);
    let longer = SendOptions::default().with_options(|o| o.with_time_limit(Duration::from_secs(5)));
    work("per-message", 10, false, 0).send_with(&app, longer).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.succeeded, 1, "{report:?}");
}

/// A blocking actor that checks for interruption between chunks.
#[derive(Actor, Serialize, Deserialize)]
#[actor(blocking, max_retries = 0, time_limit = "200ms")]
struct Crunch {
    key: String,
}

impl Crunch {
    fn perform(self, ctx: &Context) -> Result<(), Interrupted> {
        event(&self.key, "started");
        for _ in 0..500 {
            std::thread::sleep(Duration::from_millis(10));
            if let Err(interrupted) = ctx.check() {
                event(&self.key, "noticed");
                assert_eq!(interrupted.0, Interruption::TimeLimit);
                return Err(interrupted);
            }
        }
        event(&self.key, "finished");
        Ok(())
    }
}

#[tokio::test]
async fn a_blocking_actor_is_failed_on_time_and_can_stop_cooperatively() {
    let seen = Seen::default();
    let broker = MemoryBroker::new();
    let app = dramaturg::app(broker.clone())
        .replace("retries", Retries::new().max_retries(0))
        .insert_before("time_limit", Observe(Arc::clone(&seen)))
        .actor::<Crunch>()
        .build()
        .unwrap();
    Crunch { key: "crunch".into() }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    let started = when("crunch", "started").unwrap();
    let reported = Instant::now();
    assert!(reported - started < Duration::from_secs(2), "not reported on time");
    assert_eq!(*seen.lock().unwrap(), [(FailureKind::TimeLimitExceeded, Some(Limit::Duration))]);
    // The thread noticed through ctx.check() and stopped early.
    let deadline = Instant::now() + Duration::from_secs(2);
    while when("crunch", "noticed").is_none() {
        assert!(Instant::now() < deadline, "the blocking actor did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(when("crunch", "noticed").unwrap() - started < Duration::from_millis(300));
    assert!(when("crunch", "finished").is_none());
    let dead = broker.list("default", 1).await.unwrap();
    assert!(dead[0].reason.contains("time limit exceeded"), "{}", dead[0].reason);
}

/// Holds its async worker thread for 4 s, with a 1-second limit.
#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = 0, time_limit = "1s")]
struct Hog {}

impl Hog {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        std::thread::sleep(Duration::from_secs(4));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_actor_that_blocks_past_its_limit_fails_whatever_it_returned() {
    let seen = Seen::default();
    let app = dramaturg::app(MemoryBroker::new())
        .insert_before("time_limit", Observe(Arc::clone(&seen)))
        .actor::<Hog>()
        .build()
        .unwrap();
    Hog {}.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!((report.succeeded, report.failed), (0, 1), "{report:?}");
    assert_eq!(*seen.lock().unwrap(), [(FailureKind::TimeLimitExceeded, Some(Limit::Duration))]);
}

#[test]
fn the_expiry_warning_shows_the_limit_in_force() {
    let captured = support::Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber(tracing::Level::WARN));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let app = app(TimeLimit::new().time_limit(Duration::from_millis(150)), &Seen::default());
        work("warning", 100, false, 0).send(&app).await.unwrap();
        Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text.lines().find(|l| l.contains("stopping the attempt")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("limit=150ms"), "{line}");
    assert!(line.contains("time limit exceeded: the attempt ran for more than 150ms"), "{line}");
    assert!(!line.contains("Duration"), "{line}");
}
