//! Results: the final outcome of a message, read back typed — on the
//! in-memory broker (its store), on the real Redis (a store in the same
//! server, woken by pub/sub) and on PostgreSQL (woken by `LISTEN`/`NOTIFY`).

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dramaturg::abort::{abort, AbortOptions};
use dramaturg::prelude::*;
use dramaturg::results::{Group, PipeInput, Pipeline, Progress, ResultError, ResultHandle, SentExt};
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

/// Pipeline step 1: splits a text into words.
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = Words)]
struct Split {
    text: String,
}

impl Split {
    async fn perform(self, _ctx: &Context) -> Result<Words, BoxError> {
        Ok(Words(self.text.split_whitespace().map(str::to_owned).collect()))
    }
}

/// Pipeline step 2: counts words; fails on an empty list.
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = u64, max_retries = 0)]
struct Words(Vec<String>);

impl Words {
    async fn perform(self, _ctx: &Context) -> Result<u64, String> {
        if self.0.is_empty() {
            return Err("no words to count".into());
        }
        Ok(self.0.len() as u64)
    }
}

static GRADES: AtomicU32 = AtomicU32::new(0);

/// Pipeline step 3: a verdict on a count.
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = String)]
struct Grade(u64);

impl PipeInput<u64> for Grade {}

impl Grade {
    async fn perform(self, _ctx: &Context) -> Result<String, BoxError> {
        GRADES.fetch_add(1, Ordering::SeqCst);
        Ok(format!("{} words", self.0))
    }
}

/// Claims to take a count, but wants a map: its step cannot run.
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = String)]
struct Misfit {
    count: u64,
    label: String,
}

impl PipeInput<u64> for Misfit {}

impl Misfit {
    async fn perform(self, _ctx: &Context) -> Result<String, BoxError> {
        Ok(self.label)
    }
}

/// A group's completion callback: counts how often it ran.
#[derive(Actor, Serialize, Deserialize)]
struct Tally {
    runs: String,
}

static TALLIES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl Tally {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        TALLIES.lock().unwrap().push(self.runs);
        Ok(())
    }
}

/// Reports progress, then waits until told to finish.
#[derive(Actor, Serialize, Deserialize)]
#[actor(output = u32, store_results)]
struct Steps {
    gate: String,
}

static GATES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl Steps {
    async fn perform(self, ctx: &Context) -> Result<u32, BoxError> {
        ctx.progress(&(1_u32, 3_u32)).await?;
        while !GATES.lock().unwrap().contains(&self.gate) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ctx.progress(&(3_u32, 3_u32)).await?;
        Ok(3)
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
        .actor::<Split>()
        .actor::<Words>()
        .actor::<Grade>()
        .actor::<Misfit>()
        .actor::<Tally>()
        .actor::<Steps>()
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
    let (url, ns) = ("redis://127.0.0.1:6379", support::namespace());
    a_waiter_in_another_app_wakes_when_the_result_is_kept(
        support::redis_broker(url, &ns).await,
        support::redis_broker(url, &ns).await,
    )
    .await;
}

/// The same on a Redis Cluster of scripts/services: the results'
/// keys lie in slots of their own, apart from the queue's.
#[cfg(feature = "redis")]
#[tokio::test]
async fn on_a_redis_cluster_a_waiter_in_another_app_wakes_when_the_result_is_kept() {
    let (url, ns) = ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002/", support::namespace());
    a_waiter_in_another_app_wakes_when_the_result_is_kept(
        support::redis_broker(url, &ns).await,
        support::redis_broker(url, &ns).await,
    )
    .await;
}

/// The same on PostgreSQL: results are rows of the broker's schema, and
/// waiters wake by `LISTEN`/`NOTIFY`.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_waiter_in_another_app_wakes_when_the_result_is_kept() {
    let (schema, _drop) = support::postgres::own_schema();
    a_waiter_in_another_app_wakes_when_the_result_is_kept(
        support::postgres::broker_in(&schema).await,
        support::postgres::broker_in(&schema).await,
    )
    .await;
}

/// A worker on `worker_broker` and a producer of its own on
/// `producer_broker` (as another process would have), sharing only the
/// server: the producer's waiters see the results the worker keeps.
#[cfg(any(feature = "redis", feature = "postgres"))]
async fn a_waiter_in_another_app_wakes_when_the_result_is_kept<B: dramaturg::Broker>(
    worker_broker: B,
    producer_broker: B,
) {
    let app = |broker: B| {
        let results = dramaturg::results::Results::for_broker(&broker);
        dramaturg::app(broker).insert_before("callbacks", results).actor::<Resize>().build().unwrap()
    };
    let worker_app = app(worker_broker);
    let producer = app(producer_broker);
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

#[tokio::test]
async fn a_pipeline_of_three_actors_hands_each_output_on_and_waits_for_the_last() {
    let app = memory_app();
    let pipeline = Pipeline::new(Split { text: "to be or not".into() })
        .then::<Words>()
        .then_with::<Grade>(SendOptions::default().with_delay(Duration::from_millis(200)));
    assert_eq!(pipeline.len(), 3);
    let started = Instant::now();
    let sent = pipeline.send(&app).await.unwrap();
    assert_eq!(sent.steps().len(), 3);
    let worker = tokio::spawn(Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)));
    let verdict: String = sent.wait(Duration::from_secs(5)).await.unwrap();
    assert_eq!(verdict, "4 words");
    assert!(started.elapsed() >= Duration::from_millis(200), "the last step waited for its delay");
    // Each step was a message of its own, with the id the handle named;
    // only the last one keeps its result.
    assert_eq!(ResultHandle::<String>::new(&app, sent.steps()[2]).get().await.unwrap(), "4 words");
    assert!(matches!(ResultHandle::<u64>::new(&app, sent.steps()[1]).get().await, Err(ResultError::NotYet(_))));
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_failed_or_unrunnable_step_stops_the_pipeline_and_is_its_result() {
    let app = memory_app();
    let before = GRADES.load(Ordering::SeqCst);
    let failing = Pipeline::new(Split { text: "   ".into() }).then::<Words>().then::<Grade>().send(&app).await.unwrap();
    let misfit = Pipeline::new(Split { text: "a b".into() }).then::<Words>().then::<Misfit>().send(&app).await.unwrap();
    Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    match failing.wait(Duration::from_secs(1)).await {
        Err(ResultError::Failed { id, record }) => {
            assert_eq!(id, failing.steps()[2], "kept as the last step's result");
            assert!(record.message.contains("no words to count"), "{record:?}");
        }
        other => panic!("expected the second step's failure, got {other:?}"),
    }
    assert_eq!(GRADES.load(Ordering::SeqCst), before, "the step after a failure never runs");
    match misfit.get().await {
        Err(ResultError::Failed { record, .. }) => assert_eq!(record.type_name, "Rejected", "{record:?}"),
        other => panic!("expected the misfit step's rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_group_gives_results_in_order_and_its_callback_runs_once() {
    let app = memory_app();
    let marker = MessageId::new().to_string();
    let group =
        (1..=20).fold(Group::new(), |group, n| group.push(Grade(n))).on_completion(Tally { runs: marker.clone() });
    assert_eq!(group.len(), 20);
    let sent = group.send(&app).await.unwrap();
    Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    let results = sent.wait(Duration::from_secs(1)).await.unwrap();
    assert_eq!(results, (1..=20).map(|n| format!("{n} words")).collect::<Vec<_>>());
    assert_eq!(sent.finished().await.unwrap(), 20);
    assert_eq!(TALLIES.lock().unwrap().iter().filter(|m| **m == marker).count(), 1);
}

#[tokio::test]
async fn a_group_of_pipelines_completes_when_every_chain_ends_even_a_failed_one() {
    let app = memory_app();
    let marker = MessageId::new().to_string();
    let group = Group::new()
        .push_pipeline(Pipeline::new(Split { text: "one".into() }).then::<Words>().then::<Grade>())
        .push_pipeline(Pipeline::new(Split { text: "".into() }).then::<Words>().then::<Grade>())
        .push(Grade(7))
        .on_completion(Tally { runs: marker.clone() });
    let sent = group.send(&app).await.unwrap();
    Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    let each = sent.wait_each(Duration::from_secs(1)).await;
    assert_eq!(each[0].as_ref().unwrap(), "1 words");
    assert!(matches!(each[1], Err(ResultError::Failed { .. })), "{:?}", each[1]);
    assert_eq!(each[2].as_ref().unwrap(), "7 words");
    assert!(sent.wait(Duration::from_secs(1)).await.is_err(), "wait gives the first error");
    assert_eq!(TALLIES.lock().unwrap().iter().filter(|m| **m == marker).count(), 1);
    // An empty group sends its callback at once.
    let empty = MessageId::new().to_string();
    Group::<()>::new().on_completion(Tally { runs: empty.clone() }).send(&app).await.unwrap();
    Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(TALLIES.lock().unwrap().iter().filter(|m| **m == empty).count(), 1);
}

#[tokio::test]
async fn progress_is_read_while_the_job_runs() {
    let app = memory_app();
    let gate = MessageId::new().to_string();
    let sent = Steps { gate: gate.clone() }.send(&app).await.unwrap();
    let handle = sent.result(&app);
    assert_eq!(handle.progress::<(u32, u32)>().await.unwrap(), None);
    let worker = tokio::spawn(Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.progress::<(u32, u32)>().await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "no progress reported");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handle.progress::<(u32, u32)>().await.unwrap(), Some((1, 3)));
    assert!(matches!(handle.get().await, Err(ResultError::NotYet(_))), "still running");
    GATES.lock().unwrap().push(gate);
    assert_eq!(handle.wait(Duration::from_secs(5)).await.unwrap(), 3);
    assert_eq!(handle.progress::<(u32, u32)>().await.unwrap(), Some((3, 3)));
    assert!(matches!(handle.progress::<String>().await, Err(ResultError::Decode { .. })));
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn pipelines_and_groups_need_the_results_middleware() {
    let app = dramaturg::app(MemoryBroker::new()).actor::<Grade>().build().unwrap();
    let pipeline = Pipeline::new(Grade(1)).send(&app).await;
    assert!(matches!(pipeline, Err(dramaturg::results::ComposeError::NotEnabled)), "{pipeline:?}");
    let group = Group::new().push(Grade(1)).send(&app).await;
    assert!(matches!(group, Err(dramaturg::results::ComposeError::NotEnabled)), "{group:?}");
    // A step whose actor the app does not know is refused before anything is sent.
    let broker = MemoryBroker::new();
    let results = dramaturg::results::Results::for_broker(&broker);
    let app = dramaturg::app(broker.clone()).insert_before("callbacks", results).actor::<Words>().build().unwrap();
    let unknown = Pipeline::new(Words(vec!["a".into()])).then::<Grade>().send(&app).await;
    assert!(
        matches!(unknown, Err(dramaturg::results::ComposeError::Enqueue(dramaturg::EnqueueError::UnknownActor(ref name))) if name == "grade"),
        "{unknown:?}"
    );
    assert_eq!(app.stats("default").await.unwrap().ready, 0, "nothing was sent");
}

#[cfg(feature = "redis")]
const GROUP_CHILD: &str = "a_group_child";

/// A worker child of the Redis group test (nothing in the parent).
#[cfg(feature = "redis")]
#[test]
fn a_group_child() {
    support::run_worker_child(
        |ns| async move { group_app(support::redis_broker("redis://127.0.0.1:6379", &ns).await) },
    );
}

#[cfg(feature = "redis")]
fn group_app(broker: dramaturg::redis::RedisBroker) -> App {
    let results = dramaturg::results::Results::for_broker(&broker);
    dramaturg::app(broker).insert_before("callbacks", results).actor::<support::Numbered>().build().unwrap()
}

/// 1,000 members across two worker processes, one SIGKILLed mid-run: every
/// member's result is kept and the completion callback runs exactly once.
#[cfg(feature = "redis")]
#[tokio::test]
async fn on_redis_a_group_across_two_workers_one_killed_completes_exactly_once() {
    if support::is_child() {
        return;
    }
    const TOTAL: u64 = 1000;
    const CALLBACK: u64 = 1_000_000;
    let ns = support::namespace();
    let app = group_app(support::redis_broker("redis://127.0.0.1:6379", &ns).await);
    let group = (0..TOTAL)
        .fold(Group::new(), |group, seq| group.push(support::Numbered { seq }))
        .on_completion(support::Numbered { seq: CALLBACK });
    let sent = group.send(&app).await.unwrap();
    let dir = std::env::temp_dir().join(format!("dramaturg-group-{}", MessageId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut victim = support::KillOnDrop(support::spawn_worker(GROUP_CHILD, &dir, 1, &ns));
    let mut survivor = support::KillOnDrop(support::spawn_worker(GROUP_CHILD, &dir, 2, &ns));
    support::wait_for("progress", Duration::from_secs(60), || support::recorded(&dir).len() >= 300).await;
    victim.0.kill().unwrap(); // SIGKILL
    victim.0.wait().unwrap();
    support::wait_for("the callback", Duration::from_secs(60), || support::recorded(&dir).contains_key(&CALLBACK))
        .await;
    let results = sent.wait(Duration::from_secs(10)).await.unwrap();
    assert_eq!(results.len(), TOTAL as usize);
    assert_eq!(sent.finished().await.unwrap(), TOTAL);
    // Longer than a heartbeat timeout, for a late redelivery to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    support::terminate(&mut survivor.0);
    let counts = support::recorded(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!((0..TOTAL).all(|seq| counts.contains_key(&seq)), "every member ran");
    assert_eq!(counts[&CALLBACK], 1, "the completion callback ran exactly once");
}

#[test]
fn the_results_middleware_must_sit_outside_the_default_stack() {
    let broker = MemoryBroker::new();
    let inner = dramaturg::results::Results::for_broker(&broker);
    let Err(error) = dramaturg::app(broker).middleware(inner).actor::<Resize>().build() else {
        panic!("results inside the retry middleware built");
    };
    let text = error.to_string();
    assert!(text.contains("must sit outside") && text.contains("insert_before"), "{text}");
}

#[tokio::test]
async fn the_steps_and_callback_of_a_composition_are_checked_when_it_is_sent() {
    let app = memory_app();
    let too_late = Pipeline::new(Split { text: "a".into() }).then_with::<Words>(
        SendOptions::default()
            .with_delay(Duration::from_secs(2))
            .with_options(|o| o.with_max_age(Duration::from_secs(1))),
    );
    let error = too_late.send(&app).await.unwrap_err();
    assert!(
        matches!(error, dramaturg::results::ComposeError::Enqueue(dramaturg::EnqueueError::DelayBeyondMaxAge { .. })),
        "{error:?}"
    );
    let wrong_type = Group::new().push(Grade(1)).on_completion_with(
        Tally { runs: "x".into() },
        SendOptions::default().with_options(|o| o.with_extra("store_results", "yes")),
    );
    let error = wrong_type.send(&app).await.unwrap_err();
    assert!(error.to_string().contains("store_results"), "{error}");
    assert_eq!(app.stats("default").await.unwrap().ready, 0, "nothing was sent");
}

/// A producer app that knows `Resize` (which keeps its results) and runs
/// the results middleware, and a worker app on the same namespace that
/// knows `Split` and `Words` only.
#[cfg(feature = "redis")]
async fn producer_and_worker(ns: &str, worker_results: bool) -> (App, App) {
    let producer_broker = support::redis_broker("redis://127.0.0.1:6379", ns).await;
    let results = dramaturg::results::Results::for_broker(&producer_broker);
    let producer = dramaturg::app(producer_broker)
        .insert_before("callbacks", results)
        .actor::<Resize>()
        .actor::<Split>()
        .actor::<Words>()
        .build()
        .unwrap();
    let worker_broker = support::redis_broker("redis://127.0.0.1:6379", ns).await;
    let mut worker = dramaturg::app(worker_broker.clone()).actor::<Split>().actor::<Words>();
    if worker_results {
        worker = worker.insert_before("callbacks", dramaturg::results::Results::for_broker(&worker_broker));
    }
    (producer, worker.build().unwrap())
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn on_redis_a_worker_that_does_not_know_an_actor_keeping_results_keeps_its_rejection() {
    let ns = support::namespace();
    let (producer, worker) = producer_and_worker(&ns, true).await;
    let sent = Resize { width: 5, fail: false }.send(&producer).await.unwrap();
    Worker::new(worker).run_until_drained(Duration::from_secs(10)).await.unwrap();
    match sent.result(&producer).wait(Duration::from_secs(5)).await {
        Err(ResultError::Failed { record, .. }) => {
            assert_eq!(record.type_name, "Rejected");
            assert!(record.message.contains("no actor named"), "{record:?}");
        }
        other => panic!("expected the rejection, got {other:?}"),
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn on_redis_a_worker_without_the_results_middleware_dead_letters_a_pipeline_step_it_cannot_carry_on() {
    let ns = support::namespace();
    let (producer, worker) = producer_and_worker(&ns, false).await;
    let sent = Pipeline::new(Split { text: "a b".into() }).then::<Words>().send(&producer).await.unwrap();
    let report = Worker::new(worker.clone()).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!(report.succeeded, 0, "the first step did not run: {report:?}");
    let dead = worker.dead_letter_views("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("needs the \"results\" middleware"), "{}", dead[0].reason);
    assert!(matches!(sent.get().await, Err(ResultError::NotYet(_))), "no worker with the middleware kept anything");
}

/// On RabbitMQ, with results in a Redis store as the guide says: a group
/// of pipelines, run by a worker app of its own, completes once and each
/// member's result reaches the producer.
#[cfg(all(feature = "amqp", feature = "redis"))]
#[tokio::test]
async fn on_rabbitmq_with_results_in_redis_a_group_of_pipelines_completes() {
    let prefix = format!("results-{}-", MessageId::new());
    let ns = support::namespace();
    let app = || async {
        let config = dramaturg::amqp::AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")
            .expire_unused_queues(Duration::from_secs(120));
        let broker = dramaturg::amqp::AmqpBroker::with_config(config).await.unwrap();
        let config = dramaturg::redis::RedisConfig::new("redis://127.0.0.1:6379").namespace(&ns);
        let store = dramaturg::redis::RedisStore::with_config(&config).await.unwrap();
        dramaturg::app(broker)
            .queue_prefix(&prefix)
            .insert_before("callbacks", dramaturg::results::Results::new(store))
            .actor::<Split>()
            .actor::<Words>()
            .actor::<Grade>()
            .actor::<Tally>()
            .build()
            .unwrap()
    };
    let (producer, worker) = (app().await, app().await);
    let marker = MessageId::new().to_string();
    let group = (1..=5)
        .fold(Group::new(), |group, n| {
            let text = vec!["w"; n].join(" ");
            group.push_pipeline(Pipeline::new(Split { text }).then::<Words>().then::<Grade>())
        })
        .on_completion(Tally { runs: marker.clone() });
    let sent = group.send(&producer).await.unwrap();
    let running = tokio::spawn(Worker::new(worker).run_until_drained(Duration::from_secs(20)));
    let verdicts = sent.wait(Duration::from_secs(20)).await.unwrap();
    assert_eq!(verdicts, (1..=5).map(|n| format!("{n} words")).collect::<Vec<_>>());
    running.await.unwrap().unwrap();
    assert_eq!(TALLIES.lock().unwrap().iter().filter(|m| **m == marker).count(), 1);
}
