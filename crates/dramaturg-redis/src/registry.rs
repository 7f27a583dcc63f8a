//! The worker registry: heartbeats, and the return of a dead worker's
//! claimed messages.
//!
//! Each broker value (a worker) beats from a task of its own, so a busy
//! worker still beats. On every tick it also looks for workers whose last
//! beat is older than the timeout and returns their in-flight messages to
//! their queues — deterministically on every tick, with no `KEYS` scan: the
//! registry lists every consumer's in-flight list.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dramaturg_core::BrokerError;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::keys::{consumer_entry, parse_consumer_entry, RegistryKeys};
use crate::scripts::Scripts;
use crate::{broker_error, now_ms};

pub(crate) struct Registry {
    conn: ConnectionManager,
    keys: RegistryKeys,
    scripts: Arc<Scripts>,
    worker_id: String,
    interval: Duration,
    timeout: Duration,
    entries: Mutex<Vec<String>>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Woken when a heartbeat fails: the connection may be dead, and
    /// consumers blocked on connections of their own should reconnect.
    pub(crate) connection_trouble: Notify,
}

impl Registry {
    pub(crate) fn new(
        conn: ConnectionManager,
        keys: RegistryKeys,
        scripts: Arc<Scripts>,
        worker_id: String,
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            conn,
            keys,
            scripts,
            worker_id,
            interval,
            timeout,
            entries: Mutex::default(),
            task: Mutex::default(),
            connection_trouble: Notify::new(),
        }
    }

    /// Records a consumer's in-flight list, beats once, and starts beating
    /// if this is the first consumer.
    pub(crate) async fn register(self: &std::sync::Arc<Self>, consumer: u64, queue: &str) -> Result<(), BrokerError> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).push(consumer_entry(consumer, queue));
        self.beat().await?;
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.is_none() {
            let registry = std::sync::Arc::clone(self);
            *task = Some(tokio::spawn(async move { registry.run().await }));
        }
        Ok(())
    }

    /// Stops beating (the broker is gone). What this worker still had
    /// claimed is returned by other workers once the timeout passes.
    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
    }

    async fn run(&self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.beat().await {
                tracing::warn!(%error, "redis heartbeat failed; retrying on the next tick");
                self.connection_trouble.notify_waiters();
                continue;
            }
            if let Err(error) = self.recover_dead().await {
                tracing::warn!(%error, "could not check for dead workers; retrying on the next tick");
            }
        }
    }

    async fn beat(&self) -> Result<(), BrokerError> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut pipe = redis::pipe();
        pipe.zadd(&self.keys.workers, &self.worker_id, now_ms()).ignore();
        if !entries.is_empty() {
            pipe.sadd(self.keys.consumers(&self.worker_id), entries).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(|e| broker_error(e, "heartbeat"))
    }

    /// Returns the claimed messages of every worker whose heartbeat lapsed.
    async fn recover_dead(&self) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        let cutoff = now_ms().saturating_sub(u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX));
        let dead: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.keys.workers)
            .arg("-inf")
            .arg(cutoff)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "listing workers"))?;
        for worker in dead.iter().filter(|w| **w != self.worker_id) {
            let consumers_key = self.keys.consumers(worker);
            let entries: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&consumers_key)
                .query_async(&mut conn)
                .await
                .map_err(|e| broker_error(e, "listing a dead worker's consumers"))?;
            let mut recovered = 0u64;
            for (consumer, queue) in entries.iter().filter_map(|e| parse_consumer_entry(e)) {
                let keys = self.keys.queue(queue);
                let count: u64 = self
                    .scripts
                    .recover
                    .key(keys.inflight(worker, consumer))
                    .key(&keys.ready)
                    .key(&keys.redelivered)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| broker_error(e, "returning a dead worker's messages"))?;
                recovered += count;
            }
            redis::pipe()
                .del(&consumers_key)
                .ignore()
                .zrem(&self.keys.workers, worker)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| broker_error(e, "removing a dead worker"))?;
            tracing::warn!(dead_worker = %worker, recovered, "returned a dead worker's claimed messages to their queues");
        }
        Ok(())
    }

    /// The in-flight lists of every registered consumer of `queue`.
    pub(crate) async fn inflight_lists(&self, queue: &str) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn.clone();
        let workers: Vec<String> = redis::cmd("ZRANGE")
            .arg(&self.keys.workers)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "listing workers"))?;
        let keys = self.keys.queue(queue);
        let mut lists = Vec::new();
        for worker in workers {
            let entries: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.keys.consumers(&worker))
                .query_async(&mut conn)
                .await
                .map_err(|e| broker_error(e, "listing consumers"))?;
            for (consumer, entry_queue) in entries.iter().filter_map(|e| parse_consumer_entry(e)) {
                if entry_queue == queue {
                    lists.push(keys.inflight(&worker, consumer));
                }
            }
        }
        Ok(lists)
    }
}
