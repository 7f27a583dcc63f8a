//! Middleware: code that runs at enqueue time, around the processing of
//! every message, and when a worker starts and stops.
//!
//! # Order
//!
//! The stack is a list. The first middleware added is the **outermost**: its
//! [`Middleware::handle`] runs first and sees the outcome last, and its
//! [`Middleware::before_enqueue`] runs first. See
//! [`AppBuilder`](crate::AppBuilder) for inserting before or after a named
//! middleware, and [`App::middleware_names`](crate::App::middleware_names)
//! for listing the stack.
//!
//! # Two shapes
//!
//! Control flow — retries, time limits, aborts, error capture — wraps the
//! next step in `handle`: it can run code before and after, short-circuit,
//! race `next` against a deadline, or translate the outcome. Observation —
//! metrics, logging — can do the same with nothing but a timer around
//! `next.run(ctx)`, as the example below does; or, cheaper and whatever its
//! place in the stack, leave the chain ([`Middleware::wraps`] `false`) and
//! observe every attempt's start and end through synchronous hooks
//! ([`Middleware::observes_attempts`]), as the metrics middleware of
//! `dramaturg-metrics` does.
//!
//! # Examples
//!
//! A middleware that counts and times messages:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::time::Instant;
//!
//! use dramaturg_core::{async_trait, Context, Middleware, Next, Outcome};
//!
//! #[derive(Debug, Default)]
//! struct Metrics {
//!     succeeded: AtomicU64,
//!     failed: AtomicU64,
//!     busy_micros: AtomicU64,
//! }
//!
//! #[async_trait]
//! impl Middleware for Metrics {
//!     fn name(&self) -> &'static str {
//!         "metrics"
//!     }
//!
//!     async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
//!         let started = Instant::now();
//!         let outcome = next.run(ctx).await;
//!         self.busy_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
//!         let counter = match &outcome {
//!             Outcome::Succeeded(_) => &self.succeeded,
//!             _ => &self.failed,
//!         };
//!         counter.fetch_add(1, Ordering::Relaxed);
//!         outcome
//!     }
//! }
//! ```
//!
//! Register it with `AppBuilder::middleware(Metrics::default())`; keep an
//! `Arc` to read the counters (`Arc<M>` is a middleware when `M` is). With
//! the `dramaturg` crate, the same names come from `dramaturg::prelude::*`
//! (no dependency on `dramaturg_core` needed).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::actor::Job;
use crate::error::BoxError;
use crate::failure::ErrorType;
use crate::outcome::Outcome;
use crate::{App, Bounded, ConfigError, Context, Interruption, Message, State};

/// The names of the default middleware, as [`Middleware::name`] gives
/// them: for [`AppBuilder::insert_before`](crate::AppBuilder::insert_before),
/// [`replace`](crate::AppBuilder::replace) and the like. Each crate's
/// middleware uses its constant.
pub mod names {
    /// `dramaturg-callbacks`.
    pub const CALLBACKS: &str = "callbacks";
    /// `dramaturg-age-limit`.
    pub const AGE_LIMIT: &str = "age_limit";
    /// `dramaturg-abort`.
    pub const ABORT: &str = "abort";
    /// `dramaturg-retries`.
    pub const RETRIES: &str = "retries";
    /// `dramaturg-time-limit`.
    pub const TIME_LIMIT: &str = "time_limit";
    /// `dramaturg-error-capture`.
    pub const ERROR_CAPTURE: &str = "error_capture";
}

/// A step in the ordered stack around every message. Every hook has a
/// no-op default; implement the ones you need.
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// A unique name, used to insert other middleware before or after this
    /// one and to list the stack.
    fn name(&self) -> &'static str;

    /// Runs when a message is sent, before it is encoded: add or check
    /// options. (A retry is not a send: it replaces the delivery in the
    /// broker, with the options it had.)
    ///
    /// # Errors
    ///
    /// An error refuses the message: the sender gets
    /// [`EnqueueError::Rejected`](crate::EnqueueError::Rejected) and nothing
    /// is enqueued.
    fn before_enqueue(&self, message: &mut Message) -> Result<(), BoxError> {
        let _ = message;
        Ok(())
    }

    /// This middleware's part in sending when it must claim something in a
    /// store before the broker takes a message (the unique-jobs
    /// middleware claims the message's uniqueness key): see [`SendClaim`].
    /// The default, `None`, costs a send nothing.
    fn send_claim(&self) -> Option<&dyn SendClaim> {
        None
    }

    /// Runs after a message has been sent with a delay: the broker has it,
    /// and it will come due after
    /// `delay`. For middleware that keep track of waiting messages (the
    /// abort middleware does); messages sent for now do not pass here, so
    /// that sending stays cheap.
    async fn after_delayed_enqueue(&self, app: &App, message: &Message, delay: Duration) {
        let _ = (app, message, delay);
    }

    /// Runs around the processing of a message. Call `next.run(ctx)` to go
    /// on to the rest of the stack and the actor, or return an outcome of
    /// your own to short-circuit.
    ///
    /// # Which ends you see
    ///
    /// Code after `next.run(ctx).await` runs for every end of the attempt
    /// that comes back through this middleware: success, failure, a panic
    /// (caught by error capture), a retry, an interruption at shutdown
    /// ([`Outcome::Requeue`]). It does **not** run when a middleware
    /// *outside* this one stops waiting for the chain: the time limit at
    /// its deadline and the abort middleware after an abort drop the
    /// future of everything inside them (that is how they stop an async
    /// actor) and return their own outcome. A middleware that must see
    /// those ends too — timing, metrics, auditing — belongs outside them:
    /// `insert_before(middleware::names::ABORT, …)` in the default stack
    /// (or before `names::TIME_LIMIT` for time limits only), rather than
    /// [`AppBuilder::middleware`](crate::AppBuilder::middleware), which
    /// adds it innermost. Code that must run however the future ends (even
    /// dropped) goes in a guard's `Drop`.
    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        next.run(ctx).await
    }

    /// Whether this middleware's [`handle`](Middleware::handle) wraps the
    /// processing of messages. One that only observes attempts
    /// ([`on_attempt_start`](Middleware::on_attempt_start),
    /// [`on_attempt_end`](Middleware::on_attempt_end)) returns `false`,
    /// and the worker leaves it out of the chain: it then costs no future
    /// of its own per message, and its `handle` is never called. Its
    /// other hooks run as usual.
    fn wraps(&self) -> bool {
        true
    }

    /// Whether the worker calls [`on_attempt_start`](Middleware::on_attempt_start)
    /// and [`on_attempt_end`](Middleware::on_attempt_end) of this
    /// middleware. `false` by default, so that a stack with no observer
    /// pays for no loop over hooks.
    fn observes_attempts(&self) -> bool {
        false
    }

    /// Runs when the worker starts an attempt, before the chain's
    /// `handle`s, for middleware that [observe attempts](Middleware::observes_attempts):
    /// observation that needs both ends of every attempt (metrics),
    /// whatever the middleware's place in the stack. Synchronous, on every
    /// message: keep it cheap.
    fn on_attempt_start(&self, ctx: &Context) {
        let _ = ctx;
    }

    /// Runs when an attempt has ended, with its outcome as the whole chain
    /// returned it (a panic already made a failure; an attempt the abort
    /// or time-limit middleware cut short included), before the worker
    /// settles the delivery; for middleware that [observe attempts](Middleware::observes_attempts).
    /// Every attempt that started ends here once, unless the worker's own
    /// task is dropped (its runtime shut down). Synchronous: keep it cheap.
    fn on_attempt_end(&self, ctx: &Context, outcome: &Outcome) {
        let _ = (ctx, outcome);
    }

    /// Runs when the worker has made the tracing span of a message (named
    /// `message`, with its id, actor, queue and retries), before the span
    /// is entered and before anything else of the message runs: a
    /// middleware can link the span to where the message came from (the
    /// trace-context middleware of `dramaturg-metrics` gives it the
    /// OpenTelemetry parent that the message's `traceparent` option names).
    /// Messages the worker rejects before they reach an actor pass here
    /// too. It runs for every message: keep it cheap.
    fn on_message_span(&self, message: &Message, span: &tracing::Span) {
        let _ = (message, span);
    }

    /// Runs when a worker dead-letters a message it decoded but cannot
    /// run — no actor of its name is registered, or its arguments do not
    /// fit the actor — with the reason; the stack's `handle` never sees
    /// such a message. (Bytes that are not a message at all have no id to
    /// report and do not pass here.) The results middleware keeps a
    /// failure for it, so that a waiter does not wait in vain.
    async fn on_rejected(&self, app: &App, message: &Message, reason: &Bounded) {
        let _ = (app, message, reason);
    }

    /// Runs when a worker starts, before it consumes.
    async fn on_worker_start(&self, app: &App) {
        let _ = app;
    }

    /// Runs when a worker has stopped and settled every delivery.
    async fn on_worker_stop(&self, app: &App) {
        let _ = app;
    }

    /// Runs once in [`AppBuilder::build`](crate::AppBuilder::build), with
    /// the app as built: check what this middleware needs of it (the
    /// callbacks middleware checks that the actors named in the registered
    /// actors' options exist).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] fails the build with it.
    fn check_app(&self, app: &App) -> Result<(), ConfigError> {
        let _ = app;
        Ok(())
    }

    /// Runs once in [`AppBuilder::build`](crate::AppBuilder::build), before
    /// the app exists: put into the app's state what callers need to reach
    /// this middleware's workings (the abort middleware puts its store
    /// there, where `abort(&app, …)` finds it). Values are found by type,
    /// so a private type keeps them to this crate.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] fails the build with it
    /// ([`State::insert`](crate::State::insert) refuses a second value of
    /// one type).
    fn register_state(&self, state: &mut State) -> Result<(), ConfigError> {
        let _ = state;
        Ok(())
    }

    /// Error types this middleware asks failures about with
    /// [`Failure::is`](crate::Failure::is) after error capture has dropped
    /// the error value (the retry middleware's `never_retry::<E>()`). The
    /// app collects them at build time; error capture notes which of them
    /// each error is before it drops it.
    fn error_types(&self) -> Vec<ErrorType> {
        Vec::new()
    }

    /// The options of the open map this middleware reads, each an
    /// [`OptionKey`](crate::OptionKey) it owns, declared with
    /// [`OptionKey::declare`](crate::OptionKey::declare).
    /// [`AppBuilder::build`](crate::AppBuilder::build) refuses an actor
    /// whose options hold a key that no middleware of the app declared
    /// (a typo, or a middleware left out of the stack) or a declared key of
    /// the wrong type; sends refuse declared keys of the wrong type.
    fn declared_options(&self) -> Vec<crate::DeclaredOption> {
        Vec::new()
    }
}

#[async_trait]
impl<M: Middleware + ?Sized> Middleware for Arc<M> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn before_enqueue(&self, message: &mut Message) -> Result<(), BoxError> {
        (**self).before_enqueue(message)
    }

    fn send_claim(&self) -> Option<&dyn SendClaim> {
        (**self).send_claim()
    }

    async fn after_delayed_enqueue(&self, app: &App, message: &Message, delay: Duration) {
        (**self).after_delayed_enqueue(app, message, delay).await;
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        (**self).handle(ctx, next).await
    }

    fn wraps(&self) -> bool {
        (**self).wraps()
    }

    fn observes_attempts(&self) -> bool {
        (**self).observes_attempts()
    }

    fn on_attempt_start(&self, ctx: &Context) {
        (**self).on_attempt_start(ctx);
    }

    fn on_attempt_end(&self, ctx: &Context, outcome: &Outcome) {
        (**self).on_attempt_end(ctx, outcome);
    }

    fn on_message_span(&self, message: &Message, span: &tracing::Span) {
        (**self).on_message_span(message, span);
    }

    async fn on_rejected(&self, app: &App, message: &Message, reason: &Bounded) {
        (**self).on_rejected(app, message, reason).await;
    }

    async fn on_worker_start(&self, app: &App) {
        (**self).on_worker_start(app).await;
    }

    async fn on_worker_stop(&self, app: &App) {
        (**self).on_worker_stop(app).await;
    }

    fn check_app(&self, app: &App) -> Result<(), ConfigError> {
        (**self).check_app(app)
    }

    fn register_state(&self, state: &mut State) -> Result<(), ConfigError> {
        (**self).register_state(state)
    }

    fn error_types(&self) -> Vec<ErrorType> {
        (**self).error_types()
    }

    fn declared_options(&self) -> Vec<crate::DeclaredOption> {
        (**self).declared_options()
    }
}

/// A claim a middleware makes for every message sent, before the broker
/// takes it, and gives back when the send fails: what
/// [`Middleware::send_claim`] returns. Asynchronous, unlike
/// [`Middleware::before_enqueue`], because a claim is a store round trip.
///
/// A send runs every middleware's `before_enqueue`, then the claims in
/// stack order, then its checks (option types, delay, size) and the
/// broker. When a claim fails, those made before it are released; when
/// anything after the claims fails — a check, or the broker, even one
/// that timed out and may have taken the message — every claim is
/// released, so that no claim outlives a send that returned an error.
/// [`App::check_sendable`] claims nothing.
#[async_trait]
pub trait SendClaim: Send + Sync {
    /// Claims what `message` needs before it is sent; may write options
    /// into it (the claimed key, for the worker to release).
    ///
    /// # Errors
    ///
    /// An [`EnqueueError`](crate::EnqueueError) refuses the message and
    /// is what the sender gets: [`EnqueueError::Duplicate`](crate::EnqueueError::Duplicate)
    /// for a uniqueness key already held, [`EnqueueError::Rejected`](crate::EnqueueError::Rejected)
    /// with this middleware's name for anything else (a store that cannot
    /// be reached).
    async fn claim(&self, app: &App, message: &mut Message) -> Result<(), crate::EnqueueError>;

    /// Gives back what [`claim`](SendClaim::claim) took for `message`, whose
    /// send failed after it. Errors are this middleware's to log: the
    /// sender already has the send's error.
    async fn release(&self, app: &App, message: &Message);
}

/// The rest of the stack and the actor, to be run once.
pub struct Next<'a> {
    rest: &'a [Arc<dyn Middleware>],
    job: Job,
    shutdown: Option<&'a CancellationToken>,
    /// For a blocking job: when to give up on its thread at shutdown.
    abandon: Option<&'a CancellationToken>,
}

impl<'a> Next<'a> {
    pub(crate) fn new(stack: &'a [Arc<dyn Middleware>], job: Job) -> Self {
        Self { rest: stack, job, shutdown: None, abandon: None }
    }

    /// The same chain, whose actor is dropped when `shutdown` is cancelled
    /// (the worker's grace period ran out): the attempt then comes back
    /// through every middleware as [`Outcome::Requeue`].
    pub(crate) fn interrupted_by(mut self, shutdown: &'a CancellationToken) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The chain of a blocking job, whose thread cannot be stopped: when
    /// `shutdown` is cancelled, the attempt is only told so (through
    /// [`Context::check`]) and awaited on; it is dropped, and comes back as
    /// [`Outcome::Requeue`], only when `abandon` is cancelled. What finishes
    /// in between is settled as it finished.
    pub(crate) fn blocking_until(mut self, abandon: &'a CancellationToken) -> Self {
        self.abandon = Some(abandon);
        self
    }

    /// Runs the rest of the stack and then the actor.
    ///
    /// Every attempt comes back here, even one interrupted at shutdown (as
    /// [`Outcome::Requeue`]), so code after `next.run(ctx).await` sees every
    /// end of a message — unless a middleware further in drops the chain
    /// itself (as time limits and aborts do, returning their own outcome).
    pub async fn run(self, ctx: &Context) -> Outcome {
        let Self { rest, job, shutdown, abandon } = self;
        match rest.split_first() {
            // `(**first)`: the `dyn Middleware` itself. `first.handle` would pick
            // the `Arc<M>` impl, whose `handle` boxes a second future around
            // the middleware's own on every layer of every message.
            Some((first, rest)) => (**first).handle(ctx, Next { rest, job, shutdown, abandon }).await,
            None => {
                let result = match (shutdown, abandon) {
                    (Some(shutdown), None) => tokio::select! {
                        result = job => result,
                        () = shutdown.cancelled() => {
                            ctx.controls().interrupt(Interruption::Shutdown);
                            return Outcome::Requeue("the worker shut down before the message finished".into());
                        }
                    },
                    (Some(shutdown), Some(abandon)) => {
                        let mut job = job;
                        tokio::select! {
                            result = &mut job => result,
                            () = shutdown.cancelled() => {
                                ctx.controls().interrupt(Interruption::Shutdown);
                                let result = tokio::select! {
                                    result = job => result,
                                    () = abandon.cancelled() => return Outcome::Requeue(
                                        "the worker shut down and stopped waiting for the blocking thread".into(),
                                    ),
                                };
                                // A handler that stopped because it was told
                                // to did not fail: its message goes back
                                // unchanged. One that finished is settled as
                                // it finished.
                                if result.is_err() && ctx.interruption() == Some(Interruption::Shutdown) {
                                    return Outcome::Requeue("the blocking handler stopped at shutdown".into());
                                }
                                result
                            }
                        }
                    }
                    _ => job.await,
                };
                match result {
                    Ok(output) => {
                        ctx.set_actor_succeeded();
                        Outcome::Succeeded(output)
                    }
                    Err(failure) => Outcome::Failed(failure),
                }
            }
        }
    }
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.rest.iter().map(|m| m.name())).finish()
    }
}
