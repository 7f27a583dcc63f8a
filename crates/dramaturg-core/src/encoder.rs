//! Encoders turn messages and actor arguments into bytes and back.
//!
//! [`MessagePack`] is the default: compact and fast. [`Json`] writes
//! human-readable messages whose arguments are embedded as JSON values.

use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Call, Message, MessageId, Options};

/// A function handed to [`Encoder::decode_args`] that reads a value from the
/// deserializer it is given.
pub type DecodeFn<'f> =
    dyn for<'de> FnMut(&mut dyn erased_serde::Deserializer<'de>) -> Result<(), erased_serde::Error> + 'f;

/// Turns messages and actor arguments into bytes and back.
///
/// The worker and the brokers see only bytes; the encoder is the one place
/// that knows the format. It works on type-erased serde values so that the
/// app can hold it as `Arc<dyn Encoder>`; use [`encode_value`] and
/// [`decode_value`] for typed access.
pub trait Encoder: Send + Sync + fmt::Debug + 'static {
    /// The format's name (`"messagepack"`, `"json"`, `"dramatiq"`), by
    /// which an app checks that its encoder is the one its broker needs
    /// ([`Broker::encoder`](crate::Broker::encoder)).
    fn name(&self) -> &'static str;

    /// Encodes a value (the arguments of an actor, or its result).
    ///
    /// # Errors
    ///
    /// [`CodecError::Encode`] when the value cannot be represented.
    fn encode_args(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError>;

    /// Encodes the arguments of a call to an actor known only by its name
    /// ([`App::send_call`](crate::App::send_call)). The default writes
    /// keyword arguments as a map (what a struct with named fields reads)
    /// and positional ones as a sequence (what a tuple struct reads); the
    /// [`Dramatiq`](crate::dramatiq::Dramatiq) encoder writes both.
    ///
    /// # Errors
    ///
    /// [`CodecError::Encode`] when the call has both positional and keyword
    /// arguments and this encoder cannot carry them at once.
    fn encode_call(&self, call: &Call) -> Result<Vec<u8>, CodecError> {
        match (call.args.is_empty(), call.kwargs.is_empty()) {
            (true, false) => self.encode_args(&call.kwargs),
            (_, true) => self.encode_args(&call.args),
            (false, false) => Err(CodecError::Encode(format!(
                "the {} encoder cannot carry positional and keyword arguments at once (the dramatiq encoder can)",
                self.name()
            ))),
        }
    }

    /// Decodes a value written by [`Encoder::encode_args`] by handing a
    /// deserializer over `bytes` to `visit`.
    ///
    /// # Errors
    ///
    /// [`CodecError::Decode`] when the bytes do not hold what `visit` reads.
    fn decode_args(&self, bytes: &[u8], visit: &mut DecodeFn<'_>) -> Result<(), CodecError>;

    /// Encodes a whole message, its encoded arguments included.
    ///
    /// # Errors
    ///
    /// [`CodecError::Encode`] when the message cannot be represented.
    fn encode_message(&self, message: &Message) -> Result<Vec<u8>, CodecError>;

    /// Decodes a whole message.
    ///
    /// # Errors
    ///
    /// [`CodecError::Decode`] when the bytes are not a message in this format
    /// (including options of the wrong type).
    fn decode_message(&self, bytes: &[u8]) -> Result<Message, CodecError>;
}

/// Encoding or decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// Bytes could not be decoded.
    #[error("cannot decode: {0}")]
    Decode(String),
}

impl CodecError {
    fn decode(e: impl fmt::Display) -> Self {
        Self::Decode(e.to_string())
    }

    fn encode(e: impl fmt::Display) -> Self {
        Self::Encode(e.to_string())
    }
}

/// Encodes a typed value with `encoder`.
///
/// # Errors
///
/// [`CodecError::Encode`] when the value cannot be represented.
pub fn encode_value<T: Serialize>(encoder: &dyn Encoder, value: &T) -> Result<Vec<u8>, CodecError> {
    encoder.encode_args(&value)
}

/// Decodes a typed value with `encoder`.
///
/// # Errors
///
/// [`CodecError::Decode`] when the bytes do not hold a `T`; it names the
/// field that did not fit (`field `seq`: invalid type: …`).
pub fn decode_value<T: DeserializeOwned>(encoder: &dyn Encoder, bytes: &[u8]) -> Result<T, CodecError> {
    let mut out = None;
    let decoded = encoder.decode_args(bytes, &mut |de| {
        out = Some(erased_serde::deserialize::<T>(de)?);
        Ok(())
    });
    match decoded {
        Ok(()) => out.ok_or_else(|| CodecError::Decode("the decoder produced no value".into())),
        // Decoded again, tracking the path, only to say which field did
        // not fit: the path costs nothing on the way that succeeds.
        Err(plain) => Err(decode_error_with_path::<T>(encoder, bytes).unwrap_or(plain)),
    }
}

/// The error of decoding `bytes` as a `T`, naming the field where it
/// happened; `None` if they decode after all.
fn decode_error_with_path<T: DeserializeOwned>(encoder: &dyn Encoder, bytes: &[u8]) -> Option<CodecError> {
    encoder
        .decode_args(bytes, &mut |de| {
            serde_path_to_error::deserialize::<_, T>(de).map(drop).map_err(|error| {
                let path = error.path().to_string();
                let inner = error.into_inner();
                if path == "." {
                    inner
                } else {
                    <erased_serde::Error as serde::de::Error>::custom(format_args!("field `{path}`: {inner}"))
                }
            })
        })
        .err()
}

/// The envelope as it is written: generic over how strings, arguments and
/// options are held, so one definition serves borrowing encoders and owning
/// decoders.
#[derive(Serialize, Deserialize)]
struct Wire<S, A, O> {
    id: MessageId,
    queue: S,
    actor: S,
    args: A,
    #[serde(default)]
    options: O,
    enqueued_at_ms: u64,
    #[serde(default)]
    retries: u32,
}

impl<'m, A> Wire<&'m str, A, &'m Options> {
    fn borrowed(message: &'m Message, args: A) -> Self {
        Wire {
            id: message.id,
            queue: &message.queue,
            actor: &message.actor,
            args,
            options: &message.options,
            enqueued_at_ms: message.enqueued_at_ms,
            retries: message.retries,
        }
    }
}

impl<A> Wire<String, A, Options> {
    fn into_message(self, args: impl FnOnce(A) -> Bytes) -> Message {
        Message {
            id: self.id,
            queue: self.queue,
            actor: self.actor,
            args: args(self.args),
            options: self.options,
            enqueued_at_ms: self.enqueued_at_ms,
            retries: self.retries,
        }
    }
}

/// MessagePack through `rmp-serde`: structs are written as maps with field
/// names, so fields can be added without breaking older readers. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

/// Arguments embedded in a MessagePack envelope as a binary string.
struct Bin<'a>(&'a [u8]);

impl Serialize for Bin<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Owned binary arguments read back from a MessagePack envelope.
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> serde::de::Visitor<'de> for BytesVisitor {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("encoded arguments as bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

impl Encoder for MessagePack {
    fn name(&self) -> &'static str {
        "messagepack"
    }

    fn encode_args(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(64);
        let mut serializer = rmp_serde::Serializer::new(&mut out).with_struct_map();
        value.serialize(&mut serializer).map_err(CodecError::encode)?;
        Ok(out)
    }

    fn decode_args(&self, bytes: &[u8], visit: &mut DecodeFn<'_>) -> Result<(), CodecError> {
        let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
        visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut deserializer)).map_err(CodecError::decode)
    }

    fn encode_message(&self, message: &Message) -> Result<Vec<u8>, CodecError> {
        let wire = Wire::borrowed(message, Bin(&message.args));
        let mut out = Vec::with_capacity(96 + message.args.len());
        let mut serializer = rmp_serde::Serializer::new(&mut out).with_struct_map();
        wire.serialize(&mut serializer).map_err(CodecError::encode)?;
        Ok(out)
    }

    fn decode_message(&self, bytes: &[u8]) -> Result<Message, CodecError> {
        let wire: Wire<String, ByteBuf, Options> = rmp_serde::from_slice(bytes).map_err(CodecError::decode)?;
        Ok(wire.into_message(|args| Bytes::from(args.0)))
    }
}

/// JSON through `serde_json`: readable messages, arguments embedded as JSON
/// values rather than as opaque bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Encoder for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn encode_args(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(CodecError::encode)
    }

    fn decode_args(&self, bytes: &[u8], visit: &mut DecodeFn<'_>) -> Result<(), CodecError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut deserializer)).map_err(CodecError::decode)?;
        deserializer.end().map_err(CodecError::decode)
    }

    fn encode_message(&self, message: &Message) -> Result<Vec<u8>, CodecError> {
        let text = std::str::from_utf8(&message.args).map_err(CodecError::encode)?;
        let raw = serde_json::value::RawValue::from_string(text.to_owned()).map_err(CodecError::encode)?;
        serde_json::to_vec(&Wire::borrowed(message, &*raw)).map_err(CodecError::encode)
    }

    fn decode_message(&self, bytes: &[u8]) -> Result<Message, CodecError> {
        let wire: Wire<String, Box<serde_json::value::RawValue>, Options> =
            serde_json::from_slice(bytes).map_err(CodecError::decode)?;
        Ok(wire.into_message(|args| Bytes::copy_from_slice(args.get().as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Args {
        user: u64,
        name: String,
    }

    fn round_trip(encoder: &dyn Encoder) {
        let args = Args { user: 7, name: "ada".into() };
        let bytes = encode_value(encoder, &args).unwrap();
        let mut message = Message::new("mail", "send_welcome", bytes.into());
        message.options = Options::default().with_time_limit(Duration::from_millis(1500)).with_extra("k", [1, 2]);
        message.retries = 3;
        let encoded = encoder.encode_message(&message).unwrap();
        let decoded = encoder.decode_message(&encoded).unwrap();
        assert_eq!(decoded, message);
        assert_eq!(decode_value::<Args>(encoder, &decoded.args).unwrap(), args);
    }

    #[test]
    fn messagepack_round_trips() {
        round_trip(&MessagePack);
    }

    #[test]
    fn json_round_trips_and_embeds_arguments() {
        round_trip(&Json);
        let message = Message::new("q", "a", Bytes::from_static(br#"{"x":1}"#));
        let text = String::from_utf8(Json.encode_message(&message).unwrap()).unwrap();
        assert!(text.contains(r#""args":{"x":1}"#), "{text}");
    }

    #[test]
    fn garbage_is_a_decode_error() {
        for encoder in [&MessagePack as &dyn Encoder, &Json] {
            let err = encoder.decode_message(b"\xff\x00 not a message").unwrap_err();
            assert!(matches!(err, CodecError::Decode(_)), "{err}");
        }
    }

    #[test]
    fn arguments_of_the_wrong_shape_are_decode_errors() {
        for encoder in [&MessagePack as &dyn Encoder, &Json] {
            let bytes = encode_value(encoder, &("not", "args")).unwrap();
            assert!(matches!(decode_value::<Args>(encoder, &bytes), Err(CodecError::Decode(_))));
        }
    }
}
