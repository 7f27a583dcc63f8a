//! The broker's tables: the migrations that make them, and every statement
//! the broker runs on them. Times are bound by the caller, in ms since the
//! epoch, from the machine's clock (every process on the file shares it).

use std::time::Duration;

use dramaturg_core::{BrokerError, BrokerErrorKind};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::Connection;

use crate::db_error;

/// The migrations under `migrations/`, embedded.
pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Applies the migrations the file lacks, on a connection of its own.
///
/// sqlx takes no lock on SQLite while it migrates: two processes starting
/// on a new file at once may both try the first migration, and the one
/// that waited for the other's write lock then fails on tables that now
/// exist. It is tried again once, when it sees the migration recorded.
pub(crate) async fn migrate(options: &SqliteConnectOptions, shown: &str) -> Result<(), BrokerError> {
    let mut conn =
        sqlx::SqliteConnection::connect_with(options).await.map_err(|e| db_error(e, &format!("opening {shown}")))?;
    let mut result = MIGRATOR.run(&mut conn).await;
    if result.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        result = MIGRATOR.run(&mut conn).await;
    }
    let migrated = result.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(e) => db_error(e, &format!("migrating {shown}")),
        other => BrokerError::new(BrokerErrorKind::Protocol, format!("sqlite: migrating {shown} failed: {other}"))
            .with_source(other),
    });
    let closed = conn.close().await.map_err(|e| db_error(e, "closing the migration connection"));
    migrated.and(closed)
}

/// Clears a claim.
macro_rules! unleased {
    () => {
        "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
    };
}

/// Followed by `VALUES (queue, body, priority, due (ms)), …`, in the
/// order of sending.
pub(crate) const ENQUEUE: &str = "INSERT INTO messages (queue, body, priority, due_at) ";

/// ?1 queue, ?2 now, ?3 how many → ids in delivery order.
pub(crate) const PICK: &str = "SELECT id FROM messages
    WHERE queue = ?1 AND lease_token IS NULL AND due_at <= ?2
        AND NOT EXISTS (SELECT 1 FROM paused_queues WHERE queue = ?1)
    ORDER BY priority DESC, due_at, id LIMIT ?3";

/// ?1 how many → the last token taken.
pub(crate) const TAKE_TOKENS: &str = "UPDATE lease_tokens SET last = last + ?1 WHERE id = 1 RETURNING last";

/// ?1 owner, ?2 first token, ?3 deadline, ?4 JSON array of ids: the n-th id
/// gets token ?2 + n → id, body, token, redelivered.
pub(crate) const CLAIM: &str = "UPDATE messages
    SET lease_owner = ?1, lease_token = ?2 + j.key, lease_expires_at = ?3, attempts = attempts + 1
    FROM json_each(?4) AS j WHERE messages.id = j.value
    RETURNING id, body, lease_token, redelivered";

/// ?1 queue, ?2 now → ready, paused.
pub(crate) const LOOK: &str = "SELECT
        EXISTS (SELECT 1 FROM messages WHERE queue = ?1 AND lease_token IS NULL AND due_at <= ?2),
        EXISTS (SELECT 1 FROM paused_queues WHERE queue = ?1)";

/// ?1 queue, ?2 now → ms since the epoch when the next delayed message is
/// due. It reads every delayed message of the queue in the index (ordered
/// by priority first): asked only when none is ready.
pub(crate) const NEXT_DUE: &str =
    "SELECT min(due_at) FROM messages WHERE queue = ?1 AND lease_token IS NULL AND due_at > ?2";

/// ?1 queue → paused.
pub(crate) const PAUSED: &str = "SELECT EXISTS (SELECT 1 FROM paused_queues WHERE queue = ?1)";

/// ?1 JSON array of ids, ?2 JSON array of their tokens → the tokens of
/// the rows deleted. A token is never handed out twice, so a row whose
/// token is among them is the row it was handed out for, and the token
/// tells which ack applied (a stale ack of the same row does not).
pub(crate) const ACK_MANY: &str = "DELETE FROM messages
    WHERE id IN (SELECT value FROM json_each(?1)) AND lease_token IN (SELECT value FROM json_each(?2))
    RETURNING lease_token";

/// ?1 id, ?2 token.
pub(crate) const ACK: &str = "DELETE FROM messages WHERE id = ?1 AND lease_token = ?2";

/// ?1 id, ?2 token, ?3 reason, ?4 now: the copy; [`ACK`] then deletes.
pub(crate) const DEAD_LETTER: &str = "INSERT INTO dead_letters (queue, body, reason, dead_at)
    SELECT queue, body, ?3, ?4 FROM messages WHERE id = ?1 AND lease_token = ?2";

/// ?1 id, ?2 token → queue.
pub(crate) const REQUEUE: &str = concat!(
    "UPDATE messages SET ",
    unleased!(),
    ", redelivered = 1 WHERE id = ?1 AND lease_token = ?2 RETURNING queue"
);

/// ?1 id, ?2 token, ?3 body, ?4 due → queue.
pub(crate) const RESCHEDULE: &str = concat!(
    "UPDATE messages SET ",
    unleased!(),
    ", body = ?3, due_at = ?4, redelivered = 0 WHERE id = ?1 AND lease_token = ?2 RETURNING queue"
);

/// ?1 id, ?2 token: a claim never handed out goes back as if never made.
pub(crate) const UNCLAIM: &str =
    concat!("UPDATE messages SET ", unleased!(), ", attempts = attempts - 1 WHERE id = ?1 AND lease_token = ?2");

/// ?1 queue → how many.
pub(crate) const REQUEUE_IN_FLIGHT: &str =
    concat!("UPDATE messages SET ", unleased!(), ", redelivered = 1 WHERE queue = ?1 AND lease_token IS NOT NULL");

/// ?1 worker, ?2 new deadline, ?3 JSON array of the tokens held.
pub(crate) const RENEW: &str = "UPDATE messages SET lease_expires_at = ?2
    WHERE lease_owner = ?1 AND lease_token IN (SELECT value FROM json_each(?3))";

/// ?1 worker, ?2 now, ?3 concurrency.
pub(crate) const BEAT: &str = "INSERT INTO workers (id, last_beat, concurrency) VALUES (?1, ?2, ?3)
    ON CONFLICT (id) DO UPDATE SET last_beat = excluded.last_beat, concurrency = excluded.concurrency";

/// ?1 now → the queue of each claim returned.
pub(crate) const RECOVER: &str = concat!(
    "UPDATE messages SET ",
    unleased!(),
    ", redelivered = 1 WHERE lease_token IS NOT NULL AND lease_expires_at < ?1 RETURNING queue"
);

/// ?1 before: workers silent since then and holding nothing.
pub(crate) const FORGET_WORKERS: &str = "DELETE FROM workers AS w WHERE last_beat < ?1
    AND NOT EXISTS (SELECT 1 FROM messages AS m WHERE m.lease_owner = w.id)";

/// ?1 worker: removed if it holds nothing.
pub(crate) const DEREGISTER: &str =
    "DELETE FROM workers WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM messages WHERE lease_owner = ?1)";

/// ?1 before: dead letters older than that.
pub(crate) const TRIM_DEAD: &str = "DELETE FROM dead_letters WHERE dead_at < ?1";

/// ?1 queue, ?2 now → ready, delayed, in flight, dead, paused.
pub(crate) const STATS: &str = "SELECT
        coalesce(sum(lease_token IS NULL AND due_at <= ?2), 0),
        coalesce(sum(lease_token IS NULL AND due_at > ?2), 0),
        coalesce(sum(lease_token IS NOT NULL), 0),
        (SELECT count(*) FROM dead_letters WHERE queue = ?1),
        EXISTS (SELECT 1 FROM paused_queues WHERE queue = ?1)
    FROM messages WHERE queue = ?1";

/// ?1 queue → whether it holds any message (each half of the `OR` probes
/// an index: waiting messages by queue, claims).
pub(crate) const ANY_MESSAGE: &str = "SELECT EXISTS (SELECT 1 FROM messages WHERE queue = ?1 AND lease_token IS NULL)
    OR EXISTS (SELECT 1 FROM messages WHERE queue = ?1 AND lease_token IS NOT NULL)";

/// ?1 queue: the waiting and delayed messages.
pub(crate) const PURGE: &str = "DELETE FROM messages WHERE queue = ?1 AND lease_token IS NULL";

/// The queues with messages or dead letters.
pub(crate) const QUEUES: &str = "SELECT queue FROM messages UNION SELECT queue FROM dead_letters ORDER BY queue";

/// Every worker: id, last beat, concurrency.
pub(crate) const WORKERS: &str = "SELECT id, last_beat, concurrency FROM workers ORDER BY id";

/// Claims per worker and queue.
pub(crate) const HELD_COUNTS: &str =
    "SELECT lease_owner, queue, count(*) FROM messages WHERE lease_owner IS NOT NULL GROUP BY lease_owner, queue";

/// ?1 worker, ?2 how many: its oldest claims.
pub(crate) const HELD: &str =
    "SELECT queue, id, body FROM messages WHERE lease_owner = ?1 ORDER BY queue, lease_token LIMIT ?2";

/// ?1 queue, ?2 now.
pub(crate) const PAUSE: &str = "INSERT INTO paused_queues (queue, paused_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING";

/// ?1 queue.
pub(crate) const RESUME: &str = "DELETE FROM paused_queues WHERE queue = ?1";

/// ?1 queue, ?2 offset, ?3 limit.
pub(crate) const DEAD_PAGE: &str =
    "SELECT id, body, reason, dead_at FROM dead_letters WHERE queue = ?1 ORDER BY id LIMIT ?3 OFFSET ?2";

/// ?1 queue, ?2 id or NULL for all, ?3 now: the copy back, oldest first;
/// [`DELETE_DEAD`] then deletes, in the same transaction.
pub(crate) const REPLAY: &str = "INSERT INTO messages (queue, body, due_at)
    SELECT queue, body, ?3 FROM dead_letters WHERE queue = ?1 AND (?2 IS NULL OR id = ?2) ORDER BY id";

/// ?1 queue, ?2 id or NULL for all.
pub(crate) const DELETE_DEAD: &str = "DELETE FROM dead_letters WHERE queue = ?1 AND (?2 IS NULL OR id = ?2)";
