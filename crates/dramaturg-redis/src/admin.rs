//! Queue statistics, purge, and dead-letter listing and replay.

use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::{BrokerError, DeadLetter, DeadLetters, QueueAdmin, QueueStats, Replay};
use redis::Value;

use crate::{broker_error, RedisBroker};

/// How many messages one purge script call removes at most.
const PURGE_BATCH: u64 = 1000;

#[async_trait]
impl QueueAdmin for RedisBroker {
    async fn stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        if self.is_dramatiq() {
            return self.dramatiq_stats(queue).await;
        }
        let keys = self.keys(queue);
        let inflight_lists = self.shared.registry.inflight_lists(queue).await?;
        let mut pipe = redis::pipe();
        pipe.llen(&keys.ready).zcard(&keys.delayed).zcard(&keys.dead);
        for list in &inflight_lists {
            pipe.llen(list);
        }
        let mut conn = self.shared.conn.clone();
        let counts: Vec<u64> = pipe.query_async(&mut conn).await.map_err(|e| broker_error(e, "stats"))?;
        let (ready, delayed, dead) = (counts[0], counts[1], counts[2]);
        let in_flight = counts[3..].iter().sum();
        Ok(QueueStats::new(ready, delayed, in_flight, dead))
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        if self.is_dramatiq() {
            return self.dramatiq_purge(queue).await;
        }
        // Many short script calls, so that a purge of millions of messages
        // never blocks Redis (and every heartbeat) for long.
        let keys = self.keys(queue);
        let mut conn = self.shared.conn.clone();
        let mut purged = 0;
        loop {
            let (removed, looked_at): (u64, u64) = self
                .shared
                .scripts
                .purge
                .key(&keys.ready)
                .key(&keys.delayed)
                .key(&keys.msgs)
                .key(&keys.claims)
                .key(&keys.redelivered)
                .arg(PURGE_BATCH)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| broker_error(e, "purge"))?;
            purged += removed;
            if looked_at == 0 {
                return Ok(purged);
            }
        }
    }

    async fn requeue_in_flight(&self, queue: &str) -> Result<u64, BrokerError> {
        if self.is_dramatiq() {
            return self.dramatiq_requeue_in_flight(queue).await;
        }
        self.shared.registry.requeue_in_flight(queue).await
    }
}

#[async_trait]
impl DeadLetters for RedisBroker {
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        if self.is_dramatiq() {
            return self.dramatiq_dead_letters(queue, limit).await;
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = self.keys(queue);
        let mut conn = self.shared.conn.clone();
        let reply: Vec<Value> = self
            .shared
            .scripts
            .list_dead
            .key(&keys.dead)
            .key(&keys.dead_msgs)
            .key(&keys.reasons)
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "listing dead letters"))?;
        let mut letters = Vec::with_capacity(reply.len() / 4);
        let mut values = reply.into_iter();
        while let (Some(id), Some(body), Some(reason), Some(at)) =
            (values.next(), values.next(), values.next(), values.next())
        {
            let parse = |e: redis::ParsingError| {
                BrokerError::new(dramaturg_core::BrokerErrorKind::Protocol, format!("redis: reading dead letters: {e}"))
            };
            let id: String = redis::from_redis_value(id).map_err(parse)?;
            let body: Vec<u8> = redis::from_redis_value(body).map_err(parse)?;
            let reason: String = redis::from_redis_value(reason).map_err(parse)?;
            let at: f64 = redis::from_redis_value(at).map_err(parse)?;
            let at = UNIX_EPOCH + Duration::from_millis(at as u64);
            letters.push(DeadLetter::new(id, Bytes::from(body), reason, at));
        }
        Ok(letters)
    }

    async fn replay(&self, queue: &str, which: Replay) -> Result<u64, BrokerError> {
        self.move_dead(queue, &which, "replay").await
    }

    async fn delete(&self, queue: &str, which: Replay) -> Result<u64, BrokerError> {
        self.move_dead(queue, &which, "delete").await
    }
}

impl RedisBroker {
    /// Replays or deletes dead letters, 500 per script call.
    async fn move_dead(&self, queue: &str, which: &Replay, action: &str) -> Result<u64, BrokerError> {
        if self.is_dramatiq() {
            return self.dramatiq_move_dead(queue, which, action).await;
        }
        let keys = self.keys(queue);
        let mut conn = self.shared.conn.clone();
        let target = match which {
            // No dead letter has the empty key (the script reads an empty
            // target as "all").
            Replay::One(key) if key.is_empty() => return Ok(0),
            Replay::One(key) => key.clone(),
            _ => String::new(),
        };
        let mut moved = 0;
        loop {
            let (count, looked_at): (u64, u64) = self
                .shared
                .scripts
                .replay
                .key(&keys.dead)
                .key(&keys.dead_msgs)
                .key(&keys.reasons)
                .key(&keys.msgs)
                .key(&keys.ready)
                .key(&keys.dead_bytes)
                .arg(&target)
                .arg(action)
                .arg(&keys.wake)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| broker_error(e, &format!("{action} of dead letters")))?;
            moved += count;
            if !target.is_empty() || looked_at == 0 {
                return Ok(moved);
            }
        }
    }
}
