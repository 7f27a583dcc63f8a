//! The message envelope and its options.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::MessageId;

/// One job on its way through a broker: who runs it, with which arguments,
/// under which options.
///
/// The arguments are kept encoded (by the app's [`Encoder`](crate::Encoder));
/// the worker decodes them into the actor's type just before it runs.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct Message {
    /// Unique id, kept across retries.
    pub id: MessageId,
    /// The queue the message is sent to.
    pub queue: String,
    /// The name of the actor that processes it.
    pub actor: String,
    /// The actor's arguments, encoded.
    pub args: Bytes,
    /// Options for this message (they override the actor's defaults).
    pub options: Options,
    /// When the message was first enqueued, in milliseconds since the Unix epoch.
    /// Retries keep the original time.
    pub enqueued_at_ms: u64,
    /// How many times the message has been retried so far (0 on the first attempt).
    pub retries: u32,
}

impl Message {
    /// A new message, stamped with a fresh id and the current time.
    pub fn new(queue: impl Into<String>, actor: impl Into<String>, args: Bytes) -> Self {
        Self {
            id: MessageId::new(),
            queue: queue.into(),
            actor: actor.into(),
            args,
            options: Options::default(),
            enqueued_at_ms: now_ms(),
            retries: 0,
        }
    }

    /// How long ago the message was first enqueued (zero if the clock went back).
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.enqueued_at_ms))
    }

    /// The delay it was sent with, from its [`ETA`] option (none for a
    /// message sent for now).
    pub fn send_delay(&self) -> Option<Duration> {
        let eta: u64 = self.options.extra(ETA).ok().flatten()?;
        Some(Duration::from_millis(eta.saturating_sub(self.enqueued_at_ms)))
    }
}

/// The option a delayed message carries: when it falls due, in milliseconds
/// since the Unix epoch (Dramatiq's name and meaning). Set when it is sent.
pub const ETA: &str = "eta";

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Arguments can be large or sensitive: show their size, not their bytes.
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .field("actor", &self.actor)
            .field("args_len", &self.args.len())
            .field("options", &self.options)
            .field("enqueued_at_ms", &self.enqueued_at_ms)
            .field("retries", &self.retries)
            .finish()
    }
}

/// The wall clock in milliseconds since the Unix epoch (zero if the clock is
/// before it): the unit of `Message::enqueued_at_ms`, of due times and of
/// retention in the brokers.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, crate::time::millis)
}

/// Per-message options: typed fields for the ones dramaturg knows, and an
/// open map for middleware of your own.
///
/// Every field is optional. An option set on a message overrides the actor's
/// attribute, which overrides the middleware's default.
///
/// On the wire, durations are whole milliseconds.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::Options;
///
/// let options = Options::default()
///     .with_time_limit(Duration::from_secs(30))
///     .with_extra("tenant", "acme");
/// assert_eq!(options.time_limit, Some(Duration::from_secs(30)));
/// assert_eq!(options.extra::<String>("tenant").unwrap().as_deref(), Some("acme"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Options {
    /// How many times a failed message may be retried.
    pub max_retries: Option<u32>,
    /// The shortest delay before a retry.
    pub min_backoff: Option<Duration>,
    /// The longest delay before a retry.
    pub max_backoff: Option<Duration>,
    /// The longest one attempt may run.
    pub time_limit: Option<Duration>,
    /// The longest one attempt may go without calling
    /// [`Context::heartbeat`](crate::Context::heartbeat).
    pub idle_timeout: Option<Duration>,
    /// The oldest a message may be (since its first enqueue) and still run.
    pub max_age: Option<Duration>,
    /// Delivery priority, 0 (lowest) to 255, where the broker supports it:
    /// the in-memory broker delivers higher priorities first, first in first
    /// out among equals (none counts as 0); RabbitMQ with `max_priority`.
    pub priority: Option<u8>,
    /// Options of other middleware, by name.
    pub extra: BTreeMap<String, serde_json::Value>,
}

macro_rules! with_setters {
    ($($(#[$doc:meta])* $fn:ident => $field:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $fn(mut self, value: $ty) -> Self {
                self.$field = Some(value);
                self
            }
        )*
    };
}

impl Options {
    with_setters! {
        /// Sets [`Options::max_retries`].
        with_max_retries => max_retries: u32;
        /// Sets [`Options::min_backoff`].
        with_min_backoff => min_backoff: Duration;
        /// Sets [`Options::max_backoff`].
        with_max_backoff => max_backoff: Duration;
        /// Sets [`Options::time_limit`].
        with_time_limit => time_limit: Duration;
        /// Sets [`Options::idle_timeout`].
        with_idle_timeout => idle_timeout: Duration;
        /// Sets [`Options::max_age`].
        with_max_age => max_age: Duration;
        /// Sets [`Options::priority`].
        with_priority => priority: u8;
    }

    /// Sets an option of the open map.
    ///
    /// # Panics
    ///
    /// Panics if `value` cannot be represented as JSON-like data (a map with
    /// non-string keys, for instance); options are meant to be small scalars
    /// and records.
    #[must_use]
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).expect("option values must be JSON-like data");
        self.extra.insert(key.into(), value);
        self
    }

    /// Reads an option of the open map as `T`.
    ///
    /// # Errors
    ///
    /// [`OptionError`] when the option is present with a value that is not a `T`.
    pub fn extra<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, OptionError> {
        self.extra
            .get(key)
            .map(|value| {
                T::deserialize(value).map_err(|source| OptionError { key: key.to_owned(), reason: source.to_string() })
            })
            .transpose()
    }

    /// These options, with every field that is unset here taken from `defaults`.
    #[must_use]
    pub fn or(mut self, defaults: &Options) -> Self {
        self.max_retries = self.max_retries.or(defaults.max_retries);
        self.min_backoff = self.min_backoff.or(defaults.min_backoff);
        self.max_backoff = self.max_backoff.or(defaults.max_backoff);
        self.time_limit = self.time_limit.or(defaults.time_limit);
        self.idle_timeout = self.idle_timeout.or(defaults.idle_timeout);
        self.max_age = self.max_age.or(defaults.max_age);
        self.priority = self.priority.or(defaults.priority);
        for (key, value) in &defaults.extra {
            self.extra.entry(key.clone()).or_insert_with(|| value.clone());
        }
        self
    }
}

impl Options {
    /// Moves options the core knows that were set through the open map
    /// (`with_extra("max_retries", 3)`) into their typed fields, checking
    /// their type: what `App` does before it sends a message, so that a
    /// wrong type is an error for the sender rather than a dead letter.
    ///
    /// # Errors
    ///
    /// [`OptionError`] naming the option when its value has the wrong type
    /// (`with_extra("max_retries", "lots")`), when it is also set through
    /// its typed field, or when it is a duration by the name of its field
    /// (`"time_limit"`: set those with [`Options::with_time_limit`] and
    /// the like; on the wire they are `time_limit_ms`).
    pub fn check_known(&mut self) -> Result<(), OptionError> {
        if !self.extra.keys().any(|key| is_known(key)) {
            return Ok(());
        }
        for field in ["min_backoff", "max_backoff", "time_limit", "idle_timeout", "max_age"] {
            if self.extra.contains_key(field) {
                return Err(OptionError {
                    key: field.to_owned(),
                    reason: format!(
                        "a duration the core knows: set it with Options::with_{field}, not as an extra option"
                    ),
                });
            }
        }
        fn take<T: DeserializeOwned>(
            extra: &mut BTreeMap<String, serde_json::Value>,
            key: &str,
            typed: bool,
        ) -> Result<Option<T>, OptionError> {
            let Some(value) = extra.remove(key) else { return Ok(None) };
            if typed {
                return Err(OptionError {
                    key: key.to_owned(),
                    reason: "it is set twice, through its typed field and as an extra option".to_owned(),
                });
            }
            T::deserialize(value).map(Some).map_err(|e| OptionError { key: key.to_owned(), reason: e.to_string() })
        }
        let ms = |v: Option<u64>| v.map(Duration::from_millis);
        let extra = &mut self.extra;
        if let Some(v) = take(extra, MAX_RETRIES, self.max_retries.is_some())? {
            self.max_retries = Some(v);
        }
        if let Some(v) = ms(take(extra, MIN_BACKOFF, self.min_backoff.is_some())?) {
            self.min_backoff = Some(v);
        }
        if let Some(v) = ms(take(extra, MAX_BACKOFF, self.max_backoff.is_some())?) {
            self.max_backoff = Some(v);
        }
        if let Some(v) = ms(take(extra, TIME_LIMIT, self.time_limit.is_some())?) {
            self.time_limit = Some(v);
        }
        if let Some(v) = ms(take(extra, IDLE_TIMEOUT, self.idle_timeout.is_some())?) {
            self.idle_timeout = Some(v);
        }
        if let Some(v) = ms(take(extra, MAX_AGE, self.max_age.is_some())?) {
            self.max_age = Some(v);
        }
        if let Some(v) = take(extra, PRIORITY, self.priority.is_some())? {
            self.priority = Some(v);
        }
        Ok(())
    }
}

/// Whether `key` names an option the core knows (on the wire, or by the
/// name of its field).
fn is_known(key: &str) -> bool {
    matches!(
        key,
        MAX_RETRIES
            | MIN_BACKOFF
            | MAX_BACKOFF
            | TIME_LIMIT
            | IDLE_TIMEOUT
            | MAX_AGE
            | PRIORITY
            | "min_backoff"
            | "max_backoff"
            | "time_limit"
            | "idle_timeout"
            | "max_age"
    )
}

/// An option holds a value of the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("option `{key}` has a value of the wrong type: {reason}")]
pub struct OptionError {
    key: String,
    reason: String,
}

impl OptionError {
    /// The name of the option.
    pub fn key(&self) -> &str {
        &self.key
    }
}

const MAX_RETRIES: &str = "max_retries";
const MIN_BACKOFF: &str = "min_backoff_ms";
const MAX_BACKOFF: &str = "max_backoff_ms";
const TIME_LIMIT: &str = "time_limit_ms";
const IDLE_TIMEOUT: &str = "idle_timeout_ms";
const MAX_AGE: &str = "max_age_ms";
const PRIORITY: &str = "priority";

impl Serialize for Options {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(v) = self.max_retries {
            map.serialize_entry(MAX_RETRIES, &v)?;
        }
        for (key, value) in [
            (MIN_BACKOFF, &self.min_backoff),
            (MAX_BACKOFF, &self.max_backoff),
            (TIME_LIMIT, &self.time_limit),
            (IDLE_TIMEOUT, &self.idle_timeout),
            (MAX_AGE, &self.max_age),
        ] {
            if let Some(d) = value {
                map.serialize_entry(key, &crate::time::millis(*d))?;
            }
        }
        if let Some(v) = self.priority {
            map.serialize_entry(PRIORITY, &v)?;
        }
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Options {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OptionsVisitor)
    }
}

struct OptionsVisitor;

/// Reads the value of a known option, naming the option in the error.
fn typed<'de, A: MapAccess<'de>, T: Deserialize<'de>>(map: &mut A, key: &str) -> Result<T, A::Error> {
    map.next_value::<T>()
        .map_err(|e| de::Error::custom(format_args!("option `{key}` has a value of the wrong type: {e}")))
}

impl<'de> Visitor<'de> for OptionsVisitor {
    type Value = Options;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of message options")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Options, A::Error> {
        let mut options = Options::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                MAX_RETRIES => options.max_retries = Some(typed(&mut map, &key)?),
                MIN_BACKOFF => options.min_backoff = Some(Duration::from_millis(typed(&mut map, &key)?)),
                MAX_BACKOFF => options.max_backoff = Some(Duration::from_millis(typed(&mut map, &key)?)),
                TIME_LIMIT => options.time_limit = Some(Duration::from_millis(typed(&mut map, &key)?)),
                IDLE_TIMEOUT => options.idle_timeout = Some(Duration::from_millis(typed(&mut map, &key)?)),
                MAX_AGE => options.max_age = Some(Duration::from_millis(typed(&mut map, &key)?)),
                PRIORITY => options.priority = Some(typed(&mut map, &key)?),
                _ => {
                    let value = typed(&mut map, &key)?;
                    options.extra.insert(key, value);
                }
            }
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_fall_back_field_by_field() {
        let message = Options::default().with_max_retries(1).with_extra("a", 1);
        let actor = Options::default()
            .with_max_retries(5)
            .with_time_limit(Duration::from_secs(3))
            .with_extra("a", 2)
            .with_extra("b", 3);
        let merged = message.or(&actor);
        assert_eq!(merged.max_retries, Some(1));
        assert_eq!(merged.time_limit, Some(Duration::from_secs(3)));
        assert_eq!(merged.extra::<u32>("a").unwrap(), Some(1));
        assert_eq!(merged.extra::<u32>("b").unwrap(), Some(3));
    }

    #[test]
    fn extra_options_of_the_wrong_type_are_typed_errors() {
        let options = Options::default().with_extra("limit", "ten");
        let err = options.extra::<u32>("limit").unwrap_err();
        assert_eq!(err.key(), "limit");
        assert!(err.to_string().contains("option `limit`"), "{err}");
        assert_eq!(options.extra::<u32>("missing").unwrap(), None);
    }

    #[test]
    fn known_options_set_as_extra_are_checked_and_moved() {
        let mut options = Options::default().with_extra("max_retries", 3).with_extra("time_limit_ms", 500);
        options.check_known().unwrap();
        assert_eq!(options.max_retries, Some(3));
        assert_eq!(options.time_limit, Some(Duration::from_millis(500)));
        assert!(options.extra.is_empty());
        for bad in [
            Options::default().with_extra("max_retries", "lots"),
            Options::default().with_extra("priority", 300),
            Options::default().with_extra("time_limit", "30s"),
            Options::default().with_max_retries(1).with_extra("max_retries", 2),
        ] {
            let key = bad.extra.keys().next().unwrap().clone();
            let err = bad.clone().check_known().unwrap_err();
            assert_eq!(err.key(), key, "{err}");
        }
    }

    #[test]
    fn known_options_of_the_wrong_type_name_the_option() {
        let err = serde_json::from_str::<Options>(r#"{"max_retries": "five"}"#).unwrap_err();
        assert!(err.to_string().contains("option `max_retries`"), "{err}");
    }
}
