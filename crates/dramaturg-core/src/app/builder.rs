//! Putting an app together: the stack in order, the actors, the state,
//! and the checks `build` makes.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::{App, Inner, DEFAULT_MAX_MESSAGE_SIZE};
use crate::actor::ActorInfo;
use crate::broker::Broker;
use crate::encoder::{Encoder, MessagePack};
use crate::error::ConfigError;
use crate::failure::ErrorType;
use crate::message::ETA;
use crate::middleware::Middleware;
use crate::state::State;
use crate::{Actor, DeclaredOption};

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
    encoder: Option<Arc<dyn Encoder>>,
    stack: Vec<Arc<dyn Middleware>>,
    actors: Vec<ActorInfo>,
    remotes: Vec<(&'static str, String)>,
    max_message_size: usize,
    queue_prefix: String,
    errors: Vec<ConfigError>,
    state: State,
}

impl AppBuilder {
    /// A builder on `broker` with an empty stack (see [`App::builder`]).
    pub(super) fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            encoder: None,
            stack: Vec::new(),
            actors: Vec::new(),
            remotes: Vec::new(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            queue_prefix: String::new(),
            errors: Vec::new(),
            state: State::default(),
        }
    }

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

    /// Makes an actor that runs elsewhere (a Python Dramatiq actor) known
    /// by name, so that the app can route messages to it that it does
    /// not send itself: callbacks (`on_success = "report"` naming a Python
    /// actor). Workers do not consume its queue. Its name must not be a
    /// registered actor's ([`ConfigError::DuplicateActor`]).
    pub fn remote<A>(mut self, remote: crate::Remote<A>) -> Self {
        self.remotes.push((remote.name(), remote.queue().to_owned()));
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

    /// Uses `encoder` instead of the broker's (see [`Broker::encoder`]:
    /// a broker speaking Python Dramatiq's layout needs
    /// [`Dramatiq`](crate::dramatiq::Dramatiq)) or, if the broker needs
    /// none, [`MessagePack`].
    pub fn encoder(mut self, encoder: impl Encoder) -> Self {
        self.encoder = Some(Arc::new(encoder));
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
    /// named in a registered actor's options, for one), and
    /// [`ConfigError::QueueName`] for an actor whose queue, with the
    /// queue prefix, the broker cannot use
    /// ([`Broker::check_queue_name`]), and [`ConfigError::Encoder`] for an
    /// encoder other than the one the broker needs ([`Broker::encoder`]).
    pub fn build(mut self) -> Result<App, ConfigError> {
        if let Some(error) = self.errors.drain(..).next() {
            return Err(error);
        }
        let encoder = match (self.encoder.take(), self.broker.encoder()) {
            (Some(chosen), Some(needed)) if chosen.name() != needed.name() => {
                return Err(ConfigError::Encoder { chosen: chosen.name(), needed: needed.name() });
            }
            (Some(chosen), _) => chosen,
            (None, Some(needed)) => needed,
            (None, None) => Arc::new(MessagePack),
        };
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
                self.broker.check_queue_name(actor.queue()).map_err(|error| ConfigError::QueueName {
                    actor: actor.name().to_owned(),
                    queue: actor.queue().to_owned(),
                    source: Arc::new(error),
                })?;
                queues.push(actor.queue().to_owned());
            }
            if let Some(previous) = actors.insert(actor.name(), actor) {
                return Err(ConfigError::DuplicateActor(previous.name().to_owned()));
            }
        }
        let mut remotes = HashMap::with_capacity(self.remotes.len());
        for (name, queue) in self.remotes {
            if actors.contains_key(name) || remotes.insert(name, format!("{}{queue}", self.queue_prefix)).is_some() {
                return Err(ConfigError::DuplicateActor(name.to_owned()));
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
                encoder,
                chain: self.stack.iter().filter(|m| m.wraps()).cloned().collect(),
                observers: self.stack.iter().filter(|m| m.observes_attempts()).cloned().collect(),
                claimers: self.stack.iter().filter(|m| m.send_claim().is_some()).cloned().collect(),
                stack: self.stack,
                actors,
                queues,
                queue_prefix: self.queue_prefix,
                remotes,
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
