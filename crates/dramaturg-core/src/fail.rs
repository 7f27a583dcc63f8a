//! Typed control flow for actors: "retry after X", "fail for good", and
//! ordinary errors.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::error::BoxError;

/// What an actor asks of the retry middleware when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Retry {
    /// No wish: the retry policy decides.
    #[default]
    Default,
    /// Fail for good: do not retry, dead-letter at once.
    Never,
    /// Retry (if retries are left) after this delay instead of the backoff.
    After(Duration),
}

/// An actor error that says how to retry. Return `Result<T, Fail>` from a
/// handler; `?` converts any error into an ordinary `Fail`.
///
/// `Fail` is deliberately not an `Error` itself (so that `?` can convert
/// every error into it), like `anyhow::Error`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::{Fail, Retry};
///
/// fn charge(card_valid: bool, gateway_busy: bool) -> Result<(), Fail> {
///     if !card_valid {
///         return Err(Fail::permanent("card declined"));
///     }
///     if gateway_busy {
///         return Err(Fail::retry_after(Duration::from_secs(30), "gateway busy"));
///     }
///     std::fs::metadata("/")?; // any error converts with `?`
///     Ok(())
/// }
///
/// assert_eq!(charge(false, false).unwrap_err().retry(), Retry::Never);
/// ```
pub struct Fail {
    error: BoxError,
    type_name: &'static str,
    retry: Retry,
}

impl Fail {
    /// An ordinary failure: the retry policy decides.
    pub fn new<E: Into<BoxError>>(error: E) -> Self {
        Self { error: error.into(), type_name: std::any::type_name::<E>(), retry: Retry::Default }
    }

    /// A failure that must not be retried: the message is dead-lettered at once.
    pub fn permanent<E: Into<BoxError>>(error: E) -> Self {
        Self { retry: Retry::Never, ..Self::new(error) }
    }

    /// A failure to retry after `delay` (if retries are left), whatever the backoff says.
    pub fn retry_after<E: Into<BoxError>>(delay: Duration, error: E) -> Self {
        Self { retry: Retry::After(delay), ..Self::new(error) }
    }

    /// What the actor asks of the retry middleware.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// The error.
    pub fn error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self.error.as_ref()
    }

    pub(crate) fn into_parts(self) -> (BoxError, &'static str, Retry) {
        (self.error, self.type_name, self.retry)
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for Fail {
    fn from(error: E) -> Self {
        Self::new(error)
    }
}

impl fmt::Debug for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fail")
            .field("type", &self.type_name)
            .field("error", &self.error)
            .field("retry", &self.retry)
            .finish()
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

/// A `Fail` boxed as an error, so that it survives `Into<BoxError>` and
/// [`Failure::from_boxed`](crate::Failure::from_boxed) can take it apart.
pub(crate) struct Boxed(pub(crate) Fail);

impl fmt::Debug for Boxed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Boxed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for Boxed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.error.source()
    }
}

impl From<Fail> for BoxError {
    fn from(fail: Fail) -> Self {
        Box::new(Boxed(fail))
    }
}

/// Why an attempt is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Interruption {
    /// Its time limit or inactivity limit passed.
    TimeLimit,
    /// It was aborted.
    Abort,
    /// The worker is shutting down.
    Shutdown,
}

/// Returned by [`Context::check`](crate::Context::check) once the attempt is
/// being stopped: blocking actors return it (with `?`) to stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the attempt was interrupted ({0:?})")]
pub struct Interrupted(pub Interruption);
