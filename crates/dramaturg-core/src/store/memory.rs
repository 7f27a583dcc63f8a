//! The in-process store.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    check_key, check_value, ttl_millis, Admission, Counters, SetMode, Slots, Store, StoreError, StoreErrorKind,
};
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
    /// Slot name → when it lapses.
    Slots(HashMap<String, Instant>),
    /// The theoretical arrival time of paced admission.
    Paced(Instant),
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
            Some(_) => Err(StoreError::wrong_type(key, "a value")),
        }
    }

    fn set(&mut self, key: &str, now: Instant) -> Result<Option<&mut (Entry, Instant)>, StoreError> {
        match self.live(key, now) {
            Some((Entry::Value(_) | Entry::Slots(_) | Entry::Paced(_), _)) => Err(StoreError::wrong_type(key, "a set")),
            entry => Ok(entry),
        }
    }

    /// The live slots of `key` (none when absent), their lapsed ones
    /// dropped.
    fn slots(&mut self, key: &str, now: Instant) -> Result<Option<&mut HashMap<String, Instant>>, StoreError> {
        match self.live(key, now) {
            None => Ok(None),
            Some((Entry::Slots(slots), _)) => {
                slots.retain(|_, lapses| *lapses > now);
                Ok(Some(slots))
            }
            Some(_) => Err(StoreError::wrong_type(key, "a slot set")),
        }
    }

    /// Gives the slot set at `key` `member`'s slot until `lapses`; the key
    /// lives as long as its last slot.
    fn hold_slot(&mut self, key: &str, member: &str, lapses: Instant) {
        match self.map.get_mut(key) {
            Some((Entry::Slots(slots), expires)) => {
                slots.insert(member.to_owned(), lapses);
                // The key outlives its latest slot (a lapsed slot is
                // dropped when the set is read).
                *expires = (*expires).max(lapses);
            }
            _ => {
                self.map.insert(key.to_owned(), (Entry::Slots(HashMap::from([(member.to_owned(), lapses)])), lapses));
            }
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

    async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        check_key(key)?;
        let mut entries = self.entries();
        let held = entries.value(key, Instant::now())?.is_some_and(|value| value.as_slice() == expected);
        if held {
            entries.map.remove(key);
        }
        Ok(held)
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

/// A refusal until `at` (at least 1 ms away, as the Redis store rounds).
fn refused_until(at: Instant, now: Instant) -> Admission {
    Admission::Refused { retry_after: at.duration_since(now).max(Duration::from_millis(1)) }
}

#[async_trait]
impl Slots for MemoryStore {
    async fn take_slot(&self, key: &str, member: &str, cap: u64, hold: Duration) -> Result<Admission, StoreError> {
        check_key(key)?;
        check_key(member)?;
        let mut entries = self.entries();
        let now = Instant::now();
        entries.sweep(now);
        let earliest = match entries.slots(key, now)? {
            Some(slots) if !slots.contains_key(member) && slots.len() as u64 >= cap.max(1) => {
                slots.values().min().copied()
            }
            _ => None,
        };
        if let Some(earliest) = earliest {
            return Ok(refused_until(earliest, now));
        }
        entries.hold_slot(key, member, expiry(now, hold));
        Ok(Admission::Admitted)
    }

    async fn renew_slot(&self, key: &str, member: &str, hold: Duration) -> Result<bool, StoreError> {
        check_key(key)?;
        check_key(member)?;
        let mut entries = self.entries();
        let now = Instant::now();
        if !entries.slots(key, now)?.is_some_and(|slots| slots.contains_key(member)) {
            return Ok(false);
        }
        entries.hold_slot(key, member, expiry(now, hold));
        Ok(true)
    }

    async fn release_slot(&self, key: &str, member: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        check_key(member)?;
        let mut entries = self.entries();
        let Some(slots) = entries.slots(key, Instant::now())? else {
            return Ok(false);
        };
        let held = slots.remove(member).is_some();
        if slots.is_empty() {
            entries.map.remove(key);
        }
        Ok(held)
    }

    async fn take_paced(&self, key: &str, interval: Duration, burst: u64) -> Result<Admission, StoreError> {
        check_key(key)?;
        let interval = Duration::from_millis(ttl_millis(interval));
        let tolerance = interval.saturating_mul(u32::try_from(burst.max(1) - 1).unwrap_or(u32::MAX));
        let mut entries = self.entries();
        let now = Instant::now();
        entries.sweep(now);
        let arrival = match entries.live(key, now) {
            None => now,
            Some((Entry::Paced(arrival), _)) => (*arrival).max(now),
            Some(_) => return Err(StoreError::wrong_type(key, "a pacing key")),
        };
        // GCRA: admitted while the next arrival is within the burst's
        // tolerance of now.
        let allowed_at = arrival.checked_sub(tolerance).unwrap_or(now);
        if allowed_at > now {
            return Ok(refused_until(allowed_at, now));
        }
        let next = arrival + interval;
        entries.map.insert(key.to_owned(), (Entry::Paced(next), next));
        Ok(Admission::Admitted)
    }
}
