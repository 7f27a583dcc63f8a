//! Results: the final outcome of a message, read back typed — on the
//! in-memory broker (its store) and on the real Redis (a store in the same
//! server, woken by pub/sub).

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dramaturg::abort::{abort, AbortOptions};
use dramaturg::prelude::*;
use dramaturg::results::{ResultError, ResultHandle, SentExt};
use dramaturg::{BoxError, Call, MessageId};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Thumbnail {
    width: u32,
    url: String,
}

/// Succeeds with a thumbnail, or fails when asked to.
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = Thumbnail, store_results, max_retries = 0)]
struct Resize {
    width: u32,
    fail: bool,
}

impl Resize {
    async fn perform(self, _ctx: &Context) -> Result<Thumbnail, String> {
        if self.fail {
            return Err(format!("cannot resize to {}", self.width));
        }
        Ok(Thumbnail { width: self.width, url: format!("https://img/{}", self.width) })
    }
}

static FLAKY_RUNS: AtomicU32 = AtomicU32::new(0);

/// Fails its first attempt, succeeds on the retry.
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = u32, store_results, max_retries = 2, min_backoff = "10ms", max_backoff = "20ms")]
struct Flaky;

impl Flaky {
    async fn perform(self, _ctx: &Context) -> Result<u32, String> {
        match FLAKY_RUNS.fetch_add(1, Ordering::SeqCst) {
            0 => Err("first attempt fails".into()),
            n => Ok(n + 1),
        }
    }
}

/// Runs until aborted; keeps its results for 150 ms.
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = (), store_results, result_ttl = "150ms")]
struct Sleepy {
    ms: u64,
}

impl Sleepy {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(())
    }
}

/// Returns a large string; results are kept for it only per message.
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = String)]
struct Big {
    len: usize,
}

impl Big {
    async fn perform(self, _ctx: &Context) -> Result<String, BoxError> {
        Ok("x".repeat(self.len))
    }
}

fn memory_app() -> App {
    let broker = MemoryBroker::new();
    dramaturg::app(broker.clone())
        .queue_prefix(format!("results-{}-", MessageId::new()))
        .insert_before("callbacks", dramaturg::results::Results::for_broker(&broker).max_size(64 * 1024))
        .actor::<Resize>()
        .actor::<Flaky>()
        .actor::<Sleepy>()
        .actor::<Big>()
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_success_is_read_back_typed_and_many_waiters_see_it() {
    let app = memory_app();
    let sent = Resize { width: 64, fail: false }.send(&app).await.unwrap();
    assert!(matches!(sent.result(&app).get().await, Err(ResultError::NotYet(_))));
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let handle = sent.result(&app);
            tokio::spawn(async move { handle.wait(Duration::from_secs(5)).await })
        })
        .collect();
    Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    let expected = Thumbnail { width: 64, url: "https://img/64".into() };
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().unwrap(), expected);
    }
    // A late waiter and a plain get see it too.
    assert_eq!(sent.result(&app).wait(Duration::from_secs(1)).await.unwrap(), expected);
    assert_eq!(sent.result(&app).get().await.unwrap(), expected);
}

#[tokio::test]
async fn a_final_failure_is_kept_with_its_record_and_retried_attempts_are_not() {
    let app = memory_app();
    let failed = Resize { width: 7, fail: true }.send(&app).await.unwrap();
    let flaky = Flaky.send(&app).await.unwrap();
    Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    match failed.result(&app).get().await {
        Err(ResultError::Failed { record, .. }) => assert!(record.message.contains("cannot resize to 7"), "{record:?}"),
        other => panic!("expected the failure, got {other:?}"),
    }
    assert_eq!(flaky.result(&app).get().await.unwrap(), 2, "the retry's success, not the first failure");
}

#[tokio::test]
async fn aborted_skipped_and_unrunnable_messages_keep_an_outcome_so_no_waiter_hangs() {
    let app = memory_app();
    let worker = tokio::spawn(Worker::new(app.clone()).run_until_drained(Duration::from_secs(10)));
    let long = Sleepy { ms: 10_000 }.send(&app).await.unwrap();
    let waiter = long.result(&app);
    tokio::time::sleep(Duration::from_millis(100)).await;
    abort(&app, long.id(), AbortOptions::abort()).await.unwrap();
    assert!(matches!(waiter.wait(Duration::from_secs(5)).await, Err(ResultError::Aborted { .. })));

    worker.await.unwrap().unwrap();

    // Too old to run: skipped.
    let old = Resize { width: 1, fail: false }
        .send_with(&app, SendOptions::default().with_options(|o| o.with_max_age(Duration::from_millis(20))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // No such actor, and arguments that do not fit: a failure is kept when
    // the message asks for its result.
    let keep = SendOptions::default().with_options(|o| o.with_extra("store_results", true));
    let unknown =
        app.send_call("no_such_actor", "default", &Call::keywords(serde_json::Map::new()), keep.clone()).await.unwrap();
    let wrong = app.send_call("resize", "default", &Call::positional([serde_json::json!("wide")]), keep).await;
    Worker::new(app.clone()).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert!(matches!(old.result(&app).get().await, Err(ResultError::Skipped { .. })));
    for id in [unknown, wrong.unwrap()] {
        match ResultHandle::<Thumbnail>::new(&app, id).get().await {
            Err(ResultError::Failed { record, .. }) => assert_eq!(record.type_name, "Rejected", "{record:?}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn results_expire_and_outputs_too_large_are_kept_as_failures() {
    let app = memory_app();
    let short = Sleepy { ms: 0 }.send(&app).await.unwrap();
    let keep = SendOptions::default().with_options(|o| o.with_extra("store_results", true));
    let big = Big { len: 100_000 }.send_with(&app, keep.clone()).await.unwrap();
    let small = Big { len: 10 }.send_with(&app, keep).await.unwrap();
    let unkept = Big { len: 1 }.send(&app).await.unwrap();
    Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    short.result(&app).get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(short.result(&app).get().await, Err(ResultError::NotYet(_))), "expired after its result_ttl");
    match big.result(&app).get().await {
        Err(ResultError::Failed { record, .. }) => assert_eq!(record.type_name, "ResultTooLarge"),
        other => panic!("expected ResultTooLarge, got {other:?}"),
    }
    assert_eq!(small.result(&app).get().await.unwrap(), "x".repeat(10));
    assert!(matches!(unkept.result(&app).get().await, Err(ResultError::NotYet(_))), "not asked to keep it");
    // A handle of the wrong type says so.
    let wrong = ResultHandle::<u64>::new(&app, small.id()).get().await;
    assert!(matches!(wrong, Err(ResultError::Decode { .. })), "{wrong:?}");
    let started = Instant::now();
    let timed_out = unkept.result(&app).wait(Duration::from_millis(100)).await;
    assert!(matches!(timed_out, Err(ResultError::TimedOut { .. })), "{timed_out:?}");
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn on_redis_a_waiter_in_another_app_wakes_when_the_result_is_kept() {
    let ns = support::namespace();
    let app = |broker: dramaturg::redis::RedisBroker| {
        let results = dramaturg::results::Results::for_broker(&broker);
        dramaturg::app(broker).insert_before("callbacks", results).actor::<Resize>().build().unwrap()
    };
    let worker_app = app(support::redis_broker("redis://127.0.0.1:6379", &ns).await);
    // A producer of its own, as another process would have.
    let producer = app(support::redis_broker("redis://127.0.0.1:6379", &ns).await);
    let sent = Resize { width: 300, fail: false }.send(&producer).await.unwrap();
    let failed = Resize { width: 1, fail: true }.send(&producer).await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let handle = sent.result(&producer);
            tokio::spawn(async move { handle.wait(Duration::from_secs(10)).await })
        })
        .collect();
    let worker = tokio::spawn(Worker::new(worker_app).run_until_drained(Duration::from_secs(10)));
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().unwrap().width, 300);
    }
    assert!(matches!(failed.result(&producer).wait(Duration::from_secs(10)).await, Err(ResultError::Failed { .. })));
    worker.await.unwrap().unwrap();
}

#[test]
fn results_are_opt_in_and_an_actor_that_asks_without_them_fails_the_build() {
    let Err(error) = dramaturg::app(MemoryBroker::new()).actor::<Resize>().build() else {
        panic!("an actor that asks for results built without the results middleware");
    };
    assert!(matches!(error, dramaturg::ConfigError::UnknownOption { .. }), "{error}");
}

#[tokio::test]
async fn an_app_without_results_says_so_at_once() {
    let app = dramaturg::app(MemoryBroker::new()).actor::<Big>().build().unwrap();
    let sent = Big { len: 1 }.send(&app).await.unwrap();
    let started = Instant::now();
    assert!(matches!(sent.result(&app).wait(Duration::from_secs(5)).await, Err(ResultError::NotEnabled)));
    assert!(started.elapsed() < Duration::from_secs(1));
}
