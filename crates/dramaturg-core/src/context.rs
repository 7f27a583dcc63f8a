//! The per-delivery context shared by every middleware and the actor.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::StoreWrite;
use crate::{App, Interrupted, Interruption, Message, MessageId, Options};

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The context of one delivery: the message, its resolved options, metadata
/// that the actor and every middleware share, heartbeats, and the app (to
/// send follow-up messages).
///
/// It is a cheap handle: clones refer to the same context, so what the actor
/// writes into [`Context::metadata`] is what a failure handler reads.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    message: Message,
    options: Options,
    app: App,
    redelivered: bool,
    started: Instant,
    /// Microseconds after `started` of the last heartbeat.
    heartbeat_us: AtomicU64,
    /// Microseconds by which the actor extended its time limit.
    extension_us: AtomicU64,
    /// Why the attempt is being stopped, if it is (0: it is not).
    interruption: AtomicU8,
    /// Microseconds after `started` at which an abort interrupts the
    /// attempt (`u64::MAX`: no abort requested).
    abort_at_us: AtomicU64,
    /// Whether the actor returned `Ok` in this attempt.
    actor_succeeded: AtomicBool,
    /// Middleware failures after the actor succeeded (panics on the way out).
    middleware_failures: AtomicU32,
    /// Cancelled when the blocking thread (or isolated child process) of
    /// this attempt has returned; unset while none was started (async
    /// actors). The flag says whether it is a child process.
    thread: OnceLock<(CancellationToken, bool)>,
    metadata: Mutex<Metadata>,
    /// Writes to the broker's store that go with this delivery's
    /// settlement ([`Controls::write_with_settlement`]).
    settlement_writes: Mutex<Vec<StoreWrite>>,
    /// Whether this process settles the delivery (not so in an isolated
    /// actor's child process).
    settles: bool,
    /// Cancelled when the worker running this delivery starts to shut
    /// down (unset outside a worker): a batch still collecting is then
    /// called at once.
    worker_stop: OnceLock<CancellationToken>,
}

impl Context {
    /// The context of `message`, whose options are already resolved.
    pub(crate) fn new(message: Message, options: Options, app: App, redelivered: bool) -> Self {
        Self::with_settler(message, options, app, redelivered, true)
    }

    /// The context of `message` in an isolated actor's child process,
    /// which does not settle it.
    pub(crate) fn in_child(message: Message, options: Options, app: App, redelivered: bool) -> Self {
        Self::with_settler(message, options, app, redelivered, false)
    }

    fn with_settler(message: Message, options: Options, app: App, redelivered: bool, settles: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                message,
                options,
                app,
                redelivered,
                started: Instant::now(),
                heartbeat_us: AtomicU64::new(0),
                extension_us: AtomicU64::new(0),
                interruption: AtomicU8::new(0),
                abort_at_us: AtomicU64::new(u64::MAX),
                actor_succeeded: AtomicBool::new(false),
                middleware_failures: AtomicU32::new(0),
                thread: OnceLock::new(),
                metadata: Mutex::default(),
                settlement_writes: Mutex::default(),
                settles,
                worker_stop: OnceLock::new(),
            }),
        }
    }

    /// The message being processed.
    pub fn message(&self) -> &Message {
        &self.inner.message
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.inner.message.id
    }

    /// The name of the actor that processes the message.
    pub fn actor(&self) -> &str {
        &self.inner.message.actor
    }

    /// The queue the message came from.
    pub fn queue(&self) -> &str {
        &self.inner.message.queue
    }

    /// The options in force: the message's own, then the actor's attributes.
    /// Middleware apply their own defaults to what is still unset.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// How long ago the message was first sent, by the broker's clock
    /// ([`Broker::now_ms`](crate::Broker::now_ms)), which also stamped it:
    /// on Redis a producer's or worker's clock that is off changes
    /// nothing. Retries keep the first send's time.
    pub fn message_age(&self) -> Duration {
        self.inner.message.age_at(self.inner.app.broker().now_ms())
    }

    /// How many times the message has been retried before this attempt.
    pub fn retries(&self) -> u32 {
        self.inner.message.retries
    }

    /// Whether the broker delivered this message before (after a crash or a
    /// shutdown): a hint that an earlier attempt may have done part of the work.
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// The app, for sending follow-up messages.
    pub fn app(&self) -> &App {
        &self.inner.app
    }

    /// The app's state of type `T` (see
    /// [`AppBuilder::state`](crate::AppBuilder::state)): a pool, a client.
    ///
    /// ```
    /// # use dramaturg_core::{Context, MissingState};
    /// struct Mailer {
    ///     from: String,
    /// }
    ///
    /// fn sender(ctx: &Context) -> Result<&str, MissingState> {
    ///     Ok(&ctx.state::<Mailer>()?.from)
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`MissingState`](crate::MissingState), naming `T`, when the app has none — also in the
    /// child process of an isolated actor, which runs without the app.
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<&T, crate::MissingState> {
        self.inner.app.state::<T>()
    }

    /// When this attempt started.
    pub fn started_at(&self) -> Instant {
        self.inner.started
    }

    /// Says "still working": resets the inactivity timer of the time-limit
    /// middleware. Cheap enough to call in a tight loop.
    pub fn heartbeat(&self) {
        self.inner.heartbeat_us.fetch_max(micros(self.inner.started.elapsed()), Ordering::Relaxed);
    }

    /// Gives this attempt `by` more time than its time limit allows. Calls
    /// add up. For jobs that learn as they go that they need longer.
    pub fn extend_deadline(&self, by: Duration) {
        self.inner.extension_us.fetch_add(micros(by), Ordering::Relaxed);
    }

    /// How much the actor has extended its time limit so far.
    pub fn deadline_extension(&self) -> Duration {
        Duration::from_micros(self.inner.extension_us.load(Ordering::Relaxed))
    }

    /// `None`, or — once an abort has been requested — the time left before
    /// the attempt is interrupted (zero once it is due). Actors that can
    /// stop cleanly check this between steps; blocking actors can only stop
    /// this way.
    pub fn abort_requested(&self) -> Option<Duration> {
        let at = self.inner.abort_at_us.load(Ordering::Acquire);
        (at != u64::MAX).then(|| Duration::from_micros(at).saturating_sub(self.inner.started.elapsed()))
    }

    /// Why the attempt is being stopped, if it is.
    pub fn interruption(&self) -> Option<Interruption> {
        match self.inner.interruption.load(Ordering::Acquire) {
            1 => Some(Interruption::TimeLimit),
            2 => Some(Interruption::Abort),
            3 => Some(Interruption::Shutdown),
            _ => None,
        }
    }

    /// `Err` once the attempt is being stopped. Async actors are stopped at
    /// their next `.await` anyway; blocking actors cannot be, and should call
    /// this in their loops to stop early:
    ///
    /// ```
    /// # use dramaturg_core::{Context, Interrupted};
    /// fn crunch(ctx: &Context, rows: &[u64]) -> Result<u64, Interrupted> {
    ///     let mut sum = 0;
    ///     for chunk in rows.chunks(10_000) {
    ///         ctx.check()?;
    ///         sum += chunk.iter().sum::<u64>();
    ///     }
    ///     Ok(sum)
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Interrupted`] with the reason.
    pub fn check(&self) -> Result<(), Interrupted> {
        self.interruption().map_or(Ok(()), |reason| Err(Interrupted(reason)))
    }

    pub(crate) fn set_actor_succeeded(&self) {
        self.inner.actor_succeeded.store(true, Ordering::Release);
    }

    /// What middleware do to this attempt beyond what the actor sees: stop
    /// it, ask it to abort, end a panicked chain. Not for actors.
    pub fn controls(&self) -> Controls<'_> {
        Controls { ctx: self }
    }

    /// Records that this attempt's blocking thread starts; the guard, moved
    /// into the thread, marks it ended when it is dropped — when the handler
    /// returns or unwinds, or when the thread never ran.
    pub(crate) fn thread_started(&self) -> DropGuard {
        self.started_outside(false)
    }

    /// As [`Context::thread_started`], for the child process of an
    /// isolated actor: the guard marks it ended once the child is gone.
    pub(crate) fn child_started(&self) -> DropGuard {
        self.started_outside(true)
    }

    fn started_outside(&self, child: bool) -> DropGuard {
        let (ended, _) = self.inner.thread.get_or_init(|| (CancellationToken::new(), child));
        ended.clone().drop_guard()
    }

    /// The blocking thread (or isolated child) of this attempt, if one was
    /// started and has not returned yet: cancelled when it returns; and
    /// whether it is a child process.
    pub(crate) fn running_thread(&self) -> Option<(CancellationToken, bool)> {
        self.inner.thread.get().filter(|(ended, _)| !ended.is_cancelled()).cloned()
    }

    /// When the actor last called [`Context::heartbeat`] (the start of the
    /// attempt if it never did).
    pub fn last_heartbeat(&self) -> Instant {
        self.inner.started + Duration::from_micros(self.inner.heartbeat_us.load(Ordering::Relaxed))
    }

    /// Runs `f` with the metadata of this delivery, locked for the call:
    /// read a value, insert one, change one. The lock cannot be held across
    /// an `.await` (which would make the job's future `!Send`), since it
    /// ends with `f`.
    ///
    /// ```
    /// # use dramaturg_core::Context;
    /// #[derive(Clone, Debug, Default)]
    /// struct Progress(u32);
    ///
    /// fn step(ctx: &Context) -> u32 {
    ///     ctx.metadata(|m| {
    ///         let progress = m.get_or_default::<Progress>();
    ///         progress.0 += 10;
    ///         progress.0
    ///     })
    /// }
    /// ```
    pub fn metadata<R>(&self, f: impl FnOnce(&mut Metadata) -> R) -> R {
        f(&mut crate::sync::lock(&self.inner.metadata))
    }

    /// Notes the token the worker running this delivery cancels when it
    /// starts to shut down.
    pub(crate) fn set_worker_stop(&self, stop: &CancellationToken) {
        let _ = self.inner.worker_stop.set(stop.clone());
    }

    /// The token of [`Context::set_worker_stop`], if any.
    pub(crate) fn worker_stop(&self) -> Option<&CancellationToken> {
        self.inner.worker_stop.get()
    }

    /// Takes the writes that go with this delivery's settlement.
    pub(crate) fn take_settlement_writes(&self) -> Vec<StoreWrite> {
        std::mem::take(&mut crate::sync::lock(&self.inner.settlement_writes))
    }
}

/// What middleware do to an attempt beyond what its actor sees:
/// [`Context::controls`].
#[derive(Debug, Clone, Copy)]
pub struct Controls<'a> {
    ctx: &'a Context,
}

impl Controls<'_> {
    /// Makes `write` in the broker's [store](crate::Broker::store) with
    /// this delivery's settlement rather than now: in the same round trip
    /// where the broker can (the Redis broker's acks), and never after the
    /// settlement takes effect, so that a message is not settled without
    /// it. For a write that nothing reads before the message is settled —
    /// the results middleware keeps a result this way. A write the store
    /// cannot make for a reason that may pass holds the settlement back
    /// and is tried again with it.
    ///
    /// # Errors
    ///
    /// Gives `write` back when the broker has no store
    /// ([`Broker::store`](crate::Broker::store) is `None`: RabbitMQ), or
    /// the attempt has no settlement of its own (an isolated actor's
    /// child process): write it yourself.
    pub fn write_with_settlement(&self, write: StoreWrite) -> Result<(), StoreWrite> {
        if !self.ctx.inner.settles || self.ctx.inner.app.broker().store().is_none() {
            return Err(write);
        }
        crate::sync::lock(&self.ctx.inner.settlement_writes).push(write);
        Ok(())
    }

    /// Records that this attempt has been asked to abort and will be
    /// interrupted after `grace` (used by the abort middleware).
    pub fn request_abort(&self, grace: Duration) {
        let at = micros(self.ctx.inner.started.elapsed() + grace);
        self.ctx.inner.abort_at_us.fetch_min(at, Ordering::AcqRel);
    }

    /// Marks the attempt as being stopped (by a time limit, an abort, a
    /// shutdown): [`Context::check`] fails from now on. The first reason
    /// given is kept.
    pub fn interrupt(&self, reason: Interruption) {
        let code = match reason {
            Interruption::TimeLimit => 1,
            Interruption::Abort => 2,
            Interruption::Shutdown => 3,
        };
        let _ = self.ctx.inner.interruption.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether the actor returned `Ok` in this attempt. Set by the innermost
    /// step of the stack as the actor returns, so a middleware that fails on
    /// the way out (a panic after `next.run(ctx)`) cannot make finished work
    /// look unfinished: error capture and the worker settle such a message as
    /// done, and report the middleware's failure on its own.
    pub fn actor_succeeded(&self) -> bool {
        self.ctx.inner.actor_succeeded.load(Ordering::Acquire)
    }

    /// Records that a middleware failed after the actor had succeeded (error
    /// capture calls this when it catches such a panic); the worker counts
    /// it in [`WorkerReport::middleware_failures`](crate::WorkerReport::middleware_failures).
    pub fn note_middleware_failure(&self) {
        self.ctx.inner.middleware_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The outcome of an attempt whose middleware chain panicked with
    /// `failure`: that failure, unless the actor had already succeeded —
    /// then the work stands ([`Outcome::Succeeded`](crate::Outcome::Succeeded)),
    /// and the panic is logged at ERROR and noted as a middleware failure,
    /// because running the finished work again would not undo the
    /// middleware's bug. Error capture and the worker both end panics here.
    pub fn outcome_of_panic(&self, mut failure: crate::Failure) -> crate::Outcome {
        if !self.actor_succeeded() {
            return crate::Outcome::Failed(failure);
        }
        self.note_middleware_failure();
        tracing::error!(
            error = %failure.record().summary(),
            "a middleware panicked after the actor succeeded; the message is settled as done"
        );
        crate::Outcome::Succeeded(crate::Output::new(()))
    }

    /// How many middleware failures after the actor's success were noted.
    pub fn middleware_failures(&self) -> u32 {
        self.ctx.inner.middleware_failures.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("message", &self.inner.message)
            .field("options", &self.inner.options)
            .field("redelivered", &self.inner.redelivered)
            .finish_non_exhaustive()
    }
}

/// Typed values attached to one delivery, at most one per type.
///
/// Define a type of your own for each piece of metadata, so that middleware
/// cannot trip over each other's keys.
///
/// # Examples
///
/// ```
/// use dramaturg_core::Metadata;
///
/// #[derive(Debug, Default, PartialEq)]
/// struct RowsExported(u64);
///
/// let mut metadata = Metadata::default();
/// metadata.get_or_default::<RowsExported>().0 += 10;
/// assert_eq!(metadata.get::<RowsExported>(), Some(&RowsExported(10)));
/// ```
#[derive(Default)]
pub struct Metadata {
    values: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl Metadata {
    /// Stores `value`, returning the previous value of its type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        self.values.insert(TypeId::of::<T>(), Box::new(value)).and_then(|old| old.downcast::<T>().ok().map(|old| *old))
    }

    /// The value of type `T`, if any.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.values.get(&TypeId::of::<T>()).and_then(|v| v.downcast_ref::<T>())
    }

    /// The value of type `T`, mutably, if any.
    pub fn get_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.values.get_mut(&TypeId::of::<T>()).and_then(|v| v.downcast_mut::<T>())
    }

    /// The value of type `T`, inserting `T::default()` first if there is none.
    pub fn get_or_default<T: Any + Send + Sync + Default>(&mut self) -> &mut T {
        self.values
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()))
            .downcast_mut::<T>()
            .expect("values are stored under their own TypeId")
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Any + Send + Sync>(&mut self) -> Option<T> {
        self.values.remove(&TypeId::of::<T>()).and_then(|v| v.downcast::<T>().ok().map(|v| *v))
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metadata").field("values", &self.values.len()).finish()
    }
}
