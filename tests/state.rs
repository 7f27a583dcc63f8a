//! App state: values registered by type and read from actors, async and
//! blocking, and from the app.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dramaturg::prelude::*;
use dramaturg::{BoxError, ConfigError, MissingState};
use serde::{Deserialize, Serialize};

/// Stands in for a pool: counts what the actors did with it.
#[derive(Debug, Default)]
struct Pool {
    queries: AtomicU64,
}

/// A second value, of another type.
struct Greeting(&'static str);

/// What the actors saw, by message.
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Actor, Serialize, Deserialize)]
struct Query {
    tag: String,
}

impl Query {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        ctx.state::<Pool>()?.queries.fetch_add(1, Ordering::Relaxed);
        SEEN.lock().unwrap().push(format!("{} async {}", self.tag, ctx.state::<Greeting>()?.0));
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(blocking)]
struct BlockingQuery {
    tag: String,
}

impl BlockingQuery {
    fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        ctx.state::<Pool>()?.queries.fetch_add(10, Ordering::Relaxed);
        SEEN.lock().unwrap().push(format!("{} blocking {}", self.tag, ctx.state::<Greeting>()?.0));
        Ok(())
    }
}

/// Asks for state the app does not have, and records the error.
#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = 0)]
struct Missing {
    tag: String,
}

impl Missing {
    async fn perform(self, ctx: &Context) -> Result<(), BoxError> {
        let error = ctx.state::<Greeting>().err().ok_or("the greeting was there")?;
        SEEN.lock().unwrap().push(format!("{} {error}", self.tag));
        Err(error.into())
    }
}

fn seen(tag: &str) -> Vec<String> {
    SEEN.lock().unwrap().iter().filter(|s| s.starts_with(tag)).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_and_blocking_actors_read_the_apps_state() {
    let app = dramaturg::app(MemoryBroker::new())
        .state(Pool::default())
        .state(Greeting("hello"))
        .actor::<Query>()
        .actor::<BlockingQuery>()
        .build()
        .unwrap();
    let tag = dramaturg::MessageId::new().to_string();
    Query { tag: tag.clone() }.send(&app).await.unwrap();
    BlockingQuery { tag: tag.clone() }.send(&app).await.unwrap();
    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!((report.succeeded, report.failed), (2, 0), "{report:?}");
    let mut seen = seen(&tag);
    seen.sort();
    assert_eq!(seen, [format!("{tag} async hello"), format!("{tag} blocking hello")]);
    // The actors and the app share one value; clones of the app too.
    assert_eq!(app.clone().state::<Pool>().unwrap().queries.load(Ordering::Relaxed), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_state_is_a_typed_error_that_names_the_type() {
    let broker = MemoryBroker::new();
    let app = dramaturg::app(broker.clone()).actor::<Missing>().build().unwrap();
    let error: MissingState = app.state::<Greeting>().err().unwrap();
    assert_eq!(error.type_name, std::any::type_name::<Greeting>());
    let tag = dramaturg::MessageId::new().to_string();
    Missing { tag: tag.clone() }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(10)).await.unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    let seen = seen(&tag);
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].contains("no state of type `state::Greeting`") && seen[0].contains("AppBuilder::state"),
        "{seen:?}"
    );
    let dead = dramaturg::DeadLetters::list(&broker, "default", 10).await.unwrap();
    assert!(dead[0].reason.contains("state::Greeting"), "{:?}", dead[0].reason);
}

#[test]
fn one_value_per_type() {
    let error = dramaturg::app(MemoryBroker::new()).state(Greeting("a")).state(Greeting("b")).build().unwrap_err();
    assert_eq!(error, ConfigError::DuplicateState(std::any::type_name::<Greeting>().to_owned()));
    let builder = App::builder(MemoryBroker::new()).state(Greeting("a"));
    assert!(format!("{builder:?}").contains("Greeting"), "{builder:?}");
}

/// The abort middleware finds its store in the app's state, not by
/// looking itself up in the stack: without the middleware there is none,
/// and removing it takes its state away.
#[tokio::test]
async fn the_abort_middleware_registers_its_store_as_state() {
    use dramaturg::abort::{abort, AbortError, AbortOptions};
    let without = dramaturg::app(MemoryBroker::new()).remove("abort").build().unwrap();
    let id = dramaturg::MessageId::new();
    assert!(matches!(abort(&without, id, AbortOptions::abort()).await, Err(AbortError::NotConfigured)));
    let with = dramaturg::app(MemoryBroker::new()).build().unwrap();
    abort(&with, id, AbortOptions::abort()).await.unwrap();
}
