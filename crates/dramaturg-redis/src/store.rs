//! The store in Redis: values are strings with a `PX` TTL, counters are
//! `INCRBY` strings, sets are Redis sets; a `set` also publishes the value
//! on a channel named after its key, so waiters hear of it at once. Slot
//! sets are sorted sets scored by when each slot lapses (in the server's
//! milliseconds), pacing keys strings holding the GCRA's theoretical arrival
//! time; both are timed by the server's `TIME`, so workers' clocks do not
//! matter.
//!
//! # Keys and Cluster
//!
//! A store key `k` lives at `<namespace>:store:k`, and every operation
//! touches that one key — each write is one script on one key — so every call is served by the key's own Cluster slot; the
//! slot is chosen by hashing the whole name, or only the part in braces
//! when `k` holds a hash tag (`"group:{g42}:done"`), which puts keys that
//! share the tag into one slot. Waits read the keys they subscribe to with
//! one `GET` each, pipelined, not a multi-key `MGET`.
//!
//! # Waits
//!
//! One pub/sub connection per store, opened on the first
//! [`wait_any`](Store::wait_any) and shared by every wait (see the `waits`
//! module): a wait listens on the channels of its keys, *then* reads the
//! keys, so that a value set before is found by the read and one set after
//! arrives as a message; waits on different keys never hold each other up.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use dramaturg_core::broker::redact_password;
use dramaturg_core::store::{
    check_key, check_value, ttl_millis, Admission, Counters, SetMode, Slots, Store, StoreError, StoreErrorKind,
};
use redis::{RedisError, Script};

use crate::conn::{Conn, Endpoint};
use crate::waits::Waits;
use crate::{broker_error, RedisBroker, RedisConfig};

/// Sets the value and publishes it: always (`ARGV[3]` `0`), only when
/// absent (`1`), or only when absent or expiring sooner than the new TTL
/// (`2`; `PTTL` is -2 for an absent key, -1 for one without a TTL).
const SET: &str = r"
if ARGV[3] == '1' then
  if not redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
    return 0
  end
elseif ARGV[3] == '2' then
  local left = redis.call('PTTL', KEYS[1])
  if left == -1 or left >= tonumber(ARGV[2]) then
    return 0
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
";

/// Deletes the key only if it holds `ARGV[1]` (`GET` refuses a key of
/// another type, which the caller sees as `WrongType`).
const DELETE_IF: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Returns the counter as its text: a Lua number is a double, which would
/// round counters past 2^53. An error of `INCRBY` (a set, a value that is
/// not a counter, an overflow) stops the script before the TTL changes.
const INCR_BY: &str = r"
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('GET', KEYS[1])
";

const SET_ADD: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('SCARD', KEYS[1])
";

const SET_REMOVE: &str = r"
redis.call('SREM', KEYS[1], ARGV[1])
return redis.call('SCARD', KEYS[1])
";

/// The start of every slot script: the server's time in milliseconds, and
/// the slot set at `KEYS[1]` without its lapsed slots.
const SLOTS_NOW: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function hold(member, ms)
  redis.call('ZADD', KEYS[1], now + ms, member)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], last[2])
end
";

/// `ARGV`: member, cap, hold (ms). Returns -1 when admitted, else the
/// milliseconds until the earliest slot lapses.
const TAKE_SLOT: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  hold(ARGV[1], tonumber(ARGV[3]))
  return -1
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(tonumber(first[2]) - now, 1)
";

/// `ARGV`: member, hold (ms).
const RENEW_SLOT: &str = r"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
hold(ARGV[1], tonumber(ARGV[2]))
return 1
";

/// GCRA. `ARGV`: interval (ms), burst. Returns -1 when admitted, else the
/// milliseconds until the next caller may come in. A key holding
/// something other than a number is refused as a wrong type.
const TAKE_PACED: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local interval = tonumber(ARGV[1])
local stored = redis.call('GET', KEYS[1])
local arrival = now
if stored then
  arrival = tonumber(stored)
  if not arrival then
    return redis.error_reply('WRONGTYPE the key does not hold a pacing time')
  end
  arrival = math.max(arrival, now)
end
local allowed_at = arrival - (tonumber(ARGV[2]) - 1) * interval
if allowed_at > now then
  return allowed_at - now
end
redis.call('SET', KEYS[1], arrival + interval, 'PX', arrival + interval - now)
return -1
";

/// A script's answer as an admission: -1 is admitted, else milliseconds
/// to wait.
fn admission(answer: i64) -> Admission {
    match u64::try_from(answer) {
        Ok(ms) => Admission::Refused { retry_after: Duration::from_millis(ms.max(1)) },
        Err(_) => Admission::Admitted,
    }
}

/// A [`Store`] in Redis, for any broker: the Redis broker's own server
/// ([`RedisStore::for_broker`], which is what
/// [`Broker::store`](dramaturg_core::Broker::store) gives), or a Redis of
/// its own beside RabbitMQ ([`RedisStore::connect`]). See the module docs
/// for keys, Cluster and waits.
pub struct RedisStore {
    conn: Conn,
    /// `<namespace>:store:`.
    prefix: String,
    /// The URL without its password, for errors and logs.
    url: String,
    scripts: Scripts,
    waits: Waits,
}

struct Scripts {
    set: Script,
    delete_if: Script,
    incr_by: Script,
    set_add: Script,
    set_remove: Script,
    take_slot: Script,
    renew_slot: Script,
    take_paced: Script,
}

/// A Redis error as a store error: Redis's refusals of a key's type, and
/// of a counter that is not one, are [`StoreErrorKind::WrongType`]; an
/// overflowing counter is invalid input; the rest is classified as the
/// broker classifies it.
fn store_error(error: RedisError, what: &str) -> StoreError {
    let text = error.to_string();
    let kind = if text.contains("WRONGTYPE") || text.contains("not an integer") {
        Some(StoreErrorKind::WrongType)
    } else if text.contains("overflow") {
        Some(StoreErrorKind::InvalidInput)
    } else {
        None
    };
    match kind {
        Some(kind) => StoreError::new(kind, format!("redis store: {what} failed: {text}")).with_source(error),
        None => broker_error(error, &format!("store {what}")).into(),
    }
}

impl RedisStore {
    /// The store on `broker`'s server, sharing its connection and its
    /// settings (namespace, TLS); keys go under `<namespace>:store:`. The
    /// pub/sub connection for waits is opened on the first wait.
    pub fn for_broker(broker: &RedisBroker) -> Self {
        let shared = &broker.shared;
        Self::new(shared.endpoint.clone(), shared.conn.clone(), &shared.config)
    }

    /// Connects to the Redis at `url` with the default settings: keys go
    /// under `dramaturg:store:`. `url` may name a Redis Cluster
    /// (`redis+cluster://host:port,host:port/`, as for the broker).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the URL is invalid or the server cannot be
    /// reached; it shows the URL without its password.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::with_config(&RedisConfig::new(url)).await
    }

    /// Connects with the URL, namespace and TLS settings of `config` (its
    /// heartbeat and dead-letter settings do not concern a store).
    ///
    /// # Errors
    ///
    /// As [`RedisStore::connect`].
    pub async fn with_config(config: &RedisConfig) -> Result<Self, StoreError> {
        let (endpoint, conn) = crate::connect_endpoint(config).await?;
        tracing::debug!(url = %redact_password(&config.url), namespace = %config.namespace, "redis store connected");
        Ok(Self::new(endpoint, conn, config))
    }

    fn new(endpoint: Endpoint, conn: Conn, config: &RedisConfig) -> Self {
        Self {
            conn,
            prefix: prefix(config),
            url: redact_password(&config.url),
            scripts: Scripts {
                set: Script::new(SET),
                delete_if: Script::new(DELETE_IF),
                incr_by: Script::new(INCR_BY),
                set_add: Script::new(SET_ADD),
                set_remove: Script::new(SET_REMOVE),
                take_slot: Script::new(&[SLOTS_NOW, TAKE_SLOT].concat()),
                renew_slot: Script::new(&[SLOTS_NOW, RENEW_SLOT].concat()),
                take_paced: Script::new(TAKE_PACED),
            },
            waits: Waits::new(endpoint),
        }
    }

    /// The Redis key of store key `key`, after checking its size.
    fn key(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// The store key of Redis key (or channel) `key`.
    fn store_key<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(self.prefix.as_str()).unwrap_or(key)
    }
}

/// The prefix of the store's keys: `<namespace>:store:`.
pub(crate) fn prefix(config: &RedisConfig) -> String {
    format!("{}:store:", config.namespace)
}

/// For each entry, a pipeline of `SET <prefix><key> value PX ttl` and
/// `PUBLISH <prefix><key> value` (one slot: the channel is the key's
/// name): what `set`'s script does in its `Always` mode (a waiter
/// subscribes before it reads, so it sees the value either way). The
/// store's `set_many` and the broker's settlements that carry writes both
/// write this way, through [`Conn::query_groups`].
///
/// # Errors
///
/// [`StoreErrorKind::InvalidInput`] for an entry outside the size rules.
pub(crate) fn write_groups<'a>(
    prefix: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a [u8], Duration)>,
) -> Result<Vec<redis::Pipeline>, StoreError> {
    let mut groups = Vec::new();
    for (key, value, ttl) in entries {
        let key = checked_key(prefix, key, value)?;
        let bytes = 2 * (key.len() + value.len()) + 40;
        let mut set = redis::Cmd::with_capacity(5, bytes);
        set.arg("SET").arg(&key).arg(value).arg("PX").arg(ttl_millis(ttl));
        let mut publish = redis::Cmd::with_capacity(3, bytes);
        publish.arg("PUBLISH").arg(&key).arg(value);
        let mut pipe = redis::pipe();
        pipe.add_command(set).add_command(publish);
        groups.push(pipe);
    }
    Ok(groups)
}

/// The Redis key of store key `key` under `prefix`, once `key` and the
/// `value` to write there are within the store's size rules.
///
/// # Errors
///
/// [`StoreErrorKind::InvalidInput`] for a key or value outside them.
pub(crate) fn checked_key(prefix: &str, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    check_key(key)?;
    check_value(value)?;
    Ok([prefix.as_bytes(), key.as_bytes()].concat())
}

/// Writes `groups` (of [`write_groups`]) and fails with the first write
/// Redis refused.
pub(crate) async fn write(conn: &Conn, groups: Vec<redis::Pipeline>) -> Result<(), RedisError> {
    let replies = conn.query_groups(groups).await?;
    match replies.into_iter().find_map(|reply| match reply {
        redis::Value::ServerError(error) => Some(error),
        _ => None,
    }) {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").field("url", &self.url).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(key)?;
        let mut conn = self.conn.clone();
        redis::cmd("GET").arg(&key).query_async(&mut conn).await.map_err(|e| store_error(e, "get"))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration, mode: SetMode) -> Result<bool, StoreError> {
        let key = self.key(key)?;
        check_value(value)?;
        let mode = match mode {
            SetMode::IfAbsent => "1",
            SetMode::Extend => "2",
            _ => "0",
        };
        let mut conn = self.conn.clone();
        let written: u8 = self
            .scripts
            .set
            .key(&key)
            .arg(value)
            .arg(ttl_millis(ttl))
            .arg(mode)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error(e, "set"))?;
        Ok(written == 1)
    }

    /// `SET key value PX ttl` and `PUBLISH key value` per entry (see
    /// `write_groups`), in one round trip on a single server; on a
    /// cluster, one pipeline per key, concurrently.
    async fn set_many(&self, entries: &[(&str, &[u8], Duration)]) -> Result<(), StoreError> {
        let groups = write_groups(&self.prefix, entries.iter().copied())?;
        write(&self.conn, groups).await.map_err(|e| store_error(e, "set_many"))
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let key = self.key(key)?;
        let mut conn = self.conn.clone();
        let removed: u64 =
            redis::cmd("DEL").arg(&key).query_async(&mut conn).await.map_err(|e| store_error(e, "delete"))?;
        Ok(removed > 0)
    }

    async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        let key = self.key(key)?;
        let mut conn = self.conn.clone();
        let removed: u8 = self
            .scripts
            .delete_if
            .key(&key)
            .arg(expected)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error(e, "delete_if"))?;
        Ok(removed == 1)
    }

    async fn wait_any(&self, keys: &[String], timeout: Duration) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        if keys.is_empty() {
            tokio::time::sleep(timeout).await;
            return Ok(None);
        }
        let wanted = keys.iter().map(|key| self.key(key)).collect::<Result<Vec<_>, _>>()?;
        let found = self.waits.wait(&self.conn, &wanted, timeout).await?;
        Ok(found.map(|(key, value)| (self.store_key(&key).to_owned(), value)))
    }
}

#[async_trait]
impl Counters for RedisStore {
    async fn incr_by(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError> {
        let key = self.key(key)?;
        let mut conn = self.conn.clone();
        let text: String = self
            .scripts
            .incr_by
            .key(&key)
            .arg(delta)
            .arg(ttl_millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error(e, "incr_by"))?;
        text.parse().map_err(|_| StoreError::new(StoreErrorKind::Other, format!("redis store: incr_by read {text:?}")))
    }

    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<u64, StoreError> {
        let key = self.key(key)?;
        check_key(member)?;
        let mut conn = self.conn.clone();
        self.scripts
            .set_add
            .key(&key)
            .arg(member)
            .arg(ttl_millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error(e, "set_add"))
    }

    async fn set_remove(&self, key: &str, member: &str) -> Result<u64, StoreError> {
        let key = self.key(key)?;
        check_key(member)?;
        let mut conn = self.conn.clone();
        self.scripts
            .set_remove
            .key(&key)
            .arg(member)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error(e, "set_remove"))
    }

    async fn set_len(&self, key: &str) -> Result<u64, StoreError> {
        let key = self.key(key)?;
        let mut conn = self.conn.clone();
        redis::cmd("SCARD").arg(&key).query_async(&mut conn).await.map_err(|e| store_error(e, "set_len"))
    }
}

#[async_trait]
impl Slots for RedisStore {
    async fn take_slot(&self, key: &str, member: &str, cap: u64, hold: Duration) -> Result<Admission, StoreError> {
        let key = self.key(key)?;
        check_key(member)?;
        let mut conn = self.conn.clone();
        let answer: i64 = self
            .scripts
            .take_slot
            .key(&key)
            .arg(member)
            .arg(cap.max(1))
            .arg(ttl_millis(hold))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error(e, "take_slot"))?;
        Ok(admission(answer))
    }

    async fn renew_slot(&self, key: &str, member: &str, hold: Duration) -> Result<bool, StoreError> {
        let key = self.key(key)?;
        check_key(member)?;
        let mut conn = self.conn.clone();
        let renewed: u8 = self
            .scripts
            .renew_slot
            .key(&key)
            .arg(member)
            .arg(ttl_millis(hold))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error(e, "renew_slot"))?;
        Ok(renewed == 1)
    }

    /// A plain `ZREM`: a lapsed slot is gone either way.
    async fn release_slot(&self, key: &str, member: &str) -> Result<bool, StoreError> {
        let key = self.key(key)?;
        check_key(member)?;
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("ZREM")
            .arg(&key)
            .arg(member)
            .query_async(&mut conn)
            .await
            .map_err(|e| store_error(e, "release_slot"))?;
        Ok(removed > 0)
    }

    async fn take_paced(&self, key: &str, interval: Duration, burst: u64) -> Result<Admission, StoreError> {
        let key = self.key(key)?;
        let mut conn = self.conn.clone();
        let answer: i64 = self
            .scripts
            .take_paced
            .key(&key)
            .arg(ttl_millis(interval))
            .arg(burst.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error(e, "take_paced"))?;
        Ok(admission(answer))
    }
}
