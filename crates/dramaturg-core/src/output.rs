//! The value an actor returned.

use std::fmt;

use crate::encoder::{CodecError, Encoder};

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
