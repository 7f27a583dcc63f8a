//! The store a fleet of workers shares: found on the broker, and checked
//! to reach as far as the broker's messages.

use std::sync::Arc;

use dramaturg_core::store::Store;
use dramaturg_core::{App, Broker, ConfigError};

/// `broker`'s store ([`Broker::store`]), for the middleware named `what`.
pub(crate) fn broker_store(broker: &dyn Broker, what: &str) -> Result<Arc<dyn Store>, ConfigError> {
    broker.store().ok_or_else(|| {
        ConfigError::Invalid(format!(
            "this broker has no store for {what} to share between workers (RabbitMQ has none); \
             give {what}::new a RedisStore"
        ))
    })
}

/// Refuses a store that only this process sees ([`MemoryStore`]) when the
/// app's broker reaches other processes: each worker would claim keys of
/// its own, and nothing would be unique or enqueued once.
///
/// [`MemoryStore`]: dramaturg_core::MemoryStore
pub(crate) fn check_reach(store: &dyn Store, app: &App, what: &str) -> Result<(), ConfigError> {
    if store.is_process_local() && !app.broker().locality().is_process_local() {
        return Err(ConfigError::Invalid(format!(
            "{what} keeps its keys in a store that only this process sees, but the broker reaches other \
             processes: give {what}::new a RedisStore that every worker shares"
        )));
    }
    Ok(())
}
