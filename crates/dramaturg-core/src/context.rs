//! The per-delivery context shared by every middleware and the actor.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{App, Message, MessageId, Options};

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
    metadata: Mutex<Metadata>,
}

impl Context {
    /// The context of `message`, whose options are already resolved.
    pub(crate) fn new(message: Message, options: Options, app: App, redelivered: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                message,
                options,
                app,
                redelivered,
                started: Instant::now(),
                heartbeat_us: AtomicU64::new(0),
                metadata: Mutex::default(),
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

    /// When this attempt started.
    pub fn started_at(&self) -> Instant {
        self.inner.started
    }

    /// Says "still working": resets the inactivity timer of the time-limit
    /// middleware. Cheap enough to call in a tight loop.
    pub fn heartbeat(&self) {
        let micros = u64::try_from(self.inner.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.inner.heartbeat_us.fetch_max(micros, Ordering::Relaxed);
    }

    /// When the actor last called [`Context::heartbeat`] (the start of the
    /// attempt if it never did).
    pub fn last_heartbeat(&self) -> Instant {
        self.inner.started + Duration::from_micros(self.inner.heartbeat_us.load(Ordering::Relaxed))
    }

    /// The metadata of this delivery, locked. Do not hold the guard across
    /// an `.await`.
    pub fn metadata(&self) -> MutexGuard<'_, Metadata> {
        self.inner.metadata.lock().unwrap_or_else(PoisonError::into_inner)
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
