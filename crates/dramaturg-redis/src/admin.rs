//! Queue statistics, purge, and dead-letter listing and replay.

use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;

use dramaturg_core::{
    BrokerError, BrokerErrorKind, DeadLetter, DeadLetters, MinuteOutcomes, OutcomeCounts, QueueAdmin, QueueStats,
    Replay, WorkerInfo,
};
use redis::{ScriptInvocation, Value};

use crate::keys::{queue_keys_pattern, queue_of_key};
use crate::{broker_error, outcomes, RedisBroker};

/// How many messages one purge script call removes at most.
const PURGE_BATCH: u64 = 1000;

#[async_trait]
impl QueueAdmin for RedisBroker {
    async fn stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        crate::check_queue(queue)?;
        if self.is_dramatiq() {
            return self.dramatiq_stats(queue).await;
        }
        let keys = self.keys(queue);
        let inflight_lists = self.shared.registry.inflight_lists(queue).await?;
        let mut pipe = redis::pipe();
        pipe.llen(&keys.ready).zcard(&keys.delayed).zcard(&keys.dead).exists(&keys.paused);
        for list in &inflight_lists {
            pipe.llen(list);
        }
        let mut conn = self.shared.conn.clone();
        let counts: Vec<u64> = pipe.query_async(&mut conn).await.map_err(|e| broker_error(e, "stats"))?;
        let (ready, delayed, dead, paused) = (counts[0], counts[1], counts[2], counts[3]);
        let in_flight = counts[4..].iter().sum();
        Ok(QueueStats::new(ready, delayed, in_flight, dead).with_paused(paused == 1))
    }

    async fn pause(&self, queue: &str) -> Result<(), BrokerError> {
        crate::check_queue(queue)?;
        self.set_paused(queue, true).await
    }

    async fn resume(&self, queue: &str) -> Result<(), BrokerError> {
        crate::check_queue(queue)?;
        self.set_paused(queue, false).await
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        crate::check_queue(queue)?;
        if self.is_dramatiq() {
            return self.dramatiq_purge(queue).await;
        }
        let keys = self.keys(queue);
        let mut invocation = self.shared.scripts.purge.prepare_invoke();
        invocation
            .key(&keys.ready)
            .key(&keys.delayed)
            .key(&keys.msgs)
            .key(&keys.claims)
            .key(&keys.redelivered)
            .arg(PURGE_BATCH);
        self.in_batches(&invocation, false, "purge").await
    }

    async fn requeue_in_flight(&self, queue: &str) -> Result<u64, BrokerError> {
        crate::check_queue(queue)?;
        if self.is_dramatiq() {
            return self.dramatiq_requeue_in_flight(queue).await;
        }
        self.shared.registry.requeue_in_flight(queue).await
    }

    /// The queues with a key under the namespace (`SCAN`: one pass over
    /// the server's keys — over every master's, on a cluster — for
    /// operators' tools, not for a hot path).
    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        if self.is_dramatiq() {
            return Err(dramatiq_cannot("list its queues: name them"));
        }
        let namespace = &self.shared.config.namespace;
        let masters = self.shared.conn.masters().await.map_err(|e| broker_error(e, "listing queues"))?;
        let mut queues = std::collections::BTreeSet::new();
        for mut conn in masters {
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(queue_keys_pattern(namespace))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| broker_error(e, "listing queues"))?;
                queues.extend(keys.iter().filter_map(|key| queue_of_key(namespace, key)).map(str::to_owned));
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(queues.into_iter().collect())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        if self.is_dramatiq() {
            return Err(dramatiq_cannot("list its workers"));
        }
        self.shared.registry.workers().await
    }

    /// One pipelined call: an `HINCRBY` per count and an `EXPIRE` on the
    /// current minute's hash (see the crate's key table).
    async fn record_outcomes(&self, counts: &BTreeMap<String, OutcomeCounts>) -> Result<(), BrokerError> {
        let mut conn = self.shared.conn.clone();
        outcomes::record(&mut conn, self.shared.registry.keys(), self.shared.clock.now_ms(), counts).await
    }

    /// One pipelined call of an `HGETALL` per minute.
    async fn outcomes_per_minute(&self) -> Result<Vec<MinuteOutcomes>, BrokerError> {
        let mut conn = self.shared.conn.clone();
        outcomes::per_minute(&mut conn, self.shared.registry.keys(), self.shared.clock.now_ms()).await
    }
}

/// What the Dramatiq layout cannot do (Dramatiq keeps no list of queues,
/// and its heartbeats name no consumers).
fn dramatiq_cannot(what: &str) -> BrokerError {
    BrokerError::new(BrokerErrorKind::Unsupported, format!("the Dramatiq layout cannot {what}"))
}

impl RedisBroker {
    /// Sets or removes `queue`'s pause marker (see `PAUSE` in `scripts.rs`).
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), BrokerError> {
        if self.is_dramatiq() {
            return Err(dramatiq_cannot("pause its queues (Python's workers would not know)"));
        }
        let keys = self.keys(queue);
        let mut conn = self.shared.conn.clone();
        let _: i64 = self
            .shared
            .scripts
            .pause
            .key(&keys.paused)
            .arg(if paused { "1" } else { "0" })
            .arg(&keys.wake)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, if paused { "pausing a queue" } else { "resuming a queue" }))?;
        Ok(())
    }
}

#[async_trait]
impl DeadLetters for RedisBroker {
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        self.page(queue, 0, limit).await
    }

    /// Reads the page only (a `ZRANGE` of its positions).
    async fn page(&self, queue: &str, offset: usize, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        crate::check_queue(queue)?;
        if self.is_dramatiq() {
            return self.dramatiq_dead_letters(queue, offset, limit).await;
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
            .arg(offset)
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
        crate::check_queue(queue)?;
        self.move_dead(queue, &which, "replay").await
    }

    async fn delete(&self, queue: &str, which: Replay) -> Result<u64, BrokerError> {
        crate::check_queue(queue)?;
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
        self.move_dead_with(which, action, &keys.dead, |target, newest| {
            let mut invocation = self.shared.scripts.replay.prepare_invoke();
            invocation
                .key(&keys.dead)
                .key(&keys.dead_msgs)
                .key(&keys.reasons)
                .key(&keys.msgs)
                .key(&keys.ready)
                .key(&keys.dead_bytes)
                .arg(target)
                .arg(action)
                .arg(&keys.wake)
                .arg(newest);
            invocation
        })
        .await
    }

    /// Replays or deletes the dead letters `which` by calls of the
    /// invocation that `prepare` makes for a target (the one dead letter's
    /// id, or '' for the next 500) and the newest time (ms) to take: either
    /// layout's replay script, which returns {done, looked at}.
    ///
    /// All of them means those in the sorted set `dead` when this starts:
    /// a replayed message that is dead-lettered again meanwhile has a later
    /// score, so it stays a dead letter instead of going round again.
    pub(crate) async fn move_dead_with<'a>(
        &self,
        which: &Replay,
        action: &str,
        dead: &str,
        prepare: impl FnOnce(&str, &str) -> ScriptInvocation<'a>,
    ) -> Result<u64, BrokerError> {
        let what = format!("{action} of dead letters");
        let (target, newest) = match which {
            // No dead letter has the empty key (the script reads an empty
            // target as "all").
            Replay::One(key) if key.is_empty() => return Ok(0),
            Replay::One(key) => (key.clone(), String::new()),
            _ => {
                let mut conn = self.shared.conn.clone();
                let newest: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(dead)
                    .arg(-1)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| broker_error(e, &what))?;
                let Some((_, score)) = newest.into_iter().next() else { return Ok(0) };
                (String::new(), score.to_string())
            }
        };
        let invocation = prepare(&target, &newest);
        self.in_batches(&invocation, !target.is_empty(), &what).await
    }

    /// Calls `invocation`, a script that returns how many it did and how
    /// many it looked at, until it looks at nothing (or once, when `once`);
    /// returns how many it did in all. Many short calls, so that a purge or
    /// a replay of millions never blocks Redis (and every heartbeat) for
    /// long.
    pub(crate) async fn in_batches(
        &self,
        invocation: &ScriptInvocation<'_>,
        once: bool,
        what: &str,
    ) -> Result<u64, BrokerError> {
        let mut conn = self.shared.conn.clone();
        let mut done = 0;
        loop {
            let (count, looked_at): (u64, u64) =
                invocation.invoke_async(&mut conn).await.map_err(|e| broker_error(e, what))?;
            done += count;
            if once || looked_at == 0 {
                return Ok(done);
            }
        }
    }
}
