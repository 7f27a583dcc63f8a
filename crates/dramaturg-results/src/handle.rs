//! Reading a message's result back, typed: [`ResultHandle`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use dramaturg_core::encoder::decode_value;
use dramaturg_core::store::{Store, StoreError};
use dramaturg_core::{Actor, App, CodecError, ErrorRecord, MessageId, Sent};
use serde::de::DeserializeOwned;

use crate::backend::Backend;
use crate::stored::Stored;
use crate::whose::Whose;
use crate::ResultStore;

/// Why a result could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// No result is kept for the message: it has not finished yet, it does
    /// not keep its result (`store_results`), or its result expired
    /// (`result_ttl`).
    #[error("no result yet for message {0}")]
    NotYet(MessageId),
    /// [`ResultHandle::wait`] gave up after this long.
    #[error("no result for message {id} within {waited:?}")]
    TimedOut {
        /// The message.
        id: MessageId,
        /// How long it waited.
        waited: Duration,
    },
    /// The message failed for good (its last attempt's error), or could not
    /// run (no such actor, arguments that do not fit), or its result was
    /// too large to keep (`type_name` `ResultTooLarge`).
    #[error("message {id} failed: {}", record.summary())]
    Failed {
        /// The message.
        id: MessageId,
        /// Its final failure.
        record: ErrorRecord,
    },
    /// The message was cancelled before it started or aborted while it ran.
    #[error("message {id} was aborted: {reason}")]
    Aborted {
        /// The message.
        id: MessageId,
        /// Why.
        reason: String,
    },
    /// The message was deliberately not run (too old, …).
    #[error("message {id} was skipped: {reason}")]
    Skipped {
        /// The message.
        id: MessageId,
        /// Why.
        reason: String,
    },
    /// The result is not a `T` (the handle's type is not the actor's
    /// output), or the stored bytes are not a result.
    #[error("the result of message {id} cannot be read: {source}")]
    Decode {
        /// The message.
        id: MessageId,
        /// What did not fit.
        source: CodecError,
    },
    /// The store could not be read.
    #[error("cannot read the result of message {id}: {source}")]
    Store {
        /// The message.
        id: MessageId,
        /// The store's error.
        source: StoreError,
    },
    /// A progress value larger than the results middleware's `max_size`
    /// once encoded.
    #[error("the progress of message {id} is {bytes} bytes once encoded; at most {max} are kept")]
    TooLarge {
        /// The message.
        id: MessageId,
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The app has no results middleware (`Results`), so no result is
    /// ever kept.
    #[error("this app keeps no results: add the `Results` middleware")]
    NotEnabled,
}

/// The result of one message, typed by the actor's output `T`: what
/// [`SentExt::result`] gives.
///
/// Reading does not poll: [`wait`](ResultHandle::wait) blocks on the store
/// (Redis: one pub/sub notification), and any number of handles may wait
/// on one result and each sees it.
pub struct ResultHandle<T> {
    whose: Whose,
    results: Result<(Backend, Arc<dyn Store>), ()>,
    app: App,
    output: PhantomData<fn() -> T>,
}

impl<T> ResultHandle<T> {
    /// The result of message `id` in `app`, read as a `T` (prefer
    /// [`SentExt::result`], which knows the type, the queue and the actor;
    /// with `Results::dramatiq_layout`
    /// use [`ResultHandle::of_message`]).
    pub fn new(app: &App, id: MessageId) -> Self {
        Self::of(app, Whose::id(id))
    }

    /// The result of message `id` of `actor` on `queue` in `app`, read as
    /// a `T`: what Dramatiq's layout needs to find it.
    pub fn of_message(app: &App, id: MessageId, queue: &str, actor: &str) -> Self {
        Self::of(app, Whose::named(id, queue, actor))
    }

    pub(crate) fn of(app: &App, whose: Whose) -> Self {
        let results = app.state::<ResultStore>().map(|s| (s.backend.clone(), Arc::clone(&s.store))).map_err(drop);
        Self { whose, results, app: app.clone(), output: PhantomData }
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.whose.id
    }
}

impl<T: DeserializeOwned> ResultHandle<T> {
    /// The result if it is kept now, without waiting.
    ///
    /// # Errors
    ///
    /// [`ResultError::NotYet`] when there is none (yet), and the message's
    /// end when it did not succeed ([`ResultError::Failed`], `Aborted`,
    /// `Skipped`); `Decode`, `Store`, `NotEnabled`.
    pub async fn get(&self) -> Result<T, ResultError> {
        let (backend, _) = self.results()?;
        match backend.get(&self.whose, self.app.encoder()).await {
            Ok(Some(stored)) => self.read(stored),
            Ok(None) => Err(ResultError::NotYet(self.id())),
            Err(source) => Err(ResultError::Store { id: self.id(), source }),
        }
    }

    /// The result, waiting up to `timeout` for it to be kept.
    ///
    /// # Errors
    ///
    /// [`ResultError::TimedOut`] when none came, and those of
    /// [`ResultHandle::get`] but `NotYet`.
    pub async fn wait(&self, timeout: Duration) -> Result<T, ResultError> {
        let (backend, _) = self.results()?;
        match backend.wait(&self.whose, timeout, self.app.encoder()).await {
            Ok(Some(stored)) => self.read(stored),
            Ok(None) => Err(ResultError::TimedOut { id: self.id(), waited: timeout }),
            Err(source) => Err(ResultError::Store { id: self.id(), source }),
        }
    }

    /// The last progress the message reported
    /// ([`Progress::progress`](crate::Progress::progress)), read as a `P`;
    /// `None` before the first report (or after its TTL).
    ///
    /// # Errors
    ///
    /// `Decode` when it is not a `P`, `Store`, `NotEnabled`.
    pub async fn progress<P: DeserializeOwned>(&self) -> Result<Option<P>, ResultError> {
        let id = self.id();
        let (_, store) = self.results()?;
        match store.get(&crate::whose::progress_key(id)).await {
            Ok(Some(bytes)) => {
                decode_value(self.app.encoder(), &bytes).map(Some).map_err(|source| ResultError::Decode { id, source })
            }
            Ok(None) => Ok(None),
            Err(source) => Err(ResultError::Store { id, source }),
        }
    }

    fn results(&self) -> Result<&(Backend, Arc<dyn Store>), ResultError> {
        self.results.as_ref().map_err(|()| ResultError::NotEnabled)
    }

    fn read(&self, stored: Stored) -> Result<T, ResultError> {
        let id = self.id();
        match stored {
            Stored::Succeeded(output) => {
                decode_value(self.app.encoder(), &output).map_err(|source| ResultError::Decode { id, source })
            }
            Stored::Failed(record) => Err(ResultError::Failed { id, record }),
            Stored::Aborted(reason) => Err(ResultError::Aborted { id, reason }),
            Stored::Skipped(reason) => Err(ResultError::Skipped { id, reason }),
        }
    }
}

impl<T> std::fmt::Debug for ResultHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultHandle").field("whose", &self.whose).finish_non_exhaustive()
    }
}

/// Reads the result of a sent message: `sent.result(&app)`, typed by the
/// actor's output.
pub trait SentExt {
    /// The output type.
    type Output;

    /// The handle of the message's result.
    fn result(&self, app: &App) -> ResultHandle<Self::Output>;
}

impl<A: Actor> SentExt for Sent<A> {
    type Output = A::Output;

    fn result(&self, app: &App) -> ResultHandle<A::Output> {
        let queue = app.actor(A::NAME).map_or(A::QUEUE, |actor| actor.queue());
        ResultHandle::of_message(app, self.id(), queue, A::NAME)
    }
}
