//! What is kept for a message: its final outcome, one tagged byte string.

use dramaturg_core::{CodecError, Encoder, ErrorRecord, FailureKind, Outcome, RecordLimits};

/// A message's final outcome as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stored {
    /// The actor's output, encoded by the app's encoder.
    Succeeded(Vec<u8>),
    /// The final failure (also: the output was too large to keep, the
    /// message could not run).
    Failed(ErrorRecord),
    /// Cancelled before it started or aborted while it ran.
    Aborted(String),
    /// Deliberately not run (too old, …).
    Skipped(String),
}

const SUCCEEDED: u8 = b'S';
const FAILED: u8 = b'F';
const ABORTED: u8 = b'A';
const SKIPPED: u8 = b'K';

impl Stored {
    /// What to keep for `outcome`, or `None` for an outcome that is not
    /// final (a retry, a requeue). An output larger than `max_size` once
    /// encoded is kept as a failure saying so.
    pub(crate) fn of(outcome: &mut Outcome, encoder: &dyn Encoder, max_size: usize) -> Option<Self> {
        Some(match outcome {
            Outcome::Succeeded(output) => match output.encode(encoder) {
                Ok(bytes) if bytes.len() <= max_size => Self::Succeeded(bytes),
                Ok(bytes) => Self::failure(
                    "ResultTooLarge",
                    &format!(
                        "the result is {} bytes once encoded; results are kept up to {max_size} bytes",
                        bytes.len()
                    ),
                ),
                Err(error) => Self::failure("CodecError", &format!("the result could not be encoded: {error}")),
            },
            Outcome::Failed(failure) => Self::Failed(failure.record().clone()),
            Outcome::Aborted(reason) => Self::Aborted(reason.to_string()),
            Outcome::Skipped(reason) => Self::Skipped(reason.to_string()),
            Outcome::Retried(..) | Outcome::Requeue(_) => return None,
            _ => return None,
        })
    }

    /// A failure of the results middleware's own (`type_name`, `message`).
    pub(crate) fn failure(type_name: &str, message: &str) -> Self {
        Self::Failed(ErrorRecord::new(
            FailureKind::Error,
            type_name,
            message,
            Vec::new(),
            None,
            &RecordLimits::default(),
        ))
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let tagged = |tag: u8, body: &[u8]| {
            let mut out = Vec::with_capacity(1 + body.len());
            out.push(tag);
            out.extend_from_slice(body);
            out
        };
        match self {
            Self::Succeeded(bytes) => tagged(SUCCEEDED, bytes),
            Self::Failed(record) => {
                let mut out = vec![FAILED];
                // A record always serializes.
                let _ = serde_json::to_writer(&mut out, record);
                out
            }
            Self::Aborted(reason) => tagged(ABORTED, reason.as_bytes()),
            Self::Skipped(reason) => tagged(SKIPPED, reason.as_bytes()),
        }
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let text = |body: &[u8]| String::from_utf8_lossy(body).into_owned();
        match bytes.split_first() {
            Some((&SUCCEEDED, body)) => Ok(Self::Succeeded(body.to_vec())),
            Some((&FAILED, body)) => serde_json::from_slice(body)
                .map(Self::Failed)
                .map_err(|e| CodecError::Decode(format!("a stored failure: {e}"))),
            Some((&ABORTED, body)) => Ok(Self::Aborted(text(body))),
            Some((&SKIPPED, body)) => Ok(Self::Skipped(text(body))),
            _ => Err(CodecError::Decode("not a stored result".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_results_round_trip() {
        for stored in [
            Stored::Succeeded(vec![1, 2, 3]),
            Stored::failure("E", "boom"),
            Stored::Aborted("aborted".into()),
            Stored::Skipped("too old".into()),
        ] {
            assert_eq!(Stored::from_bytes(&stored.to_bytes()).unwrap(), stored);
        }
        assert!(Stored::from_bytes(b"").is_err());
        assert!(Stored::from_bytes(b"Fnot json").is_err());
    }
}
