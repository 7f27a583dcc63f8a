//! Consuming a queue of Dramatiq's layout: fetch into this worker's ack
//! set, poll while idle (with an instant wake-up for what Rust sends), and
//! settle through the ack set, fenced (see `claims.rs`). The queue's delay
//! queue is served beside it by a [`Holder`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::{BrokerError, BrokerErrorKind, Consumer, Delivery, Receipt, Settled, Settlement};
use redis::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::delays::Holder;
use super::keys::{DramatiqKeys, Side};
use super::message;
use super::poll::Backoff;
use crate::consumer::prefetch_slot;
use crate::{broker_error, Shared};

pub(crate) struct DramatiqConsumer {
    shared: Arc<Shared>,
    keys: Arc<DramatiqKeys>,
    /// `__acks__.<worker>.<q>`.
    acks: Arc<str>,
    wake: Arc<Notify>,
    buffer: VecDeque<(String, Bytes)>,
    permits: Arc<Semaphore>,
    idle: Backoff,
    delays: Option<Holder>,
    registered: bool,
    number: u64,
}

impl DramatiqConsumer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        keys: DramatiqKeys,
        number: u64,
        prefetch: usize,
        wakes: (Arc<Notify>, Arc<Notify>),
        registered: bool,
    ) -> Self {
        let keys = Arc::new(keys);
        let acks: Arc<str> = keys.acks(&shared.worker_id, &keys.ready).into();
        let delays = Holder::start(Arc::clone(&shared), Arc::clone(&keys), wakes.1);
        Self {
            idle: Backoff::new(shared.config.max_poll),
            shared,
            keys,
            acks,
            wake: wakes.0,
            buffer: VecDeque::new(),
            permits: Arc::new(Semaphore::new(prefetch.max(1))),
            delays: Some(delays),
            registered,
            number,
        }
    }

    /// Fetches up to `n` messages into the buffer; returns how many.
    async fn fetch(&mut self, n: usize) -> Result<usize, BrokerError> {
        let mut conn = self.shared.conn.clone();
        let reply: Vec<Value> = self
            .shared
            .dramatiq
            .scripts
            .fetch
            .key(&self.keys.ready.list)
            .key(&self.keys.ready.msgs)
            .key(&*self.acks)
            .key(&self.keys.heartbeats)
            .arg(&self.shared.worker_id)
            .arg(n)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "fetch"))?;
        let mut values = reply.into_iter();
        let dropped: i64 = values.next().and_then(|v| redis::from_redis_value(v).ok()).unwrap_or(0);
        if dropped > 0 {
            tracing::warn!(queue_key = %self.keys.ready.list, dropped, "dropped ids whose message is gone");
        }
        let before = self.buffer.len();
        while let (Some(id), Some(body)) = (values.next(), values.next()) {
            let protocol = || BrokerError::new(BrokerErrorKind::Protocol, "redis: unexpected fetch reply");
            let id: String = redis::from_redis_value(id).map_err(|_| protocol())?;
            let body: Vec<u8> = redis::from_redis_value(body).map_err(|_| protocol())?;
            self.buffer.push_back((id, Bytes::from(body)));
        }
        Ok(self.buffer.len() - before)
    }

    fn deliver(&self, id: String, body: Bytes, permit: OwnedSemaphorePermit) -> Delivery {
        let (generation, again) = self.shared.dramatiq.claims.claim(&self.acks, &self.keys.ready.list, &id);
        let receipt = DramatiqReceipt {
            shared: Arc::clone(&self.shared),
            keys: Arc::clone(&self.keys),
            acks: Arc::clone(&self.acks),
            id,
            body: body.clone(),
            generation,
            _permit: permit,
        };
        Delivery::new(body, again, Box::new(receipt))
    }
}

/// Returns held `ids` to the front of `side`'s list; returns how many went
/// back.
pub(crate) async fn give_back(shared: &Shared, acks: &str, side: &Side, ids: &[String]) -> Result<u64, BrokerError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut invocation = shared.dramatiq.scripts.give_back.prepare_invoke();
    invocation.key(acks).key(&side.msgs).key(&side.list).arg(&side.wake);
    for id in ids {
        invocation.arg(id);
    }
    let mut conn = shared.conn.clone();
    let returned = invocation.invoke_async(&mut conn).await.map_err(|e| broker_error(e, "returning messages"))?;
    shared.dramatiq.claims.returned(&side.list, ids.iter().map(String::as_str));
    Ok(returned)
}

#[async_trait]
impl Consumer for DramatiqConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let permit = prefetch_slot(&self.permits).await?;
        self.shared.registry.register_once(&mut self.registered).await?;
        loop {
            if let Some((id, body)) = self.buffer.pop_front() {
                return Ok(self.deliver(id, body, permit));
            }
            // This delivery and every other free prefetch slot.
            let room = self.permits.available_permits() + 1;
            if self.fetch(room).await? > 0 {
                self.idle.reset();
                continue;
            }
            let wait = self.idle.next_wait();
            tokio::select! {
                () = self.wake.notified() => self.idle.reset(),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn close(mut self: Box<Self>) -> Result<(), BrokerError> {
        if let Some(delays) = self.delays.take() {
            delays.stop().await;
        }
        let ids: Vec<String> = self.buffer.drain(..).map(|(id, _)| id).collect();
        let returned = give_back(&self.shared, &self.acks, &self.keys.ready, &ids).await?;
        tracing::debug!(returned, "returned prefetched messages to the queue");
        if self.shared.dramatiq.claims.held(&self.acks) == 0 {
            self.shared.registry.unregister(self.number, &self.keys.queue).await?;
        }
        Ok(())
    }
}

/// Settles one delivery while this worker's claim on it is current.
struct DramatiqReceipt {
    shared: Arc<Shared>,
    keys: Arc<DramatiqKeys>,
    acks: Arc<str>,
    id: String,
    /// The message as delivered, to dead-letter with its reason.
    body: Bytes,
    generation: u64,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for DramatiqReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DramatiqReceipt").field("acks", &self.acks).field("id", &self.id).finish_non_exhaustive()
    }
}

#[async_trait]
impl Receipt for DramatiqReceipt {
    async fn settle(&self, settlement: &Settlement) -> Result<Settled, BrokerError> {
        let claims = &self.shared.dramatiq.claims;
        if !claims.is_current(&self.acks, &self.id, self.generation) {
            return Ok(Settled::Stale);
        }
        let applied = match settlement {
            Settlement::Ack => self.ack().await?,
            Settlement::DeadLetter(reason) => self.dead_letter(reason.as_str()).await?,
            Settlement::Requeue => {
                give_back(&self.shared, &self.acks, &self.keys.ready, std::slice::from_ref(&self.id)).await? == 1
            }
            Settlement::Reschedule { body, delay } => self.reschedule(body, *delay).await?,
            other => {
                return Err(BrokerError::new(BrokerErrorKind::Unsupported, format!("unknown settlement {other:?}")));
            }
        };
        claims.settled(&self.acks, &self.id, self.generation);
        Ok(if applied { Settled::Applied } else { Settled::Stale })
    }
}

impl DramatiqReceipt {
    async fn ack(&self) -> Result<bool, BrokerError> {
        let mut conn = self.shared.conn.clone();
        let applied: i64 = self
            .shared
            .dramatiq
            .scripts
            .ack
            .key(&*self.acks)
            .key(&self.keys.ready.msgs)
            .key(&self.keys.heartbeats)
            .arg(&self.id)
            .arg(&self.shared.worker_id)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "settling a message"))?;
        Ok(applied == 1)
    }

    async fn dead_letter(&self, reason: &str) -> Result<bool, BrokerError> {
        let (body, kept_reason) = message::dead_letter(&self.body, reason);
        let mut conn = self.shared.conn.clone();
        let applied: i64 = self
            .shared
            .dramatiq
            .scripts
            .dead
            .key(&*self.acks)
            .key(&self.keys.ready.msgs)
            .key(&self.keys.dead)
            .key(&self.keys.dead_msgs)
            .key(&self.keys.dead_reasons)
            .key(&self.keys.heartbeats)
            .arg(&self.id)
            .arg(&self.shared.worker_id)
            .arg(body.as_ref())
            .arg(kept_reason)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "dead-lettering a message"))?;
        Ok(applied == 1)
    }

    /// A retry: the new body under a new id, in the delay queue with its
    /// `eta` (or in the queue when there is no delay), as the old one
    /// leaves — one step.
    async fn reschedule(&self, body: &[u8], delay: Duration) -> Result<bool, BrokerError> {
        let (target, eta) = if delay.is_zero() {
            (&self.keys.ready, None)
        } else {
            (&self.keys.delayed, Some(self.shared.clock.now_ms() + crate::millis(delay)))
        };
        let stored = message::stored(body, &target.name, eta);
        move_message(&self.shared, &self.keys, (&self.acks, &self.keys.ready), &self.id, target, &stored).await
    }
}

/// Moves held message `id` (in `from`'s ack set `acks`) to `to` as
/// `stored`, if this worker still holds it; whether it did.
pub(crate) async fn move_message(
    shared: &Shared,
    keys: &DramatiqKeys,
    (acks, from): (&str, &Side),
    id: &str,
    to: &Side,
    stored: &message::Stored,
) -> Result<bool, BrokerError> {
    let mut conn = shared.conn.clone();
    let applied: i64 = shared
        .dramatiq
        .scripts
        .r#move
        .key(acks)
        .key(&from.msgs)
        .key(&from.etas)
        .key(&to.list)
        .key(&to.msgs)
        .key(&to.etas)
        .key(&keys.heartbeats)
        .arg(id)
        .arg(&shared.worker_id)
        .arg(&stored.id)
        .arg(stored.body.as_ref())
        .arg(&to.wake)
        .arg(&stored.raw_eta)
        .invoke_async(&mut conn)
        .await
        .map_err(|e| broker_error(e, "moving a message"))?;
    Ok(applied == 1)
}
