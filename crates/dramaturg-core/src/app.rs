//! The app: a broker, an encoder, the ordered middleware stack and the
//! registered actors.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::actor::ActorInfo;
use crate::broker::{Broker, DeadLetters, Outgoing, QueueAdmin, QueueStats};
use crate::encoder::{encode_value, Encoder, MessagePack};
use crate::error::{BrokerError, BrokerErrorKind, ConfigError, EnqueueError};
use crate::failure::ErrorType;
use crate::message::ETA;
use crate::middleware::Middleware;
use crate::state::{MissingState, State};
use crate::{Actor, DeclaredOption, Message, MessageId, Options, Sent};

/// The largest encoded message an app sends by default: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// The longest delay a message can be sent or retried with: 365 days.
/// Longer ones are refused ([`EnqueueError::DelayTooLong`]); a job that is
/// due in more than a year belongs in a scheduler.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Everything needed to send and process messages. Cheap to clone: clones
/// share one app.
///
/// # Examples
///
/// ```
/// use dramaturg_core::{App, MemoryBroker};
///
/// let app = App::builder(MemoryBroker::new()).build().unwrap();
/// assert!(app.middleware_names().is_empty());
/// ```
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Arc<dyn Broker>,
    encoder: Arc<dyn Encoder>,
    stack: Vec<Arc<dyn Middleware>>,
    actors: HashMap<&'static str, ActorInfo>,
    queues: Vec<String>,
    max_message_size: usize,
    error_types: Vec<ErrorType>,
    declared_options: Vec<DeclaredOption>,
    state: State,
}

/// Per-message choices for [`Actor::send_with`]: a delay and option
/// overrides.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::SendOptions;
///
/// let send = SendOptions::default()
///     .with_delay(Duration::from_secs(60))
///     .with_options(|o| o.with_max_retries(0).with_extra("tenant", "acme"));
/// assert_eq!(send.options.max_retries, Some(0));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SendOptions {
    /// Hold the message back this long before it may run.
    pub delay: Option<Duration>,
    /// Options that override the actor's.
    pub options: Options,
}

impl SendOptions {
    /// Holds the message back for `delay`.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Changes the per-message options.
    #[must_use]
    pub fn with_options(mut self, change: impl FnOnce(Options) -> Options) -> Self {
        self.options = change(self.options);
        self
    }
}

impl App {
    /// Starts building an app on `broker` with an **empty** middleware stack:
    /// no retries, no time limits, no error capture — `dramaturg::app(broker)`
    /// starts with the default stack.
    ///
    /// For apps that assemble their own stack (and for tests of single
    /// middleware). A worker on an app without a middleware named
    /// `error_capture` logs a warning when it starts.
    pub fn builder(broker: impl Broker) -> AppBuilder {
        Self::builder_shared(Arc::new(broker))
    }

    /// Starts building an app on a shared broker with an **empty**
    /// middleware stack: see [`App::builder`]; `dramaturg::app_shared`
    /// starts with the default stack.
    pub fn builder_shared(broker: Arc<dyn Broker>) -> AppBuilder {
        AppBuilder {
            broker,
            encoder: Arc::new(MessagePack),
            stack: Vec::new(),
            actors: Vec::new(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            queue_prefix: String::new(),
            errors: Vec::new(),
            state: State::default(),
        }
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// The encoder.
    pub fn encoder(&self) -> &dyn Encoder {
        &*self.inner.encoder
    }

    /// The middleware stack, outermost first.
    pub fn middleware(&self) -> &[Arc<dyn Middleware>] {
        &self.inner.stack
    }

    /// The names of the middleware stack, outermost first.
    pub fn middleware_names(&self) -> Vec<&'static str> {
        self.inner.stack.iter().map(|m| m.name()).collect()
    }

    /// The app's state of type `T` (see [`AppBuilder::state`]).
    ///
    /// # Errors
    ///
    /// [`MissingState`], naming `T`, when there is none.
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<&T, MissingState> {
        self.inner.state.get::<T>()
    }

    /// The registered actor named `name`.
    pub fn actor(&self, name: &str) -> Option<&ActorInfo> {
        self.inner.actors.get(name)
    }

    /// The registered actors, in no particular order.
    pub fn actors(&self) -> impl Iterator<Item = &ActorInfo> {
        self.inner.actors.values()
    }

    /// The queues of the registered actors, each once, in registration order.
    pub fn queues(&self) -> &[String] {
        &self.inner.queues
    }

    /// The error types the middleware ask failures about (see
    /// [`Middleware::error_types`]), each once.
    pub fn error_types(&self) -> &[ErrorType] {
        &self.inner.error_types
    }

    /// The options of the open map that the app's middleware read (see
    /// [`Middleware::declared_options`]), the core's [`ETA`] among them.
    pub fn declared_options(&self) -> &[DeclaredOption] {
        &self.inner.declared_options
    }

    /// The options `message` runs with: its own, and for each option it
    /// does not set, its actor's (when the app knows the actor). A
    /// middleware's own default comes last, in the middleware. The one
    /// place this order is decided: the worker gives these to the
    /// [`Context`](crate::Context).
    pub fn options_for(&self, message: &Message) -> Options {
        match self.inner.actors.get(message.actor.as_str()) {
            Some(actor) => message.options.clone().or(actor.options()),
            None => message.options.clone(),
        }
    }

    /// The largest encoded message this app sends, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.inner.max_message_size
    }

    /// Sends `actor` with `options`: the future behind [`Actor::send`].
    ///
    /// The arguments are encoded before this returns, so the future owns
    /// everything it needs.
    ///
    /// # Errors
    ///
    /// See [`Actor::send`].
    pub fn send<A: Actor>(
        &self,
        actor: &A,
        options: SendOptions,
    ) -> impl Future<Output = Result<Sent<A>, EnqueueError>> + Send + 'static {
        let message = self.message(actor, options.options);
        let app = self.clone();
        async move { app.enqueue(message?, options.delay).await.map(Sent::from_id) }
    }

    /// Sends many messages to one actor in one broker call (one round trip
    /// on brokers that support it). Returns their handles in order.
    ///
    /// # Errors
    ///
    /// See [`Actor::send`]. If the broker fails part-way, some messages may
    /// have been enqueued.
    pub fn send_many<'a, A: Actor>(
        &self,
        actors: impl IntoIterator<Item = &'a A>,
    ) -> impl Future<Output = Result<Vec<Sent<A>>, EnqueueError>> + Send + 'static {
        let messages: Result<Vec<_>, _> =
            actors.into_iter().map(|actor| self.message(actor, Options::default()).map(|m| (m, None))).collect();
        let app = self.clone();
        async move { Ok(app.enqueue_many(messages?).await?.into_iter().map(Sent::from_id).collect()) }
    }

    /// Builds the message for `actor` without sending it.
    ///
    /// # Errors
    ///
    /// [`EnqueueError::UnknownActor`] if the app does not know the actor,
    /// [`EnqueueError::Encode`] if its arguments cannot be encoded.
    pub fn message<A: Actor>(&self, actor: &A, options: Options) -> Result<Message, EnqueueError> {
        let Some(info) = self.inner.actors.get(A::NAME) else {
            return Err(EnqueueError::UnknownActor(A::NAME.to_owned()));
        };
        let args = encode_value(self.encoder(), actor)?;
        let mut message = Message::new(info.queue(), A::NAME, args.into());
        message.options = options;
        Ok(message)
    }

    /// Enqueues a message built earlier (retries re-enqueue this way): runs
    /// the enqueue hooks, encodes, checks the size and hands it to the broker.
    ///
    /// # Errors
    ///
    /// [`EnqueueError`]; nothing was enqueued.
    ///
    /// # Cancel safety
    ///
    /// If cancelled, the message may or may not have been enqueued.
    pub async fn enqueue(&self, message: Message, delay: Option<Duration>) -> Result<MessageId, EnqueueError> {
        let (id, outgoing, delayed) = self.outgoing(message, delay)?;
        self.inner.broker.enqueue(outgoing).await?;
        if let Some(delayed) = delayed {
            self.after_delayed_enqueue(&delayed).await;
        }
        Ok(id)
    }

    async fn after_delayed_enqueue(&self, (message, delay): &(Message, Duration)) {
        for middleware in &self.inner.stack {
            middleware.after_delayed_enqueue(self, message, *delay).await;
        }
    }

    /// Enqueues many messages built earlier in one broker call.
    ///
    /// # Errors
    ///
    /// [`EnqueueError`]; if it comes from the broker, some messages may have
    /// been enqueued.
    pub async fn enqueue_many(
        &self,
        messages: Vec<(Message, Option<Duration>)>,
    ) -> Result<Vec<MessageId>, EnqueueError> {
        let mut ids = Vec::with_capacity(messages.len());
        let mut batch = Vec::with_capacity(messages.len());
        let mut delayed = Vec::new();
        for (message, delay) in messages {
            let (id, outgoing, waiting) = self.outgoing(message, delay)?;
            ids.push(id);
            batch.push(outgoing);
            delayed.extend(waiting);
        }
        self.inner.broker.enqueue_many(batch).await?;
        for waiting in &delayed {
            self.after_delayed_enqueue(waiting).await;
        }
        Ok(ids)
    }

    /// The message to hand to the broker, and the message itself when it is
    /// delayed (for the middleware's `after_delayed_enqueue`).
    #[allow(clippy::type_complexity)]
    fn outgoing(
        &self,
        mut message: Message,
        delay: Option<Duration>,
    ) -> Result<(MessageId, Outgoing, Option<(Message, Duration)>), EnqueueError> {
        for middleware in &self.inner.stack {
            middleware
                .before_enqueue(&mut message)
                .map_err(|source| EnqueueError::Rejected { middleware: middleware.name(), source })?;
        }
        message.options.check_known()?;
        for declared in &self.inner.declared_options {
            if let Some(value) = message.options.extra.get(declared.name()) {
                declared.check(value)?;
            }
        }
        let actor = self.inner.actors.get(message.actor.as_str()).map(ActorInfo::options);
        let priority = message.options.priority.or(actor.and_then(|a| a.priority));
        let delay = delay.filter(|d| !d.is_zero());
        if let Some(delay) = delay {
            if delay > MAX_DELAY {
                return Err(EnqueueError::DelayTooLong { delay, max: MAX_DELAY });
            }
            // Due at exactly its max_age, it is already too old when it runs.
            let max_age = message.options.max_age.or(actor.and_then(|a| a.max_age));
            if let Some(max_age) = max_age.filter(|max_age| delay >= *max_age) {
                return Err(EnqueueError::DelayBeyondMaxAge { delay, max_age });
            }
            // When it falls due (Dramatiq's `eta` option), so that the age
            // limit can tell a message delayed past its max_age from one
            // that waited too long.
            let eta = message.enqueued_at_ms.saturating_add(crate::time::millis(delay));
            message.options.extra.insert(ETA.name().to_owned(), eta.into());
        }
        let body = self.encoder().encode_message(&message)?;
        if body.len() > self.inner.max_message_size {
            return Err(EnqueueError::TooLarge { size: body.len(), limit: self.inner.max_message_size });
        }
        let id = message.id;
        match delay {
            Some(delay) => {
                let outgoing =
                    Outgoing::new(message.queue.as_str(), body).with_delay(Some(delay)).with_priority(priority);
                Ok((id, outgoing, Some((message, delay))))
            }
            None => Ok((id, Outgoing::new(message.queue, body).with_priority(priority), None)),
        }
    }

    /// Queue statistics, purging and draining, when the broker offers them.
    ///
    /// # Errors
    ///
    /// [`BrokerErrorKind::Unsupported`] when it does not.
    pub fn admin(&self) -> Result<&dyn QueueAdmin, BrokerError> {
        self.inner.broker.admin().ok_or_else(|| unsupported("queue administration"))
    }

    /// Dead-letter listing and replay, when the broker offers them.
    ///
    /// # Errors
    ///
    /// [`BrokerErrorKind::Unsupported`] when it does not.
    pub fn dead_letters(&self) -> Result<&dyn DeadLetters, BrokerError> {
        self.inner.broker.dead_letters().ok_or_else(|| unsupported("dead-letter inspection"))
    }

    /// Counts of `queue`'s messages.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`], including `Unsupported`.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        self.admin()?.stats(queue).await
    }

    /// Waits until every queue of the app is drained (nothing ready, delayed
    /// or in flight), for at most `timeout` in all. For tests and scripts.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] of kind `Timeout` when time runs out, or `Unsupported`.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    pub async fn join(&self, timeout: Duration) -> Result<(), BrokerError> {
        let admin = self.admin()?;
        let deadline = tokio::time::Instant::now() + timeout;
        // A queue may refill from another (a follow-up message), so check
        // them all again until one pass finds every queue drained at once.
        loop {
            for queue in self.queues() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                admin.join(queue, left).await?;
            }
            let mut drained = true;
            for queue in self.queues() {
                drained &= admin.stats(queue).await?.is_drained();
            }
            if drained {
                return Ok(());
            }
        }
    }
}

fn unsupported(what: &str) -> BrokerError {
    BrokerError::new(BrokerErrorKind::Unsupported, format!("this broker does not offer {what}"))
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("broker", &self.inner.broker)
            .field("encoder", &self.inner.encoder)
            .field("middleware", &self.middleware_names())
            .field("actors", &self.inner.actors.keys().collect::<Vec<_>>())
            .field("max_message_size", &self.inner.max_message_size)
            .field("state", &self.inner.state)
            .finish()
    }
}

/// Puts an [`App`] together. Mistakes (an unknown middleware name, two
/// actors of one name) are reported by [`AppBuilder::build`].
///
/// # Examples
///
/// ```
/// use dramaturg_core::{async_trait, App, MemoryBroker, Middleware};
///
/// struct Named(&'static str);
///
/// #[async_trait]
/// impl Middleware for Named {
///     fn name(&self) -> &'static str {
///         self.0
///     }
/// }
///
/// let app = App::builder(MemoryBroker::new())
///     .middleware(Named("outer"))
///     .middleware(Named("inner"))
///     .insert_after("outer", Named("middle"))
///     .build()
///     .unwrap();
/// assert_eq!(app.middleware_names(), ["outer", "middle", "inner"]);
/// ```
#[must_use]
pub struct AppBuilder {
    broker: Arc<dyn Broker>,
    encoder: Arc<dyn Encoder>,
    stack: Vec<Arc<dyn Middleware>>,
    actors: Vec<ActorInfo>,
    max_message_size: usize,
    queue_prefix: String,
    errors: Vec<ConfigError>,
    state: State,
}

impl AppBuilder {
    /// Adds a middleware inside all that were added before (the first one
    /// added is the outermost).
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.stack.push(Arc::new(middleware));
        self
    }

    /// Inserts a middleware just outside the one named `name`.
    pub fn insert_before(self, name: &str, middleware: impl Middleware) -> Self {
        self.insert_at(name, 0, middleware)
    }

    /// Inserts a middleware just inside the one named `name`.
    pub fn insert_after(self, name: &str, middleware: impl Middleware) -> Self {
        self.insert_at(name, 1, middleware)
    }

    fn insert_at(mut self, name: &str, offset: usize, middleware: impl Middleware) -> Self {
        match self.position(name) {
            Some(index) => self.stack.insert(index + offset, Arc::new(middleware)),
            None => self.errors.push(ConfigError::NoSuchMiddleware(name.to_owned())),
        }
        self
    }

    /// Puts `middleware` in the place of the one named `name` (to configure
    /// a default middleware differently).
    pub fn replace(mut self, name: &str, middleware: impl Middleware) -> Self {
        match self.position(name) {
            Some(index) => self.stack[index] = Arc::new(middleware),
            None => self.errors.push(ConfigError::NoSuchMiddleware(name.to_owned())),
        }
        self
    }

    /// Removes the middleware named `name`.
    pub fn remove(mut self, name: &str) -> Self {
        match self.position(name) {
            Some(index) => drop(self.stack.remove(index)),
            None => self.errors.push(ConfigError::NoSuchMiddleware(name.to_owned())),
        }
        self
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.stack.iter().position(|m| m.name() == name)
    }

    /// The names of the stack so far, outermost first.
    pub fn middleware_names(&self) -> Vec<&'static str> {
        self.stack.iter().map(|m| m.name()).collect()
    }

    /// Registers an actor: the app can send to it and its workers run it.
    pub fn actor<A: Actor>(mut self) -> Self {
        self.actors.push(ActorInfo::of::<A>());
        self
    }

    /// Registers an actor on `queue` instead of the queue its type names
    /// (the queue prefix still applies): route one actor to a queue chosen
    /// at run time.
    pub fn actor_in<A: Actor>(mut self, queue: &str) -> Self {
        let mut info = ActorInfo::of::<A>();
        info.set_queue(queue);
        self.actors.push(info);
        self
    }

    /// Registers `value` as app state, found by its type: actors read it
    /// with [`Context::state`](crate::Context::state), anyone holding the
    /// app with [`App::state`]. One value per type (wrap two pools of one
    /// type in types of their own); it is kept in an `Arc`, so clones of
    /// the app share it. For a value that must change, register a
    /// `Mutex`, an atomic or a channel.
    ///
    /// ```
    /// use dramaturg_core::{App, MemoryBroker};
    ///
    /// struct ApiClient {
    ///     base_url: String,
    /// }
    ///
    /// let app = App::builder(MemoryBroker::new())
    ///     .state(ApiClient { base_url: "https://api.example.com".into() })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(app.state::<ApiClient>().unwrap().base_url, "https://api.example.com");
    /// assert!(app.state::<String>().is_err());
    /// ```
    ///
    /// A second value of one type fails [`build`](AppBuilder::build) with
    /// [`ConfigError::DuplicateState`].
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        if let Err(error) = self.state.insert(value) {
            self.errors.push(error);
        }
        self
    }

    /// Uses `encoder` instead of [`MessagePack`].
    pub fn encoder(mut self, encoder: impl Encoder) -> Self {
        self.encoder = Arc::new(encoder);
        self
    }

    /// Refuses to send messages larger than `bytes` once encoded (default 1 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Puts `prefix` in front of every actor's queue name, so that several
    /// environments (or tests) can share one broker without seeing each
    /// other's messages.
    pub fn queue_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.queue_prefix = prefix.into();
        self
    }

    /// The app.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] met while building, including those of
    /// the middleware's [`register_state`](Middleware::register_state) and
    /// [`check_app`](Middleware::check_app) (an unknown callback actor
    /// named in a registered actor's options, for one).
    pub fn build(mut self) -> Result<App, ConfigError> {
        if let Some(error) = self.errors.drain(..).next() {
            return Err(error);
        }
        for (i, middleware) in self.stack.iter().enumerate() {
            if self.stack[..i].iter().any(|m| m.name() == middleware.name()) {
                return Err(ConfigError::DuplicateMiddleware(middleware.name().to_owned()));
            }
        }
        let mut actors = HashMap::with_capacity(self.actors.len());
        let mut queues = Vec::new();
        for mut actor in self.actors {
            actor.prefix_queue(&self.queue_prefix);
            if !queues.iter().any(|q| q == actor.queue()) {
                queues.push(actor.queue().to_owned());
            }
            if let Some(previous) = actors.insert(actor.name(), actor) {
                return Err(ConfigError::DuplicateActor(previous.name().to_owned()));
            }
        }
        let mut declared_options = vec![ETA.declare_local()];
        for option in self.stack.iter().flat_map(|m| m.declared_options()) {
            if !declared_options.iter().any(|known| known.name() == option.name()) {
                declared_options.push(option);
            }
        }
        for actor in actors.values() {
            check_actor_options(actor, &declared_options)?;
        }
        let mut error_types: Vec<ErrorType> = Vec::new();
        for ty in self.stack.iter().flat_map(|m| m.error_types()) {
            if !error_types.iter().any(|known| known.type_id() == ty.type_id()) {
                error_types.push(ty);
            }
        }
        for middleware in &self.stack {
            middleware.register_state(&mut self.state)?;
        }
        let app = App {
            inner: Arc::new(Inner {
                state: self.state,
                error_types,
                declared_options,
                broker: self.broker,
                encoder: self.encoder,
                stack: self.stack,
                actors,
                queues,
                max_message_size: self.max_message_size,
            }),
        };
        for middleware in app.middleware() {
            middleware.check_app(&app)?;
        }
        Ok(app)
    }
}

/// Refuses an actor option that no middleware declared, or of the wrong type.
fn check_actor_options(actor: &ActorInfo, declared: &[DeclaredOption]) -> Result<(), ConfigError> {
    let invalid = |source| ConfigError::InvalidOption { actor: actor.name().to_owned(), source };
    // Options the core knows may be given through the open map too.
    let mut options = actor.options().clone();
    options.check_known().map_err(invalid)?;
    for (key, value) in &options.extra {
        let Some(option) = declared.iter().find(|d| d.name() == key) else {
            let mut known: Vec<_> = declared.iter().map(DeclaredOption::name).collect();
            known.sort_unstable();
            return Err(ConfigError::UnknownOption { actor: actor.name().to_owned(), option: key.clone(), known });
        };
        option.check(value).map_err(invalid)?;
    }
    Ok(())
}

impl fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppBuilder")
            .field("broker", &self.broker)
            .field("middleware", &self.middleware_names())
            .field("actors", &self.actors.iter().map(ActorInfo::name).collect::<Vec<_>>())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}
