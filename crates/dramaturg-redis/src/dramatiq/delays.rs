//! Delayed messages in Dramatiq's layout: a consumer of `q` also takes
//! the messages of `q.DQ`, as Dramatiq's workers do, into its ack set
//! `__acks__.<worker>.q.DQ` (so that they come back if this worker dies),
//! holds them — their ids and due times only, at most `max_held_delays` —
//! and moves each one to `q` when it falls due: under a new
//! `redis_message_id`, with `queue_name` `q` and no `eta`, as Dramatiq's
//! worker does, in one step with its removal from the delay queue.
//!
//! The holder is a task of its own, so that promotions happen on time
//! however busy the consumer is. It is never early: a message moves once
//! the server's clock (as this client knows it) has reached its `eta`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use dramaturg_core::BrokerError;
use redis::Value;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::consumer::{give_back, move_message};
use super::keys::DramatiqKeys;
use super::message;
use super::poll::Backoff;
use crate::{broker_error, Shared};

/// The task that holds a consumer's delayed messages; stopped (giving
/// them back to the delay queue) by [`Holder::stop`] or when dropped.
pub(crate) struct Holder {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Holder {
    pub(crate) fn start(shared: Arc<Shared>, keys: Arc<DramatiqKeys>, wake: Arc<Notify>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let acks = keys.acks(&shared.worker_id, &keys.delayed);
        let task = tokio::spawn(Task { shared, keys, acks, wake, held: BinaryHeap::new() }.run(stopped));
        Self { stop, task: Some(task) }
    }

    /// Stops the task, which gives back what it holds.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Task {
    shared: Arc<Shared>,
    keys: Arc<DramatiqKeys>,
    /// `__acks__.<worker>.q.DQ`.
    acks: String,
    wake: Arc<Notify>,
    /// Held ids by due time (ms).
    held: BinaryHeap<Reverse<(u64, String)>>,
}

impl Task {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut idle = Backoff::new(self.shared.config.max_poll);
        let mut failures = 0u32;
        while !*stop.borrow() {
            let result = match self.promote_due().await {
                Ok(()) => self.take().await,
                Err(error) => Err(error),
            };
            let wait = match result {
                Ok(0) => idle.next_wait(),
                Ok(_) => {
                    idle.reset();
                    failures = 0;
                    continue;
                }
                Err(error) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(%error, failures, "cannot serve the delay queue; retrying");
                    }
                    idle.next_wait()
                }
            };
            let wait = match self.held.peek() {
                Some(Reverse((due, _))) => {
                    wait.min(Duration::from_millis(due.saturating_sub(self.shared.clock.now_ms()).max(1)))
                }
                None => wait,
            };
            tokio::select! {
                _ = stop.changed() => {}
                () = self.wake.notified() => idle.reset(),
                () = tokio::time::sleep(wait) => {}
            }
        }
        let ids: Vec<String> = self.held.drain().map(|Reverse((_, id))| id).collect();
        match give_back(&self.shared, &self.acks, &self.keys.delayed, &ids).await {
            Ok(returned) => tracing::debug!(returned, "returned held delayed messages to the delay queue"),
            Err(error) => tracing::warn!(
                %error,
                held = ids.len(),
                "cannot return held delayed messages; they come back once this worker's heartbeat lapses"
            ),
        }
    }

    /// Takes delayed messages up to the limit; returns how many.
    async fn take(&mut self) -> Result<usize, BrokerError> {
        let room = self.shared.config.max_held_delays.saturating_sub(self.held.len());
        if room == 0 {
            return Ok(0);
        }
        let mut conn = self.shared.conn.clone();
        let side = &self.keys.delayed;
        let reply: Vec<Value> = self
            .shared
            .dramatiq
            .scripts
            .take_delayed
            .key(&side.list)
            .key(&side.msgs)
            .key(&self.acks)
            .key(&self.keys.heartbeats)
            .key(&side.etas)
            .arg(&self.shared.worker_id)
            .arg(room.min(1000))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "taking delayed messages"))?;
        let mut values = reply.into_iter().skip(1);
        let mut taken = 0;
        while let (Some(id), Some(due)) = (values.next(), values.next()) {
            let (Ok(id), Ok(due)) = (redis::from_redis_value::<String>(id), redis::from_redis_value::<u64>(due)) else {
                continue;
            };
            self.held.push(Reverse((due, id)));
            taken += 1;
        }
        Ok(taken)
    }

    /// Moves every held message that is due to the queue.
    async fn promote_due(&mut self) -> Result<(), BrokerError> {
        while let Some(Reverse((due, _))) = self.held.peek() {
            if *due > self.shared.clock.now_ms() {
                return Ok(());
            }
            let Some(Reverse((due, id))) = self.held.pop() else { return Ok(()) };
            if let Err(error) = self.promote(&id).await {
                self.held.push(Reverse((due, id)));
                return Err(error);
            }
        }
        Ok(())
    }

    async fn promote(&self, id: &str) -> Result<(), BrokerError> {
        let mut conn = self.shared.conn.clone();
        let body: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&self.keys.delayed.msgs)
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "reading a delayed message"))?;
        let Some(body) = body else {
            // Gone (purged): let go of its id.
            return redis::cmd("SREM")
                .arg(&self.acks)
                .arg(id)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| broker_error(e, "dropping a delayed message"));
        };
        let stored = message::stored(&body, &self.keys.ready.name, None);
        let moved =
            move_message(&self.shared, &self.keys, (&self.acks, &self.keys.delayed), id, &self.keys.ready, &stored)
                .await?;
        if !moved {
            tracing::debug!(id, "a held delayed message was taken over by another worker");
        }
        Ok(())
    }
}
