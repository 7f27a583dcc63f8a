//! App state: values registered on the app by type — a database pool, an
//! HTTP client — that actors and middleware read through
//! [`Context::state`](crate::Context::state) and [`App::state`](crate::App::state).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::ConfigError;

/// Values by type, at most one per type, shared by every clone of an app.
///
/// Filled by [`AppBuilder::state`](crate::AppBuilder::state) and by the
/// middleware's [`register_state`](crate::Middleware::register_state)
/// hook while the app is built; read-only afterwards. Use a type of your
/// own (a newtype) for each value, so that two pools of one type cannot
/// be confused.
#[derive(Default)]
pub struct State {
    values: HashMap<TypeId, (&'static str, Arc<dyn Any + Send + Sync>)>,
}

impl State {
    /// Adds `value` under its type.
    ///
    /// # Errors
    ///
    /// [`ConfigError::DuplicateState`] if a value of that type is already
    /// there (the first one is kept).
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Result<(), ConfigError> {
        let name = std::any::type_name::<T>();
        if self.values.contains_key(&TypeId::of::<T>()) {
            return Err(ConfigError::DuplicateState(name.to_owned()));
        }
        self.values.insert(TypeId::of::<T>(), (name, Arc::new(value)));
        Ok(())
    }

    /// The value of type `T`.
    ///
    /// # Errors
    ///
    /// [`MissingState`], naming `T`, when there is none.
    pub fn get<T: Send + Sync + 'static>(&self) -> Result<&T, MissingState> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|(_, value)| value.downcast_ref::<T>())
            .ok_or(MissingState { type_name: std::any::type_name::<T>() })
    }

    /// The names of the types held, in no particular order.
    pub fn type_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.values.values().map(|(name, _)| *name)
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.type_names()).finish()
    }
}

/// The app has no state of the type asked for: register it with
/// [`AppBuilder::state`](crate::AppBuilder::state). An ordinary error, so a
/// handler can pass it on with `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the app has no state of type `{type_name}`: register it with AppBuilder::state")]
pub struct MissingState {
    /// The type's name, as [`std::any::type_name`] gives it.
    pub type_name: &'static str,
}
