//! Work that finished stays finished: a middleware that panics after the
//! actor succeeded does not make the message run again, and a retry the
//! broker cannot schedule backs off instead of coming straight back.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dramaturg::prelude::*;
use dramaturg::retries::Retries;
use dramaturg::{BoxError, DeadLetters};
use serde::{Deserialize, Serialize};

/// Counts its runs in the counter named by `which`, then succeeds or fails.
#[derive(Actor, Serialize, Deserialize)]
struct Work {
    which: u8,
    fail: bool,
}

static RUNS: [AtomicU32; 4] = [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)];

impl Work {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        RUNS[usize::from(self.which)].fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err("always fails".into());
        }
        Ok(())
    }
}

/// A middleware that panics on the way out of every message.
#[derive(Debug)]
struct PanicsAfter(&'static str);

#[async_trait]
impl Middleware for PanicsAfter {
    fn name(&self) -> &'static str {
        self.0
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let outcome = next.run(ctx).await;
        panic!("{} failed after the actor: {}", self.0, outcome.label());
    }
}

fn retries() -> Retries {
    Retries::new().max_retries(2).backoff(Duration::from_millis(10), Duration::from_millis(10))
}

/// A middleware inside error capture (so inside the
/// retries) panics after the actor succeeded. Before, the panic was a
/// failure, retried twice: three runs of the body for one message. Now the
/// work stands (acknowledged once) and the panic is reported on its own.
#[tokio::test]
async fn a_panic_inside_error_capture_after_success_does_not_run_the_work_again() {
    let broker = MemoryBroker::new();
    let app = dramaturg::app(broker.clone())
        .replace("retries", retries())
        .insert_after("error_capture", PanicsAfter("inner_bug"))
        .actor::<Work>()
        .build()
        .unwrap();
    Work { which: 0, fail: false }.send(&app).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(RUNS[0].load(Ordering::SeqCst), 1, "the finished work ran again: {report:?}");
    assert_eq!((report.succeeded, report.retried, report.failed, report.middleware_failures), (1, 0, 0, 1));
    assert!(broker.list(&app.queues()[0], 10).await.unwrap().is_empty());
}

/// The same panic in the outermost middleware reaches the worker: the
/// message is settled as done, not dead-lettered.
#[tokio::test]
async fn a_panic_outside_every_middleware_after_success_settles_the_message_as_done() {
    let broker = MemoryBroker::new();
    let app = dramaturg::app(broker.clone())
        .replace("retries", retries())
        .insert_before("callbacks", PanicsAfter("outer_bug"))
        .actor::<Work>()
        .build()
        .unwrap();
    Work { which: 1, fail: false }.send(&app).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(RUNS[1].load(Ordering::SeqCst), 1);
    assert_eq!((report.succeeded, report.failed, report.middleware_failures), (1, 0, 1), "{report:?}");
    assert!(broker.list(&app.queues()[0], 10).await.unwrap().is_empty(), "finished work was dead-lettered");
}

/// A panic before the actor succeeded is still an ordinary failure.
#[tokio::test]
async fn a_panic_after_a_failure_is_still_a_failure() {
    let broker = MemoryBroker::new();
    let app = dramaturg::app(broker.clone())
        .replace("retries", Retries::new().max_retries(0))
        .insert_after("error_capture", PanicsAfter("inner_bug"))
        .actor::<Work>()
        .build()
        .unwrap();
    Work { which: 2, fail: true }.send(&app).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.failed, report.middleware_failures), (1, 0), "{report:?}");
    assert_eq!(broker.list(&app.queues()[0], 10).await.unwrap().len(), 1);
}

/// A retry the broker refuses to schedule (a
/// non-retryable error on `Reschedule`) is held for its retry delay and
/// then requeued — not dropped back into the queue to fail again at once.
#[tokio::test]
async fn a_retry_that_cannot_be_scheduled_backs_off() {
    let broker = refusing::RefusesReschedule { inner: MemoryBroker::new() };
    let app = dramaturg::app(broker)
        .replace(
            "retries",
            Retries::new().max_retries(1000).backoff(Duration::from_millis(400), Duration::from_millis(400)),
        )
        .actor::<Work>()
        .build()
        .unwrap();
    Work { which: 3, fail: true }.send(&app).await.unwrap();
    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let runs = RUNS[3].load(Ordering::SeqCst);
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    println!("{runs} runs in {:?} while every retry was refused: {report:?}", started.elapsed());
    // Held at least 1 s per refused retry: at most 3 runs in 2.5 s (a hot
    // loop runs it thousands of times).
    assert!((1..=3).contains(&runs), "{runs} runs in 2.5 s: the refused retry came straight back");
}

mod refusing {
    //! A broker whose deliveries refuse `Reschedule` for good.

    use std::sync::Mutex;

    use dramaturg::{
        async_trait, Broker, BrokerError, BrokerErrorKind, Consumer, Delivery, MemoryBroker, Outgoing, Receipt,
        Settled, Settlement,
    };

    #[derive(Debug)]
    pub(crate) struct RefusesReschedule {
        pub(crate) inner: MemoryBroker,
    }

    #[async_trait]
    impl Broker for RefusesReschedule {
        async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
            self.inner.declare_queue(queue).await
        }

        async fn enqueue(&self, message: Outgoing) -> Result<(), BrokerError> {
            self.inner.enqueue(message).await
        }

        async fn consume(&self, queue: &str, prefetch: usize) -> Result<Box<dyn Consumer>, BrokerError> {
            let inner = self.inner.consume(queue, prefetch).await?;
            Ok(Box::new(Refusing { inner }))
        }

        fn admin(&self) -> Option<&dyn dramaturg::QueueAdmin> {
            Some(&self.inner)
        }
    }

    struct Refusing {
        inner: Box<dyn Consumer>,
    }

    #[async_trait]
    impl Consumer for Refusing {
        async fn next(&mut self) -> Result<Delivery, BrokerError> {
            let delivery = self.inner.next().await?;
            let (body, redelivered) = (delivery.body().clone(), delivery.redelivered());
            Ok(Delivery::new(body, redelivered, Box::new(RefusingReceipt { inner: Mutex::new(Some(delivery)) })))
        }

        async fn close(self: Box<Self>) -> Result<(), BrokerError> {
            self.inner.close().await
        }
    }

    #[derive(Debug)]
    struct RefusingReceipt {
        inner: Mutex<Option<Delivery>>,
    }

    #[async_trait]
    impl Receipt for RefusingReceipt {
        async fn settle(&self, settlement: &Settlement) -> Result<Settled, BrokerError> {
            if matches!(settlement, Settlement::Reschedule { .. }) {
                return Err(BrokerError::new(BrokerErrorKind::Protocol, "reschedule refused on purpose"));
            }
            let delivery = self.inner.lock().unwrap().take().expect("settled once");
            Ok(delivery.settle(settlement.clone()).await?)
        }
    }
}
