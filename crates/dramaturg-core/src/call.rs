//! The arguments of a call as Python passes them, positional and keyword,
//! and how they fit an actor's type (see [`dramatiq`](crate::dramatiq) for
//! the rules).

use serde::de::{self, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The arguments of a call: positional and keyword, as Python passes them.
/// This is how the [`Dramatiq`](crate::dramatiq::Dramatiq) encoder holds a message's arguments
/// ([`Message::args`](crate::Message::args) is this record as JSON), and what
/// [`App::send_call`](crate::App::send_call) sends to an actor known only
/// by its name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

impl Call {
    /// A call with positional arguments only.
    pub fn positional(args: impl IntoIterator<Item = Value>) -> Self {
        Self { args: args.into_iter().collect(), kwargs: Map::new() }
    }

    /// A call with keyword arguments only.
    pub fn keywords(kwargs: Map<String, Value>) -> Self {
        Self { args: Vec::new(), kwargs }
    }

    /// The call that passes `value`: a JSON object as keyword arguments, an
    /// array as positional ones, `null` as none, anything else as one
    /// positional argument.
    pub fn of(value: Value) -> Self {
        match value {
            Value::Object(kwargs) => Self::keywords(kwargs),
            Value::Array(args) => Self::positional(args),
            Value::Null => Self::default(),
            other => Self::positional([other]),
        }
    }

    fn no_keywords(&self, what: &str) -> Result<(), CallError> {
        match self.kwargs.keys().next() {
            Some(key) => {
                Err(CallError(format!("{what} takes positional arguments only, got keyword argument `{key}`")))
            }
            None => Ok(()),
        }
    }

    /// The arguments by name for a struct with `fields`.
    fn by_name(self, fields: &[&str]) -> Result<Map<String, Value>, CallError> {
        if self.args.len() > fields.len() {
            return Err(CallError(format!(
                "takes {} positional arguments ({}) but {} were given",
                fields.len(),
                fields.join(", "),
                self.args.len()
            )));
        }
        let mut named: Map<String, Value> = fields.iter().map(|f| (*f).to_owned()).zip(self.args).collect();
        for (key, value) in self.kwargs {
            if named.contains_key(&key) {
                return Err(CallError(format!("got multiple values for argument `{key}`")));
            }
            named.insert(key, value);
        }
        Ok(named)
    }
}

/// Arguments that do not fit the actor's type.
#[derive(Debug)]
pub(crate) struct CallError(String);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CallError {}

impl de::Error for CallError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

#[allow(clippy::needless_pass_by_value)] // map_err hands the error over
fn value_error(e: serde_json::Error) -> CallError {
    CallError(e.to_string())
}

/// A [`Call`] read as the arguments of an actor's type.
pub(crate) struct Fit(pub(crate) Call);

impl<'de> de::Deserializer<'de> for Fit {
    type Error = CallError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CallError> {
        match (self.0.args.len(), self.0.kwargs.is_empty()) {
            (0, true) => visitor.visit_unit(),
            (1, true) => {
                self.0.args.into_iter().next().unwrap_or(Value::Null).deserialize_any(visitor).map_err(value_error)
            }
            (_, true) => Value::Array(self.0.args).deserialize_any(visitor).map_err(value_error),
            (0, false) => Value::Object(self.0.kwargs).deserialize_any(visitor).map_err(value_error),
            _ => Err(CallError("cannot take positional and keyword arguments at once".into())),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, CallError> {
        Value::Object(self.0.by_name(fields)?).deserialize_struct(name, fields, visitor).map_err(value_error)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, CallError> {
        self.0.no_keywords(name)?;
        Value::Array(self.0.args).deserialize_tuple_struct(name, len, visitor).map_err(value_error)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, CallError> {
        self.0.no_keywords("a tuple")?;
        Value::Array(self.0.args).deserialize_tuple(len, visitor).map_err(value_error)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CallError> {
        self.0.no_keywords("a sequence")?;
        Value::Array(self.0.args).deserialize_seq(visitor).map_err(value_error)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, CallError> {
        self.0.no_keywords(name)?;
        let [value] = <[Value; 1]>::try_from(self.0.args)
            .map_err(|args| CallError(format!("{name} takes 1 positional argument but {} were given", args.len())))?;
        visitor.visit_newtype_struct(value).map_err(value_error)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, CallError> {
        if let Some(key) = self.0.kwargs.keys().next() {
            return Err(CallError(format!("{name} takes no arguments, got keyword argument `{key}`")));
        }
        if !self.0.args.is_empty() {
            return Err(CallError(format!("{name} takes no arguments but {} were given", self.0.args.len())));
        }
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit map enum identifier ignored_any
    }
}
