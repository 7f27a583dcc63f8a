//! Abort events for [dramaturg](https://docs.rs/dramaturg): cancel messages
//! that have not started, abort running ones — with a grace period the
//! actor can observe — built into the middleware stack.
//!
//! ```ignore
//! use dramaturg::abort::{abort, AbortOptions};
//!
//! // Cancel it if it has not started; interrupt it if it runs, after 5 s
//! // in which the actor sees `ctx.abort_requested()`.
//! abort(&app, message_id, AbortOptions::abort().with_grace(Duration::from_secs(5))).await?;
//! // Only if it has not started:
//! abort(&app, message_id, AbortOptions::cancel()).await?;
//! ```
//!
//! # What happens
//!
//! - A message with a request (either mode) that has **not started** is
//!   skipped: acknowledged, counted as aborted, never run.
//! - A **running async** actor, in `abort` mode, sees
//!   [`Context::abort_requested`] return the time left, and is interrupted
//!   at its next `.await` once the grace period has passed (at once without
//!   one): its future is dropped, so whatever it owns is released — spawn
//!   subprocesses with `tokio::process::Command::kill_on_drop(true)` so that
//!   they die with it. A **blocking** actor cannot be interrupted: it can
//!   only stop by checking `abort_requested()` (or `ctx.check()`); after the
//!   grace period its message is reported aborted and the thread runs on
//!   until the handler returns.
//! - An aborted message is **never retried**, is not a failure, and is not
//!   dead-lettered: its outcome is `Outcome::Aborted`, which hooks and logs
//!   tell apart. An actor that ends with an error after an abort request is
//!   reported aborted too.
//! - A request outlives the message's **delay**: when a delayed message (or
//!   one waiting for a retry) is enqueued, the middleware records when it is
//!   due, and `abort` keeps the request until then plus `abort_ttl`.
//! - Aborting an unknown or finished message, or the same one twice, does
//!   nothing harmful.
//!
//! # Where requests are kept
//!
//! Requests are keys of a [`Store`] (`abort:<id>`, and `abort-due:<id>`
//! for when a waiting message is due): [`MemoryStore`] works within one
//! process (the in-memory broker, tests); the Redis store (`RedisStore`,
//! feature `redis`) works across processes, with any broker. The
//! middleware puts its store into the app's state when the app is built;
//! [`abort`] finds it there.
//!
//! Messages look for their request only while one may exist: [`abort`]
//! also writes a marker key (`abort:any`) that outlives the longest
//! request, and each worker watches it with one task — a wait while it is
//! absent (on Redis, woken by the write's pub/sub message), a read every
//! second while it is present. So while nothing was asked, a message costs
//! no store command; while requests exist in the namespace, each message
//! reads its own key once before it starts. A request written in the
//! instant before a message starts may miss it (as a request written just
//! after it would); in `abort` mode that message is then interrupted like
//! any running one.
//!
//! The default stack (`dramaturg::app`, through [`Abortable::for_broker`])
//! takes the store that reaches as far as the broker
//! ([`Broker::store`](dramaturg_core::Broker::store)): the in-memory
//! broker's own store, a store on the Redis broker's server. **RabbitMQ
//! users need a Redis for abort requests**: with a process-local store and
//! a broker that delivers to other processes, [`abort`] fails with
//! [`AbortError::EventsNotShared`] rather than return `Ok` for a request
//! no worker would see. Replace the middleware:
//!
//! ```ignore
//! let app = dramaturg::app(amqp_broker)
//!     .replace("abort", Abortable::new(RedisStore::connect("redis://127.0.0.1:6379").await?))
//!     .build()?;
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dramaturg_core::store::{MemoryStore, SetMode, Store, StoreError};
use dramaturg_core::sync::lock;
use dramaturg_core::{
    async_trait, App, ConfigError, Context, Interruption, Message, MessageId, Middleware, Next, OptionKey, Outcome,
    State,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

mod view;

use view::View;

/// The option (per message or, through `#[actor(abortable = …)]`, per
/// actor) that says whether a message can be aborted.
pub const ABORTABLE: OptionKey<bool> = OptionKey::new("abortable");

/// Whether a request also interrupts a running message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// Skip the message if it has not started; leave it alone if it runs.
    Cancel,
    /// Skip it if it has not started; interrupt it if it runs.
    Abort,
}

/// What `abort` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AbortRequest {
    /// Cancel or abort.
    pub mode: Mode,
    /// The grace period before a running actor is interrupted, in milliseconds.
    pub grace_ms: u64,
}

/// The options of [`abort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AbortOptions {
    /// Cancel or abort (default).
    pub mode: Mode,
    /// How long a running actor may take to stop cleanly before it is
    /// interrupted (default zero: at once).
    pub abort_timeout: Duration,
    /// How long the request stays valid (default 90 s), counted from the
    /// message's due time when it is delayed.
    pub abort_ttl: Duration,
}

impl Default for AbortOptions {
    fn default() -> Self {
        Self::abort()
    }
}

impl AbortOptions {
    /// Abort mode, no grace period, a 90-second TTL.
    pub fn abort() -> Self {
        Self { mode: Mode::Abort, abort_timeout: Duration::ZERO, abort_ttl: Duration::from_secs(90) }
    }

    /// Cancel mode, a 90-second TTL.
    pub fn cancel() -> Self {
        Self { mode: Mode::Cancel, ..Self::abort() }
    }

    /// A grace period for running actors.
    #[must_use]
    pub fn with_grace(mut self, abort_timeout: Duration) -> Self {
        self.abort_timeout = abort_timeout;
        self
    }

    /// How long the request stays valid.
    #[must_use]
    pub fn with_ttl(mut self, abort_ttl: Duration) -> Self {
        self.abort_ttl = abort_ttl;
        self
    }
}

/// `abort` could not send the request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AbortError {
    /// The app has no abort middleware.
    #[error("the app has no abort middleware (`Abortable`) in its stack")]
    NotConfigured,
    /// The abort middleware keeps requests in this process while the app's
    /// broker delivers to other processes: workers there would never hear
    /// of the request.
    #[error(
        "abort requests would stay in this process, but the broker ({broker:?}) delivers to other processes: \
         give the abort middleware a store they share — with the `redis` feature, \
         `.replace(\"abort\", Abortable::new(RedisStore::connect(\"redis://…\").await?))` (RabbitMQ users keep \
         a Redis for this) — or, if every worker runs in this process, opt in with \
         `Abortable::new(MemoryStore::new()).process_local_events()`"
    )]
    EventsNotShared {
        /// Where the broker says its messages live (the URL without its password).
        broker: dramaturg_core::broker::Locality,
    },
    /// The store failed.
    #[error("cannot keep the abort request: {0}")]
    Store(#[from] StoreError),
}

fn abort_key(id: MessageId) -> String {
    format!("abort:{id}")
}

fn due_key(id: MessageId) -> String {
    format!("abort-due:{id}")
}

/// What [`abort`] needs of the app's abort middleware, put into the app's
/// state as it is built (private: only this crate reads it).
struct Requests {
    store: Arc<dyn Store>,
    /// Whether a process-local store is fine with a broker that is not.
    process_local_ok: bool,
}

/// Asks that message `id` be cancelled or aborted (see the crate docs):
/// a [`MessageId`], or the [`Sent`](dramaturg_core::Sent) handle a send returned.
///
/// # Errors
///
/// [`AbortError::NotConfigured`] when the app has no [`Abortable`]
/// middleware; [`AbortError::EventsNotShared`] when its store is
/// process-local while the broker delivers to other processes (unless it
/// was built with [`Abortable::process_local_events`]);
/// [`AbortError::Store`] when the store fails. Unknown and finished
/// messages are not errors.
pub async fn abort(app: &App, id: impl Into<MessageId>, options: AbortOptions) -> Result<(), AbortError> {
    let id = id.into();
    let requests = app.state::<Requests>().map_err(|_| AbortError::NotConfigured)?;
    let store = &requests.store;
    let locality = app.broker().locality();
    if store.is_process_local() && !locality.is_process_local() && !requests.process_local_ok {
        return Err(AbortError::EventsNotShared { broker: locality });
    }
    let mut ttl = options.abort_ttl;
    if let Some(due) = store.get(&due_key(id)).await?.and_then(|raw| String::from_utf8(raw).ok()?.parse::<u64>().ok()) {
        ttl = ttl.max(Duration::from_millis(due.saturating_sub(app.broker().now_ms())) + options.abort_ttl);
    }
    let request = AbortRequest { mode: options.mode, grace_ms: dramaturg_core::time::millis(options.abort_timeout) };
    let value = serde_json::to_vec(&request).expect("a request is two plain fields");
    store.set(&abort_key(id), &value, ttl, SetMode::Always).await?;
    // After the request, so that a worker that sees the marker finds it.
    view::mark(&**store, ttl).await?;
    tracing::info!(message = %id, mode = ?options.mode, ?ttl, "abort requested");
    Ok(())
}

/// Where to pass a running message's request, and whether one was passed.
type Listener = (watch::Sender<Option<AbortRequest>>, bool);

/// The running abortable messages of a worker, and the task that waits for
/// requests concerning them.
#[derive(Default)]
struct Watcher {
    /// Event key → its listener.
    running: Mutex<HashMap<String, Listener>>,
    changed: Notify,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Watcher {
    fn register(self: &Arc<Self>, key: &str, store: &Arc<dyn Store>) -> watch::Receiver<Option<AbortRequest>> {
        let (sender, receiver) = watch::channel(None);
        lock(&self.running).insert(key.to_owned(), (sender, false));
        let mut task = lock(&self.task);
        if task.as_ref().is_none_or(JoinHandle::is_finished) {
            let (watcher, store) = (Arc::clone(self), Arc::clone(store));
            *task = Some(tokio::spawn(async move { watcher.run(&*store).await }));
        }
        drop(task);
        self.changed.notify_one();
        receiver
    }

    fn deregister(&self, key: &str) {
        lock(&self.running).remove(key);
        self.changed.notify_one();
    }

    fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }

    /// Waits for requests on the keys of running messages; idle (no command
    /// to the store) while none runs.
    async fn run(&self, store: &dyn Store) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let keys: Vec<String> =
                lock(&self.running).iter().filter(|(_, (_, passed))| !passed).map(|(k, _)| k.clone()).collect();
            if keys.is_empty() {
                changed.await;
                continue;
            }
            tokio::select! {
                event = store.wait_any(&keys, Duration::from_secs(30)) => match event {
                    Ok(Some((key, value))) => {
                        if let Some((sender, passed)) = lock(&self.running).get_mut(&key) {
                            *passed = true;
                            sender.send_replace(serde_json::from_slice(&value).ok());
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, "cannot watch for abort requests; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                () = &mut changed => {}
            }
        }
    }
}

/// Deregisters a running message however its handling ends.
struct Running<'a> {
    watcher: &'a Watcher,
    key: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.watcher.deregister(&self.key);
    }
}

/// The abort middleware. Named `"abort"` in the stack; in the default stack
/// it sits after the age limit and before the retries, so that an aborted
/// message is never retried.
pub struct Abortable {
    store: Arc<dyn Store>,
    default_abortable: bool,
    /// Whether a process-local store is fine with a broker that is not.
    process_local_ok: bool,
    watcher: Arc<Watcher>,
    /// Whether requests may exist (see `view.rs`).
    view: View,
}

impl Abortable {
    /// Abort requests kept in `store`; messages are abortable unless their
    /// actor or they themselves say otherwise.
    ///
    /// With a process-local store ([`MemoryStore`]) and a broker that
    /// delivers to other processes, [`abort`] fails with
    /// [`AbortError::EventsNotShared`] unless
    /// [`process_local_events`](Abortable::process_local_events) says that
    /// is intended.
    pub fn new(store: impl Store) -> Self {
        Self::with_shared_store(Arc::new(store))
    }

    /// As [`Abortable::new`], with a store shared with other parts of the
    /// app.
    pub fn with_shared_store(store: Arc<dyn Store>) -> Self {
        Self { store, default_abortable: true, process_local_ok: false, watcher: Arc::default(), view: View::default() }
    }

    /// The abort middleware whose requests reach as far as `broker`'s
    /// messages — what `dramaturg::app` puts in its default stack: it
    /// keeps them in [`Broker::store`](dramaturg_core::Broker::store) (the
    /// in-memory broker's store; a store on the Redis broker's server,
    /// with its namespace and TLS settings), or, for a broker without a
    /// store (RabbitMQ), in a [`MemoryStore`], with which [`abort`]
    /// returns [`AbortError::EventsNotShared`] — replace the middleware
    /// with one on a store the processes share (Redis).
    pub fn for_broker(broker: &dyn dramaturg_core::Broker) -> Self {
        match broker.store() {
            Some(store) => Self::with_shared_store(store),
            None => Self::new(MemoryStore::new()),
        }
    }

    /// Says that a process-local store ([`MemoryStore`]) is intended
    /// even though the broker delivers to other processes: every worker
    /// that must hear of an abort runs in this process.
    #[must_use]
    pub fn process_local_events(mut self) -> Self {
        self.process_local_ok = true;
        self
    }

    /// Whether messages are abortable when neither they nor their actor say.
    #[must_use]
    pub fn abortable_by_default(mut self, abortable: bool) -> Self {
        self.default_abortable = abortable;
        self
    }

    /// The store of abort requests.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn abortable(&self, options: &dramaturg_core::Options) -> bool {
        match options.option(ABORTABLE) {
            Ok(Some(abortable)) => abortable,
            Ok(None) => self.default_abortable,
            Err(error) => {
                tracing::warn!(%error, "ignoring an invalid abortable option");
                self.default_abortable
            }
        }
    }
}

impl Abortable {
    /// Records when a waiting message is due (by the broker's clock, as
    /// [`abort`] reads it), so that a request made while it waits stays
    /// valid until then.
    async fn remember_due(&self, app: &App, id: MessageId, delay: Duration) {
        let due = app.broker().now_ms().saturating_add(dramaturg_core::time::millis(delay)).to_string();
        let ttl = delay.saturating_add(Duration::from_secs(24 * 3600));
        if let Err(error) = self.store.set(&due_key(id), due.as_bytes(), ttl, SetMode::Always).await {
            tracing::warn!(%error, "cannot record when a delayed message is due; an abort request for it may expire early");
        }
    }

    /// The request for `key`, if there is one (a store error is logged and
    /// counts as none: the message runs).
    async fn requested(&self, key: &str) -> Option<AbortRequest> {
        match self.store.get(key).await {
            Ok(value) => value.and_then(|raw| serde_json::from_slice(&raw).ok()),
            Err(error) => {
                tracing::warn!(%error, "cannot check for an abort request; running the message");
                None
            }
        }
    }
}

impl Drop for Abortable {
    fn drop(&mut self) {
        self.watcher.stop();
        self.view.stop();
    }
}

impl fmt::Debug for Abortable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Abortable")
            .field("store", &self.store)
            .field("default_abortable", &self.default_abortable)
            .field("process_local_events", &self.process_local_ok)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Middleware for Abortable {
    fn name(&self) -> &'static str {
        dramaturg_core::middleware::names::ABORT
    }

    /// Puts the store where [`abort`] finds it.
    fn register_state(&self, state: &mut State) -> Result<(), ConfigError> {
        state.insert(Requests { store: Arc::clone(&self.store), process_local_ok: self.process_local_ok })
    }

    /// The `abortable` option must be a boolean.
    fn declared_options(&self) -> Vec<dramaturg_core::DeclaredOption> {
        vec![ABORTABLE.declare_local()]
    }

    async fn after_delayed_enqueue(&self, app: &App, message: &Message, delay: Duration) {
        let options = app.options_for(message);
        if self.abortable(&options) {
            self.remember_due(app, message.id, delay).await;
        }
    }

    /// Starts watching whether any request exists, so that messages
    /// look for theirs only while one may.
    async fn on_worker_start(&self, _app: &App) {
        self.view.start(&self.store);
    }

    async fn on_worker_stop(&self, _app: &App) {
        self.watcher.stop();
        self.view.stop();
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        if !self.abortable(ctx.options()) {
            return next.run(ctx).await;
        }
        if self.view.may_exist() && Box::pin(self.requested(&abort_key(ctx.id()))).await.is_some() {
            return Outcome::Aborted("cancelled before it started".into());
        }
        let outcome = self.watch(ctx, next).await;
        if let Some(attempt) = outcome.next_attempt() {
            Box::pin(self.remember_due(ctx.app(), ctx.id(), attempt.delay)).await;
        }
        outcome
    }
}

impl Abortable {
    /// Runs the attempt, racing it against abort requests for its message.
    ///
    /// Most messages finish in their first poll: for them nothing more is
    /// allocated than the attempt itself; the watch of one that waits is a
    /// future of its own, boxed.
    async fn watch(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let attempt = next.run(ctx);
        tokio::pin!(attempt);
        // Most messages finish in their first poll, and cost the watcher
        // nothing; only one that waits for something is watched.
        let first = std::future::poll_fn(|cx| match std::future::Future::poll(attempt.as_mut(), cx) {
            std::task::Poll::Ready(outcome) => std::task::Poll::Ready(Some(outcome)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await;
        if let Some(outcome) = first {
            return outcome;
        }
        Box::pin(self.watched(ctx, attempt)).await
    }

    /// Races `attempt`, polled once already, against abort requests for
    /// its message.
    async fn watched(
        &self,
        ctx: &Context,
        mut attempt: std::pin::Pin<&mut impl std::future::Future<Output = Outcome>>,
    ) -> Outcome {
        let key = abort_key(ctx.id());
        let mut requests = self.watcher.register(&key, &self.store);
        let _running = Running { watcher: &self.watcher, key: key.clone() };
        if let Some(request) = if self.view.may_exist() { self.requested(&key).await } else { None } {
            // Made while the message started: pass it on as the watcher would.
            let _ = requests.borrow_and_update();
            if let Some((sender, passed)) = lock(&self.watcher.running).get_mut(&key) {
                *passed = true;
                sender.send_replace(Some(request));
            }
        }
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                outcome = &mut attempt => {
                    return match outcome {
                        Outcome::Succeeded(_) | Outcome::Requeue(_) => outcome,
                        _ if deadline.is_some() => Outcome::Aborted("stopped after an abort request".into()),
                        other => other,
                    };
                }
                changed = requests.changed(), if deadline.is_none() => {
                    if changed.is_err() {
                        continue;
                    }
                    let request = *requests.borrow_and_update();
                    if let Some(AbortRequest { mode: Mode::Abort, grace_ms }) = request {
                        let grace = Duration::from_millis(grace_ms);
                        ctx.controls().request_abort(grace);
                        if grace.is_zero() {
                            ctx.controls().interrupt(Interruption::Abort);
                            return Outcome::Aborted("aborted".into());
                        }
                        deadline = Some(tokio::time::Instant::now() + grace);
                        tracing::info!(?grace, "abort requested; interrupting after the grace period");
                    }
                }
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    ctx.controls().interrupt(Interruption::Abort);
                    return Outcome::Aborted("aborted".into());
                }
            }
        }
    }
}
