//! Message options: typed fields for the options every part of dramaturg
//! (and Dramatiq) knows, an open map for the rest, and the typed keys with
//! which middleware declare and read their own.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The name of an option of the open map together with the type of its
/// value, owned by the middleware that reads it (as
/// `dramaturg_retries::LAST_ERROR` is the retry middleware's).
///
/// A middleware declares its keys in
/// [`Middleware::declared_options`](crate::Middleware::declared_options);
/// [`AppBuilder::build`](crate::AppBuilder::build) then refuses an actor
/// option that no middleware of the app declared, or one whose value is
/// not a `T`, and a send refuses a declared option of the wrong type.
///
/// # Examples
///
/// ```
/// use dramaturg_core::{OptionKey, Options};
///
/// /// The tenant a message belongs to, for a tenancy middleware.
/// pub const TENANT: OptionKey<String> = OptionKey::new("tenant");
///
/// let options = Options::default().with_option(TENANT, "acme".to_owned());
/// assert_eq!(options.option(TENANT).unwrap().as_deref(), Some("acme"));
/// ```
pub struct OptionKey<T> {
    name: &'static str,
    value: PhantomData<fn() -> T>,
}

impl<T> OptionKey<T> {
    /// The key `name`, whose values are `T`s (on the wire: `T` as JSON-like
    /// data under `name` in the message's options).
    pub const fn new(name: &'static str) -> Self {
        Self { name, value: PhantomData }
    }

    /// The option's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T: DeserializeOwned + 'static> OptionKey<T> {
    /// This key as a middleware declares it (see
    /// [`Middleware::declared_options`](crate::Middleware::declared_options)):
    /// context that travels with the messages sent on a message's behalf
    /// (callbacks carry it), like a tenant or a trace id.
    pub fn declare(self) -> DeclaredOption {
        DeclaredOption { name: self.name, check: check_value::<T>, propagates: true }
    }

    /// This key declared as belonging to the message's own processing
    /// (its callbacks, its last error, whether it can be aborted): messages
    /// sent on its behalf do not carry it.
    pub fn declare_local(self) -> DeclaredOption {
        DeclaredOption { propagates: false, ..self.declare() }
    }
}

impl<T> Clone for OptionKey<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for OptionKey<T> {}

impl<T> fmt::Debug for OptionKey<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OptionKey({:?}: {})", self.name, std::any::type_name::<T>())
    }
}

/// Checks that `value` is a `T`, for a [`DeclaredOption`].
fn check_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<(), String> {
    T::deserialize(value).map(drop).map_err(|e| e.to_string())
}

/// An option of the open map that a middleware reads: its name and a check
/// of its values' type. Made by [`OptionKey::declare`].
#[derive(Clone, Copy)]
pub struct DeclaredOption {
    name: &'static str,
    check: fn(&serde_json::Value) -> Result<(), String>,
    propagates: bool,
}

impl DeclaredOption {
    /// The option's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether messages sent on a message's behalf (callbacks) carry this
    /// option: `false` when it was declared with
    /// [`OptionKey::declare_local`].
    pub fn propagates(&self) -> bool {
        self.propagates
    }

    /// Whether `value` has the option's type.
    ///
    /// # Errors
    ///
    /// [`OptionError`] naming the option when it does not.
    pub fn check(&self, value: &serde_json::Value) -> Result<(), OptionError> {
        (self.check)(value).map_err(|reason| OptionError { key: self.name.to_owned(), reason })
    }
}

impl fmt::Debug for DeclaredOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeclaredOption").field("name", &self.name).field("propagates", &self.propagates).finish()
    }
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

    /// Sets the option `key` of the open map to `value`.
    ///
    /// # Panics
    ///
    /// As [`Options::with_extra`], if `value` cannot be represented as
    /// JSON-like data.
    #[must_use]
    pub fn with_option<T: Serialize>(self, key: OptionKey<T>, value: T) -> Self {
        self.with_extra(key.name, value)
    }

    /// Reads the option `key` of the open map.
    ///
    /// # Errors
    ///
    /// [`OptionError`] when it is present with a value that is not a `T`.
    pub fn option<T: DeserializeOwned>(&self, key: OptionKey<T>) -> Result<Option<T>, OptionError> {
        self.extra(key.name)
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
