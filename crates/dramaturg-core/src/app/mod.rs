//! The app: a broker, an encoder, the ordered middleware stack and the
//! registered actors.
//!
//! - this module: [`App`] and what it knows (broker, encoder, stack,
//!   actors, state, options);
//! - `remote`: sending to actors that run elsewhere ([`Remote`]);
//! - `send`: the send pipeline ([`SendOptions`], enqueue hooks, checks,
//!   encoding);
//! - `admin`: queue statistics, dead letters, draining;
//! - `builder`: [`AppBuilder`], which puts an app together and checks it.

mod admin;
mod builder;
mod remote;
mod send;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub use builder::AppBuilder;
pub use remote::Remote;
pub use send::{SendOptions, MAX_DELAY};

use crate::actor::ActorInfo;
use crate::broker::Broker;
use crate::encoder::Encoder;
use crate::failure::ErrorType;
use crate::middleware::Middleware;
use crate::state::{MissingState, State};
use crate::{DeclaredOption, Message, Options};

/// The largest encoded message an app sends by default: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

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
    /// The stack's middleware that wrap processing, in order.
    chain: Vec<Arc<dyn Middleware>>,
    /// The stack's middleware that observe attempts, in order.
    observers: Vec<Arc<dyn Middleware>>,
    /// The stack's middleware that claim something on every send
    /// ([`Middleware::send_claim`]), in order.
    claimers: Vec<Arc<dyn Middleware>>,
    actors: HashMap<&'static str, ActorInfo>,
    queues: Vec<String>,
    queue_prefix: String,
    remotes: HashMap<&'static str, String>,
    max_message_size: usize,
    error_types: Vec<ErrorType>,
    declared_options: Vec<DeclaredOption>,
    state: State,
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
        AppBuilder::new(broker)
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

    /// The middleware whose `handle` wraps processing
    /// ([`Middleware::wraps`]), outermost first: the chain each message
    /// runs through.
    pub(crate) fn chain(&self) -> &[Arc<dyn Middleware>] {
        &self.inner.chain
    }

    /// The middleware that observe attempts
    /// ([`Middleware::observes_attempts`]), outermost first.
    pub(crate) fn observers(&self) -> &[Arc<dyn Middleware>] {
        &self.inner.observers
    }

    /// The names of the middleware stack, outermost first.
    pub fn middleware_names(&self) -> Vec<&'static str> {
        self.inner.stack.iter().map(|m| m.name()).collect()
    }

    /// Whether the stack has the middleware named `name`.
    pub(crate) fn has_middleware(&self, name: &str) -> bool {
        self.inner.stack.iter().any(|m| m.name() == name)
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

    /// The queue (with the app's queue prefix) of the actor `name` that
    /// runs elsewhere, if it was made known with
    /// [`AppBuilder::remote`].
    pub fn remote_queue(&self, name: &str) -> Option<&str> {
        self.inner.remotes.get(name).map(String::as_str)
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
    /// [`Middleware::declared_options`]), the core's [`ETA`](crate::ETA) among them.
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
