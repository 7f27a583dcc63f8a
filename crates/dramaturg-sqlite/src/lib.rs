//! The SQLite broker of [dramaturg](https://docs.rs/dramaturg), on
//! [sqlx](https://docs.rs/sqlx): a durable broker in one database file,
//! with no server, for the worker processes of one machine.
//!
//! # How it keeps every message
//!
//! - **One file, in WAL mode.** A message is a row of the `messages` table
//!   of the file (`sqlite://jobs.db`). Readers never wait for the writer;
//!   writers take turns, each waiting up to `busy_timeout` (5 s) for the
//!   file's write lock.
//! - **Claims under the write lock.** SQLite has no `SKIP LOCKED`: a
//!   consumer claims a batch of ready rows (up to its free prefetch) in a
//!   `BEGIN IMMEDIATE` transaction, which holds the file's write lock from
//!   its first statement, so two consumers — of this process or of another
//!   — never claim the same row. Idle consumers only read, lock-free.
//! - **Leases, fenced.** A claim writes the worker's id, a token (from a
//!   counter in the file, never reused) and a deadline on the row. Every
//!   settlement — ack (the row is deleted), dead letter (moved to
//!   `dead_letters` with the reason and time), requeue, reschedule —
//!   applies only while the row still carries the delivery's token;
//!   otherwise it changes nothing and reports
//!   [`Settled::Stale`](dramaturg_core::Settled::Stale).
//! - **Heartbeats apart from user code.** Each broker value that consumes
//!   runs a thread of its own that renews the deadlines of the claims it
//!   holds and records the worker's heartbeat. A worker that dies (even by
//!   `kill -9`) stops renewing; once its claims' deadlines pass
//!   (`heartbeat_timeout`, 15 s by default), the next heartbeat of any live
//!   worker returns them to their queues, marked redelivered.
//! - **Wake-ups.** SQLite has no `LISTEN`/`NOTIFY`. Sends, requeues,
//!   replays and resumes wake the idle consumers of the same process at
//!   once; consumers of other processes see new messages at their next look,
//!   every `poll_interval` (100 ms by default), or when their queue's next
//!   delayed message falls due.
//! - **Enqueue in your transaction.** [`SqliteBroker::enqueue_in`] and
//!   [`SqliteBroker::send_in`] insert through the caller's connection — an
//!   open `sqlx::Transaction<'_, Sqlite>` on the same file — so the message
//!   exists exactly when the caller's own writes commit.
//! - **Schema by migrations.** The tables are made by the embedded,
//!   versioned migrations when the broker connects; the same SQL ships in
//!   the crate's `migrations/` directory for teams that run their own
//!   ([`SqliteConfig::migrate`]).
//!
//! See `docs/sqlite.md` for the tables, the locking, what an idle worker
//! costs and the limits (one machine, no network file systems).
//!
//! # Examples
//!
//! ```no_run
//! use dramaturg_sqlite::{SqliteBroker, SqliteConfig};
//!
//! # async fn run() -> Result<(), dramaturg_core::BrokerError> {
//! let broker = SqliteBroker::with_config(SqliteConfig::new("sqlite://jobs.db")).await?;
//! # let _ = broker;
//! # Ok(())
//! # }
//! ```

mod acks;
mod admin;
mod consumer;
mod heartbeat;
mod schema;
mod transaction;
mod wake;

pub use sqlx;

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dramaturg_core::sync::lock;
use dramaturg_core::time::millis;
use dramaturg_core::{Bounded, Broker, BrokerError, BrokerErrorKind, Consumer, DeadLetters, Outgoing, QueueAdmin};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::heartbeat::Heartbeat;
use crate::wake::Wakes;

/// The longest queue name, in bytes.
pub const MAX_QUEUE_NAME_BYTES: usize = 1000;

/// Settings of a [`SqliteBroker`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_sqlite::SqliteConfig;
///
/// let config = SqliteConfig::new("sqlite:///var/lib/app/jobs.db")
///     .heartbeat(Duration::from_secs(2), Duration::from_secs(10))
///     .poll_interval(Duration::from_millis(250));
/// assert!(format!("{config:?}").contains("jobs.db"));
/// ```
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    url: String,
    max_connections: u32,
    busy_timeout: Duration,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    poll_interval: Duration,
    dead_letter_ttl: Duration,
    migrate: bool,
}

impl SqliteConfig {
    /// Settings for the database file at `url`: `sqlite://jobs.db` (relative
    /// to the working directory), `sqlite:///var/lib/app/jobs.db` (absolute)
    /// or `sqlite:jobs.db`. The file is created if missing, unless the URL
    /// says `?mode=rw`. An in-memory database (`sqlite::memory:`,
    /// `?mode=memory`) and `?mode=ro` are refused when connecting: the
    /// broker writes, and its processes share the file.
    ///
    /// The defaults: a pool of 4 connections, a busy timeout of 5 s, a
    /// heartbeat every 3 s whose claims lapse 15 s after the last one, idle
    /// consumers looking every 100 ms, dead letters kept 7 days, migrations
    /// applied at connect.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 4,
            busy_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(3),
            heartbeat_timeout: Duration::from_secs(15),
            poll_interval: Duration::from_millis(100),
            dead_letter_ttl: Duration::from_secs(7 * 24 * 3600),
            migrate: true,
        }
    }

    /// The most connections the broker's pool for sends, looks and
    /// administration opens (default 4). Claims and settlements share one
    /// connection more, so that they queue in the process instead of
    /// contending for the file's write lock (SQLite lets one connection
    /// write at a time, and one that finds the lock taken sleeps before it
    /// tries again); a consuming broker opens one more for its heartbeat.
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long a statement waits for the file's write lock, held by
    /// another connection, before it fails with an error of kind
    /// [`BrokerErrorKind::Timeout`] (retryable). Default 5 s.
    #[must_use]
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
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

    /// How often an idle consumer looks at its queue (default 100 ms, at
    /// least 1 ms): the latency of a message sent by another process. Sends
    /// of the same process wake it at once. Each look is one read of the
    /// file, without a lock.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long dead letters are kept (default 7 days). Consuming workers
    /// delete older ones about once a minute.
    #[must_use]
    pub fn dead_letter_ttl(mut self, ttl: Duration) -> Self {
        self.dead_letter_ttl = ttl;
        self
    }

    /// Whether to apply the embedded migrations when connecting (default
    /// `true`). Teams that run migrations with their own tool apply the
    /// crate's `migrations/*.sql` to the file in order and turn this off.
    #[must_use]
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// The connection options for the URL, checked: a file, opened to write.
    fn options(&self) -> Result<SqliteConnectOptions, BrokerError> {
        let invalid = |e: &dyn fmt::Display| {
            BrokerError::new(BrokerErrorKind::InvalidInput, format!("sqlite: {}: {e}", Bounded::quoted(&self.url)))
        };
        let Some(rest) = self.url.strip_prefix("sqlite:") else {
            return Err(invalid(&"expected a URL such as sqlite://jobs.db"));
        };
        dramaturg_core::broker::check_url_parameters(&self.url, &["mode"]).map_err(|e| invalid(&e))?;
        let mode = dramaturg_core::broker::query_parameter(&self.url, "mode");
        let path = rest.trim_start_matches("//").split('?').next().unwrap_or_default();
        if path.is_empty() || path == ":memory:" || mode == Some("memory") {
            return Err(invalid(
                &"an in-memory database cannot be shared by processes nor outlive one; \
                  name a file (sqlite://jobs.db), or use memory:// for the in-memory broker",
            ));
        }
        if !matches!(mode, None | Some("rw" | "rwc")) {
            return Err(invalid(&"the broker writes to its file: `mode` may be `rw` or `rwc`"));
        }
        let options = SqliteConnectOptions::from_str(&self.url).map_err(|e| invalid(&e))?;
        Ok(options
            .create_if_missing(mode != Some("rw"))
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(self.busy_timeout)
            .synchronous(SqliteSynchronous::Full))
    }
}

/// A [`Broker`] on a SQLite file. Cheap to clone: clones share the pools
/// and the worker's identity (one heartbeat per broker value and its
/// clones).
#[derive(Clone)]
pub struct SqliteBroker {
    shared: Arc<Shared>,
}

impl fmt::Debug for SqliteBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBroker")
            .field("path", &self.shared.path)
            .field("worker_id", &self.shared.worker_id)
            .finish_non_exhaustive()
    }
}

/// What the broker, its consumers, receipts and heartbeat share.
pub(crate) struct Shared {
    pub(crate) config: SqliteConfig,
    /// The file, as the wake-ups of this process know it.
    pub(crate) path: PathBuf,
    /// For sends and administration: commits are synced to disk
    /// (`synchronous = FULL`).
    pub(crate) pool: SqlitePool,
    /// For claims and settlements: one connection, so that they queue here
    /// rather than sleep on the file's lock, with `synchronous = NORMAL`: a
    /// commit survives the process but may be lost with the machine's power,
    /// which only means its message is delivered again (at least once),
    /// never lost; sends never go through it.
    pub(crate) settle_pool: SqlitePool,
    pub(crate) options: SqliteConnectOptions,
    /// This worker's id: `<pid>-<random>`.
    pub(crate) worker_id: String,
    pub(crate) concurrency: AtomicU64,
    /// The tokens of the claims this worker holds: the heartbeat renews
    /// these and no others.
    pub(crate) held: Mutex<HashSet<i64>>,
    /// The idle consumers of this file in this process.
    pub(crate) wakes: Arc<Wakes>,
    pub(crate) heartbeat: Heartbeat,
    /// The ack task, started by the first consumer.
    pub(crate) acks: std::sync::OnceLock<acks::Acks>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.heartbeat.stop();
    }
}

/// SQLite's primary result codes that the broker tells apart.
mod codes {
    pub(super) const BUSY: i64 = 5;
    pub(super) const LOCKED: i64 = 6;
    pub(super) const READONLY: i64 = 8;
    pub(super) const IOERR: i64 = 10;
    pub(super) const FULL: i64 = 13;
    pub(super) const CANTOPEN: i64 = 14;
    pub(super) const NOTADB: i64 = 26;
}

/// A sqlx error as a [`BrokerError`], classified by SQLite's result code:
/// the file locked past the busy timeout is a timeout (retryable), a full
/// disk is `Full` and an I/O error `Connection` (both retryable); a file
/// that cannot be opened or is not a database is invalid input, a read-only
/// file unsuitable (an operator must change it); everything else is a
/// protocol error.
pub(crate) fn db_error(error: sqlx::Error, what: &str) -> BrokerError {
    let kind = match &error {
        sqlx::Error::PoolTimedOut => BrokerErrorKind::Timeout,
        sqlx::Error::PoolClosed => BrokerErrorKind::Closed,
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => BrokerErrorKind::Connection,
        sqlx::Error::Database(e) => match e.code().and_then(|code| code.parse::<i64>().ok()).map(|code| code & 0xff) {
            Some(codes::BUSY | codes::LOCKED) => BrokerErrorKind::Timeout,
            Some(codes::READONLY) => BrokerErrorKind::Unsuitable,
            Some(codes::IOERR) => BrokerErrorKind::Connection,
            Some(codes::FULL) => BrokerErrorKind::Full,
            Some(codes::CANTOPEN | codes::NOTADB) => BrokerErrorKind::InvalidInput,
            _ => BrokerErrorKind::Protocol,
        },
        _ => BrokerErrorKind::Protocol,
    };
    BrokerError::new(kind, format!("sqlite: {what} failed: {error}")).with_source(error)
}

impl SqliteBroker {
    /// Opens the database file at `url` with the default settings (see
    /// [`SqliteConfig::new`]).
    ///
    /// # Errors
    ///
    /// As [`SqliteBroker::with_config`].
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::with_config(SqliteConfig::new(url)).await
    }

    /// Opens the file with `config` (creating it unless the URL says
    /// `?mode=rw`), in WAL mode, and applies the migrations it lacks unless
    /// [`SqliteConfig::migrate`] turned that off.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] of kind [`BrokerErrorKind::InvalidInput`] for a URL
    /// that is not a `sqlite:` URL of a file, an unknown query parameter, a
    /// path that cannot be opened (a missing directory) or a file that is
    /// not a database; of kind `Unsuitable` for a file the process may not
    /// write; of kind `Timeout` when another connection held the file's
    /// write lock past the busy timeout; of kind `Protocol` when a
    /// migration fails.
    pub async fn with_config(config: SqliteConfig) -> Result<Self, BrokerError> {
        let options = config.options()?;
        let shown = config.url.clone();
        if config.migrate {
            while_locked(config.busy_timeout, || schema::migrate(&options, &shown)).await?;
        }
        let pool_options = || {
            SqlitePoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(config.busy_timeout + Duration::from_secs(5))
        };
        let pool = while_locked(config.busy_timeout, || async {
            pool_options().connect_with(options.clone()).await.map_err(|e| db_error(e, &format!("opening {shown}")))
        })
        .await?;
        // The file must be one the broker can use, whether it migrated or not.
        sqlx::query("SELECT count(*) FROM lease_tokens")
            .execute(&pool)
            .await
            .map_err(|e| db_error(e, &format!("reading the broker's tables in {shown}")))?;
        let settle_pool =
            pool_options().max_connections(1).connect_lazy_with(options.clone().synchronous(SqliteSynchronous::Normal));
        let path = std::fs::canonicalize(options.get_filename()).unwrap_or_else(|_| options.get_filename().into());
        let worker_id = format!("{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let shared = Arc::new(Shared {
            wakes: wake::of_file(&path),
            path,
            pool,
            settle_pool,
            options,
            worker_id,
            concurrency: AtomicU64::new(0),
            held: Mutex::new(HashSet::new()),
            heartbeat: Heartbeat::default(),
            acks: std::sync::OnceLock::new(),
            config,
        });
        Ok(Self { shared })
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.shared.path
    }

    /// The broker's connection pool, for the caller's own queries (and
    /// transactions to enqueue in: [`SqliteBroker::enqueue_in`]).
    pub fn pool(&self) -> &SqlitePool {
        &self.shared.pool
    }

    /// This worker's id in the `workers` table and on the claims it holds.
    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }
}

/// Runs `open` again while it finds the file locked, for up to
/// `patience`: a connection that opens while another switches the file to
/// WAL or migrates it is answered `SQLITE_BUSY` at once, before its busy
/// timeout applies (processes that start together on a new file).
async fn while_locked<T, F, Fut>(patience: Duration, mut open: F) -> Result<T, BrokerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BrokerError>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match open().await {
            Err(error) if error.kind() == BrokerErrorKind::Timeout && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            done => return done,
        }
    }
}

/// Refuses a queue name the broker cannot carry: empty, longer than
/// [`MAX_QUEUE_NAME_BYTES`], or holding a NUL character.
pub(crate) fn check_queue(name: &str) -> Result<(), BrokerError> {
    dramaturg_core::broker::check_text_queue_name(name, MAX_QUEUE_NAME_BYTES, "sqlite")
}

#[async_trait]
impl Broker for SqliteBroker {
    /// Checks the name: queues are rows, there is nothing to create.
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        check_queue(queue)
    }

    async fn enqueue(&self, message: Outgoing) -> Result<(), BrokerError> {
        self.enqueue_many(vec![message]).await
    }

    /// Inserts every message in one transaction: all of them or none.
    async fn enqueue_many(&self, messages: Vec<Outgoing>) -> Result<(), BrokerError> {
        transaction::insert_committed(&self.shared, messages).await
    }

    async fn consume(&self, queue: &str, prefetch: usize) -> Result<Box<dyn Consumer>, BrokerError> {
        check_queue(queue)?;
        self.shared.heartbeat.start(&self.shared)?;
        self.shared.acks.get_or_init(|| acks::Acks::start(self.shared.settle_pool.clone()));
        Ok(Box::new(consumer::SqliteConsumer::new(Arc::clone(&self.shared), queue, prefetch)))
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

    fn set_worker_concurrency(&self, concurrency: usize) {
        self.shared.concurrency.store(concurrency as u64, Ordering::Relaxed);
    }

    /// Stops the heartbeat and, if this worker holds no claim, removes it
    /// from the `workers` table. Claims still held (settlements that never
    /// reached the file) lapse after the heartbeat timeout.
    async fn release(&self) -> Result<(), BrokerError> {
        if let Some(thread) = self.shared.heartbeat.stop() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let held = lock(&self.shared.held).len();
        if held > 0 {
            tracing::warn!(held, "stopping with claimed messages not settled; they return after the heartbeat timeout");
            return Ok(());
        }
        sqlx::query(schema::DEREGISTER)
            .bind(&self.shared.worker_id)
            .execute(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "deregistering"))?;
        Ok(())
    }
}

/// Now, in ms since the epoch, as the statements take it.
pub(crate) fn now() -> i64 {
    i64::try_from(dramaturg_core::now_ms()).unwrap_or(i64::MAX)
}

/// `duration` in whole milliseconds, as the statements take it.
pub(crate) fn ms(duration: Duration) -> i64 {
    i64::try_from(millis(duration)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_name_no_writable_file_are_refused() {
        for bad in [
            "sqlite::memory:",
            "sqlite://",
            "sqlite://?mode=memory",
            "sqlite://jobs.db?mode=memory",
            "sqlite://jobs.db?mode=ro",
            "sqlite://jobs.db?mod=rw",
            "postgres://h/db",
        ] {
            let error = SqliteConfig::new(bad).options().expect_err(bad);
            assert_eq!(error.kind(), BrokerErrorKind::InvalidInput, "{bad}: {error}");
        }
        for good in ["sqlite://jobs.db", "sqlite:jobs.db", "sqlite:///tmp/jobs.db", "sqlite://jobs.db?mode=rwc"] {
            assert!(SqliteConfig::new(good).options().is_ok(), "{good}");
        }
        let absolute = SqliteConfig::new("sqlite:///tmp/jobs.db").options().expect("a file");
        assert_eq!(absolute.get_filename(), std::path::Path::new("/tmp/jobs.db"));
    }

    /// A write the file refuses (a read-only file, here a connection that
    /// may only read, which SQLite refuses the same way) is unsuitable,
    /// not retryable.
    #[tokio::test]
    async fn a_refused_write_is_unsuitable() {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:").await.expect("in memory");
        sqlx::query("CREATE TABLE t (x INTEGER)").execute(&mut conn).await.expect("created");
        sqlx::query("PRAGMA query_only = ON").execute(&mut conn).await.expect("set");
        let refused = sqlx::query("INSERT INTO t VALUES (1)").execute(&mut conn).await.expect_err("read only");
        let error = db_error(refused, "writing");
        assert_eq!(error.kind(), BrokerErrorKind::Unsuitable, "{error}");
        assert!(!error.is_retryable());
    }

    #[test]
    fn queue_names_are_checked() {
        assert!(check_queue("default").is_ok());
        for bad in [String::new(), "q".repeat(MAX_QUEUE_NAME_BYTES + 1), "a\0b".into()] {
            assert_eq!(check_queue(&bad).expect_err("refused").kind(), BrokerErrorKind::InvalidInput);
        }
    }
}
