//! A failed attempt: the error value until it is captured, then its record.

use std::any::{Any, TypeId};
use std::error::Error as StdError;
use std::fmt;

use crate::error::BoxError;
use crate::error_record::{ErrorRecord, FailureKind, RecordLimits};
use crate::fail::{Boxed, Retry};

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

/// `type_name` as a record shows it: a boxed trait object's long path
/// (`alloc::boxed::Box<dyn core::error::Error + core::marker::Send + …>`)
/// becomes `Box<dyn Error>`.
fn readable_type_name(type_name: &'static str) -> &'static str {
    if type_name.starts_with("alloc::boxed::Box<dyn core::error::Error") {
        "Box<dyn Error>"
    } else {
        type_name
    }
}

enum FailureState {
    Raw { error: BoxError, type_name: &'static str },
    Captured(Box<ErrorRecord>),
}

impl Failure {
    /// A failure from an actor's error of type `E`. Its record names `E`
    /// by its path (`std::io::error::Error`, `my_app::ExportFailed`); an
    /// error already boxed as `Box<dyn Error + …>`, whose type is no longer
    /// known, is named `Box<dyn Error>` rather than by the box's full path.
    pub fn from_error<E: Into<BoxError>>(error: E) -> Self {
        Self::from_boxed(error.into(), readable_type_name(std::any::type_name::<E>()))
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

    /// `n` failures alike, for the messages of a batch that failed as a
    /// whole: this one's record (captured now, within the default limits),
    /// kind and retry wish, and which of `types` the error was.
    pub(crate) fn spread(mut self, n: usize, types: &[ErrorType]) -> Vec<Failure> {
        self.note_types(types);
        let record = self.record().clone();
        (0..n)
            .map(|_| Failure {
                kind: self.kind,
                retry: self.retry,
                state: FailureState::Captured(Box::new(record.clone())),
                matched: self.matched.clone(),
            })
            .collect()
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

    #[test]
    fn a_boxed_error_is_named_readably_and_others_by_their_path() {
        let boxed: BoxError = "unlucky".into();
        let mut failure = Failure::from_error(boxed);
        assert_eq!(failure.record().type_name, "Box<dyn Error>");
        assert_eq!(failure.record().message, "unlucky");
        let mut io = Failure::from_error(std::io::Error::other("disk"));
        assert_eq!(io.record().type_name, "std::io::error::Error");
    }
}
