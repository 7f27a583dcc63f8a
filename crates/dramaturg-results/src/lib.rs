//! Results for [dramaturg](https://docs.rs/dramaturg): the [`Results`]
//! middleware keeps the **final outcome** of the messages of actors that
//! ask for it (`#[actor(store_results)]`, or the `store_results` option of
//! one message) in the app's [store](dramaturg_core::store), and
//! [`SentExt::result`] reads it back, typed by the actor's output:
//!
//! ```
//! use std::time::Duration;
//! use dramaturg_core::{actor::into_job_result, Actor, App, Context, Job, MemoryBroker, Worker};
//! use dramaturg_results::{Results, SentExt};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Double { n: u64 }
//!
//! impl Actor for Double {
//!     const NAME: &'static str = "double";
//!     const QUEUE: &'static str = "default";
//!     type Output = u64;
//!     fn options() -> dramaturg_core::Options {
//!         dramaturg_core::Options::default().with_option(dramaturg_results::STORE_RESULTS, true)
//!     }
//!     fn into_job(self, _ctx: Context) -> Job {
//!         Box::pin(async move { into_job_result::<Self, _>(Ok::<u64, std::io::Error>(self.n * 2)) })
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let broker = MemoryBroker::new();
//! let app = App::builder(broker.clone()).middleware(Results::for_broker(&broker)).actor::<Double>().build().unwrap();
//! let sent = Double { n: 21 }.send(&app).await.unwrap();
//! let worker = tokio::spawn(Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)));
//! let out: u64 = sent.result(&app).wait(Duration::from_secs(5)).await.unwrap();
//! assert_eq!(out, 42);
//! # worker.await.unwrap().unwrap();
//! # });
//! ```
//!
//! # What is kept
//!
//! Once per message, its final outcome: the actor's `Ok` value (encoded by
//! the app's encoder), or its final failure as the bounded
//! [`ErrorRecord`](dramaturg_core::ErrorRecord) — never an attempt that will be retried — or that it was
//! aborted or skipped. A message that cannot run (no such actor, arguments
//! that do not fit) keeps a failure too, so that a waiter never hangs on
//! it. An output larger than [`Results::max_size`] once encoded is kept as
//! a failure saying so (`ResultTooLarge`), not a crash. Every result
//! expires: after `result_ttl` (per actor or message, in milliseconds, as
//! Dramatiq names it) or the middleware's default, 10 minutes.
//!
//! # Where
//!
//! In the store given to [`Results::new`]; [`Results::for_broker`] takes
//! the broker's ([`Broker::store`](dramaturg_core::Broker::store): the
//! in-memory broker's, or one in the Redis broker's server), or a
//! process-local [`MemoryStore`] for a broker without one (RabbitMQ): then
//! only handles in the worker's own process see results — give such apps a
//! `RedisStore`. Keys are `result:{<message id>}` (one hash slot per
//! result); waiting uses the store's `wait_any` (Redis: pub/sub, no
//! polling), so a waiter wakes as soon as the result is kept. A result in
//! the broker's own store on its server goes with the message's
//! settlement ([`Controls::write_with_settlement`](dramaturg_core::Controls::write_with_settlement):
//! on Redis in the ack's round trip), and is there before the message is
//! settled. With the
//! `redis` feature, `Results::dramatiq_layout` keeps them in Python
//! Dramatiq's layout instead (`DramatiqResults`).
//!
//! # Composition
//!
//! - [`Pipeline`]: a chain of messages, each step's output the next
//!   step's arguments ([`PipeInput`]); its result is the last step's, or
//!   the outcome of the step that stopped it.
//! - [`Group`]: many messages or pipelines at once, their results in order
//!   ([`GroupHandle`]) and a completion callback sent once when every
//!   member has finished (counted by member, not by a counter).
//! - [`Progress`]: `ctx.progress(&value)` in a running actor,
//!   [`ResultHandle::progress`] to read it.
//!
//! The apps that send them and every worker that runs their messages need
//! this middleware: such messages carry `needs: ["results"]`, and a
//! worker without it dead-letters them rather than drop their chain.

mod backend;
#[cfg(feature = "redis")]
mod dramatiq;
mod error;
mod first;
mod group;
mod handle;
mod membership;
mod pipeline;
mod progress;
mod stored;
mod whose;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use dramaturg_core::store::{MemoryStore, Store};
use dramaturg_core::{
    async_trait, App, Bounded, ConfigError, Context, DeclaredOption, Failure, Message, Middleware, Next, OptionKey,
    Options, Outcome, State, NEEDS,
};

use backend::Backend;
#[cfg(feature = "redis")]
pub use dramatiq::{DramatiqResults, DEFAULT_NAMESPACE as DRAMATIQ_NAMESPACE};
pub use error::{CarryOnError, ComposeError};
pub use group::{Group, GroupHandle};
pub use handle::{ResultError, ResultHandle, SentExt};
pub use pipeline::{PipeInput, Pipeline, PipelineHandle};
pub use progress::Progress;
use stored::Stored;
use whose::Whose;

/// The option that says a message's result is kept (`true`), per actor
/// (`#[actor(store_results)]`) or per message. Dramatiq's name.
pub const STORE_RESULTS: OptionKey<bool> = OptionKey::new("store_results");

/// How long a message's result is kept, in milliseconds, per actor or
/// message (default: the middleware's, 10 minutes). Dramatiq's name.
pub const RESULT_TTL: OptionKey<u64> = OptionKey::new("result_ttl");

/// The name of the results middleware in the stack.
pub const NAME: &str = "results";

/// The middleware of the default stack that decide how a message ends,
/// which must run inside the results middleware.
const INSIDE: [&str; 6] = ["callbacks", "age_limit", "abort", "retries", "time_limit", "error_capture"];

/// Where results are kept, the store and the middleware's limits, in the
/// app's state (found by [`ResultHandle`], pipelines, groups and progress).
pub(crate) struct ResultStore {
    pub(crate) backend: Backend,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ttl: Duration,
    pub(crate) max_size: usize,
}

/// The results middleware (named `"results"`), not in the default stack:
/// add it with `insert_before(middleware::names::CALLBACKS, …)` on
/// `dramaturg::app`. It belongs outermost in the stack, so that it sees every end of a message: callbacks that
/// could not be sent, age limits, aborts, time limits and the retry
/// middleware's decision.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::{App, MemoryStore};
/// use dramaturg_results::Results;
///
/// let results = Results::new(MemoryStore::new()).ttl(Duration::from_secs(3600)).max_size(256 * 1024);
/// # let _ = results;
/// ```
#[derive(Debug, Clone)]
pub struct Results {
    store: Arc<dyn Store>,
    backend: Backend,
    ttl: Duration,
    max_size: usize,
}

impl Results {
    /// Results kept in `store`, for 10 minutes, up to 1 MiB each.
    pub fn new(store: impl Store) -> Self {
        Self::with_shared_store(Arc::new(store))
    }

    /// As [`Results::new`], with a store shared with other parts of the app.
    pub fn with_shared_store(store: Arc<dyn Store>) -> Self {
        Self {
            backend: Backend::store(Arc::clone(&store)),
            store,
            ttl: Duration::from_secs(600),
            max_size: 1024 * 1024,
        }
    }

    /// Results kept where `broker`'s messages reach: its store, or a
    /// process-local [`MemoryStore`] for a broker without one (see the
    /// crate docs). For a broker whose messages reach other processes
    /// (RabbitMQ, SQLite) that means results other processes cannot
    /// read: it logs a warning saying so, and to give it a shared store.
    pub fn for_broker(broker: &dyn dramaturg_core::Broker) -> Self {
        match broker.store() {
            Some(store) => Self::with_shared_store(store),
            None => {
                if !broker.locality().is_process_local() {
                    tracing::warn!(
                        "this broker keeps no store: results stay in this process's memory, where producers and \
                         workers of other processes cannot read them; keep them in a shared store instead \
                         (Results::new with a RedisStore or PgStore)"
                    );
                }
                Self::new(MemoryStore::new())
            }
        }
    }

    /// How long results are kept when neither the actor nor the message
    /// says (`result_ttl`); default 10 minutes.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The largest output kept, in bytes once encoded (default 1 MiB);
    /// a larger one is kept as a `ResultTooLarge` failure.
    #[must_use]
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.max_size = bytes;
        self
    }

    /// Keeps results in Python Dramatiq's Redis layout (its
    /// `RedisBackend`), so that Python's `message.get_result()` reads the
    /// results of messages Rust ran and handles read those Python ran;
    /// pipelines, groups and progress still use the store. Handles need
    /// the message's queue and actor: make them with [`SentExt::result`]
    /// or [`ResultHandle::of_message`]. Waiting takes a connection of its
    /// own per wait (`BRPOPLPUSH`).
    #[cfg(feature = "redis")]
    #[must_use]
    pub fn dramatiq_layout(mut self, layout: DramatiqResults) -> Self {
        self.backend = Backend::Dramatiq(Arc::new(layout));
        self
    }

    /// Whether `options` ask for the result to be kept, and for how long.
    fn kept_for(&self, options: &Options) -> Option<Duration> {
        match options.option(STORE_RESULTS) {
            Ok(Some(true)) => {}
            Ok(_) => return None,
            Err(error) => {
                tracing::warn!(%error, "ignoring an invalid store_results option");
                return None;
            }
        }
        Some(self.ttl_for(options))
    }

    /// How long a result is kept: `options`' `result_ttl`, or the default.
    fn ttl_for(&self, options: &Options) -> Duration {
        options.option(RESULT_TTL).ok().flatten().map_or(self.ttl, Duration::from_millis)
    }

    /// Keeps `stored` as `whose` result: with the settlement of `ctx`'s
    /// delivery when given one and the store can take it so, else at once.
    async fn keep(&self, app: &App, whose: &Whose, stored: &Stored, ttl: Duration, ctx: Option<&Context>) {
        if let Some(ctx) = ctx {
            let write = self.backend.store_write(whose, stored, ttl);
            if write.is_some_and(|write| ctx.controls().write_with_settlement(write).is_ok()) {
                return;
            }
        }
        if let Err(error) = self.backend.keep(whose, stored, ttl, app.encoder()).await {
            tracing::error!(%error, "cannot keep the message's result; a waiter will time out");
        }
    }

    /// Whether results are written with the settlement of `app`'s
    /// deliveries: the store is the broker's own
    /// ([`Broker::store`](dramaturg_core::Broker::store)), on its server
    /// (one round trip with the ack). A process-local store is written at
    /// once: it has no round trip to save.
    fn with_settlement(&self, app: &App) -> bool {
        !self.store.is_process_local()
            && app
                .broker()
                .store()
                .is_some_and(|store| std::ptr::addr_eq(Arc::as_ptr(&store), Arc::as_ptr(&self.store)))
    }

    /// Whether a message with `options` leaves anything to keep when it
    /// ends: its result, a pipeline's, a group member's completion.
    fn keeps_anything(&self, options: &Options, pipeline: Option<&pipeline::Continuation>) -> bool {
        pipeline.is_some() || options.extra.contains_key(membership::GROUP.name()) || self.kept_for(options).is_some()
    }

    /// Keeps what a message that ended with `stored` leaves: its own result
    /// if asked; the pipeline's result when the chain stops here
    /// (`carried_on`: the next step was sent instead); the group member's
    /// completion when its chain ended.
    ///
    /// Results go with the settlement of `ctx`'s delivery when given one
    /// (one round trip with the ack on Redis) — but not a group member's:
    /// the group's completion is recorded after its members' results, so
    /// that its callback and waiters find them.
    ///
    /// # Errors
    ///
    /// Why the group's completion could not be recorded.
    async fn finish(
        &self,
        ended: Ended<'_>,
        pipeline: Option<&pipeline::Continuation>,
        stored: &Stored,
        carried_on: bool,
    ) -> Result<(), CarryOnError> {
        let Ended { app, message, options, ctx } = ended;
        let membership = if carried_on { None } else { read_option(options, membership::GROUP) };
        let ctx = ctx.filter(|ctx| membership.is_none() && self.with_settlement(ctx.app()));
        if let Some(ttl) = self.kept_for(options) {
            self.keep(app, &Whose::of(message), stored, ttl, ctx).await;
        }
        if carried_on {
            return Ok(());
        }
        if let Some((pipeline, last)) = pipeline.and_then(|p| Some((p, p.last_step()?))) {
            self.keep(app, &last, stored, Duration::from_millis(pipeline.ttl_ms), ctx).await;
        }
        match membership {
            Some(membership) => membership.finished(app, self.store.as_ref()).await.map_err(CarryOnError::Group),
            None => Ok(()),
        }
    }
}

/// A message that ended, and the delivery it ran in (`None`: it was
/// rejected before it could run).
struct Ended<'a> {
    app: &'a App,
    message: &'a Message,
    options: &'a Options,
    ctx: Option<&'a Context>,
}

impl<'a> Ended<'a> {
    fn ran(ctx: &'a Context) -> Self {
        Self { app: ctx.app(), message: ctx.message(), options: ctx.options(), ctx: Some(ctx) }
    }
}

/// The value of option `key`, if it is there and well-formed (a malformed
/// one is logged: the enqueue-time check lets only well-formed ones in).
fn read_option<T: serde::de::DeserializeOwned>(options: &Options, key: OptionKey<T>) -> Option<T> {
    options.option(key).unwrap_or_else(|error| {
        tracing::error!(%error, "ignoring a malformed option");
        None
    })
}

#[async_trait]
impl Middleware for Results {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Puts the store where [`ResultHandle`] finds it.
    fn register_state(&self, state: &mut State) -> Result<(), ConfigError> {
        state.insert(ResultStore {
            backend: self.backend.clone(),
            store: Arc::clone(&self.store),
            ttl: self.ttl,
            max_size: self.max_size,
        })
    }

    fn declared_options(&self) -> Vec<DeclaredOption> {
        vec![
            STORE_RESULTS.declare_local(),
            RESULT_TTL.declare_local(),
            pipeline::PIPELINE.declare_local(),
            membership::GROUP.declare_local(),
            NEEDS.declare_local(),
        ]
    }

    /// The middleware must see every end of a message: outside (before)
    /// every middleware of the default stack that decides one.
    fn check_app(&self, app: &App) -> Result<(), ConfigError> {
        let stack = app.middleware_names();
        let Some(results) = stack.iter().position(|name| *name == NAME) else { return Ok(()) };
        match stack[..results].iter().find(|name| INSIDE.contains(name)) {
            Some(outer) => Err(ConfigError::Invalid(format!(
                "the results middleware must sit outside {outer:?}, which decides how messages end: add it with insert_before(\"callbacks\", …) (the stack is {stack:?})"
            ))),
            None => Ok(()),
        }
    }

    /// A message that asks for its result per message, or is part of a
    /// pipeline or group, [needs](NEEDS) this middleware in the worker that
    /// runs it: one without it dead-letters it, rather than run it and
    /// drop its result or the rest of its chain.
    fn before_enqueue(&self, message: &mut Message) -> Result<(), dramaturg_core::BoxError> {
        let extra = &message.options.extra;
        let asks = matches!(message.options.option(STORE_RESULTS), Ok(Some(true)))
            || extra.contains_key(pipeline::PIPELINE.name())
            || extra.contains_key(membership::GROUP.name());
        if asks {
            let mut needs = message.options.option(NEEDS).ok().flatten().unwrap_or_default();
            if !needs.iter().any(|name| name == NAME) {
                needs.push(NAME.to_owned());
                message.options = std::mem::take(&mut message.options).with_option(NEEDS, needs);
            }
        }
        Ok(())
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let mut outcome = next.run(ctx).await;
        let options = ctx.options();
        let mut carried_on = false;
        let pipeline = read_option(options, pipeline::PIPELINE);
        if !self.keeps_anything(options, pipeline.as_ref()) {
            return outcome;
        }
        if let (Some(pipeline), Outcome::Succeeded(output)) = (&pipeline, &outcome) {
            match pipeline.send_next(ctx, output).await {
                Ok(()) => carried_on = pipeline.last_step().is_some(),
                Err(reason) => {
                    tracing::error!(%reason, "the pipeline's next step could not be sent");
                    outcome = Outcome::Failed(Failure::from_error(CarryOnError::NextStep(reason)));
                }
            }
        }
        let Some(stored) = Stored::of(&mut outcome, ctx.app().encoder(), self.max_size) else {
            return outcome;
        };
        if let Err(error) = self.finish(Ended::ran(ctx), pipeline.as_ref(), &stored, carried_on).await {
            tracing::error!(%error, "the group's completion could not be recorded");
            if matches!(outcome, Outcome::Succeeded(_)) {
                outcome = Outcome::Failed(Failure::from_error(error));
            }
        }
        outcome
    }

    /// Keeps a failure for a message that cannot run whether or not it
    /// asked for its result: the worker may not know the actor that asked
    /// (`#[actor(store_results)]` in the producer's app only), and a waiter
    /// must not wait in vain. Rejections are rare, and kept for the TTL.
    async fn on_rejected(&self, app: &App, message: &Message, reason: &Bounded) {
        let stored = Stored::failure("Rejected", reason.as_str());
        let options = app.options_for(message);
        if self.kept_for(&options).is_none() {
            self.keep(app, &Whose::of(message), &stored, self.ttl_for(&options), None).await;
        }
        let pipeline = read_option(&options, pipeline::PIPELINE);
        let ended = Ended { app, message, options: &options, ctx: None };
        if let Err(error) = self.finish(ended, pipeline.as_ref(), &stored, false).await {
            tracing::error!(%error, "the group's completion could not be recorded");
        }
    }
}
