//! A retry is a settlement, not a send: on the real brokers the failed
//! delivery is replaced by its next attempt with the options it had, so
//! the enqueue hooks of the stack run once per message, not once per
//! attempt.

#![cfg(all(feature = "redis", feature = "amqp"))]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dramaturg::amqp::{AmqpBroker, AmqpConfig};
use dramaturg::prelude::*;
use dramaturg::{BoxError, Broker, Message};
use serde::{Deserialize, Serialize};

/// Counts the sends that pass through the stack.
#[derive(Debug, Default)]
struct CountSends(AtomicU32);

#[async_trait]
impl Middleware for CountSends {
    fn name(&self) -> &'static str {
        "count_sends"
    }

    fn before_enqueue(&self, _message: &mut Message) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Attempts made, by test.
static ATTEMPTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Fails its first two attempts.
#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = 3, min_backoff = "10ms", max_backoff = "20ms")]
struct FailsTwice {
    test: String,
}

impl FailsTwice {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        ATTEMPTS.lock().unwrap().push(self.test);
        if ctx.retries() < 2 {
            return Err("not yet".into());
        }
        Ok(())
    }
}

/// Sends one message that succeeds at its third attempt through `broker`;
/// returns (attempts, sends seen by the enqueue hook).
async fn attempts_and_sends(broker: impl Broker, prefix: &str) -> (u32, u32) {
    let sends = Arc::new(CountSends::default());
    let app = dramaturg::app(broker)
        .queue_prefix(prefix)
        .insert_before(dramaturg::middleware::names::CALLBACKS, Arc::clone(&sends))
        .actor::<FailsTwice>()
        .build()
        .unwrap();
    let test = dramaturg::MessageId::new().to_string();
    FailsTwice { test: test.clone() }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(20)).await.unwrap();
    assert_eq!((report.retried, report.succeeded), (2, 1), "{report:?}");
    let attempts = ATTEMPTS.lock().unwrap().iter().filter(|t| **t == test).count();
    (u32::try_from(attempts).unwrap(), sends.0.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_redis_do_not_pass_the_enqueue_hooks_again() {
    let broker = support::redis_broker("redis://127.0.0.1:6379", &support::namespace()).await;
    assert_eq!(attempts_and_sends(broker, "").await, (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_rabbitmq_do_not_pass_the_enqueue_hooks_again() {
    let config =
        AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f").expire_unused_queues(Duration::from_secs(120));
    let broker = AmqpBroker::with_config(config).await.unwrap();
    let prefix = format!("test-{}-", dramaturg::MessageId::new());
    assert_eq!(attempts_and_sends(broker, &prefix).await, (3, 1));
}
