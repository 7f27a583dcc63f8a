//! The retry middleware on the in-memory broker.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::retries::{Decision, Retries, LAST_ERROR};
use dramaturg::{DeadLetters, ErrorRecord, FailureKind, QueueAdmin};
use flaky::FlakyBroker;
use serde::{Deserialize, Serialize};

/// Attempts seen, per test key: (retries, when).
static ATTEMPTS: Mutex<Vec<(String, u32, Instant)>> = Mutex::new(Vec::new());

fn attempts(key: &str) -> Vec<(u32, Instant)> {
    ATTEMPTS.lock().unwrap().iter().filter(|(k, ..)| k == key).map(|(_, r, t)| (*r, *t)).collect()
}

fn record_attempt(key: &str, ctx: &Context) {
    ATTEMPTS.lock().unwrap().push((key.to_owned(), ctx.retries(), Instant::now()));
}

#[derive(Debug, thiserror::Error)]
#[error("flaky dependency: {0}")]
struct Flaky(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid input")]
struct InvalidInput;

/// Fails in the way `mode` says until attempt `succeed_at` (never if 0).
#[derive(Actor, Serialize, Deserialize)]
struct Unreliable {
    key: String,
    mode: String,
    succeed_at: u32,
}

impl Unreliable {
    async fn perform(self, ctx: &Context) -> Result<(), Fail> {
        record_attempt(&self.key, ctx);
        if self.succeed_at > 0 && ctx.retries() + 1 >= self.succeed_at {
            return Ok(());
        }
        match self.mode.as_str() {
            "permanent" => Err(Fail::permanent(Flaky("down for good".into()))),
            "invalid" => Err(InvalidInput.into()),
            "retry_after" => Err(Fail::retry_after(Duration::from_millis(300), Flaky("busy".into()))),
            "sleep" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            }
            "panic" => panic!("unreliable panicked"),
            other => Err(Flaky(other.to_owned()).into()),
        }
    }
}

fn app_with(broker: impl dramaturg::Broker, retries: Retries) -> App {
    dramaturg::app(broker).replace("retries", retries).actor::<Unreliable>().build().unwrap()
}

fn unreliable(key: &str, mode: &str, succeed_at: u32) -> Unreliable {
    Unreliable { key: key.into(), mode: mode.into(), succeed_at }
}

#[tokio::test]
async fn failures_are_retried_with_growing_backoff_then_dead_lettered() {
    let broker = MemoryBroker::new();
    let exhausted = Arc::new(Mutex::new(Vec::<ErrorRecord>::new()));
    let seen = Arc::clone(&exhausted);
    let retries = Retries::new()
        .max_retries(3)
        .backoff(Duration::from_millis(60), Duration::from_millis(150))
        .on_exhausted(move |_ctx, record| seen.lock().unwrap().push(record.clone()));
    let app = app_with(broker.clone(), retries);
    unreliable("backoff", "always", 0).send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!((report.retried, report.failed), (3, 1), "{report:?}");

    let attempts = attempts("backoff");
    assert_eq!(attempts.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [0, 1, 2, 3]);
    // Steps of 60, 120 and 150 (capped) ms; jitter takes off at most half,
    // and never goes below the 60 ms minimum.
    for (i, lower) in [60, 60, 75].into_iter().enumerate() {
        let gap = attempts[i + 1].1 - attempts[i].1;
        assert!(gap >= Duration::from_millis(lower), "gap {i} was {gap:?}");
        assert!(gap < Duration::from_millis(150 + 500), "gap {i} was {gap:?}");
    }
    let exhausted = exhausted.lock().unwrap().clone();
    assert_eq!(exhausted.len(), 1);
    assert_eq!(exhausted[0].message, "flaky dependency: always");
    let dead = broker.list("default", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("flaky dependency: always"), "{}", dead[0].reason);
}

#[tokio::test]
async fn a_retrying_message_holds_no_worker_slot() {
    let broker = MemoryBroker::new();
    let app = app_with(broker.clone(), Retries::new().backoff(Duration::from_secs(30), Duration::from_secs(30)));
    unreliable("slot-fail", "always", 0).send(&app).await.unwrap();
    unreliable("slot-ok", "always", 1).send(&app).await.unwrap();
    let worker = Worker::new(app).concurrency(1);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let deadline = Instant::now() + Duration::from_secs(5);
    while attempts("slot-ok").is_empty() {
        assert!(Instant::now() < deadline, "the second message waited for the first one's retry");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = broker.stats("default").await.unwrap();
    assert_eq!((stats.delayed, stats.in_flight), (1, 0), "the retry waits in the broker: {stats:?}");
    shutdown.shutdown();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_retry_carries_the_last_error_and_the_original_id() {
    #[derive(Actor, Serialize, Deserialize)]
    struct Inspect;
    static SEEN: Mutex<Vec<(dramaturg::MessageId, Option<String>)>> = Mutex::new(Vec::new());
    impl Inspect {
        async fn perform(self, ctx: &Context) -> Result<(), String> {
            let last = ctx.options().option(LAST_ERROR).unwrap().map(|r| r.message);
            SEEN.lock().unwrap().push((ctx.id(), last));
            if ctx.retries() == 0 {
                return Err("first attempt fails".into());
            }
            Ok(())
        }
    }
    let retries = Retries::new().backoff(Duration::from_millis(10), Duration::from_millis(10));
    let app = dramaturg::app(MemoryBroker::new()).replace("retries", retries).actor::<Inspect>().build().unwrap();
    let id = Inspect.send(&app).await.unwrap().id();
    Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(*SEEN.lock().unwrap(), [(id, None), (id, Some("first attempt fails".into()))]);
}

#[tokio::test]
async fn a_policy_decides_whether_and_when() {
    let policy = |record: &ErrorRecord, retries: u32| {
        if record.message.contains("transient") && retries < 2 {
            Decision::RetryAfter(Duration::from_millis(20))
        } else {
            Decision::GiveUp
        }
    };
    let app = app_with(MemoryBroker::new(), Retries::new().max_retries(100).retry_when(policy));
    unreliable("policy-transient", "transient", 0).send(&app).await.unwrap();
    unreliable("policy-other", "fatal", 0).send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.retried, report.failed), (2, 2), "{report:?}");
    assert_eq!(attempts("policy-transient").len(), 3);
    assert_eq!(attempts("policy-other").len(), 1);
}

#[tokio::test]
async fn permanent_errors_are_dead_lettered_at_once() {
    let broker = MemoryBroker::new();
    let retries =
        Retries::new().backoff(Duration::from_millis(5), Duration::from_millis(5)).never_retry::<InvalidInput>();
    let app = app_with(broker.clone(), retries);
    unreliable("permanent-fail", "permanent", 0).send(&app).await.unwrap();
    unreliable("permanent-type", "invalid", 0).send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.retried, report.failed), (0, 2), "{report:?}");
    assert_eq!(attempts("permanent-fail").len(), 1);
    assert_eq!(attempts("permanent-type").len(), 1);
    let mut reasons: Vec<String> = broker.list("default", 10).await.unwrap().into_iter().map(|d| d.reason).collect();
    reasons.sort();
    assert!(reasons[0].ends_with("Flaky: flaky dependency: down for good"), "{reasons:?}");
    assert!(reasons[1].ends_with("InvalidInput: invalid input"), "{reasons:?}");
}

#[tokio::test]
async fn an_actor_can_ask_for_a_retry_after_a_delay() {
    let app = app_with(MemoryBroker::new(), Retries::new().backoff(Duration::from_millis(1), Duration::from_millis(1)));
    unreliable("after", "retry_after", 2).send(&app).await.unwrap();
    Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    let attempts = attempts("after");
    assert_eq!(attempts.len(), 2);
    assert!(attempts[1].1 - attempts[0].1 >= Duration::from_millis(300));
}

#[tokio::test]
async fn time_limit_failures_and_panics_are_retried_like_any_failure() {
    let broker = MemoryBroker::new();
    let kinds = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&kinds);
    let retries = Retries::new()
        .max_retries(1)
        .backoff(Duration::from_millis(5), Duration::from_millis(5))
        .on_exhausted(move |_, record| seen.lock().unwrap().push(record.kind));
    let app = dramaturg::app(broker.clone())
        .replace("retries", retries)
        .replace("time_limit", dramaturg::time_limit::TimeLimit::new().time_limit(Duration::from_millis(50)))
        .actor::<Unreliable>()
        .build()
        .unwrap();
    unreliable("limit", "sleep", 0).send(&app).await.unwrap();
    unreliable("panic", "panic", 0).send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.retried, report.failed), (2, 2), "{report:?}");
    let mut kinds = kinds.lock().unwrap().clone();
    kinds.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(kinds, [FailureKind::Panic, FailureKind::TimeLimitExceeded]);
}

#[tokio::test]
async fn a_retry_the_broker_cannot_take_yet_is_settled_later_and_never_rerun() {
    let fail_settle = Arc::new(AtomicBool::new(false));
    let broker = FlakyBroker { inner: MemoryBroker::new(), fail: Arc::clone(&fail_settle) };
    let memory = broker.inner.clone();
    let app = app_with(broker, Retries::new().backoff(Duration::from_millis(5), Duration::from_millis(5)));
    unreliable("no-loss", "always", 2).send(&app).await.unwrap();
    fail_settle.store(true, Ordering::SeqCst);

    let worker = Worker::new(app.clone()).concurrency(1);
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    // While the broker refuses settlements, the first attempt's retry waits
    // to be settled: the attempt is not run again, and nothing is lost.
    let deadline = Instant::now() + Duration::from_secs(5);
    while attempts("no-loss").is_empty() {
        assert!(Instant::now() < deadline, "the message did not run");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(attempts("no-loss").len(), 1, "the failed attempt ran again before its retry was settled");
    assert_eq!(memory.stats("default").await.unwrap().in_flight, 1);
    fail_settle.store(false, Ordering::SeqCst);
    app.join(Duration::from_secs(5)).await.unwrap();
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    let seen = attempts("no-loss");
    assert_eq!(
        seen.iter().map(|(retries, _)| *retries).collect::<Vec<_>>(),
        [0, 1],
        "the retry ran once and succeeded"
    );
    assert!(report.retried == 1 && report.succeeded == 1 && report.requeued == 0, "{report:?}");
    assert!(memory.list("default", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn shutdown_interruptions_are_neither_retried_nor_counted() {
    let broker = MemoryBroker::new();
    let app = app_with(broker.clone(), Retries::new().max_retries(0));
    unreliable("interrupted", "sleep", 0).send(&app).await.unwrap();
    let worker = Worker::new(app.clone()).grace_period(Duration::from_millis(50));
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    while attempts("interrupted").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.requeued, report.retried, report.failed), (1, 0, 0), "{report:?}");
    let mut consumer = dramaturg::Broker::consume(&broker, "default", 1).await.unwrap();
    let message = app.encoder().decode_message(consumer.next().await.unwrap().body()).unwrap();
    assert_eq!(message.retries, 0, "not counted against max_retries");
}

#[tokio::test]
async fn message_options_override_the_middleware_defaults() {
    let app = app_with(MemoryBroker::new(), Retries::new().max_retries(0));
    let options = SendOptions::default().with_options(|o| {
        o.with_max_retries(2).with_min_backoff(Duration::from_millis(1)).with_max_backoff(Duration::from_millis(2))
    });
    unreliable("per-message", "always", 0).send_with(&app, options).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.retried, report.failed), (2, 1), "{report:?}");
}

mod flaky {
    //! A broker whose settlements fail on demand, as a broker that is away
    //! for a while would.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use dramaturg::{
        async_trait, Broker, BrokerError, BrokerErrorKind, Consumer, Delivery, MemoryBroker, Outgoing, Receipt,
        Settled, Settlement,
    };

    #[derive(Debug)]
    pub(crate) struct FlakyBroker {
        pub(crate) inner: MemoryBroker,
        pub(crate) fail: Arc<AtomicBool>,
    }

    #[async_trait]
    impl Broker for FlakyBroker {
        async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
            self.inner.declare_queue(queue).await
        }

        async fn enqueue(&self, message: Outgoing) -> Result<(), BrokerError> {
            self.inner.enqueue(message).await
        }

        async fn consume(&self, queue: &str, prefetch: usize) -> Result<Box<dyn Consumer>, BrokerError> {
            let inner = self.inner.consume(queue, prefetch).await?;
            Ok(Box::new(FlakyConsumer { inner, fail: Arc::clone(&self.fail) }))
        }

        fn admin(&self) -> Option<&dyn dramaturg::QueueAdmin> {
            Some(&self.inner)
        }

        fn dead_letters(&self) -> Option<&dyn dramaturg::DeadLetters> {
            Some(&self.inner)
        }
    }

    struct FlakyConsumer {
        inner: Box<dyn Consumer>,
        fail: Arc<AtomicBool>,
    }

    #[async_trait]
    impl Consumer for FlakyConsumer {
        async fn next(&mut self) -> Result<Delivery, BrokerError> {
            let delivery = self.inner.next().await?;
            let (body, redelivered) = (delivery.body().clone(), delivery.redelivered());
            let receipt = FlakyReceipt { inner: Mutex::new(Some(delivery)), fail: Arc::clone(&self.fail) };
            Ok(Delivery::new(body, redelivered, Box::new(receipt)))
        }

        async fn close(self: Box<Self>) -> Result<(), BrokerError> {
            self.inner.close().await
        }
    }

    #[derive(Debug)]
    struct FlakyReceipt {
        inner: Mutex<Option<Delivery>>,
        fail: Arc<AtomicBool>,
    }

    #[async_trait]
    impl Receipt for FlakyReceipt {
        async fn settle(&self, settlement: &Settlement) -> Result<Settled, BrokerError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(BrokerError::new(BrokerErrorKind::Connection, "settlement refused on purpose"));
            }
            let delivery = self.inner.lock().unwrap().take().expect("settled once");
            Ok(delivery.settle(settlement.clone()).await?)
        }
    }
}

/// Fails with a boxed `InvalidInput`, or a boxed `Flaky`.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "boxed")]
struct Boxed {
    key: String,
    invalid: bool,
}

impl Boxed {
    async fn perform(self, ctx: &Context) -> Result<(), dramaturg::BoxError> {
        record_attempt(&self.key, ctx);
        if self.invalid {
            return Err(Box::new(InvalidInput));
        }
        Err(Box::new(Flaky("boxed".into())))
    }
}

#[tokio::test]
async fn never_retry_matches_the_error_inside_a_boxed_error() {
    let retries = Retries::new()
        .max_retries(1)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .never_retry::<InvalidInput>();
    let app = dramaturg::app(MemoryBroker::new()).replace("retries", retries).actor::<Boxed>().build().unwrap();
    Boxed { key: "boxed-invalid".into(), invalid: true }.send(&app).await.unwrap();
    Boxed { key: "boxed-flaky".into(), invalid: false }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(attempts("boxed-invalid").len(), 1, "a boxed InvalidInput is never retried");
    assert_eq!(attempts("boxed-flaky").len(), 2, "other boxed errors are");
    assert_eq!((report.retried, report.failed), (1, 2), "{report:?}");
}

#[tokio::test]
async fn dead_letters_decode_delete_and_replay_with_their_retries_reset() {
    use dramaturg::{Outgoing, Replay, ReplayRetries};

    let broker = MemoryBroker::new();
    let retries = Retries::new().max_retries(1).backoff(Duration::from_millis(1), Duration::from_millis(1));
    let app = dramaturg::app(broker.clone())
        .queue_prefix("dead-")
        .replace("retries", retries)
        .actor::<Unreliable>()
        .build()
        .unwrap();
    let id = unreliable("dead-reset", "down", 0).send(&app).await.unwrap().id();
    dramaturg::Broker::enqueue(&broker, Outgoing::new("dead-default", &b"\xc1 not a message"[..])).await.unwrap();
    Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();

    let mut views = app.dead_letter_views("dead-default", 10).await.unwrap();
    views.sort_by_key(|view| view.message.is_err());
    let decoded = views[0].message.as_ref().unwrap();
    assert_eq!((decoded.id, decoded.actor.as_str(), decoded.retries), (id, "unreliable", 1));
    assert_eq!(decoded.args["key"], "dead-reset");
    assert!(views[0].reason.contains("flaky dependency: down"), "{}", views[0]);
    assert!(views[1].message.as_ref().unwrap_err().contains("undecodable"), "{}", views[1]);

    let report = app.replay_dead_letters("dead-default", Replay::All, ReplayRetries::Reset).await.unwrap();
    assert_eq!(report.replayed, 1, "{report:?}");
    assert_eq!(report.undecodable.len(), 1, "{report:?}");
    let left = broker.list("dead-default", 10).await.unwrap();
    assert_eq!(left.len(), 1, "the replayed letter is deleted, the garbage kept");
    Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    let retries: Vec<u32> = attempts("dead-reset").into_iter().map(|(r, _)| r).collect();
    assert_eq!(retries, [0, 1, 0, 1], "the replay starts again at retry 0");

    assert_eq!(broker.delete("dead-default", Replay::One("no-such-key".into())).await.unwrap(), 0);
    assert_eq!(broker.delete("dead-default", Replay::All).await.unwrap(), 2);
    assert!(broker.list("dead-default", 10).await.unwrap().is_empty());
}
