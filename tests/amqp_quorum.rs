//! Quorum queues on the real RabbitMQ at 127.0.0.1:5672: the queues are
//! declared as quorum, a poison message is dead-lettered at the delivery
//! limit and can be found, listed and replayed, a worker runs messages on
//! them, and settings that cannot work are typed errors. (The broker
//! conformance suite runs on quorum queues too: `conformance_amqp_quorum`.)

#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dramaturg::amqp::{AmqpBroker, AmqpConfig, QueueType};
use dramaturg::prelude::*;
use dramaturg::{BoxError, BrokerErrorKind, Protocol, Replay, Settlement};
use serde::{Deserialize, Serialize};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn config(limit: u32) -> AmqpConfig {
    AmqpConfig::new(URL)
        .queue_type(QueueType::Quorum)
        .delivery_limit(limit)
        .expire_unused_queues(Duration::from_secs(120))
}

/// How many runs of [`Counted`] there were.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// A message that is counted when it runs.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "counted")]
struct Counted(u32);

impl Counted {
    async fn perform(self, _ctx: &Context) -> Result<(), BoxError> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn app(limit: u32) -> App {
    let broker = AmqpBroker::with_config(config(limit)).await.unwrap();
    let prefix = format!("test-{}-", dramaturg::MessageId::new());
    dramaturg::app(broker).queue_prefix(prefix).actor::<Counted>().build().unwrap()
}

/// The type RabbitMQ reports for `queue`.
fn queue_type(queue: &str) -> String {
    let output = Command::new("rabbitmqctl").args(["list_queues", "name", "type"]).output().unwrap();
    let listing = String::from_utf8_lossy(&output.stdout).into_owned();
    listing
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{queue}\t")).map(str::to_owned))
        .unwrap_or_else(|| panic!("{queue} is not in {listing}"))
}

#[tokio::test]
async fn a_worker_runs_messages_of_a_quorum_queue_whose_dead_letters_stay_classic() {
    let app = app(20).await;
    let queue = app.queues()[0].clone();
    app.send_many(&(0..200).map(Counted).collect::<Vec<_>>()).await.unwrap();
    let before = RUNS.load(Ordering::SeqCst);
    let report = Worker::new(app.clone()).concurrency(8).run_until_drained(Duration::from_secs(60)).await.unwrap();
    assert_eq!(report.succeeded, 200, "{report:?}");
    assert!(RUNS.load(Ordering::SeqCst) - before >= 200);
    assert_eq!(queue_type(&queue), "quorum");
    assert_eq!(queue_type(&format!("{queue}.dq")), "classic");
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_at_the_delivery_limit_then_found_and_replayed() {
    let limit = 3;
    let app = app(limit).await;
    let queue = app.queues()[0].clone();
    let id = Counted(7).send(&app).await.unwrap().id().to_string();
    // Every worker that takes it dies with it: its delivery goes back to
    // the queue, as a lost connection returns it.
    let broker = app.broker();
    let mut consumer = broker.consume(&queue, 1).await.unwrap();
    let mut deliveries = 0;
    while let Ok(Ok(delivery)) = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await {
        deliveries += 1;
        delivery.settle(Settlement::Requeue).await.unwrap();
        assert!(deliveries <= 10, "the delivery limit of {limit} stopped it");
    }
    consumer.close().await.unwrap();
    println!("delivered {deliveries} times with a delivery limit of {limit}");
    assert!((limit..=limit + 1).contains(&(deliveries as u32)), "{deliveries} deliveries");
    let dead_letters = app.dead_letters().unwrap();
    let dead = dead_letters.list(&queue, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("delivery_limit"), "RabbitMQ's reason is shown: {:?}", dead[0].reason);
    // RabbitMQ dead-lettered it without this broker's headers: its key is
    // derived from its bytes, and the app finds it by the message's id.
    assert!(dead[0].key.starts_with("sha256:"), "{:?}", dead[0].key);
    // Its time is RabbitMQ's (from the `x-death` header), not unknown.
    let age = std::time::SystemTime::now().duration_since(dead[0].at).unwrap_or_default();
    assert!(age < std::time::Duration::from_secs(120), "dead-lettered at {:?}", dead[0].at);
    let found = app.find_dead_letter(&queue, &id).await.unwrap().expect("found by the message's id");
    assert_eq!(found.key, dead[0].key);
    // Replayed, it is a new publish with a fresh delivery count, and runs.
    assert_eq!(dead_letters.replay(&queue, Replay::One(found.key)).await.unwrap(), 1);
    let before = RUNS.load(Ordering::SeqCst);
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(30)).await.unwrap();
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(RUNS.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn settings_that_cannot_work_with_quorum_queues_are_refused() {
    let refused = |config: AmqpConfig| async move {
        match AmqpBroker::with_config(config).await {
            Err(error) => {
                assert_eq!(error.kind(), BrokerErrorKind::InvalidInput, "{error}");
                error.to_string()
            }
            Ok(_) => panic!("connected"),
        }
    };
    let classic_limit = refused(AmqpConfig::new(URL).delivery_limit(5)).await;
    assert!(classic_limit.contains("quorum"), "{classic_limit}");
    let priorities = refused(AmqpConfig::new(URL).queue_type(QueueType::Quorum).max_priority(10)).await;
    assert!(priorities.contains("priorities"), "{priorities}");
    let dramatiq = refused(AmqpConfig::new(URL).queue_type(QueueType::Quorum).protocol(Protocol::Dramatiq)).await;
    assert!(dramatiq.contains("Dramatiq"), "{dramatiq}");
    let stream = refused(AmqpConfig::new(format!("{URL}?queue_type=stream"))).await;
    assert!(stream.contains("queue_type"), "{stream}");
    let zero = refused(AmqpConfig::new(format!("{URL}?queue_type=quorum&delivery_limit=0"))).await;
    assert!(zero.contains("delivery_limit"), "{zero}");
    // From the URL alone.
    let config = AmqpConfig::new(format!("{URL}?queue_type=quorum&delivery_limit=5"));
    assert_eq!((config.queue_kind(), config.deliveries_allowed()), (QueueType::Quorum, Some(5)));
    AmqpBroker::with_config(config).await.unwrap();
}
