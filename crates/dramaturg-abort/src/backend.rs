//! Event backends: where abort requests are written and watched.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use dramaturg_core::sync::lock;
use dramaturg_core::BrokerError;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A store of short-lived events that workers can wait on.
///
/// - [`notify`](EventBackend::notify) sets events (key → value) for `ttl`,
///   and wakes whoever waits on their keys;
/// - [`poll`](EventBackend::poll) reads one key now;
/// - [`wait_many`](EventBackend::wait_many) waits until one of `keys` is
///   set, for at most `timeout`.
#[async_trait]
pub trait EventBackend: Send + Sync + fmt::Debug + 'static {
    /// Sets every `(key, value)` of `events`, each kept for `ttl`.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the backend cannot be reached.
    async fn notify(&self, events: &[(String, Vec<u8>)], ttl: Duration) -> Result<(), BrokerError>;

    /// The value of `key`, if it is set and not expired.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the backend cannot be reached.
    async fn poll(&self, key: &str) -> Result<Option<Vec<u8>>, BrokerError>;

    /// Waits until one of `keys` is set (returning it and its value), or
    /// `timeout` passes (returning `None`).
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the backend cannot be reached.
    ///
    /// # Cancel safety
    ///
    /// Must be cancel-safe: callers restart it with new keys.
    async fn wait_many(&self, keys: &[String], timeout: Duration) -> Result<Option<(String, Vec<u8>)>, BrokerError>;

    /// `false` when the backend knows it holds no event at all, so that
    /// callers can skip [`poll`](EventBackend::poll). The default says
    /// `true`: remote backends cannot know without asking.
    fn may_have_events(&self) -> bool {
        true
    }

    /// `true` when only this process sees the events (an in-memory
    /// backend). [`abort`](crate::abort) refuses such a backend when the
    /// app's broker reaches other processes, unless the middleware was
    /// told that workers run in this process only
    /// ([`Abortable::process_local_events`](crate::Abortable::process_local_events)).
    /// The default says `false`.
    fn is_process_local(&self) -> bool {
        false
    }
}

/// Events kept in this process: for the in-memory broker, for one-process
/// apps, and for tests. Expired events are dropped as they are met.
#[derive(Default)]
pub struct MemoryEvents {
    events: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
    /// Whether `events` may be non-empty (cleared only under the lock).
    any: std::sync::atomic::AtomicBool,
    changed: Notify,
}

impl MemoryEvents {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut events = lock(&self.events);
        match events.get(key) {
            Some((value, expires)) if *expires > Instant::now() => Some(value.clone()),
            Some(_) => {
                events.remove(key);
                None
            }
            None => None,
        }
    }
}

impl fmt::Debug for MemoryEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = lock(&self.events).len();
        f.debug_struct("MemoryEvents").field("events", &count).finish()
    }
}

#[async_trait]
impl EventBackend for MemoryEvents {
    async fn notify(&self, events: &[(String, Vec<u8>)], ttl: Duration) -> Result<(), BrokerError> {
        let expires = Instant::now() + ttl;
        {
            let mut stored = lock(&self.events);
            let now = Instant::now();
            stored.retain(|_, (_, at)| *at > now);
            for (key, value) in events {
                stored.insert(key.clone(), (value.clone(), expires));
            }
            self.any.store(!stored.is_empty(), std::sync::atomic::Ordering::Release);
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn poll(&self, key: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        Ok(self.get(key))
    }

    fn may_have_events(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Acquire)
    }

    fn is_process_local(&self) -> bool {
        true
    }

    async fn wait_many(&self, keys: &[String], timeout: Duration) -> Result<Option<(String, Vec<u8>)>, BrokerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = keys.iter().find_map(|key| self.get(key).map(|value| (key.clone(), value))) {
                return Ok(Some(found));
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }
}
