//! The broker's tables: the schema they live in, the migrations that make
//! them, and every statement the broker runs on them.
//!
//! Statements name their tables with the schema (`"jobs".messages`), so
//! that they run on any connection — the broker's own, and the caller's
//! transaction of [`PgBroker::enqueue_in`](crate::PgBroker::enqueue_in),
//! whose `search_path` is the caller's. Only the migrations run with the
//! `search_path` set to the schema (the files under `migrations/` name no
//! schema, so teams can apply them to a schema of their choice).

use dramaturg_core::{Bounded, BrokerError, BrokerErrorKind};
use sqlx::migrate::Migrator;
use sqlx::Connection;

/// The migrations under `migrations/`, embedded.
pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The longest schema name: PostgreSQL allows 63 bytes for a name, and the
/// wake-up channel is `<schema>.wake`.
pub(crate) const MAX_SCHEMA_BYTES: usize = 48;

/// Checks that `schema` is a plain identifier: an ASCII letter or `_`,
/// then letters, digits or `_`, at most [`MAX_SCHEMA_BYTES`]. Statements
/// quote it, so case is kept.
pub(crate) fn check_schema(schema: &str) -> Result<(), BrokerError> {
    let mut chars = schema.chars();
    let plain = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain && schema.len() <= MAX_SCHEMA_BYTES {
        return Ok(());
    }
    Err(BrokerError::new(
        BrokerErrorKind::InvalidInput,
        format!(
            "invalid schema name {:?}: expected an ASCII letter or '_' followed by letters, digits or '_', \
             at most {MAX_SCHEMA_BYTES} bytes",
            Bounded::quoted(schema)
        ),
    ))
}

/// Creates `schema` if needed and applies the migrations it lacks, on a
/// connection of its own whose `search_path` is the schema. sqlx keeps its
/// record of applied migrations in `<schema>._sqlx_migrations`, and holds
/// an advisory lock while it migrates, so that brokers starting at once
/// migrate one after the other.
pub(crate) async fn migrate(options: &sqlx::postgres::PgConnectOptions, schema: &str) -> Result<(), BrokerError> {
    // Quiet about what already exists ("schema … already exists, skipping").
    let options = options
        .clone()
        .options([("search_path", format!("\"{schema}\"")), ("client_min_messages", "warning".to_owned())]);
    let mut conn = sqlx::PgConnection::connect_with(&options).await.map_err(|e| crate::db_error(e, "connecting"))?;
    // A role that may not create schemas can still use one made for it.
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| crate::db_error(e, "looking for the schema"))?;
    if !exists {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&mut conn)
            .await
            .map_err(|e| with_privilege_hint(crate::db_error(e, "creating the schema")))?;
    }
    MIGRATOR.run(&mut conn).await.map_err(|e| {
        let error = BrokerError::new(BrokerErrorKind::Protocol, format!("migrating schema {schema:?} failed: {e}"));
        with_privilege_hint(error.with_source(e))
    })?;
    conn.close().await.map_err(|e| crate::db_error(e, "closing the migration connection"))
}

/// `error`, with a hint when the server refused for want of a privilege:
/// migrating needs `CREATE` on the database (for a new schema) and on the
/// schema (for its tables, and sqlx's record of migrations).
fn with_privilege_hint(error: BrokerError) -> BrokerError {
    if !error.to_string().contains("permission denied") {
        return error;
    }
    let hint = "; a role without CREATE there can use tables made by their owner: apply migrations/*.sql as the \
                owner and connect with PgConfig::migrate(false) (docs/postgres.md)";
    BrokerError::new(error.kind(), format!("{error}{hint}"))
}

/// Every statement of the broker, for one schema.
#[derive(Debug)]
pub(crate) struct Sql {
    /// `<schema>.wake`: the channel of wake-ups; the payload is a queue.
    pub(crate) channel: String,
    /// $1 queues, $2 bodies, $3 priorities, $4 delays (ms), $5 channel.
    pub(crate) enqueue: String,
    /// $1 queue, $2 how many, $3 owner, $4 lease (ms).
    pub(crate) claim: String,
    /// $1 queue → ms until the next delayed message is due, paused.
    pub(crate) idle: String,
    /// $1 queue → paused.
    pub(crate) paused: String,
    /// $1 ids, $2 tokens → the tokens of the rows acknowledged (a stale
    /// ack of a row acknowledged in the same batch is not among them).
    pub(crate) ack: String,
    /// As `ack`, and the store writes of the acks that applied
    /// ([`store_write`]): $3 keys, $4 values, $5 TTLs (ms), $6 the id of
    /// the row each goes with, $7 the store's channel → the tokens of the
    /// rows acknowledged, and a NULL per key written.
    pub(crate) ack_writing: String,
    /// $1 id, $2 token, $3 reason.
    pub(crate) dead_letter: String,
    /// As `dead_letter`, and the store writes that go with it if it
    /// applies: $4 keys, $5 values, $6 TTLs (ms), $7 the row's id for each,
    /// $8 the store's channel → rows dead-lettered, keys written.
    pub(crate) dead_letter_writing: String,
    /// $1 id, $2 token, $3 channel.
    pub(crate) requeue: String,
    /// $1 id, $2 token, $3 body, $4 delay (ms), $5 channel.
    pub(crate) reschedule: String,
    /// $1 ids, $2 tokens, $3 channel: claims never handed out go back.
    pub(crate) unclaim: String,
    /// $1 queue, $2 channel → how many.
    pub(crate) requeue_in_flight: String,
    /// $1 worker, $2 concurrency, $3 lease (ms), $4 tokens held → the
    /// server's clock (ms), claims renewed.
    pub(crate) beat: String,
    /// $1 channel → (queue, how many) returned.
    pub(crate) recover: String,
    /// $1 how old (ms): workers gone that long and holding nothing.
    pub(crate) forget_workers: String,
    /// $1 worker: removed if it holds nothing.
    pub(crate) deregister: String,
    /// $1 retention (ms).
    pub(crate) trim_dead: String,
    /// $1 queue → whether it holds any message (each half of the `OR`
    /// probes an index: waiting messages by queue, claims).
    pub(crate) any_message: String,
    /// $1 queue → ready, delayed, in flight, dead, paused.
    pub(crate) stats: String,
    /// $1 queue.
    pub(crate) purge: String,
    /// The queues with messages or dead letters.
    pub(crate) queues: String,
    /// Every worker: id, last beat (µs since the epoch), concurrency.
    pub(crate) workers: String,
    /// Claims per worker and queue.
    pub(crate) held_counts: String,
    /// $1 worker, $2 how many: the oldest claims of a worker.
    pub(crate) held: String,
    /// $1 queue, $2 channel.
    pub(crate) pause: String,
    /// $1 queue, $2 channel.
    pub(crate) resume: String,
    /// $1 queue, $2 offset, $3 limit.
    pub(crate) dead_page: String,
    /// $1 queue, $2 id or NULL for all, $3 channel → how many.
    pub(crate) replay: String,
    /// $1 queue, $2 id or NULL for all.
    pub(crate) delete_dead: String,
}

impl Sql {
    /// The statements for `schema` (checked by [`check_schema`]).
    pub(crate) fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let unleased = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL";
        let ms = "* interval '1 millisecond'";
        Self {
            channel: format!("{schema}.wake"),
            enqueue: format!(
                "WITH sent AS (
                    INSERT INTO {s}.messages (queue, body, priority, due_at)
                    SELECT queue, body, priority, now() + delay_ms {ms}
                    FROM unnest($1::text[], $2::bytea[], $3::smallint[], $4::bigint[])
                        WITH ORDINALITY AS m(queue, body, priority, delay_ms, n)
                    ORDER BY n
                    RETURNING queue)
                SELECT pg_notify($5, queue) IS NULL FROM (SELECT DISTINCT queue FROM sent) AS queues"
            ),
            claim: format!(
                "WITH picked AS (
                    SELECT id FROM {s}.messages
                    WHERE queue = $1 AND lease_token IS NULL AND due_at <= now()
                        AND NOT EXISTS (SELECT 1 FROM {s}.paused_queues WHERE queue = $1)
                    ORDER BY priority DESC, due_at, id
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED)
                UPDATE {s}.messages AS m
                SET lease_owner = $3, lease_token = nextval('{s}.lease_tokens'),
                    lease_expires_at = now() + $4 {ms}, attempts = m.attempts + 1
                FROM picked WHERE m.id = picked.id
                RETURNING m.id, m.body, m.lease_token, m.redelivered, m.priority,
                    (extract(epoch FROM m.due_at) * 1000000)::bigint"
            ),
            idle: format!(
                "SELECT (SELECT (extract(epoch FROM min(due_at) - now()) * 1000)::bigint FROM {s}.messages
                        WHERE queue = $1 AND lease_token IS NULL AND due_at > now()),
                    EXISTS (SELECT 1 FROM {s}.paused_queues WHERE queue = $1)"
            ),
            paused: format!("SELECT EXISTS (SELECT 1 FROM {s}.paused_queues WHERE queue = $1)"),
            ack: format!(
                "DELETE FROM {s}.messages AS m USING unnest($1::bigint[], $2::bigint[]) AS a(id, token)
                WHERE m.id = a.id AND m.lease_token = a.token RETURNING m.lease_token"
            ),
            ack_writing: format!(
                "WITH gone AS (
                    DELETE FROM {s}.messages AS m USING unnest($1::bigint[], $2::bigint[]) AS a(id, token)
                    WHERE m.id = a.id AND m.lease_token = a.token RETURNING m.id, m.lease_token),
                written AS ({write})
                SELECT lease_token FROM gone
                UNION ALL SELECT NULL FROM written WHERE pg_notify($7, key) IS NULL",
                write = store_write(&s, 3)
            ),
            dead_letter: format!(
                "WITH gone AS (DELETE FROM {s}.messages WHERE id = $1 AND lease_token = $2 RETURNING queue, body)
                INSERT INTO {s}.dead_letters (queue, body, reason) SELECT queue, body, $3 FROM gone"
            ),
            dead_letter_writing: format!(
                "WITH gone AS (DELETE FROM {s}.messages WHERE id = $1 AND lease_token = $2 RETURNING id, queue, body),
                dead AS (INSERT INTO {s}.dead_letters (queue, body, reason) SELECT queue, body, $3 FROM gone),
                written AS ({write})
                SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM written WHERE pg_notify($8, key) IS NULL)",
                write = store_write(&s, 4)
            ),
            requeue: format!(
                "WITH back AS (
                    UPDATE {s}.messages SET {unleased}, redelivered = true
                    WHERE id = $1 AND lease_token = $2 RETURNING queue)
                SELECT pg_notify($3, queue) IS NULL FROM back"
            ),
            reschedule: format!(
                "WITH again AS (
                    UPDATE {s}.messages SET {unleased}, body = $3, due_at = now() + $4 {ms}, redelivered = false
                    WHERE id = $1 AND lease_token = $2 RETURNING queue)
                SELECT pg_notify($5, queue) IS NULL FROM again"
            ),
            unclaim: format!(
                "WITH back AS (
                    UPDATE {s}.messages AS m SET {unleased}, attempts = m.attempts - 1
                    FROM unnest($1::bigint[], $2::bigint[]) AS r(id, token)
                    WHERE m.id = r.id AND m.lease_token = r.token RETURNING m.queue)
                SELECT pg_notify($3, queue) IS NULL FROM (SELECT DISTINCT queue FROM back) AS queues"
            ),
            requeue_in_flight: format!(
                "WITH back AS (
                    UPDATE {s}.messages SET {unleased}, redelivered = true
                    WHERE queue = $1 AND lease_token IS NOT NULL RETURNING 1)
                SELECT (SELECT count(*) FROM back), pg_notify($2, $1) IS NULL"
            ),
            beat: format!(
                "WITH renewed AS (
                    UPDATE {s}.messages SET lease_expires_at = now() + $3 {ms}
                    WHERE lease_owner = $1 AND lease_token = ANY($4::bigint[]) RETURNING 1)
                INSERT INTO {s}.workers AS w (id, last_beat, concurrency) VALUES ($1, now(), $2)
                ON CONFLICT (id) DO UPDATE SET last_beat = now(), concurrency = EXCLUDED.concurrency
                RETURNING (extract(epoch FROM clock_timestamp()) * 1000)::bigint, (SELECT count(*) FROM renewed)"
            ),
            recover: format!(
                "WITH lapsed AS (
                    UPDATE {s}.messages SET {unleased}, redelivered = true
                    WHERE lease_token IS NOT NULL AND lease_expires_at < now() RETURNING queue),
                counts AS (SELECT queue, count(*) AS n FROM lapsed GROUP BY queue)
                SELECT queue, n, pg_notify($1, queue) IS NULL FROM counts"
            ),
            forget_workers: format!(
                "DELETE FROM {s}.workers AS w WHERE last_beat < now() - $1 {ms}
                    AND NOT EXISTS (SELECT 1 FROM {s}.messages AS m WHERE m.lease_owner = w.id)"
            ),
            deregister: format!(
                "DELETE FROM {s}.workers WHERE id = $1
                    AND NOT EXISTS (SELECT 1 FROM {s}.messages WHERE lease_owner = $1)"
            ),
            trim_dead: format!("DELETE FROM {s}.dead_letters WHERE dead_at < now() - $1 {ms}"),
            any_message: format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.messages WHERE queue = $1 AND lease_token IS NULL)
                    OR EXISTS (SELECT 1 FROM {s}.messages WHERE queue = $1 AND lease_token IS NOT NULL)"
            ),
            stats: format!(
                "SELECT count(*) FILTER (WHERE lease_token IS NULL AND due_at <= now()),
                    count(*) FILTER (WHERE lease_token IS NULL AND due_at > now()),
                    count(*) FILTER (WHERE lease_token IS NOT NULL),
                    (SELECT count(*) FROM {s}.dead_letters WHERE queue = $1),
                    EXISTS (SELECT 1 FROM {s}.paused_queues WHERE queue = $1)
                FROM {s}.messages WHERE queue = $1"
            ),
            purge: format!("DELETE FROM {s}.messages WHERE queue = $1 AND lease_token IS NULL"),
            queues: format!("SELECT queue FROM {s}.messages UNION SELECT queue FROM {s}.dead_letters ORDER BY queue"),
            workers: format!(
                "SELECT id, (extract(epoch FROM last_beat) * 1000000)::bigint, concurrency
                FROM {s}.workers ORDER BY id"
            ),
            held_counts: format!(
                "SELECT lease_owner, queue, count(*) FROM {s}.messages
                WHERE lease_owner IS NOT NULL GROUP BY lease_owner, queue"
            ),
            held: format!(
                "SELECT queue, id, body FROM {s}.messages WHERE lease_owner = $1
                ORDER BY queue, lease_token LIMIT $2"
            ),
            pause: format!(
                "WITH paused AS (
                    INSERT INTO {s}.paused_queues (queue) VALUES ($1) ON CONFLICT DO NOTHING RETURNING queue)
                SELECT pg_notify($2, queue) IS NULL FROM paused"
            ),
            resume: format!(
                "WITH resumed AS (DELETE FROM {s}.paused_queues WHERE queue = $1 RETURNING queue)
                SELECT pg_notify($2, queue) IS NULL FROM resumed"
            ),
            dead_page: format!(
                "SELECT id, body, reason, (extract(epoch FROM dead_at) * 1000000)::bigint
                FROM {s}.dead_letters WHERE queue = $1 ORDER BY id OFFSET $2 LIMIT $3"
            ),
            replay: format!(
                "WITH gone AS (
                    DELETE FROM {s}.dead_letters WHERE queue = $1 AND ($2::bigint IS NULL OR id = $2)
                    RETURNING id, queue, body),
                back AS (INSERT INTO {s}.messages (queue, body) SELECT queue, body FROM gone ORDER BY id RETURNING 1)
                SELECT (SELECT count(*) FROM back), pg_notify($3, $1) IS NULL"
            ),
            delete_dead: format!("DELETE FROM {s}.dead_letters WHERE queue = $1 AND ($2::bigint IS NULL OR id = $2)"),
        }
    }
}

/// The store upsert of a settlement's writes (`written` in its statement):
/// the arrays from parameter `$n` on (keys, values, TTLs in ms, the id of
/// the row each goes with) joined to the rows the settlement changed
/// (`gone`, with their `id`), so that a settlement that does not apply
/// writes nothing. Of two writes of one key, the later is made (one row
/// may not be upserted twice in a statement). Returns the keys written.
fn store_write(s: &str, n: u32) -> String {
    format!(
        "INSERT INTO {s}.store AS e (key, kind, value, expires_at)
        SELECT DISTINCT ON (w.key) w.key, 'value', w.value, clock_timestamp() + w.ttl_ms * interval '1 millisecond'
        FROM unnest(${n}::text[], ${}::bytea[], ${}::bigint[], ${}::bigint[]) WITH ORDINALITY AS w(key, value, ttl_ms, owner, n)
        JOIN gone ON gone.id = w.owner
        ORDER BY w.key, w.n DESC
        ON CONFLICT (key) DO UPDATE SET kind = 'value', value = EXCLUDED.value, members = NULL,
            slots = NULL, arrival_ms = NULL, expires_at = EXCLUDED.expires_at
        RETURNING key",
        n + 1,
        n + 2,
        n + 3
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["dramaturg", "_x", "Test_01", &"a".repeat(MAX_SCHEMA_BYTES)] {
            assert!(check_schema(good).is_ok(), "{good}");
        }
        for bad in ["", "1abc", "a-b", "a\"b", "a b", "é", &"a".repeat(MAX_SCHEMA_BYTES + 1)] {
            let error = check_schema(bad).expect_err(bad);
            assert_eq!(error.kind(), BrokerErrorKind::InvalidInput);
        }
    }
}
