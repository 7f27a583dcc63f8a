//! Queue statistics, purging, pausing, the workers, and dead letters.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::{
    BrokerError, DeadLetter, DeadLetters, HeldMessage, QueueAdmin, QueueStats, Replay, WorkerInfo, HELD_LISTED,
};

use crate::{check_queue, db_error, PgBroker};

/// A time in µs since the epoch, as the statements give it.
fn from_micros(micros: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait]
impl QueueAdmin for PgBroker {
    async fn stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        check_queue(queue)?;
        let (ready, delayed, in_flight, dead, paused): (i64, i64, i64, i64, bool) =
            sqlx::query_as(&self.shared.sql.stats)
                .bind(queue)
                .fetch_one(&self.shared.pool)
                .await
                .map_err(|e| db_error(e, "reading queue statistics"))?;
        Ok(QueueStats::new(count(ready), count(delayed), count(in_flight), count(dead)).with_paused(paused))
    }

    async fn is_drained(&self, queue: &str) -> Result<bool, BrokerError> {
        check_queue(queue)?;
        let waiting: bool = sqlx::query_scalar(&self.shared.sql.any_message)
            .bind(queue)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "looking for messages"))?;
        Ok(!waiting)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        check_queue(queue)?;
        let done = sqlx::query(&self.shared.sql.purge)
            .bind(queue)
            .execute(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "purging"))?;
        Ok(done.rows_affected())
    }

    async fn requeue_in_flight(&self, queue: &str) -> Result<u64, BrokerError> {
        check_queue(queue)?;
        let (returned,): (i64,) = sqlx::query_as(&self.shared.sql.requeue_in_flight)
            .bind(queue)
            .bind(&self.shared.sql.channel)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "returning in-flight messages"))?;
        Ok(count(returned))
    }

    /// Every queue with a message or a dead letter. It reads the queue
    /// column of both tables whole: for operators, not for a hot path.
    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        sqlx::query_scalar(&self.shared.sql.queues)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "listing queues"))
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        let sql = &self.shared.sql;
        let pool = &self.shared.pool;
        let workers: Vec<(String, i64, Option<i32>)> =
            sqlx::query_as(&sql.workers).fetch_all(pool).await.map_err(|e| db_error(e, "listing workers"))?;
        let counts: Vec<(String, String, i64)> =
            sqlx::query_as(&sql.held_counts).fetch_all(pool).await.map_err(|e| db_error(e, "counting claims"))?;
        let mut infos = Vec::with_capacity(workers.len());
        for (id, last_beat, concurrency) in workers {
            let in_flight: BTreeMap<String, u64> = counts
                .iter()
                .filter(|(owner, ..)| *owner == id)
                .map(|(_, queue, n)| (queue.clone(), count(*n)))
                .collect();
            let held: Vec<(String, i64, Vec<u8>)> = if in_flight.is_empty() {
                Vec::new()
            } else {
                sqlx::query_as(&sql.held)
                    .bind(&id)
                    .bind(i64::try_from(HELD_LISTED).unwrap_or(i64::MAX))
                    .fetch_all(pool)
                    .await
                    .map_err(|e| db_error(e, "listing held messages"))?
            };
            let held = held
                .into_iter()
                .map(|(queue, entry, body)| HeldMessage::new(queue, entry.to_string(), Some(Bytes::from(body))))
                .collect();
            let concurrency = concurrency.and_then(|c| usize::try_from(c).ok());
            infos.push(
                WorkerInfo::new(id, from_micros(last_beat), in_flight).with_concurrency(concurrency).with_held(held),
            );
        }
        Ok(infos)
    }

    /// Records the pause in the `paused_queues` table (it outlives every
    /// worker) and wakes the queue's consumers, which return what they
    /// claimed and did not hand out.
    async fn pause(&self, queue: &str) -> Result<(), BrokerError> {
        self.set_paused(queue, &self.shared.sql.pause, "pausing").await
    }

    async fn resume(&self, queue: &str) -> Result<(), BrokerError> {
        self.set_paused(queue, &self.shared.sql.resume, "resuming").await
    }
}

impl PgBroker {
    /// Runs the pause or resume `statement` for `queue`, which wakes its
    /// consumers when it changes something.
    async fn set_paused(&self, queue: &str, statement: &str, what: &str) -> Result<(), BrokerError> {
        check_queue(queue)?;
        sqlx::query(statement)
            .bind(queue)
            .bind(&self.shared.sql.channel)
            .execute(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, what))?;
        Ok(())
    }
}

#[async_trait]
impl DeadLetters for PgBroker {
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        self.page(queue, 0, limit).await
    }

    async fn page(&self, queue: &str, offset: usize, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        check_queue(queue)?;
        let rows: Vec<(i64, Vec<u8>, String, i64)> = sqlx::query_as(&self.shared.sql.dead_page)
            .bind(queue)
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "listing dead letters"))?;
        Ok(rows
            .into_iter()
            .map(|(id, body, reason, at)| DeadLetter::new(id.to_string(), Bytes::from(body), reason, from_micros(at)))
            .collect())
    }

    /// Moves the dead letters back into the queue in one statement, oldest
    /// first, at priority 0: those there when it starts, each once.
    async fn replay(&self, queue: &str, which: Replay) -> Result<u64, BrokerError> {
        check_queue(queue)?;
        let Some(id) = which.row_id() else { return Ok(0) };
        let (replayed,): (i64,) = sqlx::query_as(&self.shared.sql.replay)
            .bind(queue)
            .bind(id)
            .bind(&self.shared.sql.channel)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "replaying dead letters"))?;
        Ok(count(replayed))
    }

    async fn delete(&self, queue: &str, which: Replay) -> Result<u64, BrokerError> {
        check_queue(queue)?;
        let Some(id) = which.row_id() else { return Ok(0) };
        let done = sqlx::query(&self.shared.sql.delete_dead)
            .bind(queue)
            .bind(id)
            .execute(&self.shared.pool)
            .await
            .map_err(|e| db_error(e, "deleting dead letters"))?;
        Ok(done.rows_affected())
    }
}
