//! The store: short-lived keys and values with TTLs, atomic counters and
//! sets, and waiting for a key without polling — the one contract that
//! abort events, results, group completion, rate limits, unique jobs and
//! scheduler leases build on.
//!
//! - [`Store`]: values (`get`, `set` — also set-if-absent —, `delete`,
//!   `delete_if` — compare-and-delete —) and [`wait_any`](Store::wait_any);
//! - [`Counters`] (a supertrait of `Store`, so every store has them):
//!   [`incr_by`](Counters::incr_by) and the set operations
//!   [`set_add`](Counters::set_add), [`set_remove`](Counters::set_remove),
//!   [`set_len`](Counters::set_len);
//! - [`Slots`] (also a supertrait): capped sets of expiring slots and paced
//!   admission, for rate and concurrency limits
//!   ([`take_slot`](Slots::take_slot), [`take_paced`](Slots::take_paced)).
//!
//! [`MemoryStore`] keeps everything in this process; the Redis broker
//! crate has a store on the broker's server. A broker offers the store
//! that reaches as far as its messages through
//! [`Broker::store`](crate::Broker::store).
//!
//! # Keys, values, TTLs
//!
//! - A key is a non-empty string of at most [`MAX_KEY_BYTES`] bytes; set
//!   members follow the same rule. Keys are the caller's namespace: use a
//!   prefix of your own (`"abort:"`, `"result:"`) so that features sharing
//!   a store cannot meet.
//! - A value is bytes, at most [`MAX_VALUE_BYTES`].
//! - Every write sets the key's time to live to its `ttl`, rounded up to a
//!   whole millisecond (a zero TTL counts as 1 ms) and capped at
//!   [`MAX_TTL`]. An expired key is gone: reads see nothing, set-if-absent
//!   succeeds.
//! - A key holds a value, a set, a slot set or a pacing key ([`Slots`]). A counter is a value holding its
//!   decimal text (`get` reads `b"5"`). Using a key as the other kind is a
//!   [`StoreErrorKind::WrongType`] error, except `set`, which replaces
//!   whatever the key held.
//!
//! # Examples
//!
//! On a concrete store, import both traits (on a `dyn Store`, the
//! methods of `Counters` come with it):
//!
//! ```
//! use std::time::Duration;
//! use dramaturg_core::store::{Counters, MemoryStore, SetMode, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dramaturg_core::store::StoreError> {
//! let store = MemoryStore::new();
//! let ttl = Duration::from_secs(60);
//! assert!(store.set("lease:nightly", b"worker-1", ttl, SetMode::IfAbsent).await?);
//! assert!(!store.set("lease:nightly", b"worker-2", ttl, SetMode::IfAbsent).await?);
//! assert_eq!(store.get("lease:nightly").await?.as_deref(), Some(&b"worker-1"[..]));
//! assert_eq!(store.incr_by("done:group-7", 1, ttl).await?, 1);
//! assert_eq!(store.set_add("running:export", "msg-1", ttl).await?, 1);
//! # Ok(())
//! # }
//! ```

mod memory;
mod slots;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::BoxError;
use crate::error::{BrokerError, BrokerErrorKind};

pub use memory::MemoryStore;
pub use slots::{Admission, Slots};

/// The longest key or set member, in bytes: 1 KiB.
pub const MAX_KEY_BYTES: usize = 1024;

/// The largest value, in bytes: 16 MiB.
pub const MAX_VALUE_BYTES: usize = 16 << 20;

/// The longest time to live a write can give: 10 years (longer TTLs are
/// cut to this).
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// When [`Store::set`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SetMode {
    /// Always, replacing what the key held.
    Always,
    /// Only if the key holds nothing (or only something expired): a lock,
    /// a lease, a unique-job key.
    IfAbsent,
    /// Only if the key holds nothing, or something that expires sooner
    /// than `ttl` from now: of many such writes the key keeps the one that
    /// lives longest, whatever their order — a marker that must outlive
    /// everything it stands for (the abort middleware's "requests exist"
    /// key). A key of the other kind (a set) is replaced.
    Extend,
}

/// One value to write to a store as [`Store::set_many`] writes it
/// (replacing what the key held, for `ttl`, waking its waiters): what a
/// middleware hands to [`Controls::write_with_settlement`](crate::Controls::write_with_settlement).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreWrite {
    /// The key, under the [size rules](self).
    pub key: String,
    /// The value, under the size rules.
    pub value: Bytes,
    /// How long the value lives.
    pub ttl: Duration,
}

impl StoreWrite {
    /// `value` under `key` for `ttl`.
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>, ttl: Duration) -> Self {
        Self { key: key.into(), value: value.into(), ttl }
    }

    /// The entries of `writes` as [`Store::set_many`] takes them.
    pub fn entries(writes: &[Self]) -> Vec<(&str, &[u8], Duration)> {
        writes.iter().map(|w| (w.key.as_str(), w.value.as_ref(), w.ttl)).collect()
    }

    /// The writes of `writes` within the [size rules](self)
    /// ([`check_key`], [`check_value`]), for a [`WritingReceipt`](crate::WritingReceipt)
    /// that carries them with a settlement: each other one is logged as an
    /// error and left out, so that it cannot fail the settlement it goes with.
    pub fn within_rules(writes: &[Self]) -> Vec<Self> {
        let valid = |w: &&Self| check_key(&w.key).and_then(|()| check_value(&w.value)).is_ok();
        for write in writes.iter().filter(|w| !valid(w)) {
            tracing::error!(
                key = %crate::Bounded::quoted(&write.key),
                "a store write that goes with a settlement is outside the store's size rules; dropped"
            );
        }
        writes.iter().filter(valid).cloned().collect()
    }
}

impl fmt::Debug for StoreWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreWrite")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Keys with values and TTLs, and waiting for keys. Every store also has
/// [`Counters`] and [`Slots`].
///
/// Implementations must be atomic per call: two concurrent
/// [`SetMode::IfAbsent`] writes to one key cannot both succeed.
#[async_trait]
pub trait Store: Counters + Slots + Send + Sync + fmt::Debug + 'static {
    /// The value of `key`, if it holds one that has not expired.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`] for a key outside the size rules
    /// (see the [module docs](self)), [`StoreErrorKind::WrongType`] when
    /// the key holds a set, or an error of the store's connection.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes `value` under `key` for `ttl`, as `mode` says; returns
    /// whether it wrote. A write wakes the callers of
    /// [`wait_any`](Store::wait_any) that wait on `key`.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`] for a key or value outside the size
    /// rules, or an error of the store's connection (the write may or may
    /// not have happened).
    async fn set(&self, key: &str, value: &[u8], ttl: Duration, mode: SetMode) -> Result<bool, StoreError>;

    /// Writes many values at once, each replacing what its key held
    /// ([`SetMode::Always`]) for its TTL and waking its waiters, in one
    /// round trip where the store can (Redis: one pipeline). Not atomic as
    /// a whole: when it fails, some may have been written.
    ///
    /// # Errors
    ///
    /// As [`set`](Store::set), for the first entry that failed.
    async fn set_many(&self, entries: &[(&str, &[u8], Duration)]) -> Result<(), StoreError> {
        for (key, value, ttl) in entries {
            self.set(key, value, *ttl, SetMode::Always).await?;
        }
        Ok(())
    }

    /// Removes `key` (a value or a set); returns whether it held anything.
    /// Waiters are not woken.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`] for a key outside the size rules,
    /// or an error of the store's connection.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Removes `key` only if it holds `expected`; returns whether it did.
    /// The release of a lease or a unique-job key by its owner: a key that
    /// expired and was claimed by another owner meanwhile is left alone.
    /// Waiters are not woken.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`] for a key outside the size rules,
    /// [`StoreErrorKind::WrongType`] when the key holds a set, or an error
    /// of the store's connection (the key may or may not have been
    /// removed).
    async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError>;

    /// Waits until one of `keys` holds a value written by
    /// [`set`](Store::set), returning that key and its value, or until
    /// `timeout` passes (`None`). A key that already holds a value is
    /// returned at once. Only `set` wakes waiters: a counter is a value
    /// that a wait would return, but its increments wake nobody, so wait
    /// on keys written with `set`.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`] for a key outside the size rules
    /// (an empty `keys` just waits out the timeout), or an error of the
    /// store's connection.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future loses no write, and the next call,
    /// with the same keys or others, sees every value set in between.
    async fn wait_any(&self, keys: &[String], timeout: Duration) -> Result<Option<(String, Vec<u8>)>, StoreError>;

    /// `true` when only this process sees the store ([`MemoryStore`]).
    /// Features whose keys must reach other processes (abort requests)
    /// refuse such a store when the app's broker reaches other processes.
    /// The default says `false`.
    fn is_process_local(&self) -> bool {
        false
    }
}

/// Atomic counters and sets, for group completion and concurrency limits.
/// Part of every [`Store`].
#[async_trait]
pub trait Counters: Send + Sync {
    /// Adds `delta` (which may be negative) to the counter at `key`, which
    /// starts at zero when absent, sets its TTL to `ttl`, and returns the
    /// new value.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`] for a key outside the size rules or
    /// a result outside `i64`; [`StoreErrorKind::WrongType`] when the key
    /// holds a set or a value that is not a decimal `i64`; or an error of
    /// the store's connection.
    async fn incr_by(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError>;

    /// Adds `member` to the set at `key` (created when absent), sets its
    /// TTL to `ttl`, and returns how many members the set has now.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`] for a key or member outside the
    /// size rules; [`StoreErrorKind::WrongType`] when the key holds a
    /// value; or an error of the store's connection.
    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<u64, StoreError>;

    /// Removes `member` from the set at `key`, leaving its TTL alone, and
    /// returns how many members are left (a set with none is gone).
    ///
    /// # Errors
    ///
    /// As [`set_add`](Counters::set_add).
    async fn set_remove(&self, key: &str, member: &str) -> Result<u64, StoreError>;

    /// How many members the set at `key` has (zero when absent).
    ///
    /// # Errors
    ///
    /// As [`set_add`](Counters::set_add).
    async fn set_len(&self, key: &str) -> Result<u64, StoreError>;
}

/// What kind of [`StoreError`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store could not be reached, or the connection was lost.
    Connection,
    /// An operation did not finish in time.
    Timeout,
    /// The store takes no writes for now (a read-only replica during a
    /// failover, a server loading its data) or is out of room.
    Unavailable,
    /// A key, member or value outside the size rules, or a counter that
    /// would leave `i64`: retrying cannot help.
    InvalidInput,
    /// The key holds the other kind of data: a set where a value was
    /// expected, or a value that is not a counter.
    WrongType,
    /// Anything else (an unexpected answer of the server).
    Other,
}

/// An error of a [`Store`]: an opaque struct with a [`StoreErrorKind`] and
/// the underlying cause as its source.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl StoreError {
    /// A new error of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// The same error, caused by `source`.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether the store could not be reached or the connection dropped.
    pub fn is_connection_lost(&self) -> bool {
        self.kind == StoreErrorKind::Connection
    }

    /// Whether the key holds the other kind of data.
    pub fn is_wrong_type(&self) -> bool {
        self.kind == StoreErrorKind::WrongType
    }

    /// Whether the request was outside the size rules or range.
    pub fn is_invalid_input(&self) -> bool {
        self.kind == StoreErrorKind::InvalidInput
    }

    /// Whether trying again later may succeed: a lost connection, a
    /// timeout, a store unavailable for now.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Connection | StoreErrorKind::Timeout | StoreErrorKind::Unavailable)
    }

    fn wrong_type(key: &str, expected: &str) -> Self {
        Self::new(
            StoreErrorKind::WrongType,
            format!("store: key {:?} does not hold {expected}", crate::Bounded::quoted(key).as_str()),
        )
    }
}

/// A store on a broker's server reports its client's errors as the broker
/// does; the kinds carry over.
impl From<BrokerError> for StoreError {
    fn from(error: BrokerError) -> Self {
        let kind = match error.kind() {
            BrokerErrorKind::Connection => StoreErrorKind::Connection,
            BrokerErrorKind::Timeout => StoreErrorKind::Timeout,
            BrokerErrorKind::Full | BrokerErrorKind::Unavailable => StoreErrorKind::Unavailable,
            BrokerErrorKind::InvalidInput => StoreErrorKind::InvalidInput,
            _ => StoreErrorKind::Other,
        };
        Self::new(kind, error.to_string()).with_source(error)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Checks a key (or set member) against the size rules; for store
/// implementations, so that every store refuses the same requests.
///
/// # Errors
///
/// [`StoreErrorKind::InvalidInput`] for an empty key or one longer than
/// [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(StoreError::new(
            StoreErrorKind::InvalidInput,
            format!("store: a key or member must have 1 to {MAX_KEY_BYTES} bytes, not {}", key.len()),
        ));
    }
    Ok(())
}

/// Checks a value against the size rules (see [`check_key`]).
///
/// # Errors
///
/// [`StoreErrorKind::InvalidInput`] for a value over [`MAX_VALUE_BYTES`].
pub fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::new(
            StoreErrorKind::InvalidInput,
            format!("store: a value must have at most {MAX_VALUE_BYTES} bytes, not {}", value.len()),
        ));
    }
    Ok(())
}

/// `ttl` as the store applies it: in whole milliseconds, rounded up, at
/// least 1 and at most [`MAX_TTL`].
pub fn ttl_millis(ttl: Duration) -> u64 {
    let capped = ttl.min(MAX_TTL);
    let millis = crate::time::millis(capped);
    let rounded = if Duration::from_millis(millis) < capped { millis + 1 } else { millis };
    rounded.max(1)
}
