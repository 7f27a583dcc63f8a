//! Browsing queues without consuming them (`QueueBrowser`), against the
//! real Redis: pages of the ready list and of the delayed set, bounded by
//! the page; a message found by its id wherever it is (ready, delayed, in
//! flight, dead) and not found once done; and the brokers that cannot
//! browse (RabbitMQ, Dramatiq's Redis layout) saying so.

#![cfg(all(feature = "redis", feature = "amqp"))]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::time::{Duration, SystemTime};

use dramaturg::prelude::*;
use dramaturg::{Bounded, BrokerErrorKind, MessageId, SendOptions, Settlement, Waiting, Whereabouts};
use serde::{Deserialize, Serialize};

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "browse")]
struct Note {
    text: String,
}

impl Note {
    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        std::hint::black_box(self.text);
        Ok(())
    }
}

fn unique() -> String {
    MessageId::new().to_string().to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pages_and_whereabouts() {
    let url = format!("redis://127.0.0.1:6379?namespace=browse-{}", unique());
    let app = dramaturg::app_shared(dramaturg::connect(&url).await.unwrap()).actor::<Note>().build().unwrap();
    let mut ready = Vec::new();
    for i in 0..5 {
        ready.push(Note { text: format!("n{i}") }.send(&app).await.unwrap().id());
    }
    let soon = Note { text: "soon".into() }
        .send_with(&app, SendOptions::default().with_delay(Duration::from_secs(300)))
        .await
        .unwrap()
        .id();
    let late = Note { text: "late".into() }
        .send_with(&app, SendOptions::default().with_delay(Duration::from_secs(600)))
        .await
        .unwrap()
        .id();

    // A page from the middle of the ready list, in delivery order.
    let page = app.queued_views("browse", Waiting::Ready, 1, 2).await.unwrap();
    assert_eq!(page.total, 5);
    let ids: Vec<MessageId> = page.messages.iter().map(|v| v.message.as_ref().unwrap().id).collect();
    assert_eq!(ids, ready[1..3]);
    assert_eq!(page.messages[0].message.as_ref().unwrap().args["text"], "n1");
    assert_eq!(page.messages[0].due, None);
    // Past the end: the total, no messages; a zero limit: the total only.
    let past = app.queued_views("browse", Waiting::Ready, 10, 50).await.unwrap();
    assert_eq!((past.total, past.messages.len()), (5, 0));
    let counted = app.queued_views("browse", Waiting::Ready, 0, 0).await.unwrap();
    assert_eq!((counted.total, counted.messages.len()), (5, 0));

    // The delayed set, soonest first, with due times.
    let delayed = app.queued_views("browse", Waiting::Delayed, 0, 10).await.unwrap();
    assert_eq!(delayed.total, 2);
    let ids: Vec<MessageId> = delayed.messages.iter().map(|v| v.message.as_ref().unwrap().id).collect();
    assert_eq!(ids, [soon, late]);
    let due = delayed.messages[0].due.unwrap();
    let ahead = due.duration_since(SystemTime::now()).unwrap();
    assert!(ahead > Duration::from_secs(280) && ahead <= Duration::from_secs(301), "{ahead:?}");

    // Whereabouts: ready, delayed; by message id and by entry id.
    let found = app.locate_message("browse", &ready[3].to_string()).await.unwrap().unwrap();
    assert_eq!(found.whereabouts, Whereabouts::Ready);
    assert_eq!(found.message.as_ref().unwrap().args["text"], "n3");
    let by_entry = app.locate_message("browse", &found.entry).await.unwrap().unwrap();
    assert_eq!(by_entry.message.unwrap().id, ready[3]);
    let found = app.locate_message("browse", &late.to_string()).await.unwrap().unwrap();
    assert!(matches!(found.whereabouts, Whereabouts::Delayed { due: Some(_) }), "{found:?}");

    // Claimed: in flight; then dead-lettered: dead; acknowledged: gone.
    let mut consumer = app.broker().consume("browse", 2).await.unwrap();
    let first = consumer.next().await.unwrap();
    let second = consumer.next().await.unwrap();
    let found = app.locate_message("browse", &ready[0].to_string()).await.unwrap().unwrap();
    assert_eq!(found.whereabouts, Whereabouts::InFlight);
    first.settle(Settlement::DeadLetter(Bounded::reason("boom"))).await.unwrap();
    let found = app.locate_message("browse", &ready[0].to_string()).await.unwrap().unwrap();
    assert_eq!(found.whereabouts, Whereabouts::Dead);
    second.settle(Settlement::Ack).await.unwrap();
    assert_eq!(app.locate_message("browse", &ready[1].to_string()).await.unwrap(), None);
    assert_eq!(app.locate_message("browse", &MessageId::new().to_string()).await.unwrap(), None);
    consumer.close().await.unwrap();
    app.broker().release().await.unwrap();
    // A message whose text holds another's id is not taken for it.
    let decoy = Note { text: ready[4].to_string() }.send(&app).await.unwrap().id();
    let found = app.locate_message("browse", &ready[4].to_string()).await.unwrap().unwrap();
    assert_eq!(found.message.unwrap().id, ready[4]);
    assert_ne!(decoy, ready[4]);
    app.admin().unwrap().purge("browse").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_that_cannot_browse_say_so() {
    let dramatiq = format!("redis://127.0.0.1:6379?protocol=dramatiq&namespace=browse-{}", unique());
    let amqp = "amqp://guest:guest@127.0.0.1:5672/%2f";
    for url in [dramatiq.as_str(), amqp] {
        let app = dramaturg::app_shared(dramaturg::connect(url).await.unwrap()).build().unwrap();
        let error = app.queued_views("browse", Waiting::Ready, 0, 10).await.unwrap_err();
        assert_eq!(error.kind(), BrokerErrorKind::Unsupported, "{url}: {error}");
        let error = app.locate_message("browse", &MessageId::new().to_string()).await.unwrap_err();
        assert_eq!(error.kind(), BrokerErrorKind::Unsupported, "{url}: {error}");
    }
}
