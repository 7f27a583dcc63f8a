//! The PostgreSQL broker of [dramaturg](https://docs.rs/dramaturg), on
//! [sqlx](https://docs.rs/sqlx).
//!
//! # How it keeps every message
//!
//! - **Rows, claimed with `FOR UPDATE SKIP LOCKED`.** A message is a row of
//!   `<schema>.messages`. A consumer claims a batch of ready rows of its
//!   queue (up to its free prefetch) in one statement, skipping rows that
//!   other consumers are claiming at the same moment, so consumers never
//!   wait on each other.
//! - **Leases, fenced.** A claim writes the worker's id, a token from a
//!   sequence (never reused) and a deadline on the row. Every settlement —
//!   ack (the row is deleted), dead letter (moved to
//!   `<schema>.dead_letters` with the reason), requeue, reschedule — is
//!   one statement that applies only while the row still carries the
//!   delivery's token; otherwise it changes nothing and reports
//!   [`Settled::Stale`](dramaturg_core::Settled::Stale).
//! - **Heartbeats apart from user code.** Each broker value that consumes
//!   runs a thread of its own that renews the deadlines of the claims it
//!   holds and records the worker's heartbeat, by the database's clock.
//!   A worker that dies (even by `kill -9`) stops renewing; once its
//!   claims' deadlines pass (`heartbeat_timeout`, 15 s by default), the
//!   next heartbeat of any live worker returns them to their queues,
//!   marked redelivered.
//! - **Durable sends, fast settlements.** Sends commit with the server's
//!   settings; claims and settlements use connections with
//!   `synchronous_commit = off`, so a database crash can lose only the
//!   last settlements — whose messages then run again — never a message.
//! - **No polling while idle.** Sends, requeues, replays, pauses and
//!   resumes `NOTIFY` the channel `<schema>.wake` with the queue's name (in
//!   the sender's transaction, so a rolled-back send wakes nobody); each
//!   worker `LISTEN`s on one connection and wakes its idle consumers of
//!   that queue. An idle consumer also wakes when its queue's next delayed
//!   message falls due, and looks again every `poll_interval` (5 s) as a
//!   safety net for a notification lost while the listening connection
//!   reconnects.
//! - **Enqueue in your transaction.** [`PgBroker::enqueue_in`] and
//!   [`PgBroker::send_in`] insert the message through a connection of the
//!   caller's — an open `sqlx::Transaction` — so the message exists exactly
//!   when the caller's own writes commit.
//! - **Schema by migrations.** The tables live in a schema of their own
//!   (`dramaturg` by default, [`PgConfig::schema`]) made by the embedded,
//!   versioned migrations when the broker connects; the same SQL ships in
//!   the crate's `migrations/` directory for teams that run their own
//!   ([`PgConfig::migrate`]).
//!
//! See `docs/postgres.md` for the tables, the locking and what acks cost
//! the table (bloat and autovacuum).
//!
//! # Examples
//!
//! ```no_run
//! use dramaturg_postgres::{PgBroker, PgConfig};
//!
//! # async fn run() -> Result<(), dramaturg_core::BrokerError> {
//! let broker = PgBroker::with_config(PgConfig::new("postgres://app@127.0.0.1/app").schema("jobs")).await?;
//! # let _ = broker;
//! # Ok(())
//! # }
//! ```

mod acks;
mod admin;
mod consumer;
mod heartbeat;
mod schema;
mod store;
mod transaction;
mod vacuum;
mod wake;

pub use sqlx;

pub use crate::store::PgStore;

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dramaturg_core::broker::redact_password;
use dramaturg_core::sync::lock;
use dramaturg_core::time::millis;
use dramaturg_core::{Broker, BrokerError, BrokerErrorKind, Consumer, DeadLetters, Outgoing, QueueAdmin};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::acks::Acks;
use crate::heartbeat::Heartbeat;
use crate::schema::Sql;
use crate::vacuum::Vacuum;
use crate::wake::Wakes;

/// How many acknowledged messages a consuming broker lets pass between
/// two `VACUUM`s of its messages table ([`PgConfig::vacuum_every`]).
pub const DEFAULT_VACUUM_EVERY: u64 = 10_000;

/// The longest queue name, in bytes: a queue's name is the payload of its
/// wake-ups, which PostgreSQL limits to 8000 bytes; 1000 leaves room.
pub const MAX_QUEUE_NAME_BYTES: usize = 1000;

/// The URL query parameters read: this crate's `schema`, taken out before
/// the URL reaches sqlx, and sqlx's own.
const URL_PARAMETERS: &[&str] = &[
    "schema",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Settings of a [`PgBroker`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_postgres::PgConfig;
///
/// let config = PgConfig::new("postgres://app:secret@127.0.0.1:5432/app?schema=jobs")
///     .heartbeat(Duration::from_secs(2), Duration::from_secs(10))
///     .max_connections(20);
/// assert!(!format!("{config:?}").contains("secret"));
/// assert!(format!("{config:?}").contains("\"jobs\""));
/// ```
#[derive(Clone)]
pub struct PgConfig {
    url: String,
    schema: String,
    max_connections: u32,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    poll_interval: Duration,
    dead_letter_ttl: Duration,
    migrate: bool,
    vacuum_every: u64,
}

impl PgConfig {
    /// Settings for the database at `url`
    /// (`postgres://[user[:password]@]host[:port]/database[?…]`, or
    /// `postgresql://`), with the defaults: schema `dramaturg`, a pool of 10
    /// connections, a heartbeat every 3 s whose claims lapse 15 s after the
    /// last one, idle consumers looking again every 5 s, dead letters kept
    /// 7 days, migrations applied at connect.
    ///
    /// `?schema=jobs` in the URL sets the schema as [`PgConfig::schema`]
    /// does; it is taken out before the URL reaches sqlx, which reads
    /// `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `host`, `hostaddr`,
    /// `port`, `dbname`, `user`, `password`, `application_name`, `options`
    /// and `statement-cache-capacity`. Any other parameter (a typo) is
    /// refused when connecting, with an error of kind
    /// [`BrokerErrorKind::InvalidInput`].
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        let schema = dramaturg_core::broker::query_parameter(&url, "schema").unwrap_or("dramaturg").to_owned();
        Self {
            url,
            schema,
            max_connections: 10,
            heartbeat_interval: Duration::from_secs(3),
            heartbeat_timeout: Duration::from_secs(15),
            poll_interval: Duration::from_secs(5),
            dead_letter_ttl: Duration::from_secs(7 * 24 * 3600),
            migrate: true,
            vacuum_every: DEFAULT_VACUUM_EVERY,
        }
    }

    /// Puts the broker's tables in `schema` (default `dramaturg`): an ASCII
    /// letter or `_`, then letters, digits or `_`, at most 48 bytes; case
    /// is kept. Another name is refused when connecting.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections each of the broker's two pools opens (default
    /// 10): one for sends and administration, one for claims and
    /// settlements. Each consuming broker also opens two of its own for
    /// its heartbeat and its `LISTEN`.
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How often a consuming worker renews its claims and beats, and how
    /// long a claim lasts without renewal: once `timeout` passes after a
    /// worker's last beat, its claims are returned to their queues by
    /// another worker. `timeout` is at least twice `interval`.
    #[must_use]
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval.max(Duration::from_millis(10));
        self.heartbeat_timeout = timeout.max(self.heartbeat_interval * 2);
        self
    }

    /// How many messages a consuming broker acknowledges between two
    /// `VACUUM`s of the messages table that it runs itself (default
    /// [`DEFAULT_VACUUM_EVERY`]; 0: never, for a team that vacuums the
    /// table otherwise). Each acknowledged message leaves dead rows that
    /// claims walk until a vacuum removes them, and autovacuum visits a
    /// database once a minute by default: see `docs/postgres.md`,
    /// "Completed rows, bloat and autovacuum". One `VACUUM` runs at a
    /// time across the workers of a schema (an advisory lock; a worker
    /// that finds it taken skips its turn). `VACUUM` needs the table's
    /// owner or a superuser: a broker connected as another role logs once
    /// that it cannot vacuum the table, and stops trying.
    #[must_use]
    pub fn vacuum_every(mut self, messages: u64) -> Self {
        self.vacuum_every = messages;
        self
    }

    /// The longest an idle consumer waits before it looks at its queue
    /// again (default 5 s). Wake-ups come by `NOTIFY`; this bounds the
    /// latency of one lost while the listening connection reconnects.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How long dead letters are kept (default 7 days). Consuming workers
    /// delete older ones about once a minute.
    #[must_use]
    pub fn dead_letter_ttl(mut self, ttl: Duration) -> Self {
        self.dead_letter_ttl = ttl;
        self
    }

    /// Whether to create the schema and apply the embedded migrations
    /// when connecting (default `true`). Teams that run migrations with
    /// their own tool apply the crate's `migrations/*.sql` in order, with
    /// `search_path` set to the schema, and turn this off.
    #[must_use]
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redact_password(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("dead_letter_ttl", &self.dead_letter_ttl)
            .field("migrate", &self.migrate)
            .field("vacuum_every", &self.vacuum_every)
            .finish()
    }
}

/// `url` without its `schema` query parameter, for sqlx.
fn without_schema(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else { return url.to_owned() };
    let rest: Vec<&str> = query.split('&').filter(|pair| !pair.starts_with("schema=")).collect();
    if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    }
}

/// A [`Broker`] on PostgreSQL. Cheap to clone: clones share the pool and
/// the worker's identity (one heartbeat per broker value and its clones).
#[derive(Clone)]
pub struct PgBroker {
    shared: Arc<Shared>,
}

impl fmt::Debug for PgBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBroker")
            .field("config", &self.shared.config)
            .field("worker_id", &self.shared.worker_id)
            .finish_non_exhaustive()
    }
}

/// What the broker, its consumers, receipts and heartbeat share.
pub(crate) struct Shared {
    pub(crate) config: PgConfig,
    pub(crate) options: PgConnectOptions,
    /// For sends and administration: commits are durable.
    pub(crate) pool: PgPool,
    /// For claims and settlements, with `synchronous_commit = off`: a
    /// commit returns before its WAL is flushed. A crash of the database
    /// may then lose the last settlements, which only means their messages
    /// are delivered again (at least once), never a lost message; sends
    /// never go through it.
    pub(crate) settle_pool: PgPool,
    pub(crate) sql: Sql,
    /// This worker's id: `<pid>-<random>`.
    pub(crate) worker_id: String,
    pub(crate) concurrency: AtomicU64,
    /// The database's clock minus this process's, in ms.
    pub(crate) clock_offset_ms: AtomicI64,
    /// The tokens of the claims this worker holds: the heartbeat renews
    /// these and no others, so that a claim whose reply was lost lapses.
    pub(crate) held: Mutex<HashSet<i64>>,
    pub(crate) wakes: Wakes,
    pub(crate) heartbeat: Heartbeat,
    /// The ack task, started by the first consumer.
    pub(crate) acks: std::sync::OnceLock<Acks>,
    /// The broker's store, made by the first [`Broker::store`].
    pub(crate) store: std::sync::OnceLock<Arc<PgStore>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.heartbeat.stop();
    }
}

/// A sqlx error as a [`BrokerError`], classified, without any URL in it:
/// I/O errors and a closed pool are lost connections, a pool that gave no
/// connection in time a timeout; a read-only database, one shutting down,
/// a serialization failure or a deadlock is unavailable for now (retryable);
/// everything else a protocol error.
pub(crate) fn db_error(error: sqlx::Error, what: &str) -> BrokerError {
    let kind = match &error {
        sqlx::Error::PoolTimedOut => BrokerErrorKind::Timeout,
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => {
            BrokerErrorKind::Connection
        }
        // Read-only transaction, admin shutdown, cannot connect now; a
        // serialization failure or deadlock (rows claimed, settled and
        // recovered at once), which passes when tried again.
        sqlx::Error::Database(e)
            if matches!(e.code().as_deref(), Some("25006" | "57P01" | "57P03" | "40001" | "40P01")) =>
        {
            BrokerErrorKind::Unavailable
        }
        _ => BrokerErrorKind::Protocol,
    };
    BrokerError::new(kind, format!("postgres: {what} failed: {error}")).with_source(error)
}

/// Checks `config`'s URL and schema, applies the migrations unless
/// [`PgConfig::migrate`] turned that off, and opens the pool for sends
/// (durable commits): what the broker and a store of its own share.
pub(crate) async fn open_pool(config: &PgConfig) -> Result<(PgConnectOptions, PgPool), BrokerError> {
    let shown = redact_password(&config.url);
    let invalid = |e: String| BrokerError::new(BrokerErrorKind::InvalidInput, format!("postgres: {shown}: {e}"));
    dramaturg_core::broker::check_url_parameters(&config.url, URL_PARAMETERS).map_err(|e| invalid(e.to_string()))?;
    schema::check_schema(&config.schema).map_err(|e| invalid(e.to_string()))?;
    let options = PgConnectOptions::from_str(&without_schema(&config.url)).map_err(|e| invalid(e.to_string()))?;
    // Named in `pg_stat_activity`, unless the URL names it.
    let options = match options.get_application_name() {
        Some(_) => options,
        None => options.application_name("dramaturg"),
    };
    if config.migrate {
        schema::migrate(&options, &config.schema).await?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.clone())
        .await
        .map_err(|e| db_error(e, &format!("connecting to {shown}")))?;
    Ok((options, pool))
}

impl PgBroker {
    /// Connects to the database at `url` with the default settings (see
    /// [`PgConfig::new`]).
    ///
    /// # Errors
    ///
    /// As [`PgBroker::with_config`].
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::with_config(PgConfig::new(url)).await
    }

    /// Connects with `config`, creating the schema and applying the
    /// migrations it lacks unless [`PgConfig::migrate`] turned that off.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] of kind [`BrokerErrorKind::InvalidInput`] for a URL
    /// that is not a PostgreSQL URL, an unknown query parameter or an
    /// invalid schema name; of kind `Connection` when the database cannot
    /// be reached; of kind `Protocol` when a migration fails. It names the
    /// URL without its password.
    pub async fn with_config(config: PgConfig) -> Result<Self, BrokerError> {
        let (options, pool) = open_pool(&config).await?;
        let pool_options =
            || PgPoolOptions::new().max_connections(config.max_connections).acquire_timeout(Duration::from_secs(10));
        let settle_pool = pool_options().connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        let sql = Sql::new(&config.schema);
        let worker_id = format!("{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let shared = Arc::new(Shared {
            options,
            pool,
            settle_pool,
            sql,
            worker_id,
            concurrency: AtomicU64::new(0),
            clock_offset_ms: AtomicI64::new(0),
            held: Mutex::new(HashSet::new()),
            wakes: Wakes::default(),
            heartbeat: Heartbeat::default(),
            acks: std::sync::OnceLock::new(),
            store: std::sync::OnceLock::new(),
            config,
        });
        let broker = Self { shared };
        broker.read_server().await?;
        Ok(broker)
    }

    /// The schema the broker's tables live in.
    pub fn schema(&self) -> &str {
        &self.shared.config.schema
    }

    /// The broker's connection pool, for the caller's own queries (and
    /// transactions to enqueue in: [`PgBroker::enqueue_in`]).
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// This worker's id in the `workers` table and on the claims it holds.
    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    /// Learns the difference between the database's clock and ours, and
    /// warns when nothing will vacuum the messages table: autovacuum off on
    /// the server, or on the table (`autovacuum_enabled = false`), and
    /// [`PgConfig::vacuum_every`] 0. Every
    /// acknowledged message leaves a dead row there, and claims slow down
    /// as they pile up (`docs/postgres.md`, "Completed rows, bloat and
    /// autovacuum").
    async fn read_server(&self) -> Result<(), BrokerError> {
        let schema = &self.shared.config.schema;
        let (server, vacuumed): (i64, bool) = sqlx::query_as(&format!(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint, \
                    current_setting('autovacuum')::bool AND NOT EXISTS ( \
                        SELECT 1 FROM pg_class c, unnest(c.reloptions) o \
                        WHERE c.oid = to_regclass('\"{schema}\".messages') \
                          AND o ~* '^autovacuum_enabled=(false|off|no|n|f|0)$')"
        ))
        .fetch_one(&self.shared.pool)
        .await
        .map_err(|e| db_error(e, "reading the clock"))?;
        self.shared.learn_clock(server);
        if !vacuumed && self.shared.config.vacuum_every == 0 {
            tracing::warn!(
                schema = %schema,
                "autovacuum is off for the messages table and vacuum_every is 0: every acknowledged message leaves \
                 a dead row that only VACUUM reclaims, and claims slow down as they pile up (docs/postgres.md)"
            );
        }
        Ok(())
    }
}

impl Shared {
    /// Notes the database's clock, `server_ms` since the epoch, now.
    pub(crate) fn learn_clock(&self, server_ms: i64) {
        let local = i64::try_from(dramaturg_core::now_ms()).unwrap_or(i64::MAX);
        self.clock_offset_ms.store(server_ms.saturating_sub(local), Ordering::Relaxed);
    }
}

/// Refuses a queue name PostgreSQL cannot carry: empty, longer than
/// [`MAX_QUEUE_NAME_BYTES`], or holding a NUL character (text columns
/// cannot).
pub(crate) fn check_queue(name: &str) -> Result<(), BrokerError> {
    dramaturg_core::broker::check_text_queue_name(name, MAX_QUEUE_NAME_BYTES, "postgres")
}

#[async_trait]
impl Broker for PgBroker {
    /// Checks the name: queues are rows, there is nothing to create.
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        check_queue(queue)
    }

    async fn enqueue(&self, message: Outgoing) -> Result<(), BrokerError> {
        self.enqueue_many(vec![message]).await
    }

    /// Inserts every message in one statement: all of them or none.
    async fn enqueue_many(&self, messages: Vec<Outgoing>) -> Result<(), BrokerError> {
        transaction::insert(&self.shared, &self.shared.pool, messages).await
    }

    async fn consume(&self, queue: &str, prefetch: usize) -> Result<Box<dyn Consumer>, BrokerError> {
        check_queue(queue)?;
        self.shared.heartbeat.start(&self.shared).await?;
        self.shared.acks.get_or_init(|| {
            let config = &self.shared.config;
            let vacuum = Vacuum::new(self.shared.pool.clone(), &config.schema, config.vacuum_every);
            let statements = acks::Statements {
                ack: self.shared.sql.ack.clone(),
                ack_writing: self.shared.sql.ack_writing.clone(),
                store_channel: store::channel(&config.schema),
            };
            Acks::start(self.shared.settle_pool.clone(), statements, vacuum)
        });
        Ok(Box::new(consumer::PgConsumer::new(Arc::clone(&self.shared), queue, prefetch)))
    }

    fn check_queue_name(&self, name: &str) -> Result<(), BrokerError> {
        check_queue(name)
    }

    fn admin(&self) -> Option<&dyn QueueAdmin> {
        Some(self)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }

    /// A [`PgStore`] in this broker's schema, on its pool
    /// ([`PgStore::for_broker`]), one for the broker and its clones.
    fn store(&self) -> Option<Arc<dyn dramaturg_core::Store>> {
        Some(Arc::clone(self.shared.store.get_or_init(|| Arc::new(PgStore::for_broker(self))))
            as Arc<dyn dramaturg_core::Store>)
    }

    fn set_worker_concurrency(&self, concurrency: usize) {
        self.shared.concurrency.store(concurrency as u64, Ordering::Relaxed);
    }

    /// Stops the heartbeat and, if this worker holds no claim, removes it
    /// from the `workers` table. Claims still held (settlements that never
    /// reached the database) lapse after the heartbeat timeout.
    async fn release(&self) -> Result<(), BrokerError> {
        if let Some(thread) = self.shared.heartbeat.stop() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let held = lock(&self.shared.held).len();
        if held > 0 {
            tracing::warn!(held, "stopping with claimed messages not settled; they return after the heartbeat timeout");
            return Ok(());
        }
        sqlx::query(&self.shared.sql.deregister)
            .bind(&self.shared.worker_id)
            .execute(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "deregistering"))?;
        Ok(())
    }

    /// The database's clock, as learned at connect and at every heartbeat.
    fn now_ms(&self) -> u64 {
        let local = i64::try_from(dramaturg_core::now_ms()).unwrap_or(i64::MAX);
        u64::try_from(local.saturating_add(self.shared.clock_offset_ms.load(Ordering::Relaxed))).unwrap_or(0)
    }
}

/// `duration` in whole milliseconds, as the `bigint` the statements take.
pub(crate) fn ms(duration: Duration) -> i64 {
    i64::try_from(millis(duration)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_read_and_kept_from_sqlx() {
        let config = PgConfig::new("postgres://u@h/db?sslmode=disable&schema=jobs&application_name=x");
        assert_eq!(config.schema, "jobs");
        assert_eq!(without_schema(&config.url), "postgres://u@h/db?sslmode=disable&application_name=x");
        assert_eq!(without_schema("postgres://u@h/db?schema=jobs"), "postgres://u@h/db");
        assert_eq!(PgConfig::new("postgres://u@h/db").schema, "dramaturg");
    }

    #[tokio::test]
    async fn a_parameter_given_twice_is_refused_before_connecting() {
        let error = PgBroker::connect("postgres://u@127.0.0.1:1/db?schema=a&schema=b").await.expect_err("refused");
        assert_eq!(error.kind(), BrokerErrorKind::InvalidInput, "{error}");
        assert!(error.to_string().contains("twice"), "{error}");
    }

    #[test]
    fn queue_names_postgres_cannot_carry_are_refused() {
        assert!(check_queue("default").is_ok());
        assert!(check_queue(&"q".repeat(MAX_QUEUE_NAME_BYTES)).is_ok());
        for bad in [String::new(), "q".repeat(MAX_QUEUE_NAME_BYTES + 1), "a\0b".into()] {
            assert_eq!(check_queue(&bad).expect_err("refused").kind(), BrokerErrorKind::InvalidInput);
        }
    }
}
