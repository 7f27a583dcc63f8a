//! The store on PostgreSQL: every key is a row of `<schema>.store`, made by
//! the migration `0002_store.sql`, so that a team running only PostgreSQL
//! gets abort events, results, group completion, rate limits and unique
//! jobs from the broker's own database.
//!
//! # Rows, atomicity, clock
//!
//! - A row holds a value (also a counter, as its decimal text), a set, a
//!   slot set or a pacing key, and an `expires_at` timestamp. Reads treat
//!   a row whose `expires_at` passed as absent; every time is the
//!   database's `clock_timestamp()`, so workers' clocks do not matter.
//! - [`set`](Store::set), [`get`](Store::get), [`delete`](Store::delete)
//!   and [`delete_if`](Store::delete_if) are one statement each (`set` is
//!   an `INSERT … ON CONFLICT … DO UPDATE … WHERE`, so of two concurrent
//!   set-if-absent writes one wins). Counters, sets and slots are SQL
//!   functions of the migration that lock the key's row first (inserting
//!   an expired placeholder for a new key, so that two writers of one new
//!   key take turns): each call is one statement, one transaction.
//! - Expired rows are deleted in batches of 1000 by a task that a write
//!   starts at most once a minute (by this process), so the table does not
//!   grow with keys that are written and never read again.
//!
//! # Waits
//!
//! A `set` notifies the channel `<schema>.store` with the key, in the same
//! statement (a write that rolls back wakes nobody). One connection per
//! store `LISTEN`s there, opened on the first
//! [`wait_any`](Store::wait_any) and shared by every wait: a wait
//! registers for its keys, *then* reads them, so a value set in between is
//! not missed (see the `waits` module).

mod waits;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dramaturg_core::broker::redact_password;
use dramaturg_core::store::{
    check_key, check_value, ttl_millis, Admission, Counters, SetMode, Slots, Store, StoreError, StoreErrorKind,
};
use sqlx::postgres::PgPool;

use crate::{db_error, PgBroker, PgConfig};
use waits::{Waits, REREAD_EVERY};

/// How often, at most, a write starts the deletion of expired rows.
const SWEEP_EVERY_MS: u64 = 60_000;

/// Expired rows deleted per statement.
const SWEEP_BATCH: i64 = 1000;

/// The most batches one sweep deletes: a sweep ends within seconds, and
/// the next write a minute later goes on.
const SWEEP_BATCHES: usize = 100;

/// The statements of the store, for one schema.
#[derive(Debug)]
struct StoreSql {
    /// `<schema>.store`: the channel of waits; the payload is a key.
    channel: String,
    /// $1 key → kind, value.
    get: String,
    /// One per [`SetMode`]: $1 key, $2 value, $3 TTL (ms), $4 channel →
    /// a row when written.
    set_always: String,
    set_if_absent: String,
    set_extend: String,
    /// $1 keys, $2 values, $3 TTLs (ms), $4 channel.
    set_many: String,
    /// $1 key → whether the row deleted was live.
    delete: String,
    /// $1 key, $2 value → deleted, the live key's kind.
    delete_if: String,
    /// $1 key, $2 delta, $3 TTL (ms) → the new value.
    incr_by: String,
    /// $1 key, $2 member, $3 TTL (ms) → members.
    set_add: String,
    /// $1 key, $2 member → members left.
    set_remove: String,
    /// $1 key → kind, members.
    set_len: String,
    /// $1 key, $2 member, $3 cap, $4 hold (ms) → -1 or ms to wait.
    take_slot: String,
    /// $1 key, $2 member, $3 hold (ms) → renewed.
    renew_slot: String,
    /// $1 key, $2 member → held.
    release_slot: String,
    /// $1 key, $2 interval (ms), $3 tolerance (ms) → -1 or ms to wait.
    take_paced: String,
    /// $1 keys → key, kind, value of the live ones.
    read_many: String,
    /// $1 how many.
    sweep: String,
}

impl StoreSql {
    fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let live = "expires_at > clock_timestamp()";
        let set = |condition: &str| {
            format!(
                "WITH written AS (
                    INSERT INTO {s}.store AS e (key, kind, value, expires_at)
                    VALUES ($1, 'value', $2, clock_timestamp() + $3 * interval '1 millisecond')
                    ON CONFLICT (key) DO UPDATE SET kind = 'value', value = EXCLUDED.value, members = NULL,
                        slots = NULL, arrival_ms = NULL, expires_at = EXCLUDED.expires_at
                    {condition}
                    RETURNING key)
                SELECT pg_notify($4, key) IS NULL FROM written"
            )
        };
        Self {
            channel: channel(schema),
            get: format!("SELECT kind, value FROM {s}.store WHERE key = $1 AND {live}"),
            set_always: set(""),
            set_if_absent: set("WHERE e.expires_at <= clock_timestamp()"),
            set_extend: set("WHERE e.expires_at < EXCLUDED.expires_at"),
            set_many: format!(
                "WITH written AS (
                    INSERT INTO {s}.store AS e (key, kind, value, expires_at)
                    SELECT key, 'value', value, clock_timestamp() + ttl_ms * interval '1 millisecond'
                    FROM unnest($1::text[], $2::bytea[], $3::bigint[]) AS w(key, value, ttl_ms)
                    ON CONFLICT (key) DO UPDATE SET kind = 'value', value = EXCLUDED.value, members = NULL,
                        slots = NULL, arrival_ms = NULL, expires_at = EXCLUDED.expires_at
                    RETURNING key)
                SELECT pg_notify($4, key) IS NULL FROM written"
            ),
            delete: format!("DELETE FROM {s}.store WHERE key = $1 RETURNING {live}"),
            // The subquery reads the statement's snapshot: the key's kind
            // before the delete.
            delete_if: format!(
                "WITH gone AS (
                    DELETE FROM {s}.store WHERE key = $1 AND kind = 'value' AND value = $2 AND {live} RETURNING 1)
                SELECT EXISTS (SELECT 1 FROM gone), (SELECT kind FROM {s}.store WHERE key = $1 AND {live})"
            ),
            incr_by: format!("SELECT {s}.store_incr_by($1, $2, $3)"),
            set_add: format!("SELECT {s}.store_set_add($1, $2, $3)"),
            set_remove: format!("SELECT {s}.store_set_remove($1, $2)"),
            set_len: format!("SELECT kind, cardinality(members)::bigint FROM {s}.store WHERE key = $1 AND {live}"),
            take_slot: format!("SELECT {s}.store_take_slot($1, $2, $3, $4)"),
            renew_slot: format!("SELECT {s}.store_renew_slot($1, $2, $3)"),
            release_slot: format!("SELECT {s}.store_release_slot($1, $2)"),
            take_paced: format!("SELECT {s}.store_take_paced($1, $2, $3)"),
            read_many: format!("SELECT key, kind, value FROM {s}.store WHERE key = ANY($1) AND {live}"),
            sweep: format!(
                "DELETE FROM {s}.store WHERE key IN (
                    SELECT key FROM {s}.store WHERE expires_at <= clock_timestamp()
                    LIMIT $1 FOR UPDATE SKIP LOCKED)"
            ),
        }
    }
}

/// A [`Store`] on PostgreSQL, in the tables of a broker's schema: the
/// [`PgBroker`]'s own database ([`PgStore::for_broker`], which is what
/// [`Broker::store`](dramaturg_core::Broker::store) gives), or any other
/// ([`PgStore::connect`]). See the module docs for the rows, waits and
/// the deletion of expired keys.
pub struct PgStore {
    pool: PgPool,
    sql: StoreSql,
    waits: Waits,
    /// The URL without its password, for logs.
    url: String,
    /// When a write last started the deletion of expired rows (this
    /// process's clock, ms since the epoch).
    last_sweep_ms: AtomicU64,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").field("url", &self.url).field("channel", &self.sql.channel).finish_non_exhaustive()
    }
}

/// A sqlx error as a store error: the functions' refusal of a key's type
/// (SQLSTATE `DTWTY`) is [`StoreErrorKind::WrongType`], a counter leaving
/// `i64` (`22003`) invalid input; the rest is classified as the broker
/// classifies it.
fn store_error(error: sqlx::Error, what: &str) -> StoreError {
    if let sqlx::Error::Database(e) = &error {
        let kind = match e.code().as_deref() {
            Some("DTWTY") => Some(StoreErrorKind::WrongType),
            Some("22003") => Some(StoreErrorKind::InvalidInput),
            _ => None,
        };
        if let Some(kind) = kind {
            let message = format!("postgres store: {what} failed: {}", e.message());
            return StoreError::new(kind, message).with_source(error);
        }
    }
    db_error(error, &format!("store {what}")).into()
}

fn wrong_type(key: &str, expected: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::WrongType,
        format!("postgres store: key {:?} does not hold {expected}", dramaturg_core::Bounded::quoted(key).as_str()),
    )
}

/// Checks a key or member against the size rules, and refuses a NUL
/// character, which a `text` column cannot hold.
fn checked(key: &str) -> Result<&str, StoreError> {
    check_key(key)?;
    if key.contains('\0') {
        return Err(StoreError::new(
            StoreErrorKind::InvalidInput,
            "postgres store: a key or member holds a NUL character",
        ));
    }
    Ok(key)
}

/// The channel the store of `schema` notifies of each key written.
pub(crate) fn channel(schema: &str) -> String {
    format!("{schema}.store")
}

/// `duration` as the store applies it (see [`ttl_millis`]), as a `bigint`.
pub(crate) fn ttl_ms(duration: Duration) -> i64 {
    i64::try_from(ttl_millis(duration)).unwrap_or(i64::MAX)
}

/// A function's answer as an admission: -1 is admitted, else ms to wait.
fn admission(answer: i64) -> Admission {
    match u64::try_from(answer) {
        Ok(ms) => Admission::Refused { retry_after: Duration::from_millis(ms.max(1)) },
        Err(_) => Admission::Admitted,
    }
}

impl PgStore {
    /// The store in `broker`'s schema, on its connection pool (durable
    /// commits). The `LISTEN` connection for waits is taken from the pool
    /// on the first wait and kept.
    pub fn for_broker(broker: &PgBroker) -> Self {
        let shared = &broker.shared;
        Self::new(shared.pool.clone(), &shared.config)
    }

    /// Connects to the database at `url` (`?schema=` chooses the schema,
    /// `dramaturg` by default), applying the migrations the schema lacks.
    ///
    /// # Errors
    ///
    /// As [`PgStore::with_config`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::with_config(&PgConfig::new(url)).await
    }

    /// Connects with the URL, schema, pool size and migration setting of
    /// `config` (its heartbeat and dead-letter settings do not concern a
    /// store).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] of kind [`StoreErrorKind::InvalidInput`] for an
    /// invalid URL or schema name, of kind `Connection` when the database
    /// cannot be reached, or of kind `Other` when a migration fails. It
    /// shows the URL without its password.
    pub async fn with_config(config: &PgConfig) -> Result<Self, StoreError> {
        let (_, pool) = crate::open_pool(config).await?;
        tracing::debug!(url = %redact_password(&config.url), schema = %config.schema, "postgres store connected");
        Ok(Self::new(pool, config))
    }

    pub(crate) fn new(pool: PgPool, config: &PgConfig) -> Self {
        let sql = StoreSql::new(&config.schema);
        Self {
            waits: Waits::new(pool.clone(), sql.channel.clone()),
            pool,
            sql,
            url: redact_password(&config.url),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    /// After a write: starts deleting expired rows if no write of this
    /// store did for a minute.
    pub(crate) fn sweep_now_and_then(&self) {
        let now = dramaturg_core::now_ms();
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY_MS
            || self.last_sweep_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let (pool, statement) = (self.pool.clone(), self.sql.sweep.clone());
        tokio::spawn(async move {
            let mut deleted = 0;
            for _ in 0..SWEEP_BATCHES {
                match sqlx::query(&statement).bind(SWEEP_BATCH).execute(&pool).await {
                    Ok(done) => {
                        deleted += done.rows_affected();
                        if done.rows_affected() < SWEEP_BATCH.unsigned_abs() {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "postgres store: deleting expired keys failed; trying again in a minute");
                        break;
                    }
                }
            }
            tracing::debug!(deleted, "postgres store: expired keys deleted");
        });
    }

    /// The first of `keys` that holds a value, and the value.
    async fn find(&self, keys: &[String]) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let rows: Vec<(String, String, Option<Vec<u8>>)> = sqlx::query_as(&self.sql.read_many)
            .bind(keys)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| store_error(e, "read for a wait"))?;
        let mut rows: HashMap<String, (String, Option<Vec<u8>>)> =
            rows.into_iter().map(|(key, kind, value)| (key, (kind, value))).collect();
        for key in keys {
            match rows.remove(key) {
                None => {}
                Some((kind, value)) if kind == "value" => return Ok(Some((key.clone(), value.unwrap_or_default()))),
                Some(_) => return Err(wrong_type(key, "a value")),
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(String, Option<Vec<u8>>)> = sqlx::query_as(&self.sql.get)
            .bind(checked(key)?)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| store_error(e, "get"))?;
        match row {
            None => Ok(None),
            Some((kind, value)) if kind == "value" => Ok(Some(value.unwrap_or_default())),
            Some(_) => Err(wrong_type(key, "a value")),
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration, mode: SetMode) -> Result<bool, StoreError> {
        checked(key)?;
        check_value(value)?;
        let statement = match mode {
            SetMode::IfAbsent => &self.sql.set_if_absent,
            SetMode::Extend => &self.sql.set_extend,
            _ => &self.sql.set_always,
        };
        let written = sqlx::query(statement)
            .bind(key)
            .bind(value)
            .bind(ttl_ms(ttl))
            .bind(&self.sql.channel)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| store_error(e, "set"))?
            .is_some();
        self.sweep_now_and_then();
        Ok(written)
    }

    /// One statement for every entry (of many entries for one key, the
    /// last is written).
    async fn set_many(&self, entries: &[(&str, &[u8], Duration)]) -> Result<(), StoreError> {
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (at, (key, value, _)) in entries.iter().enumerate() {
            checked(key)?;
            check_value(value)?;
            last.insert(key, at);
        }
        if last.is_empty() {
            return Ok(());
        }
        let mut chosen: Vec<usize> = last.into_values().collect();
        chosen.sort_unstable();
        let keys: Vec<&str> = chosen.iter().map(|&at| entries[at].0).collect();
        let values: Vec<&[u8]> = chosen.iter().map(|&at| entries[at].1).collect();
        let ttls: Vec<i64> = chosen.iter().map(|&at| ttl_ms(entries[at].2)).collect();
        sqlx::query(&self.sql.set_many)
            .bind(keys)
            .bind(values)
            .bind(ttls)
            .bind(&self.sql.channel)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| store_error(e, "set_many"))?;
        self.sweep_now_and_then();
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let live: Option<bool> = sqlx::query_scalar(&self.sql.delete)
            .bind(checked(key)?)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| store_error(e, "delete"))?;
        Ok(live.unwrap_or(false))
    }

    async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        let (deleted, kind): (bool, Option<String>) = sqlx::query_as(&self.sql.delete_if)
            .bind(checked(key)?)
            .bind(expected)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| store_error(e, "delete_if"))?;
        match kind {
            Some(kind) if !deleted && kind != "value" => Err(wrong_type(key, "a value")),
            _ => Ok(deleted),
        }
    }

    async fn wait_any(&self, keys: &[String], timeout: Duration) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        for key in keys {
            checked(key)?;
        }
        if keys.is_empty() {
            tokio::time::sleep(timeout).await;
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        // Registered before the first read, so that a value set between
        // the read and the wait still signals it.
        let mut registration = self.waits.register(keys).await?;
        loop {
            if let Some(found) = self.find(keys).await? {
                return Ok(Some(found));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            registration.signalled(left.min(REREAD_EVERY)).await;
        }
    }
}

#[async_trait]
impl Counters for PgStore {
    async fn incr_by(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError> {
        let value = sqlx::query_scalar(&self.sql.incr_by)
            .bind(checked(key)?)
            .bind(delta)
            .bind(ttl_ms(ttl))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| store_error(e, "incr_by"))?;
        self.sweep_now_and_then();
        Ok(value)
    }

    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<u64, StoreError> {
        let len: i64 = sqlx::query_scalar(&self.sql.set_add)
            .bind(checked(key)?)
            .bind(checked(member)?)
            .bind(ttl_ms(ttl))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| store_error(e, "set_add"))?;
        self.sweep_now_and_then();
        Ok(len.unsigned_abs())
    }

    async fn set_remove(&self, key: &str, member: &str) -> Result<u64, StoreError> {
        let len: i64 = sqlx::query_scalar(&self.sql.set_remove)
            .bind(checked(key)?)
            .bind(checked(member)?)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| store_error(e, "set_remove"))?;
        Ok(len.unsigned_abs())
    }

    async fn set_len(&self, key: &str) -> Result<u64, StoreError> {
        let row: Option<(String, Option<i64>)> = sqlx::query_as(&self.sql.set_len)
            .bind(checked(key)?)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| store_error(e, "set_len"))?;
        match row {
            None => Ok(0),
            Some((kind, len)) if kind == "set" => Ok(len.unwrap_or_default().unsigned_abs()),
            Some(_) => Err(wrong_type(key, "a set")),
        }
    }
}

#[async_trait]
impl Slots for PgStore {
    async fn take_slot(&self, key: &str, member: &str, cap: u64, hold: Duration) -> Result<Admission, StoreError> {
        let answer = sqlx::query_scalar(&self.sql.take_slot)
            .bind(checked(key)?)
            .bind(checked(member)?)
            .bind(i64::try_from(cap).unwrap_or(i64::MAX))
            .bind(ttl_ms(hold))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| store_error(e, "take_slot"))?;
        self.sweep_now_and_then();
        Ok(admission(answer))
    }

    async fn renew_slot(&self, key: &str, member: &str, hold: Duration) -> Result<bool, StoreError> {
        sqlx::query_scalar(&self.sql.renew_slot)
            .bind(checked(key)?)
            .bind(checked(member)?)
            .bind(ttl_ms(hold))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| store_error(e, "renew_slot"))
    }

    async fn release_slot(&self, key: &str, member: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar(&self.sql.release_slot)
            .bind(checked(key)?)
            .bind(checked(member)?)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| store_error(e, "release_slot"))
    }

    async fn take_paced(&self, key: &str, interval: Duration, burst: u64) -> Result<Admission, StoreError> {
        let interval = ttl_ms(interval);
        // Capped far past any real burst (35 000 years), so that the
        // function's arithmetic cannot overflow.
        let tolerance = interval.saturating_mul(i64::try_from(burst.max(1) - 1).unwrap_or(i64::MAX)).min(1 << 50);
        let answer = sqlx::query_scalar(&self.sql.take_paced)
            .bind(checked(key)?)
            .bind(interval)
            .bind(tolerance)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| store_error(e, "take_paced"))?;
        self.sweep_now_and_then();
        Ok(admission(answer))
    }
}
