//! The broker vacuums its own messages table as it acknowledges.
//!
//! Every acknowledged message leaves dead rows (its claim's update and its
//! delete), and claims walk the dead entries of the waiting-messages index
//! until a `VACUUM` removes them. Autovacuum looks at each database once a
//! minute by default (`autovacuum_naptime`), far too seldom for a table
//! that turns over thousands of rows a second, and may be off. So the ack
//! task counts the rows it deletes and, every [`PgConfig::vacuum_every`]
//! of them, vacuums the table on a pooled connection — at most one
//! `VACUUM` at a time in this process, and in the whole fleet, through an
//! advisory lock per schema that a worker finding it taken skips.
//!
//! [`PgConfig::vacuum_every`]: crate::PgConfig::vacuum_every

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sqlx::{Executor as _, PgConnection, PgPool};

/// Counts deleted rows and vacuums the messages table every so many.
#[derive(Debug)]
pub(crate) struct Vacuum {
    pool: PgPool,
    schema: String,
    every: u64,
    since: AtomicU64,
    running: AtomicBool,
    /// Set when the table's owner is another role: the server would skip
    /// every `VACUUM` with a notice.
    not_owner: AtomicBool,
}

/// What one turn did.
enum Turn {
    Vacuumed,
    /// Another worker of the schema held the lock.
    Busy,
    /// This role does not own the table (nor is it a superuser).
    NotOwner,
}

impl Vacuum {
    /// Vacuums `schema`'s messages table through `pool` every `every`
    /// deleted rows (never if 0).
    pub(crate) fn new(pool: PgPool, schema: &str, every: u64) -> Arc<Self> {
        Arc::new(Self {
            pool,
            schema: schema.to_owned(),
            every,
            since: AtomicU64::new(0),
            running: AtomicBool::new(false),
            not_owner: AtomicBool::new(false),
        })
    }

    /// Notes `rows` more deleted rows; starts a `VACUUM` on the current
    /// runtime when they reach the threshold and none is running here.
    pub(crate) fn deleted(self: &Arc<Self>, rows: u64) {
        if self.every == 0 || rows == 0 || self.not_owner.load(Ordering::Relaxed) {
            return;
        }
        if self.since.fetch_add(rows, Ordering::Relaxed) + rows < self.every {
            return;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.since.store(0, Ordering::Relaxed);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.run().await;
            this.running.store(false, Ordering::Release);
        });
    }

    /// One `VACUUM`, unless another worker of the schema is running one.
    async fn run(&self) {
        let started = Instant::now();
        let schema = &self.schema;
        match self.vacuum_once().await {
            Ok(Turn::Vacuumed) => {
                tracing::debug!(schema = %schema, elapsed = ?started.elapsed(), "vacuumed the messages table");
            }
            Ok(Turn::Busy) => tracing::debug!(schema = %schema, "another worker is vacuuming the messages table"),
            Ok(Turn::NotOwner) => {
                self.not_owner.store(true, Ordering::Relaxed);
                tracing::warn!(
                    schema = %schema,
                    "this role does not own the messages table, so it cannot vacuum it: vacuum it otherwise and set \
                     PgConfig::vacuum_every(0) (docs/postgres.md)"
                );
            }
            Err(error) => tracing::warn!(schema = %schema, %error, "could not vacuum the messages table"),
        }
    }

    /// Vacuums the table under the schema's advisory lock.
    async fn vacuum_once(&self) -> Result<Turn, sqlx::Error> {
        let mut pooled = self.pool.acquire().await?;
        let conn: &mut PgConnection = &mut pooled;
        let table = format!("\"{}\".messages", self.schema);
        let owner: bool = sqlx::query_scalar(
            "SELECT coalesce((SELECT pg_has_role(relowner, 'MEMBER') FROM pg_class WHERE oid = to_regclass($1)), false)
                OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
        )
        .bind(&table)
        .fetch_one(&mut *conn)
        .await?;
        if !owner {
            return Ok(Turn::NotOwner);
        }
        let lock = format!("{}.vacuum", self.schema);
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))").bind(&lock).fetch_one(&mut *conn).await?;
        if !locked {
            return Ok(Turn::Busy);
        }
        // Not in a transaction, which VACUUM refuses: the simple query
        // protocol, one statement.
        let statement = format!("VACUUM {table}");
        let vacuumed = conn.execute(sqlx::raw_sql(&statement)).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))").bind(&lock).execute(&mut *conn).await;
        vacuumed?;
        unlocked?;
        Ok(Turn::Vacuumed)
    }
}
