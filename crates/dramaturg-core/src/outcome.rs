//! What came of processing a message: success, a bounded failure record, a
//! skip, a retry or a return to the queue.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::bounded::cut as truncate;
use crate::encoder::{CodecError, Encoder};
use crate::fail::{Boxed, Retry};
use crate::message::Message;

/// A boxed error, the common currency of actor failures.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The result of processing one delivery. The worker settles the delivery
/// from it once: success, skips, aborts → ack; failure → dead letter;
/// retried → reschedule to the next attempt; requeue → requeue.
#[derive(Debug)]
#[non_exhaustive]
// `Retried` carries the next attempt's message; an outcome is moved a few
// times per message, and boxing it would cost an allocation per retry.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// The actor returned `Ok`.
    Succeeded(Output),
    /// The attempt failed; with no retry, the message is dead-lettered.
    Failed(Failure),
    /// The message was deliberately not run (too old, cancelled, …). It is
    /// acknowledged.
    Skipped(Cow<'static, str>),
    /// A middleware planned a new attempt of the message (a retry): the
    /// worker replaces the delivery with it, due after its delay, in one
    /// broker step. The failure that led to it is kept.
    Retried(Failure, Box<NextAttempt>),
    /// The message goes back to its queue unchanged, for another worker or a
    /// later run (worker shutdown, a retry that could not be enqueued, …).
    Requeue(Cow<'static, str>),
    /// The message was cancelled before it started, or aborted while it ran.
    /// It is acknowledged: not a failure, never retried, not dead-lettered.
    Aborted(Cow<'static, str>),
}

impl Outcome {
    /// A short name for logs and metrics: `succeeded`, `failed`, `skipped`,
    /// `retried`, `requeued` or `aborted`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
            Outcome::Retried(..) => "retried",
            Outcome::Requeue(_) => "requeued",
            Outcome::Aborted(_) => "aborted",
        }
    }
}

/// The next attempt of a message: the message to deliver instead (with its
/// retry count and options as they should be) and how long to hold it.
#[derive(Debug)]
#[non_exhaustive]
pub struct NextAttempt {
    /// The message to deliver instead of this one.
    pub message: Message,
    /// How long to hold it before it may be delivered.
    pub delay: Duration,
}

impl NextAttempt {
    /// `message`, due after `delay` (boxed, as [`Outcome::Retried`] holds
    /// it).
    pub fn new(message: Message, delay: Duration) -> Box<Self> {
        Box::new(Self { message, delay })
    }
}

/// The value an actor returned, kept unencoded until someone asks for it
/// (callbacks, result stores), so that actors returning `()` cost nothing.
pub struct Output(Box<dyn erased_serde::Serialize + Send + Sync>);

impl Output {
    /// Wraps an actor's return value.
    pub fn new<T: serde::Serialize + Send + Sync + 'static>(value: T) -> Self {
        Self(Box::new(value))
    }

    /// Encodes the value with `encoder`.
    ///
    /// # Errors
    ///
    /// [`CodecError::Encode`] when the value cannot be represented.
    pub fn encode(&self, encoder: &dyn Encoder) -> Result<Vec<u8>, CodecError> {
        encoder.encode_args(&*self.0)
    }
}

impl serde::Serialize for Output {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        erased_serde::serialize(&*self.0, serializer)
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Output(..)")
    }
}

/// Why an attempt failed, in a form that can be matched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The actor returned an error.
    Error,
    /// The actor panicked.
    Panic,
    /// The attempt ran past its time limit or inactivity limit.
    TimeLimitExceeded,
}

/// A failed attempt: the actor's error, until it is captured into a bounded
/// [`ErrorRecord`] and the original value is dropped.
///
/// Middleware close to the actor may inspect the original error with
/// [`Failure::downcast_ref`]; [`Failure::capture`] (done by the error-capture
/// middleware, or by the worker at the latest) replaces it with its record.
pub struct Failure {
    kind: FailureKind,
    retry: Retry,
    state: FailureState,
    /// The error types of interest ([`Failure::note_types`]) that the
    /// original error was, or had in its source chain, before capture.
    matched: Vec<TypeId>,
}

/// An error type that middleware outside the capture point ask about (the
/// retry middleware's `never_retry::<E>()`), matched by [`TypeId`] on the
/// error value itself — not by name — before the value is dropped. See
/// [`Middleware::error_types`](crate::Middleware::error_types).
#[derive(Clone, Copy)]
pub struct ErrorType {
    id: TypeId,
    name: &'static str,
    matches: fn(&(dyn StdError + 'static)) -> bool,
}

impl ErrorType {
    /// The error type `E`.
    pub fn of<E: StdError + 'static>() -> Self {
        Self { id: TypeId::of::<E>(), name: std::any::type_name::<E>(), matches: |error| error.is::<E>() }
    }

    /// Its `TypeId`.
    pub fn type_id(&self) -> TypeId {
        self.id
    }

    /// Its name, for humans (not unique: never compare it).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether `error` is of this type, or has an error of this type in its
    /// source chain. A boxed error (`Box<dyn Error + Send + Sync>`, what
    /// handlers returning `BoxError` or `String` give) is looked into: the
    /// value inside is what is matched.
    pub fn matches(&self, error: &(dyn StdError + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(error) = next {
            if (self.matches)(error) {
                return true;
            }
            next = error.source();
        }
        false
    }
}

impl fmt::Debug for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ErrorType").field(&self.name).finish()
    }
}

enum FailureState {
    Raw { error: BoxError, type_name: &'static str },
    Captured(Box<ErrorRecord>),
}

impl Failure {
    /// A failure from an actor's error of type `E`.
    pub fn from_error<E: Into<BoxError>>(error: E) -> Self {
        Self::from_boxed(error.into(), std::any::type_name::<E>())
    }

    /// A failure from an already boxed error, with the name of its type.
    /// A boxed [`Fail`](crate::Fail) keeps its retry wish and the name of the
    /// error inside it.
    pub fn from_boxed(error: BoxError, type_name: &'static str) -> Self {
        match error.downcast::<Boxed>() {
            Ok(boxed) => {
                let (error, type_name, retry) = boxed.0.into_parts();
                Self {
                    kind: FailureKind::Error,
                    retry,
                    state: FailureState::Raw { error, type_name },
                    matched: Vec::new(),
                }
            }
            Err(error) => Self {
                kind: FailureKind::Error,
                retry: Retry::Default,
                state: FailureState::Raw { error, type_name },
                matched: Vec::new(),
            },
        }
    }

    /// The same failure, of another kind.
    #[must_use]
    pub fn with_kind(mut self, kind: FailureKind) -> Self {
        self.kind = kind;
        if let FailureState::Captured(record) = &mut self.state {
            record.kind = kind;
        }
        self
    }

    /// The same failure, with the retry wish it had elsewhere (an isolated
    /// child).
    #[must_use]
    pub(crate) fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// What the actor asked of the retry middleware (see [`Fail`](crate::Fail)).
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// A failure from a panic payload, with the backtrace of the panic if
    /// one was taken.
    pub fn from_panic(payload: &(dyn Any + Send), backtrace: Option<&str>, limits: &RecordLimits) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-string payload".to_owned());
        let record = ErrorRecord::new(FailureKind::Panic, "panic", &message, Vec::new(), backtrace, limits);
        Self::from_record(record)
    }

    /// A failure from a record made earlier.
    pub fn from_record(record: ErrorRecord) -> Self {
        Self {
            kind: record.kind,
            retry: Retry::Default,
            state: FailureState::Captured(Box::new(record)),
            matched: Vec::new(),
        }
    }

    /// Why the attempt failed.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The original error, if it has not been captured yet.
    pub fn error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match &self.state {
            FailureState::Raw { error, .. } => Some(error.as_ref()),
            FailureState::Captured(_) => None,
        }
    }

    /// The original error as an `E`, if it is one and has not been captured.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.error().and_then(|e| e.downcast_ref::<E>())
    }

    /// Notes which of `types` the original error is (or has in its source
    /// chain), so that [`Failure::is`] still answers after capture. Error
    /// capture calls it with the app's [`error_types`](crate::App::error_types)
    /// just before it drops the error. Does nothing once captured.
    pub fn note_types(&mut self, types: &[ErrorType]) {
        if let FailureState::Raw { error, .. } = &self.state {
            for ty in types {
                if !self.matched.contains(&ty.id) && ty.matches(error.as_ref()) {
                    self.matched.push(ty.id);
                }
            }
        }
    }

    /// Whether the original error is of type `ty` (or has one in its source
    /// chain): asked of the error itself while it is there, and afterwards
    /// of what [`Failure::note_types`] noted before capture.
    pub fn is(&self, ty: &ErrorType) -> bool {
        match &self.state {
            FailureState::Raw { error, .. } => ty.matches(error.as_ref()),
            FailureState::Captured(_) => self.matched.contains(&ty.id),
        }
    }

    /// Turns the original error into a bounded record within `limits` and
    /// drops it. Does nothing if the failure is captured already.
    pub fn capture(&mut self, limits: &RecordLimits) {
        if let FailureState::Raw { error, type_name } = &self.state {
            let record = ErrorRecord::from_error(self.kind, type_name, error.as_ref(), limits);
            // Replacing the state drops the original error value here and now.
            self.state = FailureState::Captured(Box::new(record));
        }
    }

    /// The bounded record of this failure, captured with the default limits
    /// if it was not captured yet.
    pub fn record(&mut self) -> &ErrorRecord {
        self.capture(&RecordLimits::default());
        match &self.state {
            FailureState::Captured(record) => record,
            FailureState::Raw { .. } => unreachable!("capture() always leaves a record"),
        }
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            FailureState::Raw { error, type_name } => {
                f.debug_struct("Failure").field("type", type_name).field("error", &format_args!("{error}")).finish()
            }
            FailureState::Captured(record) => f.debug_tuple("Failure").field(record).finish(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            FailureState::Raw { error, .. } => write!(f, "{error}"),
            FailureState::Captured(record) => f.write_str(&record.message),
        }
    }
}

/// Bounds on the size of an [`ErrorRecord`], in bytes of UTF-8 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordLimits {
    /// The longest the type name may be.
    pub type_name: usize,
    /// The longest the display message may be.
    pub message: usize,
    /// How many errors of the source chain are kept.
    pub sources: usize,
    /// The longest each source's message may be.
    pub source: usize,
    /// The longest the backtrace may be.
    pub backtrace: usize,
}

impl Default for RecordLimits {
    /// About 4 KiB in all: 200 B of type name, 1 KiB of message, up to four
    /// sources of 256 B each, and 2 KiB of backtrace.
    fn default() -> Self {
        Self { type_name: 200, message: 1024, sources: 4, source: 256, backtrace: 2048 }
    }
}

/// The bounded, owned record of a failure: what travels to retries,
/// dead-letter reasons, callbacks and logs in place of the error value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct ErrorRecord {
    /// Why the attempt failed.
    pub kind: FailureKind,
    /// The Rust type of the error (`"panic"` for panics).
    pub type_name: String,
    /// The error's display message.
    pub message: String,
    /// The messages of the error's source chain, outermost first.
    pub sources: Vec<String>,
    /// A backtrace, when one was captured.
    pub backtrace: Option<String>,
}

impl ErrorRecord {
    /// A record of `error` within `limits`.
    pub fn from_error(
        kind: FailureKind,
        type_name: &str,
        error: &(dyn StdError + 'static),
        limits: &RecordLimits,
    ) -> Self {
        let mut sources = Vec::new();
        let mut next = error.source();
        while let Some(source) = next {
            if sources.len() == limits.sources {
                break;
            }
            sources.push(truncate(&source.to_string(), limits.source));
            next = source.source();
        }
        Self::new(kind, type_name, &error.to_string(), sources, None, limits)
    }

    /// A record from its parts, each truncated to `limits`.
    pub fn new(
        kind: FailureKind,
        type_name: &str,
        message: &str,
        mut sources: Vec<String>,
        backtrace: Option<&str>,
        limits: &RecordLimits,
    ) -> Self {
        sources.truncate(limits.sources);
        for source in &mut sources {
            if source.len() > limits.source {
                *source = truncate(source, limits.source);
            }
        }
        Self {
            kind,
            type_name: truncate(type_name, limits.type_name),
            message: truncate(message, limits.message),
            sources,
            backtrace: backtrace.map(|b| truncate(b, limits.backtrace)),
        }
    }

    /// One line: `type: message: source: source`, used as a dead-letter reason.
    pub fn summary(&self) -> String {
        let mut out = format!("{}: {}", self.type_name, self.message);
        for source in &self.sources {
            out.push_str(": ");
            out.push_str(source);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer failure")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn capture_drops_the_error_and_keeps_a_bounded_record() {
        let big = "x".repeat(10_000);
        let mut failure = Failure::from_error(Outer(std::io::Error::other(big)));
        assert!(failure.downcast_ref::<Outer>().is_some());
        failure.capture(&RecordLimits::default());
        assert!(failure.error().is_none());
        let record = failure.record();
        assert_eq!(record.message, "outer failure");
        assert!(record.type_name.ends_with("Outer"), "{}", record.type_name);
        assert_eq!(record.sources.len(), 1);
        assert!(record.sources[0].len() <= 256);
        assert!(record.sources[0].ends_with('…'));
    }

    #[test]
    fn panics_become_records() {
        let payload: Box<dyn Any + Send> = Box::new(String::from("boom"));
        let mut failure = Failure::from_panic(payload.as_ref(), None, &RecordLimits::default());
        assert_eq!(failure.kind(), FailureKind::Panic);
        assert_eq!(failure.record().summary(), "panic: boom");
    }
}
