//! Batch actors: one handler call for up to `max` messages, or for what
//! arrived within `wait` — bulk inserts, bulk API calls — while each
//! message is still acknowledged, retried or dead-lettered on its own.
//!
//! # How a batch is made
//!
//! Every message of a batch actor runs through the whole middleware stack
//! on its own, as any message does: retries, time limits, aborts, error
//! capture, results and metrics see each message. The innermost step, where
//! a plain actor's handler would run, hands the message's decoded arguments
//! to the actor's collector and waits for that one message's outcome. The
//! collector calls the handler once with a typed [`Batch`] when `max`
//! messages wait, when `wait` has passed since the first of them arrived, or
//! at once when the worker is shutting down; then it gives each message its
//! own outcome: success, the error the handler named for it
//! ([`BatchOutcome::fail`]), or the error of the whole batch. A message whose
//! arguments do not decode never reaches a batch: it is dead-lettered alone.
//!
//! # Slots
//!
//! A message waiting for its batch holds its worker slot (the worker's
//! concurrency) and its delivery, so a batch holds at most as many messages
//! as the worker has free slots, and as the queue's prefetch allows: give
//! a worker that runs a batch actor a concurrency and prefetch of at least
//! `max` (a worker warns at start when they are smaller; batches are then
//! flushed after `wait` with what could arrive).
//!
//! # Time limits, aborts, shutdown, panics
//!
//! - **Time limits.** Each message's own time limit runs from the start of
//!   its attempt, its wait for the batch included. The batch call is cut
//!   short when the first of its messages reaches its time limit (the one
//!   that waited longest): the handler is dropped at its next `.await`, that
//!   message fails with its time limit as usual, and every other message of
//!   the batch fails with [`BatchError::Interrupted`] (of kind
//!   [`FailureKind::TimeLimitExceeded`](crate::FailureKind::TimeLimitExceeded)),
//!   to be retried as its retry policy says. [`Batch::heartbeat`] and
//!   [`Batch::extend_deadline`] act on every message of the batch.
//! - **Aborts.** A message aborted while it waits for its batch leaves it
//!   (the handler never sees it). A message aborted while its batch runs is
//!   settled as aborted, but the batch is not stopped for the others: its
//!   handler may still do that message's work. Handlers that can skip an
//!   item look at [`Context::abort_requested`] of its context.
//! - **Shutdown.** A batch still collecting is called at once with what it
//!   has. When the grace period runs out, every message of a running batch
//!   is interrupted and goes back to its queue, and the handler is dropped.
//! - **Panics.** A handler that panics fails every message of its batch
//!   with the panic, captured as any panic is.

mod collector;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use collector::submit;

pub use crate::actor::BatchLimits;
use crate::error::BoxError;
use crate::failure::Failure;
use crate::{Actor, App, Context, Interrupted, Interruption, MessageId};

/// What a batch actor's handler call returns, boxed: its [`BatchOutcome`],
/// or a failure of the whole batch.
pub type BatchJob = Pin<Box<dyn Future<Output = Result<BatchOutcome, Failure>> + Send + 'static>>;

/// A batch actor: its handler takes a [`Batch`] of its messages' arguments.
/// `#[derive(Actor)]` with `#[actor(batch(max = …, wait = "…"))]`
/// implements it (and [`Actor`], whose [`BATCH`](Actor::BATCH) it sets and
/// whose [`into_job`](Actor::into_job) calls [`submit`]).
///
/// A batch actor's [`Output`](Actor::Output) is `()`: a message's result is
/// its success or its failure.
///
/// # Examples
///
/// By hand (the derive writes the same):
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::batch::{self, Batch, BatchActor, BatchJob, BatchLimits, BatchOutcome};
/// use dramaturg_core::{Actor, Context, Job};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct InsertRow { id: u64 }
///
/// impl Actor for InsertRow {
///     const NAME: &'static str = "insert_row";
///     const QUEUE: &'static str = "rows";
///     const BATCH: Option<BatchLimits> = Some(BatchLimits::new(100, Duration::from_millis(200)));
///     type Output = ();
///
///     fn into_job(self, ctx: Context) -> Job {
///         batch::submit(self, ctx)
///     }
/// }
///
/// impl BatchActor for InsertRow {
///     fn perform_batch(batch: Batch<Self>) -> BatchJob {
///         Box::pin(async move {
///             let mut outcome = BatchOutcome::new();
///             for (index, row) in batch.args().iter().enumerate() {
///                 if row.id == 0 {
///                     outcome.fail(index, "row 0 is reserved");
///                 }
///             }
///             Ok(outcome)
///         })
///     }
/// }
/// ```
pub trait BatchActor: Actor<Output = ()> {
    /// Runs the handler once for `batch`.
    fn perform_batch(batch: Batch<Self>) -> BatchJob;
}

/// The messages of one handler call of a batch actor: each one's decoded
/// arguments and its [`Context`], in the order they arrived (never empty).
pub struct Batch<A> {
    args: Vec<A>,
    contexts: Vec<Context>,
}

impl<A> Batch<A> {
    pub(crate) fn new(args: Vec<A>, contexts: Vec<Context>) -> Self {
        debug_assert_eq!(args.len(), contexts.len());
        Self { args, contexts }
    }

    /// How many messages the batch holds (at least 1).
    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// Whether it holds none (never, for a batch a handler is given).
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// The messages' arguments; an item's index is what
    /// [`BatchOutcome::fail`] takes.
    pub fn args(&self) -> &[A] {
        &self.args
    }

    /// The messages' contexts, by the same index as [`Batch::args`].
    pub fn contexts(&self) -> &[Context] {
        &self.contexts
    }

    /// Each message's arguments and context, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&A, &Context)> {
        self.args.iter().zip(&self.contexts)
    }

    /// The messages' ids, by index.
    pub fn ids(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.contexts.iter().map(Context::id)
    }

    /// Takes the arguments out (indices stay as they were).
    pub fn into_args(self) -> Vec<A> {
        self.args
    }

    /// The app, for state ([`App::state`]) and follow-up messages.
    ///
    /// # Panics
    ///
    /// Never for a batch a handler is given, which holds a message.
    pub fn app(&self) -> &App {
        self.contexts.first().expect("a batch holds at least one message").app()
    }

    /// Says "still working" for every message of the batch (see
    /// [`Context::heartbeat`]).
    pub fn heartbeat(&self) {
        self.contexts.iter().for_each(Context::heartbeat);
    }

    /// Gives every message of the batch `by` more time than its time limit
    /// allows (see [`Context::extend_deadline`]).
    pub fn extend_deadline(&self, by: Duration) {
        self.contexts.iter().for_each(|ctx| ctx.extend_deadline(by));
    }

    /// `Err` once the batch is being stopped: a message of it reached its
    /// time limit, or the worker is interrupting it at shutdown. An abort
    /// of one message does not stop the batch (see [the module
    /// docs](self#time-limits-aborts-shutdown-panics)).
    ///
    /// # Errors
    ///
    /// [`Interrupted`] with the reason.
    pub fn check(&self) -> Result<(), Interrupted> {
        match self.contexts.iter().find_map(|ctx| ctx.interruption().filter(|r| *r != Interruption::Abort)) {
            Some(reason) => Err(Interrupted(reason)),
            None => Ok(()),
        }
    }
}

impl<A> std::fmt::Debug for Batch<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("ids", &self.ids().collect::<Vec<_>>()).finish()
    }
}

/// Which messages of a batch failed, and with what error; every other one
/// succeeded. Indices are those of [`Batch::args`].
///
/// A failed message goes through its own retries: it is retried (in a later
/// batch), or dead-lettered when it has no retry left, as its retry policy
/// says; an error that is a [`Fail`](crate::Fail) carries its wish
/// (`Fail::permanent`, `Fail::retry_after`). The others are acknowledged.
///
/// ```
/// use dramaturg_core::batch::BatchOutcome;
///
/// let mut outcome = BatchOutcome::new();
/// outcome.fail(2, "row 2 violates a constraint");
/// assert_eq!(outcome.failed(), 1);
/// ```
#[derive(Debug, Default)]
pub struct BatchOutcome {
    failures: Vec<(usize, Failure)>,
}

impl BatchOutcome {
    /// Every message succeeded.
    pub fn new() -> Self {
        Self::default()
    }

    /// The message at `index` failed with `error`. An index the batch does
    /// not have is logged at ERROR and ignored; a second error for one
    /// index is ignored (the first counts).
    pub fn fail<E: Into<BoxError>>(&mut self, index: usize, error: E) -> &mut Self {
        self.failures.push((index, Failure::from_error(error)));
        self
    }

    /// As [`BatchOutcome::fail`], by value.
    #[must_use]
    pub fn with_failure<E: Into<BoxError>>(mut self, index: usize, error: E) -> Self {
        self.fail(index, error);
        self
    }

    /// How many failures were named.
    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    pub(crate) fn into_failures(self) -> Vec<(usize, Failure)> {
        self.failures
    }
}

/// What a batch actor's handler returns: `Result<BatchOutcome, E>` (some
/// messages may fail), or `Result<(), E>` (all succeed or all fail), where
/// `E` converts into a [`BoxError`]. An `Err` fails every message of the
/// batch with that error.
#[diagnostic::on_unimplemented(
    message = "a batch actor's handler must return `Result<BatchOutcome, E>` or `Result<(), E>`, and this one returns `{Self}`",
    label = "the handler's return type does not fit a batch actor",
    note = "`E` is any error that converts into `BoxError` (`std::io::Error`, `Box<dyn Error + Send + Sync>`, `String`, `Fail`)"
)]
pub trait BatchHandlerResult {
    /// The batch's outcome, or the failure of the whole batch.
    fn into_batch_result(self) -> Result<BatchOutcome, Failure>;
}

impl<E: Into<BoxError>> BatchHandlerResult for Result<BatchOutcome, E> {
    fn into_batch_result(self) -> Result<BatchOutcome, Failure> {
        self.map_err(Failure::from_error)
    }
}

impl<E: Into<BoxError>> BatchHandlerResult for Result<(), E> {
    fn into_batch_result(self) -> Result<BatchOutcome, Failure> {
        self.map(|()| BatchOutcome::new()).map_err(Failure::from_error)
    }
}

/// Converts what a batch handler returned into a [`BatchJob`]'s result:
/// what `#[derive(Actor)]` calls.
pub fn into_batch_result<R: BatchHandlerResult>(result: R) -> Result<BatchOutcome, Failure> {
    result.into_batch_result()
}

/// Why a message of a batch actor failed without an answer of its handler.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The batch's handler was stopped because another message of the
    /// batch was interrupted: it reached its time limit (the first of the
    /// batch to), or the worker interrupted it at shutdown.
    #[error("the batch was stopped: message {by} of it was interrupted ({reason:?})")]
    Interrupted {
        /// The message whose interruption stopped the batch.
        by: MessageId,
        /// Why it was interrupted.
        reason: Interruption,
    },
    /// The batch's handler was stopped because another message of the
    /// batch stopped waiting for its answer without being interrupted
    /// (a middleware dropped it).
    #[error("the batch was stopped: message {by} of it stopped waiting for it")]
    Left {
        /// The message that stopped waiting.
        by: MessageId,
    },
    /// The actor's job was made by [`submit`] but the app does not know it
    /// as a batch actor ([`Actor::BATCH`] is `None`).
    #[error("actor {0:?} is not a batch actor in this app: its Actor::BATCH is None")]
    NotBatched(String),
    /// The batch's task ended without an answer for this message (its
    /// runtime is shutting down).
    #[error("the batch's task ended without an answer")]
    Lost,
}

/// Warns, when a worker starts, of batch actors on `queue` whose batches
/// cannot fill: fewer `slots` (the least of the worker's concurrency, the
/// queue's own limit and its prefetch) than their `max`.
pub(crate) fn warn_small_slots(app: &App, queue: &str, slots: usize) {
    for actor in app.actors().filter(|a| a.queue() == queue) {
        let Some(limits) = actor.batch() else { continue };
        if slots < limits.max() {
            tracing::warn!(
                actor = actor.name(),
                max = limits.max(),
                slots,
                "a batch actor's batches cannot fill: a message waiting for its batch holds a worker slot and its \
                 delivery, so batches hold at most as many messages as its queue can run and fetch at once \
                 (the least of the worker's concurrency, the queue's own and its prefetch) and are called after \
                 their wait; give its queue at least the batch's max of each"
            );
        }
    }
}
