//! One behavioural test suite for every [`Broker`].
//!
//! The in-memory, Redis and AMQP brokers all run these same tests, so their
//! semantics cannot drift apart. Each case uses queue names of its own (from
//! the suite's prefix and a fresh id), so cases run in parallel and again
//! against one server.
//!
//! Use [`broker_conformance!`](crate::broker_conformance) in a test file to
//! get one `#[tokio::test]` per case:
//!
//! ```ignore
//! dramaturg_core::broker_conformance!(async { MyBroker::connect("…").await.unwrap() });
//! ```
//!
//! Stores have a suite of their own, [`StoreSuite`], with
//! [`store_conformance!`](crate::store_conformance).

mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::actor::into_job_result;
use crate::broker::{Broker, Consumer, Delivery, Outgoing, Replay};
use crate::{Actor, App, Context, Fail, Job, MessageId, Settled, Settlement, Worker};

pub use store::StoreSuite;

/// How long a case waits for something that should happen at once.
const SOON: Duration = Duration::from_secs(5);

/// The suite, bound to one broker.
#[derive(Debug, Clone)]
pub struct Suite {
    broker: Arc<dyn Broker>,
    prefix: String,
}

/// Generates one `#[tokio::test]` per conformance case for the broker that
/// `$make` (an `async` expression) produces.
#[macro_export]
macro_rules! broker_conformance {
    ($make:expr) => {
        $crate::broker_conformance!(@cases $make;
            fifo_delivery_and_ack,
            delayed_messages_wait,
            dead_letters_keep_the_reason_and_replay,
            requeued_messages_come_back,
            closing_returns_unsettled_deliveries,
            purge_and_stats,
            join_waits_until_drained,
            worker_requeues_on_shutdown,
            worker_dead_letters_garbage,
            reschedule_replaces_the_message_after_its_delay,
            dead_letters_can_be_deleted,
            replay_all_takes_what_was_dead_when_it_started,
            the_empty_queue_name_is_refused,
            stale_settlements_change_nothing,
            stale_settlement_after_the_same_consumer_claims_again,
            worker_retries_through_reschedule,
            worker_postpones_through_reschedule,
            settlements_carry_store_writes,
            worker_writes_with_the_settlement,
            pause_stops_claims_until_resume,
        );
    };
    (@cases $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let broker = $make.await;
                $crate::conformance::Suite::new(::std::sync::Arc::new(broker), stringify!($case)).$case().await;
            }
        )*
    };
}

async fn next(consumer: &mut dyn Consumer) -> Delivery {
    tokio::time::timeout(SOON, consumer.next()).await.expect("a delivery within 5 s").expect("the consumer works")
}

async fn nothing_within(consumer: &mut dyn Consumer, wait: Duration) {
    if let Ok(delivery) = tokio::time::timeout(wait, consumer.next()).await {
        panic!("expected no delivery yet, got {:?}", delivery.map(|d| d.body().clone()));
    }
}

fn body(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

impl Suite {
    /// The suite for `broker`; `prefix` goes into every queue name.
    pub fn new(broker: Arc<dyn Broker>, prefix: &str) -> Self {
        Self { broker, prefix: format!("conformance-{prefix}-{}", MessageId::new()) }
    }

    fn queue(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    async fn consumer(&self, queue: &str, prefetch: usize) -> Box<dyn Consumer> {
        self.broker.declare_queue(queue).await.expect("declare");
        self.broker.consume(queue, prefetch).await.expect("consume")
    }

    async fn put(&self, queue: &str, text: &str, delay: Option<Duration>) {
        self.broker.enqueue(Outgoing::new(queue, body(text)).with_delay(delay)).await.expect("enqueue");
    }

    /// Messages come out in the order they went in; acked ones are gone.
    pub async fn fifo_delivery_and_ack(&self) {
        let queue = self.queue("fifo");
        let mut consumer = self.consumer(&queue, 1).await;
        let texts: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        self.broker
            .enqueue_many(texts.iter().map(|t| Outgoing::new(queue.as_str(), body(t))).collect())
            .await
            .expect("enqueue_many");
        for text in &texts {
            let delivery = next(consumer.as_mut()).await;
            assert_eq!(delivery.body(), &body(text));
            assert!(!delivery.redelivered());
            delivery.settle(Settlement::Ack).await.expect("ack");
        }
        consumer.close().await.expect("close");
        self.expect_drained(&queue).await;
    }

    /// A delayed message is not delivered before its time, and is after.
    pub async fn delayed_messages_wait(&self) {
        let queue = self.queue("delay");
        let mut consumer = self.consumer(&queue, 1).await;
        let started = tokio::time::Instant::now();
        self.put(&queue, "later", Some(Duration::from_millis(800))).await;
        self.put(&queue, "now", None).await;
        let first = next(consumer.as_mut()).await;
        assert_eq!(first.body(), &body("now"));
        first.settle(Settlement::Ack).await.expect("ack");
        if let Some(admin) = self.broker.admin() {
            let stats = admin.stats(&queue).await.expect("stats");
            assert_eq!(stats.delayed, 1, "{stats:?}");
        }
        nothing_within(consumer.as_mut(), Duration::from_millis(300)).await;
        let later = next(consumer.as_mut()).await;
        assert_eq!(later.body(), &body("later"));
        assert!(started.elapsed() >= Duration::from_millis(800), "delivered after {:?}", started.elapsed());
        later.settle(Settlement::Ack).await.expect("ack");
        consumer.close().await.expect("close");
    }

    /// Dead letters keep their reason and can be replayed, one or all.
    pub async fn dead_letters_keep_the_reason_and_replay(&self) {
        let queue = self.queue("dead");
        let Some(dead) = self.broker.dead_letters() else { return };
        let mut consumer = self.consumer(&queue, 1).await;
        for text in ["a", "b", "c"] {
            self.put(&queue, text, None).await;
            let delivery = next(consumer.as_mut()).await;
            let settled = delivery.settle(Settlement::DeadLetter(format!("bad {text}").into())).await;
            assert_eq!(settled.expect("nack"), Settled::Applied);
        }
        let letters = dead.list(&queue, 10).await.expect("list");
        assert_eq!(letters.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(), ["bad a", "bad b", "bad c"]);
        assert_eq!(letters[0].body, body("a"));
        assert_eq!(dead.list(&queue, 2).await.expect("list").len(), 2);
        let page: Vec<String> = dead.page(&queue, 1, 5).await.expect("page").into_iter().map(|d| d.reason).collect();
        assert_eq!(page, ["bad b", "bad c"], "a page from an offset, oldest first");
        assert_eq!(dead.page(&queue, 0, 1).await.expect("page")[0].key, letters[0].key);
        assert!(dead.page(&queue, 3, 5).await.expect("page").is_empty());

        assert_eq!(dead.replay(&queue, Replay::One(letters[1].key.clone())).await.expect("replay one"), 1);
        assert_eq!(dead.replay(&queue, Replay::One("no-such-key".into())).await.expect("replay none"), 0);
        let replayed = next(consumer.as_mut()).await;
        assert_eq!(replayed.body(), &body("b"));
        replayed.settle(Settlement::Ack).await.expect("ack");

        assert_eq!(dead.replay(&queue, Replay::All).await.expect("replay all"), 2);
        let mut rest = Vec::new();
        for _ in 0..2 {
            let delivery = next(consumer.as_mut()).await;
            rest.push(delivery.body().clone());
            delivery.settle(Settlement::Ack).await.expect("ack");
        }
        rest.sort();
        assert_eq!(rest, [body("a"), body("c")]);
        assert!(dead.list(&queue, 10).await.expect("list").is_empty());
        consumer.close().await.expect("close");
    }

    /// Replaying all dead letters replays those there when it started, each
    /// once: a replayed message that fails again while the replay runs (a
    /// worker on the queue) stays a dead letter instead of being replayed
    /// again.
    pub async fn replay_all_takes_what_was_dead_when_it_started(&self) {
        const LETTERS: usize = 1_500;
        let queue = self.queue("replay-bound");
        let Some(dead) = self.broker.dead_letters() else { return };
        let mut consumer = self.consumer(&queue, 200).await;
        let outgoing = (0..LETTERS).map(|i| Outgoing::new(queue.as_str(), body(&format!("m{i}")))).collect();
        self.broker.enqueue_many(outgoing).await.expect("enqueue_many");
        for _ in 0..LETTERS {
            let delivery = next(consumer.as_mut()).await;
            delivery.settle(Settlement::DeadLetter("first".into())).await.expect("dead-letter");
        }
        // A worker that dead-letters every replayed message at once, while
        // the replay runs.
        let failing = tokio::spawn(async move {
            let mut failed = 0;
            while let Ok(Ok(delivery)) = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await {
                delivery.settle(Settlement::DeadLetter("again".into())).await.expect("dead-letter again");
                failed += 1;
            }
            consumer.close().await.expect("close");
            failed
        });
        let replayed = dead.replay(&queue, Replay::All).await.expect("replay all");
        let failed = failing.await.expect("the failing consumer");
        assert_eq!(replayed, LETTERS as u64, "each dead letter replayed once");
        assert_eq!(failed, LETTERS, "each replayed message delivered once");
        let left = dead.list(&queue, LETTERS + 10).await.expect("list");
        assert_eq!(left.len(), LETTERS);
        assert!(left.iter().all(|l| l.reason == "again"), "every message failed again and stayed dead");
        dead.delete(&queue, Replay::All).await.expect("delete");
    }

    /// A message for the empty queue name is refused as bad input, alone
    /// or in a batch, and nothing of the batch is enqueued.
    pub async fn the_empty_queue_name_is_refused(&self) {
        let refused = self.broker.enqueue(Outgoing::new("", body("nowhere"))).await.expect_err("refused");
        assert_eq!(refused.kind(), crate::BrokerErrorKind::InvalidInput, "{refused}");
        let queue = self.queue("empty-name");
        let batch = vec![Outgoing::new(queue.as_str(), body("somewhere")), Outgoing::new("", body("nowhere"))];
        let refused = self.broker.enqueue_many(batch).await.expect_err("refused");
        assert_eq!(refused.kind(), crate::BrokerErrorKind::InvalidInput, "{refused}");
        if let Some(admin) = self.broker.admin() {
            let stats = admin.stats(&queue).await.expect("stats");
            assert_eq!(stats.ready, 0, "nothing of the refused batch was enqueued: {stats:?}");
            let refused = admin.stats("").await.expect_err("stats of no queue");
            assert_eq!(refused.kind(), crate::BrokerErrorKind::InvalidInput, "{refused}");
            let refused = admin.purge("").await.expect_err("purge of no queue");
            assert_eq!(refused.kind(), crate::BrokerErrorKind::InvalidInput, "{refused}");
        }
        if let Some(dead) = self.broker.dead_letters() {
            let refused = dead.list("", 10).await.expect_err("dead letters of no queue");
            assert_eq!(refused.kind(), crate::BrokerErrorKind::InvalidInput, "{refused}");
            let refused = dead.page("", 1, 10).await.expect_err("a page of the dead letters of no queue");
            assert_eq!(refused.kind(), crate::BrokerErrorKind::InvalidInput, "{refused}");
        }
    }

    /// Dead letters can be deleted, one or all; an unknown key deletes
    /// nothing.
    pub async fn dead_letters_can_be_deleted(&self) {
        let queue = self.queue("delete-dead");
        let Some(dead) = self.broker.dead_letters() else { return };
        let mut consumer = self.consumer(&queue, 1).await;
        for text in ["a", "b", "c"] {
            self.put(&queue, text, None).await;
            let delivery = next(consumer.as_mut()).await;
            delivery.settle(Settlement::DeadLetter(format!("bad {text}").into())).await.expect("nack");
        }
        let letters = dead.list(&queue, 10).await.expect("list");
        assert_eq!(dead.delete(&queue, Replay::One("no-such-key".into())).await.expect("delete none"), 0);
        assert_eq!(dead.delete(&queue, Replay::One(String::new())).await.expect("delete none"), 0);
        assert_eq!(dead.replay(&queue, Replay::One(String::new())).await.expect("replay none"), 0);
        assert_eq!(dead.list(&queue, 10).await.expect("list").len(), 3, "the empty key names no dead letter");
        assert_eq!(dead.delete(&queue, Replay::One(letters[1].key.clone())).await.expect("delete one"), 1);
        let left: Vec<Bytes> = dead.list(&queue, 10).await.expect("list").into_iter().map(|d| d.body).collect();
        assert_eq!(left, [body("a"), body("c")]);
        assert_eq!(dead.delete(&queue, Replay::All).await.expect("delete all"), 2);
        assert!(dead.list(&queue, 10).await.expect("list").is_empty());
        nothing_within(consumer.as_mut(), Duration::from_millis(200)).await;
        consumer.close().await.expect("close");
        self.expect_drained(&queue).await;
    }

    /// A requeued message is delivered again, marked as redelivered.
    pub async fn requeued_messages_come_back(&self) {
        let queue = self.queue("requeue");
        let mut consumer = self.consumer(&queue, 1).await;
        self.put(&queue, "again", None).await;
        next(consumer.as_mut()).await.settle(Settlement::Requeue).await.expect("requeue");
        let again = next(consumer.as_mut()).await;
        assert_eq!(again.body(), &body("again"));
        assert!(again.redelivered());
        again.settle(Settlement::Ack).await.expect("ack");
        consumer.close().await.expect("close");
        self.expect_drained(&queue).await;
    }

    /// Deliveries not settled when their consumer closes are not lost: a new
    /// consumer gets them.
    pub async fn closing_returns_unsettled_deliveries(&self) {
        let queue = self.queue("close");
        let mut consumer = self.consumer(&queue, 4).await;
        for i in 0..4 {
            self.put(&queue, &format!("m{i}"), None).await;
        }
        let held = next(consumer.as_mut()).await;
        held.settle(Settlement::Requeue).await.expect("requeue");
        consumer.close().await.expect("close");
        let mut consumer = self.consumer(&queue, 4).await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let delivery = next(consumer.as_mut()).await;
            seen.push(delivery.body().clone());
            delivery.settle(Settlement::Ack).await.expect("ack");
        }
        seen.sort();
        assert_eq!(seen, (0..4).map(|i| body(&format!("m{i}"))).collect::<Vec<_>>());
        consumer.close().await.expect("close");
    }

    /// Statistics count ready and delayed messages; purge removes them.
    /// `is_drained` says what the stats say: not while a message is ready,
    /// delayed or in flight.
    pub async fn purge_and_stats(&self) {
        let queue = self.queue("purge");
        let Some(admin) = self.broker.admin() else { return };
        self.broker.declare_queue(&queue).await.expect("declare");
        assert!(admin.is_drained(&queue).await.expect("is_drained"), "an empty queue");
        self.put(&queue, "later", Some(Duration::from_secs(3600))).await;
        assert!(!admin.is_drained(&queue).await.expect("is_drained"), "a delayed message");
        for i in 0..5 {
            self.put(&queue, &format!("m{i}"), None).await;
        }
        let stats = admin.stats(&queue).await.expect("stats");
        assert_eq!((stats.ready, stats.delayed, stats.in_flight), (5, 1, 0), "{stats:?}");
        assert_eq!(admin.purge(&queue).await.expect("purge"), 6);
        assert!(admin.stats(&queue).await.expect("stats").is_drained());
        assert!(admin.is_drained(&queue).await.expect("is_drained"), "a purged queue");
        let mut consumer = self.consumer(&queue, 1).await;
        self.put(&queue, "held", None).await;
        let held = next(consumer.as_mut()).await;
        assert!(!admin.is_drained(&queue).await.expect("is_drained"), "a message in flight");
        held.settle(Settlement::Ack).await.expect("ack");
        assert!(admin.is_drained(&queue).await.expect("is_drained"), "an acked message");
        consumer.close().await.expect("close");
    }

    /// `join` returns once a consumer has settled everything, and times out
    /// while messages remain.
    pub async fn join_waits_until_drained(&self) {
        let queue = self.queue("join");
        let Some(admin) = self.broker.admin() else { return };
        let mut consumer = self.consumer(&queue, 8).await;
        for i in 0..10 {
            self.put(&queue, &format!("m{i}"), None).await;
        }
        let err = admin.join(&queue, Duration::from_millis(200)).await.expect_err("not drained yet");
        assert!(err.is_timeout(), "{err}");
        let drain = tokio::spawn(async move {
            for _ in 0..10 {
                next(consumer.as_mut()).await.settle(Settlement::Ack).await.expect("ack");
            }
            consumer.close().await.expect("close");
        });
        admin.join(&queue, SOON).await.expect("drained");
        drain.await.expect("drain task");
    }

    /// A worker shutting down with a short grace period returns running and
    /// unstarted messages to the queue: every message is either processed or
    /// back in its queue.
    pub async fn worker_requeues_on_shutdown(&self) {
        let Some(admin) = self.broker.admin() else { return };
        let app = App::builder_shared(Arc::clone(&self.broker))
            .queue_prefix(self.queue("shutdown-"))
            .actor::<Nap>()
            .build()
            .expect("app");
        let total = 20;
        // Naps far longer than the grace period: the four running when the
        // worker stops are interrupted however slow the machine is.
        for _ in 0..total {
            Nap { millis: 10_000, tag: self.prefix.clone() }.send(&app).await.expect("send");
        }
        let worker = Worker::new(app.clone()).concurrency(4).grace_period(Duration::from_millis(100));
        let shutdown = worker.shutdown_handle();
        let running = tokio::spawn(worker.run());
        let deadline = tokio::time::Instant::now() + SOON;
        while naps_started(&self.prefix) < 4 {
            assert!(tokio::time::Instant::now() < deadline, "four naps did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.shutdown();
        let report = tokio::time::timeout(SOON, running).await.expect("shutdown in time").expect("task").expect("run");
        let queue = &app.queues()[0];
        let stats = admin.stats(queue).await.expect("stats");
        let done = naps_done(&self.prefix);
        assert_eq!(report.requeued, 4, "{report:?}");
        assert_eq!(stats.in_flight, 0, "{stats:?}");
        assert_eq!(stats.ready + done, total, "{stats:?}, {done} done");
    }

    /// Bytes that are not a message are dead-lettered with a reason, and the
    /// worker goes on with the next message.
    pub async fn worker_dead_letters_garbage(&self) {
        let app = App::builder_shared(Arc::clone(&self.broker))
            .queue_prefix(self.queue("garbage-"))
            .actor::<Nap>()
            .build()
            .expect("app");
        let queue = app.queues()[0].clone();
        self.put(&queue, "\u{1}certainly not a message", None).await;
        Nap { millis: 0, tag: self.prefix.clone() }.send(&app).await.expect("send");
        let worker = Worker::new(app.clone());
        let shutdown = worker.shutdown_handle();
        let running = tokio::spawn(worker.run());
        let deadline = tokio::time::Instant::now() + SOON;
        while naps_done(&self.prefix) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the good message was not processed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.shutdown();
        let report = running.await.expect("task").expect("run");
        assert_eq!((report.rejected, report.succeeded), (1, 1), "{report:?}");
        if let Some(dead) = self.broker.dead_letters() {
            let letters = dead.list(&queue, 10).await.expect("list");
            assert_eq!(letters.len(), 1);
            assert!(letters[0].reason.starts_with("undecodable message"), "{}", letters[0].reason);
        }
    }

    /// A rescheduled message is replaced by its new body, which is not
    /// delivered before its delay; the old body is gone.
    pub async fn reschedule_replaces_the_message_after_its_delay(&self) {
        let queue = self.queue("reschedule");
        let mut consumer = self.consumer(&queue, 1).await;
        self.put(&queue, "first try", None).await;
        let delivery = next(consumer.as_mut()).await;
        let started = tokio::time::Instant::now();
        // Long enough that the statistics below see the copy still delayed
        // on a loaded machine.
        let reschedule = Settlement::Reschedule { body: body("second try"), delay: Duration::from_millis(1500) };
        assert_eq!(delivery.settle(reschedule).await.expect("reschedule"), Settled::Applied);
        if let Some(admin) = self.broker.admin() {
            let stats = admin.stats(&queue).await.expect("stats");
            assert_eq!((stats.ready, stats.delayed, stats.dead), (0, 1, 0), "{stats:?}");
        }
        nothing_within(consumer.as_mut(), Duration::from_millis(300)).await;
        let again = next(consumer.as_mut()).await;
        assert_eq!(again.body(), &body("second try"));
        assert!(started.elapsed() >= Duration::from_millis(1500), "delivered after {:?}", started.elapsed());
        assert_eq!(again.settle(Settlement::Ack).await.expect("ack"), Settled::Applied);
        consumer.close().await.expect("close");
        self.expect_drained(&queue).await;
    }

    /// Once a delivery's claim has lapsed (its message returned to the queue
    /// as if its worker had died), its settlements — ack, dead letter,
    /// requeue, reschedule — report `Stale` and change nothing: the message
    /// is delivered again with its real body, and its dead letter (if its
    /// new owner makes one) is the real message.
    pub async fn stale_settlements_change_nothing(&self) {
        let Some(admin) = self.broker.admin() else { return };
        let queue = self.queue("stale");
        let settlements = [
            Settlement::Ack,
            Settlement::DeadLetter("stale reason".into()),
            Settlement::Requeue,
            Settlement::Reschedule { body: body("stale retry"), delay: Duration::ZERO },
        ];
        for stale in settlements {
            let mut first = self.consumer(&queue, 1).await;
            self.put(&queue, "the real message", None).await;
            let lapsed = next(first.as_mut()).await;
            assert_eq!(admin.requeue_in_flight(&queue).await.expect("requeue in flight"), 1);
            let mut second = self.consumer(&queue, 1).await;
            let owner = next(second.as_mut()).await;
            assert_eq!(owner.body(), &body("the real message"));
            assert!(owner.redelivered());
            assert_eq!(lapsed.settle(stale.clone()).await.expect("stale settle"), Settled::Stale, "{stale:?}");
            let stats = admin.stats(&queue).await.expect("stats");
            assert_eq!((stats.ready, stats.delayed, stats.in_flight, stats.dead), (0, 0, 1, 0), "{stale:?}: {stats:?}");
            let reason = Settlement::DeadLetter("failed for good".into());
            assert_eq!(owner.settle(reason).await.expect("dead letter"), Settled::Applied);
            // Closed before the replay below: a push broker (AMQP) would
            // otherwise deliver the replayed message into a live consumer's
            // prefetch, and closing would return it after the purge.
            first.close().await.expect("close");
            second.close().await.expect("close");
            if let Some(dead) = self.broker.dead_letters() {
                let letters = dead.list(&queue, 10).await.expect("list");
                assert_eq!(letters.len(), 1, "{stale:?}");
                assert_eq!(letters[0].body, body("the real message"));
                assert_eq!(letters[0].reason, "failed for good");
                dead.replay(&queue, Replay::All).await.expect("replay");
                admin.purge(&queue).await.expect("purge");
            }
            self.expect_drained(&queue).await;
        }
    }

    /// A consumer that claims a message again after its first claim lapsed
    /// settles only through the new claim: the old delivery is stale.
    pub async fn stale_settlement_after_the_same_consumer_claims_again(&self) {
        let Some(admin) = self.broker.admin() else { return };
        let queue = self.queue("reclaim");
        let mut consumer = self.consumer(&queue, 2).await;
        self.put(&queue, "once", None).await;
        let old = next(consumer.as_mut()).await;
        assert_eq!(admin.requeue_in_flight(&queue).await.expect("requeue in flight"), 1);
        let new = next(consumer.as_mut()).await;
        assert_eq!(new.body(), &body("once"));
        assert_eq!(old.settle(Settlement::Ack).await.expect("old ack"), Settled::Stale);
        assert_eq!(admin.stats(&queue).await.expect("stats").in_flight, 1);
        assert_eq!(new.settle(Settlement::Ack).await.expect("new ack"), Settled::Applied);
        consumer.close().await.expect("close");
        self.expect_drained(&queue).await;
    }

    /// A failing message is retried by rescheduling: its retry carries the
    /// retry count, and it is dead-lettered once retries are used up.
    pub async fn worker_retries_through_reschedule(&self) {
        let app = App::builder_shared(Arc::clone(&self.broker))
            .queue_prefix(self.queue("retry-"))
            .middleware(OneRetry)
            .actor::<Flaky>()
            .build()
            .expect("app");
        let queue = app.queues()[0].clone();
        Flaky.send(&app).await.expect("send");
        let report = Worker::new(app.clone()).run_until_drained(SOON).await.expect("drained");
        assert_eq!((report.retried, report.failed, report.succeeded), (1, 1, 0), "{report:?}");
        if let Some(dead) = self.broker.dead_letters() {
            let letters = dead.list(&queue, 10).await.expect("list");
            assert_eq!(letters.len(), 1);
            let message = app.encoder().decode_message(&letters[0].body).expect("a message");
            assert_eq!(message.retries, 1);
            assert!(letters[0].reason.contains("flaky"), "{}", letters[0].reason);
        }
    }

    /// A postponed message (a limit was full) comes back after its delay,
    /// runs once, and has used no retry: nothing is dead-lettered.
    pub async fn worker_postpones_through_reschedule(&self) {
        let tag = self.queue("postponed");
        let app = App::builder_shared(Arc::clone(&self.broker))
            .queue_prefix(self.queue("postpone-"))
            .middleware(PostponeOnce::default())
            .actor::<Nap>()
            .build()
            .expect("app");
        let queue = app.queues()[0].clone();
        Nap { millis: 0, tag: tag.clone() }.send(&app).await.expect("send");
        let started = std::time::Instant::now();
        let report = Worker::new(app.clone()).run_until_drained(SOON).await.expect("drained");
        assert_eq!((report.postponed, report.succeeded, report.retried), (1, 1, 0), "{report:?}");
        assert_eq!(naps_done(&tag), 1);
        assert!(started.elapsed() >= POSTPONED_FOR, "it ran before its delay");
        if let Some(dead) = self.broker.dead_letters() {
            assert!(dead.list(&queue, 10).await.expect("list").is_empty());
        }
    }

    /// Every settlement made with store writes (`Delivery::settle_writing`)
    /// applies, and its writes are in the broker's store by the time it
    /// returns — one settlement at a time, and many acks at once (which
    /// brokers may batch) — and wake a waiter. A stale one changes nothing
    /// of the message. Brokers without a store skip this.
    pub async fn settlements_carry_store_writes(&self) {
        let Some(store) = self.broker.store() else { return };
        let queue = self.queue("writes");
        let mut consumer = self.consumer(&queue, 32).await;
        let settlements = [
            Settlement::Ack,
            Settlement::DeadLetter("with a write".into()),
            Settlement::Requeue,
            Settlement::Reschedule { body: body("again"), delay: Duration::ZERO },
        ];
        for (n, settlement) in settlements.into_iter().enumerate() {
            self.put(&queue, "written", None).await;
            let delivery = next(consumer.as_mut()).await;
            let key = format!("{}:one:{n}", self.prefix);
            let waiter = {
                let (store, key) = (Arc::clone(&store), key.clone());
                tokio::spawn(async move { store.wait_any(&[key], SOON).await })
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            let writes = [crate::StoreWrite::new(key.clone(), format!("value {n}"), SOON * 10)];
            let settled = delivery.settle_writing(settlement.clone(), &writes, store.as_ref()).await;
            assert_eq!(settled.expect("settle"), Settled::Applied, "{settlement:?}");
            assert_eq!(store.get(&key).await.expect("get"), Some(format!("value {n}").into_bytes()), "{settlement:?}");
            let woken = waiter.await.expect("waiter").expect("wait");
            assert_eq!(woken, Some((key, format!("value {n}").into_bytes())), "{settlement:?}");
            if matches!(settlement, Settlement::Requeue | Settlement::Reschedule { .. }) {
                let again = next(consumer.as_mut()).await;
                again.settle(Settlement::Ack).await.expect("ack");
            }
        }
        let count = 20;
        for n in 0..count {
            self.put(&queue, &format!("batch {n}"), None).await;
        }
        let mut acks = Vec::new();
        for n in 0..count {
            let delivery = next(consumer.as_mut()).await;
            let store = Arc::clone(&store);
            let key = format!("{}:many:{n}", self.prefix);
            acks.push(tokio::spawn(async move {
                let writes = [crate::StoreWrite::new(key.clone(), key.clone(), SOON * 10)];
                let settled = delivery.settle_writing(Settlement::Ack, &writes, store.as_ref()).await.expect("ack");
                assert_eq!(store.get(&key).await.expect("get"), Some(key.clone().into_bytes()));
                settled
            }));
        }
        for ack in acks {
            assert_eq!(ack.await.expect("ack task"), Settled::Applied);
        }
        if let Some(admin) = self.broker.admin() {
            self.put(&queue, "lapses", None).await;
            let lapsed = next(consumer.as_mut()).await;
            assert_eq!(admin.requeue_in_flight(&queue).await.expect("requeue in flight"), 1);
            let owner = next(consumer.as_mut()).await;
            let writes = [crate::StoreWrite::new(format!("{}:stale", self.prefix), "stale", SOON)];
            let settled = lapsed.settle_writing(Settlement::Ack, &writes, store.as_ref()).await.expect("stale");
            assert_eq!(settled, Settled::Stale);
            assert_eq!(admin.stats(&queue).await.expect("stats").in_flight, 1);
            owner.settle(Settlement::Ack).await.expect("ack");
        }
        consumer.close().await.expect("close");
        if let Some(dead) = self.broker.dead_letters() {
            dead.delete(&queue, Replay::All).await.expect("delete dead letters");
        }
        self.expect_drained(&queue).await;
    }

    /// A middleware's [`write_with_settlement`](crate::Controls::write_with_settlement)
    /// is in the broker's store once the worker has settled the message,
    /// for each of many messages settled concurrently.
    pub async fn worker_writes_with_the_settlement(&self) {
        let Some(store) = self.broker.store() else { return };
        let tag = self.queue("written");
        let app = App::builder_shared(Arc::clone(&self.broker))
            .queue_prefix(self.queue("writes-"))
            .middleware(WriteOnSettle)
            .actor::<Nap>()
            .build()
            .expect("app");
        let count = 30;
        let mut ids = Vec::new();
        for n in 0..count {
            ids.push(Nap { millis: n % 3, tag: tag.clone() }.send(&app).await.expect("send").id());
        }
        let report = Worker::new(app.clone()).concurrency(8).run_until_drained(SOON).await.expect("drained");
        assert_eq!(report.succeeded, count, "{report:?}");
        for id in ids {
            let key = WriteOnSettle::key(id);
            assert_eq!(store.get(&key).await.expect("get"), Some(b"done".to_vec()), "{key}");
        }
    }

    /// A paused queue keeps what is sent to it a second after the pause
    /// (and delayed messages fall due into it) but hands out nothing, while
    /// a delivery claimed before the pause settles as usual; after a resume everything is delivered,
    /// once. A broker (or layout) that cannot pause says `Unsupported`.
    pub async fn pause_stops_claims_until_resume(&self) {
        let queue = self.queue("pause");
        let Some(admin) = self.broker.admin() else { return };
        let mut consumer = self.consumer(&queue, 4).await;
        // Fetched with the first where a consumer prefetches, and not
        // handed out: they go back to the queue on the pause.
        for text in ["claimed", "early-1", "early-2"] {
            self.put(&queue, text, None).await;
        }
        let claimed = next(consumer.as_mut()).await;
        assert_eq!(claimed.body(), &body("claimed"));
        match admin.pause(&queue).await {
            Err(error) if error.kind() == crate::BrokerErrorKind::Unsupported => {
                assert_eq!(admin.resume(&queue).await.expect_err("no resume either").kind(), error.kind());
                claimed.settle(Settlement::Ack).await.expect("ack");
                return consumer.close().await.expect("close");
            }
            result => result.expect("pause"),
        }
        admin.pause(&queue).await.expect("pausing a paused queue changes nothing");
        assert!(admin.stats(&queue).await.expect("stats").paused);
        assert_eq!(claimed.settle(Settlement::Ack).await.expect("ack"), Settled::Applied);
        // A pause takes effect within a second (brokers that push
        // deliveries look for it).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        self.put(&queue, "a", None).await;
        self.put(&queue, "b", None).await;
        self.put(&queue, "due", Some(Duration::from_millis(300))).await;
        nothing_within(consumer.as_mut(), Duration::from_millis(2000)).await;
        let stats = admin.stats(&queue).await.expect("stats");
        assert_eq!((stats.ready, stats.delayed, stats.in_flight, stats.paused), (5, 0, 0, true), "{stats:?}");

        admin.resume(&queue).await.expect("resume");
        admin.resume(&queue).await.expect("resuming a running queue changes nothing");
        assert!(!admin.stats(&queue).await.expect("stats").paused);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let delivery = next(consumer.as_mut()).await;
            seen.push(delivery.body().clone());
            delivery.settle(Settlement::Ack).await.expect("ack");
        }
        seen.sort();
        assert_eq!(seen, [body("a"), body("b"), body("due"), body("early-1"), body("early-2")]);
        nothing_within(consumer.as_mut(), Duration::from_millis(200)).await;
        consumer.close().await.expect("close");
        self.expect_drained(&queue).await;
    }

    async fn expect_drained(&self, queue: &str) {
        if let Some(admin) = self.broker.admin() {
            admin.join(queue, SOON).await.expect("drained");
        }
    }
}

/// How many [`Nap`] messages finished, by tag (messages carry only plain
/// data, and cases run in parallel in one process).
static NAPS_DONE: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, u64>>> =
    std::sync::LazyLock::new(Default::default);

/// How many [`Nap`] messages started, by tag.
static NAPS_STARTED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, u64>>> =
    std::sync::LazyLock::new(Default::default);

fn naps_done(tag: &str) -> u64 {
    crate::sync::lock(&NAPS_DONE).get(tag).copied().unwrap_or(0)
}

fn naps_started(tag: &str) -> u64 {
    crate::sync::lock(&NAPS_STARTED).get(tag).copied().unwrap_or(0)
}

/// The suite's actor: sleeps, then counts itself done under its tag.
#[derive(Debug, Serialize, Deserialize)]
struct Nap {
    millis: u64,
    tag: String,
}

impl Actor for Nap {
    const NAME: &'static str = "conformance_nap";
    type Output = ();
    const QUEUE: &'static str = "naps";

    fn into_job(self, _ctx: Context) -> Job {
        Box::pin(async move {
            *crate::sync::lock(&NAPS_STARTED).entry(self.tag.clone()).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(self.millis)).await;
            *crate::sync::lock(&NAPS_DONE).entry(self.tag).or_default() += 1;
            into_job_result::<Self, _>(Ok::<(), crate::BoxError>(()))
        })
    }
}

/// The suite's retry middleware: one retry after 50 ms.
#[derive(Debug)]
struct OneRetry;

#[crate::async_trait]
impl crate::Middleware for OneRetry {
    fn name(&self) -> &'static str {
        "one_retry"
    }

    async fn handle(&self, ctx: &Context, next: crate::Next<'_>) -> crate::Outcome {
        match next.run(ctx).await {
            crate::Outcome::Failed(failure) if ctx.retries() == 0 => {
                let mut retry = ctx.message().clone();
                retry.retries += 1;
                crate::Outcome::Retried(failure, crate::NextAttempt::new(retry, Duration::from_millis(50)))
            }
            other => other,
        }
    }
}

/// How long [`PostponeOnce`] puts a message off.
const POSTPONED_FOR: Duration = Duration::from_millis(100);

/// The suite's limit: puts each message off once, for [`POSTPONED_FOR`],
/// with its retry count as it was (checked when it comes back).
#[derive(Debug, Default)]
struct PostponeOnce {
    seen: std::sync::Mutex<std::collections::HashSet<MessageId>>,
}

#[crate::async_trait]
impl crate::Middleware for PostponeOnce {
    fn name(&self) -> &'static str {
        "postpone_once"
    }

    async fn handle(&self, ctx: &Context, next: crate::Next<'_>) -> crate::Outcome {
        if crate::sync::lock(&self.seen).insert(ctx.id()) {
            let again = crate::NextAttempt::new(ctx.message().clone(), POSTPONED_FOR);
            return crate::Outcome::Postponed("the suite's limit is full".into(), again);
        }
        assert_eq!(ctx.retries(), 0, "a postponed message came back with a retry used");
        next.run(ctx).await
    }
}

/// The suite's middleware that writes, with the settlement, `done` under
/// [`WriteOnSettle::key`] of each message it saw end.
#[derive(Debug)]
struct WriteOnSettle;

impl WriteOnSettle {
    fn key(id: MessageId) -> String {
        format!("conformance-written:{id}")
    }
}

#[crate::async_trait]
impl crate::Middleware for WriteOnSettle {
    fn name(&self) -> &'static str {
        "write_on_settle"
    }

    async fn handle(&self, ctx: &Context, next: crate::Next<'_>) -> crate::Outcome {
        let outcome = next.run(ctx).await;
        let write = crate::StoreWrite::new(Self::key(ctx.id()), "done", SOON * 10);
        ctx.controls().write_with_settlement(write).expect("the broker has a store");
        outcome
    }
}

/// The suite's failing actor.
#[derive(Debug, Serialize, Deserialize)]
struct Flaky;

impl Actor for Flaky {
    const NAME: &'static str = "conformance_flaky";
    type Output = ();
    const QUEUE: &'static str = "flaky";

    fn into_job(self, _ctx: Context) -> Job {
        Box::pin(async move { into_job_result::<Self, _>(Err::<(), Fail>(Fail::new(std::io::Error::other("flaky")))) })
    }
}
