//! Errors of brokers, of sending, and of building an app.

use std::fmt;
use std::time::Duration;

use crate::encoder::CodecError;

/// A boxed error, the common currency of actor failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of [`BrokerError`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BrokerErrorKind {
    /// The broker could not be reached, or the connection was lost.
    Connection,
    /// An operation did not finish in time.
    Timeout,
    /// The broker answered with something unexpected, or refused.
    Protocol,
    /// The broker does not offer this ability.
    Unsupported,
    /// The consumer or broker was closed.
    Closed,
    /// The request cannot be carried out as given (a name too long for the
    /// broker, an option its queue cannot honour); retrying cannot help.
    InvalidInput,
    /// The broker is out of room for new messages (Redis at `maxmemory`
    /// with `noeviction`). Sends are refused; consuming and settling go on,
    /// and free room. Retryable: room comes back as consumers drain.
    Full,
    /// The broker takes no writes for now: a read-only replica (a failover
    /// under way), a server loading its data set, a cluster moving slots.
    /// Retryable: the same operation usually passes within seconds.
    Unavailable,
    /// The broker has paused publishing on the connection: RabbitMQ under
    /// a memory or disk alarm (`connection.blocked`), until it has room
    /// again. Consuming and acknowledging go on, and free room. Retryable:
    /// the alarm clears as consumers drain queues or an operator frees
    /// disk. The error's message says whether the message was sent before
    /// the block (then it may still be delivered).
    Blocked,
    /// The broker server is unfit for this client and will stay so until an
    /// operator changes it: a version too old, a setting under which it
    /// would lose messages (an evicting memory policy). Not retryable.
    Unsuitable,
    /// Anything else.
    Other,
}

/// An error from a broker: an opaque struct with a [`BrokerErrorKind`] and
/// the underlying cause as its source.
#[derive(Debug)]
pub struct BrokerError {
    kind: BrokerErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl BrokerError {
    /// A new error of `kind`.
    pub fn new(kind: BrokerErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// The same error, caused by `source`.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// An error of a client library, classified by what the library says
    /// of it: `timeout`, or `connection_lost` (I/O errors, dropped or
    /// refused connections), or else a protocol error. The message is
    /// `"{context} failed: {error}"`; callers keep URLs out of `context`.
    pub fn classified<E>(error: E, context: &str, timeout: bool, connection_lost: bool) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let kind = if timeout {
            BrokerErrorKind::Timeout
        } else if connection_lost {
            BrokerErrorKind::Connection
        } else {
            BrokerErrorKind::Protocol
        };
        Self::new(kind, format!("{context} failed: {error}")).with_source(error)
    }

    /// A `join` that ran out of time.
    pub fn join_timeout(queue: &str, timeout: Duration) -> Self {
        Self::new(BrokerErrorKind::Timeout, format!("queue {queue:?} was not drained within {timeout:?}"))
    }

    /// What kind of error this is.
    pub fn kind(&self) -> BrokerErrorKind {
        self.kind
    }

    /// Whether the broker could not be reached or the connection dropped;
    /// such errors usually pass once the broker is back.
    pub fn is_connection_lost(&self) -> bool {
        self.kind == BrokerErrorKind::Connection
    }

    /// Whether an operation ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.kind == BrokerErrorKind::Timeout
    }

    /// Whether the broker refused the operation for want of room
    /// ([`BrokerErrorKind::Full`]).
    pub fn is_full(&self) -> bool {
        self.kind == BrokerErrorKind::Full
    }

    /// Whether the broker has paused publishing on the connection
    /// ([`BrokerErrorKind::Blocked`]).
    pub fn is_blocked(&self) -> bool {
        self.kind == BrokerErrorKind::Blocked
    }

    /// Whether the broker server is unfit for this client until an operator
    /// changes it ([`BrokerErrorKind::Unsuitable`]).
    pub fn is_unsuitable(&self) -> bool {
        self.kind == BrokerErrorKind::Unsuitable
    }

    /// Whether trying the same operation again later may succeed: the
    /// connection was lost, an operation timed out, the broker is full,
    /// takes no writes for now or has blocked publishing.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            BrokerErrorKind::Connection
                | BrokerErrorKind::Timeout
                | BrokerErrorKind::Full
                | BrokerErrorKind::Unavailable
                | BrokerErrorKind::Blocked
        )
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Two broker errors are equal when their kinds and messages are: their
/// sources are not compared (a boxed error cannot be), so that errors that
/// hold one can be compared in tests (as in [`ConfigError`]).
impl PartialEq for BrokerError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for BrokerError {}

impl std::error::Error for BrokerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A message could not be sent; nothing was enqueued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The app has no actor of this name.
    #[error("the app has no actor named {0:?}; register it with AppBuilder::actor")]
    UnknownActor(String),
    /// The encoded message is larger than the app allows.
    #[error("the encoded message is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Size of the encoded message in bytes.
        size: usize,
        /// The app's limit in bytes.
        limit: usize,
    },
    /// The arguments or the message could not be encoded.
    #[error(transparent)]
    Encode(#[from] CodecError),
    /// An option the core knows has a value of the wrong type (set through
    /// `Options::with_extra`); the worker would dead-letter the message.
    #[error("invalid message option: {0}")]
    InvalidOption(#[from] crate::OptionError),
    /// The message was sent with a delay as long as its `max_age` or longer
    /// (its own or its actor's): it would be too old to run when it fell
    /// due.
    #[error("a delay of {delay:?} exceeds the message's max_age of {max_age:?}: it could never run")]
    DelayBeyondMaxAge {
        /// The delay asked for.
        delay: std::time::Duration,
        /// The message's max_age.
        max_age: std::time::Duration,
    },
    /// The message was sent with a delay over [`MAX_DELAY`](crate::MAX_DELAY).
    #[error("a delay of {delay:?} exceeds the longest allowed, {max:?}")]
    DelayTooLong {
        /// The delay asked for.
        delay: std::time::Duration,
        /// The longest allowed.
        max: std::time::Duration,
    },
    /// A middleware's enqueue hook refused the message.
    #[error("middleware {middleware:?} refused the message: {source}")]
    Rejected {
        /// The name of the middleware.
        middleware: &'static str,
        /// Its reason.
        source: BoxError,
    },
    /// A message with the same uniqueness key is already queued (or
    /// running, or was sent within its fixed time, as its scope says): the
    /// unique-jobs middleware refused this one, so that the work is not
    /// queued twice. Nothing was enqueued; `existing` is the message that
    /// holds the key.
    #[error("a message with the uniqueness key {:?} is already there: {existing}", key.as_str())]
    Duplicate {
        /// The message that holds the key.
        existing: crate::MessageId,
        /// The uniqueness key, as the store holds it (cut to 256 bytes).
        key: crate::Bounded,
    },
    /// Two messages of one batch ([`App::send_many`](crate::App::send_many))
    /// have the same uniqueness key: the batch was not sent (and neither
    /// message exists).
    #[error("messages {first} and {second} of the batch have the same uniqueness key {:?}; the batch was not sent", key.as_str())]
    DuplicateInBatch {
        /// The earlier message of the batch.
        first: crate::MessageId,
        /// The later one, refused.
        second: crate::MessageId,
        /// The uniqueness key (cut to 256 bytes).
        key: crate::Bounded,
    },
    /// The broker did not take the message.
    #[error("the broker did not take the message: {0}")]
    Broker(#[from] BrokerError),
}

impl EnqueueError {
    /// The message that holds the uniqueness key, when this send was
    /// refused as a [duplicate](EnqueueError::Duplicate).
    pub fn duplicate_of(&self) -> Option<crate::MessageId> {
        match self {
            Self::Duplicate { existing, .. } => Some(*existing),
            _ => None,
        }
    }
}

/// An app was put together wrongly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `insert_before`/`insert_after`/`remove` named a middleware that is not in the stack.
    #[error("no middleware named {0:?} in the stack")]
    NoSuchMiddleware(String),
    /// Two middleware have the same name.
    #[error("two middleware are named {0:?}")]
    DuplicateMiddleware(String),
    /// Two actors have the same name.
    #[error("two actors are named {0:?}")]
    DuplicateActor(String),
    /// Two values of one type were registered as app state (see
    /// [`AppBuilder::state`](crate::AppBuilder::state)); wrap them in
    /// types of their own.
    #[error("two values of type `{0}` were registered as app state; give each a type of its own")]
    DuplicateState(String),
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// A registered actor's option names an actor the app does not know
    /// (a callback, for instance).
    #[error("actor {actor:?} names {name:?} in its `{option}` option, but no actor of that name is registered")]
    UnknownActor {
        /// The actor whose option it is.
        actor: String,
        /// The option.
        option: String,
        /// The unknown name.
        name: String,
    },
    /// A registered actor's options hold a key that no middleware of the
    /// app declared (see
    /// [`Middleware::declared_options`](crate::Middleware::declared_options)):
    /// a typo, or the middleware that reads it is not in the stack.
    #[error("actor {actor:?} has the option {option:?}, which no middleware of the app reads{}", known_list(known))]
    UnknownOption {
        /// The actor whose option it is.
        actor: String,
        /// The option.
        option: String,
        /// The options the app's middleware declared, sorted.
        known: Vec<&'static str>,
    },
    /// A registered actor's option has a value of the wrong type.
    #[error("actor {actor:?}: {source}")]
    InvalidOption {
        /// The actor whose option it is.
        actor: String,
        /// What is wrong with it.
        source: crate::OptionError,
    },
    /// The app's encoder is not the one its broker needs (see
    /// [`Broker::encoder`](crate::Broker::encoder)): a broker speaking
    /// Python Dramatiq's layout carries Dramatiq's JSON messages only.
    #[error("the app's encoder is {chosen:?}, but its broker needs the {needed:?} encoder; leave the encoder unset to get it")]
    Encoder {
        /// The encoder given to the builder.
        chosen: &'static str,
        /// The encoder the broker needs.
        needed: &'static str,
    },
    /// The app's broker cannot use an actor's queue (see
    /// [`Broker::check_queue_name`](crate::Broker::check_queue_name)): a
    /// name too long for RabbitMQ, for instance, once the app's queue
    /// prefix is in front of it.
    #[error("actor {actor:?}: the broker cannot use its queue {}: {source}", queue_shown(queue))]
    QueueName {
        /// The actor.
        actor: String,
        /// Its queue, with the app's queue prefix.
        queue: String,
        /// The broker's reason.
        source: std::sync::Arc<BrokerError>,
    },
}

/// A queue name in an error: quoted, cut to 64 bytes.
fn queue_shown(queue: &str) -> crate::Bounded {
    crate::Bounded::new(&format!("{queue:?}"), 64)
}

/// `"; the app's middleware read: a, b"`, or nothing when they read none.
fn known_list(known: &[&'static str]) -> String {
    if known.is_empty() {
        "; the app's middleware read no options of the open map".to_owned()
    } else {
        format!("; the app's middleware read: {}", known.join(", "))
    }
}
