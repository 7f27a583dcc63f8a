//! The bounded, owned record of a failure, and what bounds it.

use std::error::Error as StdError;

use crate::bounded::cut as truncate;

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
