//! The in-process store.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{check_key, check_value, ttl_millis, Counters, SetMode, Store, StoreError, StoreErrorKind};
use crate::sync::lock;

/// How often a write sweeps out every expired key, at most. Keys are also
/// dropped as they are met, so this only bounds the memory of keys that
/// are written and never read again.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A [`Store`] in this process's memory: for the in-memory broker, for
/// one-process apps, and for tests. Expired keys are dropped as they are
/// met (and swept at most once a second by writes); waiters are woken
/// through a [`Notify`], without polling.
///
/// Clones share one store.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: std::sync::Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: Mutex<Entries>,
    written: Notify,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, (Entry, Instant)>,
    last_sweep: Option<Instant>,
}

enum Entry {
    Value(Vec<u8>),
    Set(HashSet<String>),
}

impl Entries {
    /// The live entry of `key`, dropping it if it has expired.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut (Entry, Instant)> {
        if self.map.get(key).is_some_and(|(_, expires)| *expires <= now) {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    fn value(&mut self, key: &str, now: Instant) -> Result<Option<&mut Vec<u8>>, StoreError> {
        match self.live(key, now) {
            None => Ok(None),
            Some((Entry::Value(value), _)) => Ok(Some(value)),
            Some((Entry::Set(_), _)) => Err(StoreError::wrong_type(key, "a value")),
        }
    }

    fn set(&mut self, key: &str, now: Instant) -> Result<Option<&mut (Entry, Instant)>, StoreError> {
        match self.live(key, now) {
            Some((Entry::Value(_), _)) => Err(StoreError::wrong_type(key, "a set")),
            entry => Ok(entry),
        }
    }

    /// Before a write: drops every expired key, at most once per
    /// [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|last| now.duration_since(last) < SWEEP_EVERY) {
            return;
        }
        self.map.retain(|_, (_, expires)| *expires > now);
        self.last_sweep = Some(now);
    }
}

fn expiry(now: Instant, ttl: Duration) -> Instant {
    now + Duration::from_millis(ttl_millis(ttl))
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        lock(&self.inner.entries)
    }

    fn find(&self, keys: &[String]) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let mut entries = self.entries();
        let now = Instant::now();
        for key in keys {
            if let Some(value) = entries.value(key, now)? {
                return Ok(Some((key.clone(), value.clone())));
            }
        }
        Ok(None)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.entries().map.len();
        f.debug_struct("MemoryStore").field("keys", &keys).finish()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        Ok(self.entries().value(key, Instant::now())?.cloned())
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration, mode: SetMode) -> Result<bool, StoreError> {
        check_key(key)?;
        check_value(value)?;
        {
            let mut entries = self.entries();
            let now = Instant::now();
            entries.sweep(now);
            let expires = expiry(now, ttl);
            let keep = match (mode, entries.live(key, now)) {
                (SetMode::IfAbsent, Some(_)) => true,
                (SetMode::Extend, Some((_, held))) => *held >= expires,
                _ => false,
            };
            if keep {
                return Ok(false);
            }
            entries.map.insert(key.to_owned(), (Entry::Value(value.to_vec()), expires));
        }
        self.inner.written.notify_waiters();
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let mut entries = self.entries();
        let live = entries.live(key, Instant::now()).is_some();
        entries.map.remove(key);
        Ok(live)
    }

    async fn wait_any(&self, keys: &[String], timeout: Duration) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        for key in keys {
            check_key(key)?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before the check, so that a write between the
            // check and the wait still wakes it.
            let written = self.inner.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if let Some(found) = self.find(keys)? {
                return Ok(Some(found));
            }
            tokio::select! {
                () = &mut written => {}
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    fn is_process_local(&self) -> bool {
        true
    }
}

#[async_trait]
impl Counters for MemoryStore {
    async fn incr_by(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError> {
        check_key(key)?;
        let mut entries = self.entries();
        let now = Instant::now();
        entries.sweep(now);
        let current = match entries.value(key, now)? {
            None => 0,
            Some(value) => std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse::<i64>().ok())
                .ok_or_else(|| StoreError::wrong_type(key, "a counter"))?,
        };
        let next = current.checked_add(delta).ok_or_else(|| {
            StoreError::new(StoreErrorKind::InvalidInput, format!("store: {current} + {delta} overflows a counter"))
        })?;
        entries.map.insert(key.to_owned(), (Entry::Value(next.to_string().into_bytes()), expiry(now, ttl)));
        Ok(next)
    }

    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<u64, StoreError> {
        check_key(key)?;
        check_key(member)?;
        let mut entries = self.entries();
        let now = Instant::now();
        entries.sweep(now);
        let expires = expiry(now, ttl);
        let len = match entries.set(key, now)? {
            Some((Entry::Set(members), at)) => {
                members.insert(member.to_owned());
                *at = expires;
                members.len()
            }
            _ => {
                entries.map.insert(key.to_owned(), (Entry::Set(HashSet::from([member.to_owned()])), expires));
                1
            }
        };
        Ok(len as u64)
    }

    async fn set_remove(&self, key: &str, member: &str) -> Result<u64, StoreError> {
        check_key(key)?;
        check_key(member)?;
        let mut entries = self.entries();
        let Some((Entry::Set(members), _)) = entries.set(key, Instant::now())? else {
            return Ok(0);
        };
        members.remove(member);
        let len = members.len();
        if len == 0 {
            entries.map.remove(key);
        }
        Ok(len as u64)
    }

    async fn set_len(&self, key: &str) -> Result<u64, StoreError> {
        check_key(key)?;
        match self.entries().set(key, Instant::now())? {
            Some((Entry::Set(members), _)) => Ok(members.len() as u64),
            _ => Ok(0),
        }
    }
}
