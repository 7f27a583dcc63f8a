//! Dramatiq's wire format: the [`Dramatiq`] encoder, which reads and writes
//! the JSON messages of Python's Dramatiq, and [`Body`], with which a broker
//! speaking Dramatiq's queue layouts edits the fields Dramatiq's brokers set
//! (`queue_name`, `options.eta`, `options.redis_message_id`).
//!
//! A Dramatiq message is one compact JSON object with these seven fields,
//! which this encoder always writes and nothing else (Python's
//! `Message.decode` refuses other fields; this encoder ignores them, and
//! fills in a missing `message_id` or `message_timestamp` as Python does):
//!
//! ```json
//! {"queue_name":"default","actor_name":"add","args":[1,2],"kwargs":{},"options":{},
//!  "message_id":"0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a10","message_timestamp":1717000000000}
//! ```
//!
//! # Arguments
//!
//! Python calls an actor with positional `args` and keyword `kwargs`. A
//! Rust actor receives them typed:
//!
//! - a struct with named fields takes `kwargs` by field name, and
//!   positional `args` by field order (`def step(seq, label)` and
//!   `struct Step { seq: u64, label: String }` match either way); a field
//!   given both ways, or more positional arguments than fields, is an error;
//! - a tuple struct (`struct Add(i64, i64)`) takes `args` positionally and
//!   no `kwargs`; a newtype struct takes one positional argument; a unit
//!   struct takes none.
//!
//! Keyword arguments the struct has no field for are ignored, as serde
//! ignores unknown fields (add `#[serde(deny_unknown_fields)]` to refuse
//! them). A mismatch is a [`CodecError::Decode`] naming the field
//! (`field `seq`: invalid type: string "x", expected u64`), which the worker
//! dead-letters with the actor's name.
//!
//! Sending writes a struct with named fields as `kwargs`, a tuple struct as
//! `args`, any other single value as one positional argument.
//!
//! # Options
//!
//! | dramaturg | Dramatiq option |
//! |---|---|
//! | [`Message::retries`] | `retries` (written once it is above zero) |
//! | [`Options::max_retries`] | `max_retries` (`null`, retry forever, is `u32::MAX`) |
//! | [`Options::min_backoff`], [`max_backoff`](Options::max_backoff), [`time_limit`](Options::time_limit), [`max_age`](Options::max_age) | the same names, in milliseconds |
//! | [`Options::idle_timeout`] | `idle_timeout` (milliseconds; Dramatiq has none) |
//! | [`Options::priority`] | `broker_priority` (RabbitMQ's per-message priority, 0–255) |
//! | the retry middleware's `last_error` | kept, and written as text to `traceback` too, where Dramatiq's tools look |
//! | [`ETA`] | `eta` (milliseconds since the Unix epoch; a float is rounded, a non-number dropped, as Dramatiq does) |
//! | every other option (`on_success`, `pipe_target`, `redis_message_id`, …) | kept untouched, across retries and re-sends |
//!
//! # Message ids
//!
//! Dramatiq's ids are UUIDs: a [`MessageId`] is 128 bits either way, and
//! this encoder writes it as a hyphenated lower-case UUID
//! ([`MessageId::to_uuid_string`]). A message whose `message_id` is neither a
//! UUID nor a ULID cannot be decoded.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::call::{Call, Fit};
use crate::encoder::{CodecError, DecodeFn, Encoder};
use crate::message::ETA;
use crate::{Message, MessageId, Options};

/// The suffix of a queue's delay queue in Dramatiq's layouts (`q.DQ`).
pub const DELAY_SUFFIX: &str = ".DQ";
/// The suffix of a queue's dead-letter queue in Dramatiq's layouts (`q.XQ`).
pub const DEAD_LETTER_SUFFIX: &str = ".XQ";

/// The queue `name` belongs to, without a `.DQ` or `.XQ` suffix
/// (Dramatiq's `q_name`).
pub fn queue_name(name: &str) -> &str {
    name.strip_suffix(DELAY_SUFFIX).or_else(|| name.strip_suffix(DEAD_LETTER_SUFFIX)).unwrap_or(name)
}

/// The delay queue of `queue` (Dramatiq's `dq_name`): `q.DQ`.
pub fn delay_queue(queue: &str) -> String {
    format!("{}{DELAY_SUFFIX}", queue_name(queue))
}

/// The dead-letter queue of `queue` (Dramatiq's `xq_name`): `q.XQ`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{}{DEAD_LETTER_SUFFIX}", queue_name(queue))
}

/// The encoder of Python Dramatiq's JSON messages (see the [module
/// documentation](self) for what maps to what). Choose it with
/// [`AppBuilder::encoder`](crate::AppBuilder::encoder), or let a broker
/// that speaks Dramatiq's layout choose it
/// ([`Broker::encoder`](crate::Broker::encoder)).
///
/// # Examples
///
/// ```
/// use dramaturg_core::dramatiq::Dramatiq;
/// use dramaturg_core::encoder::{decode_value, Encoder};
///
/// let body = br#"{"queue_name":"default","actor_name":"add","args":[1],"kwargs":{"b":2},
///   "options":{},"message_id":"0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a10","message_timestamp":1717000000000}"#;
/// let message = Dramatiq.decode_message(body).unwrap();
/// assert_eq!(message.actor, "add");
///
/// #[derive(serde::Deserialize)]
/// struct Add { a: i64, b: i64 }
/// let add: Add = decode_value(&Dramatiq, &message.args).unwrap();
/// assert_eq!((add.a, add.b), (1, 2));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Dramatiq;

/// Option names of Dramatiq's that map to typed fields.
mod key {
    pub(super) const RETRIES: &str = "retries";
    pub(super) const MAX_RETRIES: &str = "max_retries";
    pub(super) const MIN_BACKOFF: &str = "min_backoff";
    pub(super) const MAX_BACKOFF: &str = "max_backoff";
    pub(super) const TIME_LIMIT: &str = "time_limit";
    pub(super) const IDLE_TIMEOUT: &str = "idle_timeout";
    pub(super) const MAX_AGE: &str = "max_age";
    pub(super) const BROKER_PRIORITY: &str = "broker_priority";
    pub(super) const TRACEBACK: &str = "traceback";
    /// The retry middleware's record of the last failure.
    pub(super) const LAST_ERROR: &str = "last_error";
}

/// The message as Dramatiq writes it.
#[derive(Serialize, Deserialize)]
struct Wire {
    queue_name: String,
    actor_name: String,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    options: Map<String, Value>,
    /// Filled in when missing, as Python's `Message` does.
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    message_timestamp: Option<Value>,
}

impl Encoder for Dramatiq {
    fn name(&self) -> &'static str {
        "dramatiq"
    }

    fn encode_args(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
        let value = serde_json::to_value(value).map_err(|e| CodecError::Encode(e.to_string()))?;
        serde_json::to_vec(&Call::of(value)).map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn encode_call(&self, call: &Call) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(call).map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn decode_args(&self, bytes: &[u8], visit: &mut DecodeFn<'_>) -> Result<(), CodecError> {
        let call: Call = serde_json::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))?;
        visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(Fit(call)))
            .map_err(|e| CodecError::Decode(e.to_string()))
    }

    fn encode_message(&self, message: &Message) -> Result<Vec<u8>, CodecError> {
        let call: Call = serde_json::from_slice(&message.args)
            .map_err(|e| CodecError::Encode(format!("the arguments were not encoded by the Dramatiq encoder: {e}")))?;
        let wire = Wire {
            queue_name: message.queue.clone(),
            actor_name: message.actor.clone(),
            args: call.args,
            kwargs: call.kwargs,
            options: options_to_wire(&message.options, message.retries),
            message_id: Some(message.id.to_uuid_string()),
            message_timestamp: Some(message.enqueued_at_ms.into()),
        };
        serde_json::to_vec(&wire).map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn decode_message(&self, bytes: &[u8]) -> Result<Message, CodecError> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))?;
        let id = match wire.message_id {
            Some(text) => text.parse::<MessageId>().map_err(|e| CodecError::Decode(e.to_string()))?,
            None => MessageId::new(),
        };
        let enqueued_at_ms = match wire.message_timestamp {
            Some(stamp) => {
                millis(&stamp).ok_or_else(|| CodecError::Decode(format!("message_timestamp {stamp} is not a time")))?
            }
            None => crate::now_ms(),
        };
        let args = serde_json::to_vec(&Call { args: wire.args, kwargs: wire.kwargs })
            .map_err(|e| CodecError::Decode(e.to_string()))?;
        let (options, retries) = options_from_wire(wire.options)?;
        Ok(Message {
            id,
            queue: queue_name(&wire.queue_name).to_owned(),
            actor: wire.actor_name,
            args: Bytes::from(args),
            options,
            enqueued_at_ms,
            retries,
        })
    }
}

/// A whole number of milliseconds from a JSON number (Python may write a
/// float); `None` for anything else or a negative number.
fn millis(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.round() as u64))
        }
        _ => None,
    }
}

fn options_to_wire(options: &Options, retries: u32) -> Map<String, Value> {
    let mut wire: Map<String, Value> = options.extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if retries > 0 {
        wire.insert(key::RETRIES.into(), retries.into());
    }
    if let Some(max) = options.max_retries {
        wire.insert(key::MAX_RETRIES.into(), if max == u32::MAX { Value::Null } else { max.into() });
    }
    for (name, value) in [
        (key::MIN_BACKOFF, options.min_backoff),
        (key::MAX_BACKOFF, options.max_backoff),
        (key::TIME_LIMIT, options.time_limit),
        (key::IDLE_TIMEOUT, options.idle_timeout),
        (key::MAX_AGE, options.max_age),
    ] {
        if let Some(d) = value {
            wire.insert(name.into(), crate::time::millis(d).into());
        }
    }
    if let Some(priority) = options.priority {
        wire.insert(key::BROKER_PRIORITY.into(), priority.into());
    }
    if let Some(record) = options.extra.get(key::LAST_ERROR) {
        if let Ok(record) = crate::ErrorRecord::deserialize(record) {
            let mut text = record.summary();
            if let Some(backtrace) = &record.backtrace {
                text.push('\n');
                text.push_str(backtrace);
            }
            wire.insert(key::TRACEBACK.into(), text.into());
        }
    }
    wire
}

/// Removes the option `key` from `wire` and converts it; `null` reads as
/// `if_null`.
fn take<T>(
    wire: &mut Map<String, Value>,
    key: &str,
    expected: &str,
    if_null: Option<T>,
    convert: impl Fn(&Value) -> Option<T>,
) -> Result<Option<T>, CodecError> {
    match wire.remove(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(if_null),
        Some(value) => convert(&value).map(Some).ok_or_else(|| {
            let shown = crate::Bounded::quoted(&value.to_string());
            CodecError::Decode(format!("option `{key}` has a value of the wrong type: {shown}, expected {expected}"))
        }),
    }
}

fn options_from_wire(mut wire: Map<String, Value>) -> Result<(Options, u32), CodecError> {
    let whole = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let duration = |v: &Value| millis(v).map(std::time::Duration::from_millis);
    let w = &mut wire;
    let retries = take(w, key::RETRIES, "a whole number", None, whole)?.unwrap_or(0);
    let options = Options {
        // `null`: retry forever.
        max_retries: take(w, key::MAX_RETRIES, "a whole number or null", Some(u32::MAX), whole)?,
        min_backoff: take(w, key::MIN_BACKOFF, "milliseconds", None, duration)?,
        max_backoff: take(w, key::MAX_BACKOFF, "milliseconds", None, duration)?,
        time_limit: take(w, key::TIME_LIMIT, "milliseconds", None, duration)?,
        idle_timeout: take(w, key::IDLE_TIMEOUT, "milliseconds", None, duration)?,
        max_age: take(w, key::MAX_AGE, "milliseconds", None, duration)?,
        priority: take(w, key::BROKER_PRIORITY, "0 to 255", None, |v| v.as_u64().and_then(|n| u8::try_from(n).ok()))?,
        extra: BTreeMap::new(),
    };
    // Dramatiq treats an eta that is not a number as "now".
    match wire.get(ETA.name()).map(millis) {
        Some(Some(eta)) => {
            wire.insert(ETA.name().into(), eta.into());
        }
        Some(None) => {
            wire.remove(ETA.name());
        }
        None => {}
    }
    // Written from `last_error` when it was sent; written again from it.
    if wire.contains_key(key::LAST_ERROR) {
        wire.remove(key::TRACEBACK);
    }
    Ok((Options { extra: wire.into_iter().collect(), ..options }, retries))
}

/// A Dramatiq message body opened by a broker that speaks Dramatiq's
/// layouts, to set what Dramatiq's brokers set on the way in: the queue it
/// sits on (`q` or `q.DQ`), its `eta`, its `redis_message_id`, the
/// `traceback` of a dead letter. Everything else stays as it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Body(Map<String, Value>);

impl Body {
    /// Opens `bytes`, which must be a JSON object.
    ///
    /// # Errors
    ///
    /// [`CodecError::Decode`] when they are not.
    pub fn parse(bytes: &[u8]) -> Result<Self, CodecError> {
        serde_json::from_slice(bytes).map(Self).map_err(|e| CodecError::Decode(e.to_string()))
    }

    /// The message's `queue_name`.
    pub fn queue_name(&self) -> Option<&str> {
        self.0.get("queue_name").and_then(Value::as_str)
    }

    /// Sets the message's `queue_name`.
    pub fn set_queue_name(&mut self, queue: &str) {
        self.0.insert("queue_name".into(), queue.into());
    }

    /// The message's `message_id`.
    pub fn message_id(&self) -> Option<&str> {
        self.0.get("message_id").and_then(Value::as_str)
    }

    /// The option `key`, if set.
    pub fn option(&self, key: &str) -> Option<&Value> {
        self.0.get("options").and_then(Value::as_object).and_then(|options| options.get(key))
    }

    /// Sets the option `key` (making `options` an object if it was not one).
    pub fn set_option(&mut self, key: &str, value: impl Into<Value>) {
        let options = self.0.entry("options").or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        if let Value::Object(options) = options {
            options.insert(key.into(), value.into());
        }
    }

    /// Removes the option `key`.
    pub fn remove_option(&mut self, key: &str) -> Option<Value> {
        self.0.get_mut("options").and_then(Value::as_object_mut).and_then(|options| options.remove(key))
    }

    /// When the message falls due (its `eta`, milliseconds since the Unix
    /// epoch), if it has one that is a number; Dramatiq treats any other as
    /// due now.
    pub fn eta(&self) -> Option<u64> {
        self.option(ETA.name()).and_then(millis)
    }

    /// The edited message.
    pub fn to_vec(&self) -> Vec<u8> {
        // A map of JSON values always serializes.
        serde_json::to_vec(&self.0).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::encoder::{decode_value, encode_value};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Step {
        seq: u64,
        label: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Add(i64, i64);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Id(u64);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping;

    fn call(json: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::from_str::<Call>(json).unwrap()).unwrap()
    }

    #[test]
    fn structs_take_positional_and_keyword_arguments() {
        let step = Step { seq: 7, label: "é ☃".into() };
        for json in [
            r#"{"args":[7,"é ☃"],"kwargs":{}}"#,
            r#"{"args":[],"kwargs":{"seq":7,"label":"é ☃"}}"#,
            r#"{"args":[7],"kwargs":{"label":"é ☃"}}"#,
            r#"{"args":[7],"kwargs":{"label":"é ☃","unused":1}}"#,
        ] {
            assert_eq!(decode_value::<Step>(&Dramatiq, &call(json)).unwrap(), step, "{json}");
        }
        assert_eq!(decode_value::<Add>(&Dramatiq, &call(r#"{"args":[1,2]}"#)).unwrap(), Add(1, 2));
        assert_eq!(decode_value::<Id>(&Dramatiq, &call(r#"{"args":[5]}"#)).unwrap(), Id(5));
        assert_eq!(decode_value::<Ping>(&Dramatiq, &call(r#"{"args":[]}"#)).unwrap(), Ping);
    }

    #[test]
    fn mismatched_arguments_name_the_field() {
        for (json, expect) in [
            (r#"{"args":["x","y"]}"#, "seq"),
            (r#"{"args":[1,2,3]}"#, "takes 2 positional arguments (seq, label) but 3 were given"),
            (r#"{"args":[1],"kwargs":{"seq":2,"label":"a"}}"#, "multiple values for argument `seq`"),
            (r#"{"args":[1]}"#, "label"),
        ] {
            let err = decode_value::<Step>(&Dramatiq, &call(json)).unwrap_err().to_string();
            assert!(err.contains(expect), "{json}: {err}");
        }
        let err = decode_value::<Add>(&Dramatiq, &call(r#"{"args":[1],"kwargs":{"b":2}}"#)).unwrap_err();
        assert!(err.to_string().contains("keyword argument `b`"), "{err}");
        let err = decode_value::<Ping>(&Dramatiq, &call(r#"{"args":[1]}"#)).unwrap_err();
        assert!(err.to_string().contains("takes no arguments"), "{err}");
    }

    #[test]
    fn sending_writes_structs_as_keywords_and_tuples_as_positions() {
        let step = encode_value(&Dramatiq, &Step { seq: 1, label: "a".into() }).unwrap();
        assert_eq!(std::str::from_utf8(&step).unwrap(), r#"{"args":[],"kwargs":{"label":"a","seq":1}}"#);
        let add = encode_value(&Dramatiq, &Add(1, 2)).unwrap();
        assert_eq!(std::str::from_utf8(&add).unwrap(), r#"{"args":[1,2],"kwargs":{}}"#);
        assert_eq!(decode_value::<Add>(&Dramatiq, &add).unwrap(), Add(1, 2));
    }

    const PYTHON: &str = r#"{"queue_name":"default.DQ","actor_name":"step","args":[7,"x"],"kwargs":{},
        "options":{"eta":1717000060000.0,"redis_message_id":"r1","retries":2,"max_retries":null,
        "min_backoff":1500,"time_limit":60000,"broker_priority":3,"traceback":"Traceback ...",
        "pipe_target":{"actor_name":"next"},"on_success":"report"},
        "message_id":"0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a10","message_timestamp":1717000000000}"#;

    #[test]
    fn python_messages_decode_with_their_options() {
        let message = Dramatiq.decode_message(PYTHON.as_bytes()).unwrap();
        assert_eq!(message.queue, "default");
        assert_eq!(message.actor, "step");
        assert_eq!(message.retries, 2);
        assert_eq!(message.enqueued_at_ms, 1_717_000_000_000);
        assert_eq!(message.id.to_uuid_string(), "0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a10");
        let o = &message.options;
        assert_eq!(o.max_retries, Some(u32::MAX));
        assert_eq!(o.min_backoff, Some(Duration::from_millis(1500)));
        assert_eq!(o.time_limit, Some(Duration::from_secs(60)));
        assert_eq!(o.priority, Some(3));
        assert_eq!(o.option(ETA).unwrap(), Some(1_717_000_060_000));
        for kept in ["redis_message_id", "traceback", "pipe_target", "on_success"] {
            assert!(o.extra.contains_key(kept), "{kept}");
        }
        assert_eq!(decode_value::<Step>(&Dramatiq, &message.args).unwrap(), Step { seq: 7, label: "x".into() });
    }

    #[test]
    fn messages_round_trip_with_unknown_options_untouched() {
        let message = Dramatiq.decode_message(PYTHON.as_bytes()).unwrap();
        let bytes = Dramatiq.encode_message(&message).unwrap();
        let wire: Value = serde_json::from_slice(&bytes).unwrap();
        let keys: Vec<&str> = wire.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 7, "{keys:?}");
        assert_eq!(wire["options"]["pipe_target"]["actor_name"], "next");
        assert_eq!(wire["options"]["max_retries"], Value::Null);
        assert_eq!(wire["options"]["retries"], 2);
        assert_eq!(wire["options"]["min_backoff"], 1500);
        assert_eq!(wire["message_timestamp"], 1_717_000_000_000_u64);
        assert_eq!(Dramatiq.decode_message(&bytes).unwrap(), message);
    }

    #[test]
    fn the_last_error_is_written_as_a_traceback() {
        let record = crate::ErrorRecord::new(
            crate::FailureKind::Error,
            "io::Error",
            "disk full",
            vec![],
            None,
            &crate::RecordLimits::default(),
        );
        let mut message = Message::new("q", "a", Bytes::from_static(br#"{"args":[],"kwargs":{}}"#));
        message.options = Options::default().with_extra(key::LAST_ERROR, &record);
        message.retries = 1;
        let wire: Value = serde_json::from_slice(&Dramatiq.encode_message(&message).unwrap()).unwrap();
        assert_eq!(wire["options"]["traceback"], "io::Error: disk full");
        assert_eq!(Dramatiq.decode_message(&serde_json::to_vec(&wire).unwrap()).unwrap(), message);
    }

    #[test]
    fn bad_messages_are_decode_errors() {
        for bad in [
            "not json",
            r#"{"queue_name":"q"}"#,
            &PYTHON.replace("0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a10", "not-an-id"),
            &PYTHON.replace(r#""retries":2"#, r#""retries":"two""#),
            &PYTHON.replace(r#""broker_priority":3"#, r#""broker_priority":300"#),
        ] {
            assert!(matches!(Dramatiq.decode_message(bad.as_bytes()), Err(CodecError::Decode(_))), "{bad}");
        }
        let err = Dramatiq.decode_message(PYTHON.replace(r#""retries":2"#, r#""retries":"two""#).as_bytes());
        assert!(err.unwrap_err().to_string().contains("option `retries`"));
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct User {
        user: u64,
        name: String,
    }

    #[test]
    fn calls_with_one_kind_of_arguments_fit_every_encoder() {
        let kwargs =
            Call::keywords([("user".to_owned(), 7.into()), ("name".to_owned(), "ada".into())].into_iter().collect());
        for encoder in [&crate::MessagePack as &dyn Encoder, &crate::Json, &Dramatiq] {
            let bytes = encoder.encode_call(&kwargs).unwrap();
            assert_eq!(decode_value::<User>(encoder, &bytes).unwrap(), User { user: 7, name: "ada".into() });
            let both = Call { args: vec![1.into()], ..kwargs.clone() };
            assert_eq!(encoder.encode_call(&both).is_ok(), encoder.name() == "dramatiq", "{}", encoder.name());
        }
    }

    #[test]
    fn a_missing_id_or_timestamp_is_filled_in_as_python_does() {
        let bare = r#"{"queue_name":"q","actor_name":"a","args":[],"kwargs":{},"options":{}}"#;
        let before = crate::now_ms();
        let message = Dramatiq.decode_message(bare.as_bytes()).unwrap();
        assert!(message.enqueued_at_ms >= before);
        assert!(message.id.timestamp_ms() >= before);
    }

    #[test]
    fn bodies_are_edited_in_place() {
        let mut body = Body::parse(PYTHON.as_bytes()).unwrap();
        assert_eq!(body.eta(), Some(1_717_000_060_000));
        body.set_queue_name("default");
        body.remove_option("eta");
        body.set_option("redis_message_id", "r2");
        let message = Dramatiq.decode_message(&body.to_vec()).unwrap();
        assert_eq!(message.options.option(ETA).unwrap(), None);
        assert_eq!(message.options.extra["redis_message_id"], "r2");
        assert_eq!(delay_queue("default"), "default.DQ");
        assert_eq!(dead_letter_queue("default.DQ"), "default.XQ");
        assert_eq!(queue_name("default.XQ"), "default");
    }
}
