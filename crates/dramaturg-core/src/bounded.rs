//! Text cut to a bound: the one way a string that came from a message (an
//! actor name, a decode error quoting the input, an error message) reaches a
//! broker header, a dead-letter record or a log line.
//!
//! A message can carry anything — a 200,000-byte actor name from a foreign
//! producer is a valid JSON string — and a header or a log line that grows
//! with it can exceed a server's frame limit (RabbitMQ closes the
//! connection) or flood the logs. Every such string goes through
//! [`Bounded`].

use std::fmt;
use std::ops::Deref;

/// The longest a dead-letter reason may be, in bytes (2 KiB).
pub const MAX_REASON_BYTES: usize = 2048;

/// The longest a name or value quoted from a message inside a reason or a
/// log line may be, in bytes (256 B).
pub const MAX_QUOTED_BYTES: usize = 256;

/// The mark put where text was cut.
const MARK: &str = "…";

/// UTF-8 text of at most a given number of bytes; longer text is cut on a
/// character boundary and ends with `…`.
///
/// # Examples
///
/// ```
/// use dramaturg_core::Bounded;
///
/// let name = "x".repeat(200_000);
/// let quoted = Bounded::new(&name, 16);
/// assert_eq!(quoted.len(), 16);
/// assert!(quoted.ends_with('…'));
/// assert_eq!(Bounded::new("short", 16).as_str(), "short");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bounded(String);

impl Bounded {
    /// `text` cut to at most `max_bytes` bytes (at least the mark's 3 bytes
    /// when cut).
    pub fn new(text: &str, max_bytes: usize) -> Self {
        Self(cut(text, max_bytes))
    }

    /// A dead-letter reason: `text` cut to [`MAX_REASON_BYTES`].
    pub fn reason(text: &str) -> Self {
        Self::new(text, MAX_REASON_BYTES)
    }

    /// A value quoted from a message: `text` cut to [`MAX_QUOTED_BYTES`].
    pub fn quoted(text: &str) -> Self {
        Self::new(text, MAX_QUOTED_BYTES)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text as an owned `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with `…`
/// marking the cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    match kept(text, max) {
        Some(end) => format!("{}{MARK}", &text[..end]),
        None => text.to_owned(),
    }
}

/// Where `text` is cut to fit `max` bytes with the mark, or `None` when it
/// fits whole.
fn kept(text: &str, max: usize) -> Option<usize> {
    if text.len() <= max {
        return None;
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(end)
}

/// A value quoted from a message, shown as [`Bounded::quoted`] would hold
/// it, without copying it: for log and span fields, written for every
/// message.
pub(crate) struct Quoted<'a>(pub(crate) &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match kept(self.0, MAX_QUOTED_BYTES) {
            Some(end) => write!(f, "{}{MARK}", &self.0[..end]),
            None => f.write_str(self.0),
        }
    }
}

impl Deref for Bounded {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Bounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Bounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<&str> for Bounded {
    /// A reason: cut to [`MAX_REASON_BYTES`].
    fn from(text: &str) -> Self {
        Self::reason(text)
    }
}

impl From<String> for Bounded {
    /// A reason: cut to [`MAX_REASON_BYTES`].
    fn from(text: String) -> Self {
        if text.len() <= MAX_REASON_BYTES {
            Self(text)
        } else {
            Self::reason(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_char_boundaries() {
        let cut = Bounded::new(&"é".repeat(100), 11);
        assert!(cut.len() <= 11, "{cut}");
        assert!(cut.ends_with('…'));
        assert_eq!(Bounded::from("x".repeat(100_000)).len(), MAX_REASON_BYTES);
    }

    #[test]
    fn quoted_shows_what_bounded_holds() {
        for text in ["short".to_owned(), "x".repeat(100_000), "é".repeat(200)] {
            assert_eq!(Quoted(&text).to_string(), Bounded::quoted(&text).as_str());
        }
    }
}
