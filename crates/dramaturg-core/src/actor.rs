//! Actors: typed job handlers, and how their arguments become jobs.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::encoder::{decode_value, encode_value, CodecError, Encoder};
use crate::error::BoxError;
use crate::error_record::RecordLimits;
use crate::failure::Failure;
use crate::output::Output;
use crate::{App, Context, EnqueueError, Options, SendOptions, Sent};

/// One attempt of an actor, not yet started: futures do nothing until
/// polled, so a middleware that skips a message simply drops it.
pub type Job = Pin<Box<dyn Future<Output = Result<Output, Failure>> + Send + 'static>>;

/// A typed job handler. The value of the type is the job's arguments.
///
/// Derive it with `#[derive(Actor)]` from the `dramaturg` crate and write the
/// handler as an ordinary `async fn perform(self, ctx: &Context)`; or
/// implement it by hand.
///
/// # Examples
///
/// By hand (the derive writes the same):
///
/// ```
/// use dramaturg_core::{actor::into_job_result, Actor, Context, Job};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Resize { image_id: u64 }
///
/// impl Resize {
///     async fn perform(self, _ctx: &Context) -> Result<u64, std::io::Error> {
///         Ok(1024) // the size of the new image
///     }
/// }
///
/// impl Actor for Resize {
///     const NAME: &'static str = "resize";
///     const QUEUE: &'static str = "media";
///     type Output = u64;
///
///     fn into_job(self, ctx: Context) -> Job {
///         Box::pin(async move { into_job_result::<Self, _>(self.perform(&ctx).await) })
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a dramaturg actor",
    label = "not an actor",
    note = "add `#[derive(Actor, Serialize, Deserialize)]` to `{Self}` and give it an `async fn perform(self, ctx: &Context)`"
)]
pub trait Actor: Serialize + DeserializeOwned + Send + 'static {
    /// The actor's name, unique within an app (the derive uses the type's
    /// name in snake case).
    const NAME: &'static str;

    /// The queue its messages go to (the derive's default is `"default"`).
    const QUEUE: &'static str;

    /// What the handler returns when it succeeds: the `T` of its
    /// `Result<T, E>`. The derive's default is `()`; say another with
    /// `#[actor(output = T)]`. It reaches `on_success` callbacks as their
    /// `result`, and the [`Sent`] handle of a message is typed by it.
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Whether the handler is blocking (CPU-bound) and runs on the blocking
    /// thread pool rather than on the async worker threads.
    const BLOCKING: bool = false;

    /// Whether the handler runs in a child process that the worker can kill
    /// (see [`isolation`](crate::isolation)).
    const ISOLATED: bool = false;

    /// For a batch actor ([`BatchActor`](crate::batch::BatchActor)), how
    /// its messages are gathered into handler calls; `None` (the default)
    /// for an actor whose handler takes one message.
    const BATCH: Option<BatchLimits> = None;

    /// The actor's default options (its attributes).
    fn options() -> Options {
        Options::default()
    }

    /// Turns the arguments into one attempt of the job, run with `ctx`.
    fn into_job(self, ctx: Context) -> Job;

    /// Sends a message to this actor with its default options; returns its
    /// [`Sent`] handle (the message id, typed by the actor) once the broker
    /// has the message.
    ///
    /// # Errors
    ///
    /// [`EnqueueError`]: the app does not know this actor, the message is too
    /// large, a middleware refused it, or the broker did not take it. Nothing
    /// was enqueued.
    fn send(&self, app: &App) -> impl Future<Output = Result<Sent<Self>, EnqueueError>> + Send + 'static {
        app.send(self, SendOptions::default())
    }

    /// Sends a message to this actor with a delay or per-message options.
    ///
    /// # Errors
    ///
    /// As [`Actor::send`].
    fn send_with(
        &self,
        app: &App,
        options: SendOptions,
    ) -> impl Future<Output = Result<Sent<Self>, EnqueueError>> + Send + 'static {
        app.send(self, options)
    }
}

/// Converts what the handler of `A` returned into the result of a [`Job`]:
/// what `#[derive(Actor)]` calls. The handler returns `Result<A::Output, E>`
/// where `E` is any type that converts into a boxed error: a typed error,
/// a `Box<dyn Error + Send + Sync>`, a `String`.
pub fn into_job_result<A: Actor, R: HandlerResult<A::Output>>(result: R) -> Result<Output, Failure> {
    result.into_job_result()
}

/// What an actor's handler returns: `Result<T, E>`, where `T` is the
/// actor's [`Output`](Actor::Output) and `E` converts into a [`BoxError`].
#[diagnostic::on_unimplemented(
    message = "an actor's handler must return `Result<{T}, E>`, and this one returns `{Self}`",
    label = "the handler's return type does not fit the actor",
    note = "`{T}` is the actor's output: `()` unless the actor says `#[actor(output = YourType)]`",
    note = "`E` is any error that converts into `BoxError` (`std::io::Error`, `Box<dyn Error + Send + Sync>`, `String`, `Fail`)",
    note = "a handler that is an `async fn` needs no `blocking`; a plain `fn` needs `#[actor(blocking)]`"
)]
pub trait HandlerResult<T> {
    /// The job's result: the output kept as [`Output`], or the error as a
    /// [`Failure`].
    fn into_job_result(self) -> Result<Output, Failure>;
}

impl<T, E> HandlerResult<T> for Result<T, E>
where
    T: Serialize + Send + Sync + 'static,
    E: Into<BoxError>,
{
    fn into_job_result(self) -> Result<Output, Failure> {
        self.map(Output::new).map_err(Failure::from_error)
    }
}

/// What the handler of an actor that is not `blocking` returns: a future,
/// since the worker awaits it. Checked by `#[derive(Actor)]` so that a plain
/// `fn` handler gets an error that says what to write.
#[diagnostic::on_unimplemented(
    message = "the handler of this actor is not `async`: it returns `{Self}`, not a future",
    label = "a handler that is not async",
    note = "write `async fn perform(self, ctx: &Context)`, or mark the actor `#[actor(blocking)]` to run a plain `fn` on the blocking thread pool"
)]
pub trait AsyncHandler: Future {}

impl<F: Future> AsyncHandler for F {}

/// Passes the future of an async handler through unchanged: the check
/// behind [`AsyncHandler`]'s error message.
pub fn async_handler<F: AsyncHandler>(future: F) -> F {
    future
}

/// Runs a blocking handler on tokio's blocking thread pool.
///
/// If the job is dropped (a time limit, an abort), the thread cannot be
/// stopped from outside: it runs on until the handler returns, and its result
/// is discarded. The worker keeps the message's concurrency slot and its
/// delivery until the thread has returned, so that the attempt's retry never
/// runs beside it; blocking handlers that run long should still check
/// [`Context::check`] to give their slot back early.
pub fn run_blocking<F>(ctx: Context, handler: F) -> Job
where
    F: FnOnce(&Context) -> Result<Output, Failure> + Send + 'static,
{
    Box::pin(async move {
        let ended = ctx.thread_started();
        let run = move || {
            let _ended = ended;
            handler(&ctx)
        };
        match tokio::task::spawn_blocking(run).await {
            Ok(result) => result,
            Err(error) if error.is_panic() => {
                Err(Failure::from_panic(error.into_panic().as_ref(), None, &RecordLimits::default()))
            }
            Err(error) => Err(Failure::from_error(error)),
        }
    })
}

/// How a batch actor's messages are gathered: at most `max` per handler
/// call, and at most `wait` between the first message's arrival and the
/// call. `#[actor(batch(max = 100, wait = "200ms"))]` makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    max: usize,
    wait: Duration,
}

impl BatchLimits {
    /// At most `max` messages per call (a `max` of zero counts as 1), at
    /// most `wait` after the first.
    pub const fn new(max: usize, wait: Duration) -> Self {
        Self { max: if max == 0 { 1 } else { max }, wait }
    }

    /// The most messages one handler call gets.
    pub const fn max(&self) -> usize {
        self.max
    }

    /// The longest a batch waits for more messages after its first arrived.
    pub const fn wait(&self) -> Duration {
        self.wait
    }
}

/// What an app knows of a registered actor.
#[derive(Debug, Clone)]
pub struct ActorInfo {
    name: &'static str,
    queue: String,
    blocking: bool,
    isolated: bool,
    options: Options,
    make_job: fn(&dyn Encoder, &[u8], Context) -> Result<Job, CodecError>,
    child_args: ChildArgs,
    /// A batch actor's limits, and its collector (made by the first
    /// message, which knows the actor's type; shared by clones).
    batch: Option<(BatchLimits, Arc<CollectorSlot>)>,
}

/// Where a batch actor's collector is kept, type-erased.
pub(crate) type CollectorSlot = OnceLock<Arc<dyn Any + Send + Sync>>;

/// Checks arguments and re-encodes them for an isolated child.
type ChildArgs = fn(&dyn Encoder, &[u8]) -> Result<Vec<u8>, CodecError>;

/// The arguments checked and re-encoded with MessagePack, for a child.
fn child_args<A: Actor>(encoder: &dyn Encoder, args: &[u8]) -> Result<Vec<u8>, CodecError> {
    let actor: A = decode_value(encoder, args)?;
    encode_value(&crate::MessagePack, &actor)
}

pub(crate) fn make_job<A: Actor>(encoder: &dyn Encoder, args: &[u8], ctx: Context) -> Result<Job, CodecError> {
    let actor: A = decode_value(encoder, args)?;
    Ok(actor.into_job(ctx))
}

impl ActorInfo {
    pub(crate) fn of<A: Actor>() -> Self {
        Self {
            name: A::NAME,
            queue: A::QUEUE.to_owned(),
            blocking: A::BLOCKING,
            isolated: A::ISOLATED,
            options: A::options(),
            make_job: make_job::<A>,
            child_args: child_args::<A>,
            batch: A::BATCH.map(|limits| (limits, Arc::default())),
        }
    }

    /// The actor's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The actor's queue (with the app's queue prefix, if any).
    pub fn queue(&self) -> &str {
        &self.queue
    }

    pub(crate) fn set_queue(&mut self, queue: &str) {
        queue.clone_into(&mut self.queue);
    }

    pub(crate) fn prefix_queue(&mut self, prefix: &str) {
        self.queue.insert_str(0, prefix);
    }

    /// Whether its handler is blocking.
    pub fn blocking(&self) -> bool {
        self.blocking
    }

    /// Whether its handler runs in a child process.
    pub fn isolated(&self) -> bool {
        self.isolated
    }

    /// Its default options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// A batch actor's limits; `None` for an actor that takes one message
    /// per call.
    pub fn batch(&self) -> Option<BatchLimits> {
        self.batch.as_ref().map(|(limits, _)| *limits)
    }

    /// A batch actor's limits and the slot of its collector.
    pub(crate) fn batch_collector(&self) -> Option<(BatchLimits, &CollectorSlot)> {
        self.batch.as_ref().map(|(limits, slot)| (*limits, &**slot))
    }

    /// Decodes `args` into the actor's type and makes the job.
    pub(crate) fn job(&self, encoder: &dyn Encoder, args: &[u8], ctx: Context) -> Result<Job, CodecError> {
        (self.make_job)(encoder, args, ctx)
    }

    /// Decodes `args` into the actor's type and encodes them for a child.
    pub(crate) fn child_args(&self, encoder: &dyn Encoder, args: &[u8]) -> Result<Vec<u8>, CodecError> {
        (self.child_args)(encoder, args)
    }
}
