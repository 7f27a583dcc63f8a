//! Consuming a queue: batched claims, waits for a wake-up, fenced
//! settlement (acks coalesced per consumer: see `acks.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::sync::{free_slot, PauseWatching, PAUSE_CHECK};
use dramaturg_core::{
    BrokerError, BrokerErrorKind, Consumer, Delivery, MessageId, Receipt, Settled, Settlement, StoreWrite,
    WritingReceipt,
};
use redis::Value;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::acks::{Acks, Outstanding};
use crate::keys::QueueKeys;
use crate::{broker_error, lock, Shared};

/// A claimed message not yet handed out.
struct Claimed {
    id: String,
    body: Bytes,
    token: String,
    redelivered: bool,
}

pub(crate) struct RedisConsumer {
    shared: Arc<Shared>,
    keys: Arc<QueueKeys>,
    inflight: Arc<str>,
    /// Woken when a message arrives in an empty queue (see `wake.rs`).
    wake: Arc<Notify>,
    buffer: VecDeque<Claimed>,
    permits: Arc<Semaphore>,
    outstanding: Outstanding,
    /// Where this consumer's receipts send their acks.
    acks: Acks,
    /// Whether to look for claims whose reply was lost (after a failed
    /// claim).
    rescan: bool,
    /// Whether this consumer's in-flight list is recorded in Redis (so
    /// that recovery finds what it claims). It claims nothing before.
    registered: bool,
    /// This consumer's number and queue, as registered.
    number: u64,
    queue: String,
    /// When this consumer last learned whether its queue is paused.
    checked: Instant,
    /// What it learned, for the worker ([`Consumer::paused`]).
    paused: watch::Sender<bool>,
}

/// How long a consumer of a paused queue waits before it looks again, if
/// the resume's wake-up did not reach it (a subscription reconnecting).
const PAUSED_WAIT: Duration = Duration::from_secs(1);

impl RedisConsumer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        queue: &str,
        number: u64,
        prefetch: usize,
        wake: Arc<Notify>,
        registered: bool,
    ) -> Self {
        let keys = Arc::new(QueueKeys::new(&shared.config.namespace, queue));
        let inflight: Arc<str> = keys.inflight(&shared.worker_id, number).into();
        let outstanding = Outstanding::default();
        let acks = Acks::start(
            shared.conn.clone(),
            Arc::clone(&shared.scripts),
            Arc::clone(&keys),
            Arc::clone(&inflight),
            Arc::clone(&outstanding),
            crate::store::prefix(&shared.config),
        );
        Self {
            shared,
            keys,
            inflight,
            wake,
            buffer: VecDeque::new(),
            permits: Arc::new(Semaphore::new(prefetch.max(1))),
            outstanding,
            acks,
            rescan: false,
            registered,
            number,
            queue: queue.to_owned(),
            checked: Instant::now(),
            paused: watch::Sender::new(false),
        }
    }

    /// Claims up to `n` ready messages (promoting due delayed ones first;
    /// none while the queue is paused); returns how long until the next
    /// delayed message is due, if any, and whether the queue is paused.
    async fn fetch(&mut self, n: usize) -> Result<(Option<Duration>, bool), BrokerError> {
        let mut conn = self.shared.conn.clone();
        let reply: Vec<Value> = self
            .shared
            .scripts
            .fetch
            .key(&self.keys.ready)
            .key(&*self.inflight)
            .key(&self.keys.msgs)
            .key(&self.keys.delayed)
            .key(&self.keys.redelivered)
            .key(&self.keys.claims)
            .key(&self.keys.paused)
            .arg(n)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "fetch"))?;
        let mut values = reply.into_iter();
        let number = |v: Option<Value>| v.and_then(|v| redis::from_redis_value::<i64>(v).ok());
        let next_due = number(values.next()).and_then(|ms| u64::try_from(ms).ok()).map(Duration::from_millis);
        let orphans = number(values.next()).unwrap_or(0);
        let paused = number(values.next()) == Some(1);
        self.learned(paused);
        if orphans > 0 {
            tracing::warn!(queue_key = %self.keys.ready, orphans, "dropped ids whose message is gone from the queue");
        }
        while let (Some(id), Some(body), Some(token), Some(again)) =
            (values.next(), values.next(), values.next(), values.next())
        {
            self.buffer.push_back(claimed(id, body, token, again)?);
        }
        Ok((next_due, paused))
    }

    /// Notes whether the queue is paused, as just learned.
    fn learned(&mut self, paused: bool) {
        self.checked = Instant::now();
        self.paused.send_if_modified(|was| std::mem::replace(was, paused) != paused);
    }

    /// Waits until a message arrives in the empty queue, the next delayed
    /// message is due, the paused queue is resumed, or the longest wait
    /// passes.
    async fn wait(&self, next_due: Option<Duration>, paused: bool) {
        let mut wait = self.shared.config.max_block;
        if paused {
            wait = wait.min(PAUSED_WAIT);
        }
        if let Some(due) = next_due {
            wait = wait.min(due);
        }
        tracing::trace!(queue_key = %self.keys.ready, ?wait, "waiting for messages");
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }

    /// Returns to the queue every message in this consumer's in-flight list
    /// that was claimed but not handed out: the buffer's are kept, the
    /// handed-out ones are their receipts' to settle.
    async fn return_unhanded(&self) -> Result<u64, BrokerError> {
        let mut conn = self.shared.conn.clone();
        let claimed: Vec<String> = redis::cmd("LRANGE")
            .arg(&*self.inflight)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "listing claimed messages"))?;
        let unhanded: Vec<String> = {
            let outstanding = lock(&self.outstanding);
            claimed
                .into_iter()
                .filter(|id| !outstanding.contains(id) && !self.buffer.iter().any(|c| c.id == *id))
                .collect()
        };
        if unhanded.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.shared.scripts.return_unhanded.prepare_invoke();
        invocation
            .key(&*self.inflight)
            .key(&self.keys.claims)
            .key(&self.keys.ready)
            .key(&self.keys.redelivered)
            .arg(&self.keys.wake);
        for id in &unhanded {
            invocation.arg(id);
        }
        invocation.invoke_async(&mut conn).await.map_err(|e| broker_error(e, "returning messages"))
    }

    /// Returns claims whose reply was lost, if a claim failed.
    async fn rescan(&mut self) -> Result<(), BrokerError> {
        if !self.rescan {
            return Ok(());
        }
        let returned = self.return_unhanded().await?;
        self.rescan = false;
        if returned > 0 {
            tracing::warn!(queue_key = %self.keys.ready, returned, "returned claims whose reply was lost to the queue");
        }
        Ok(())
    }

    fn deliver(&self, claimed: Claimed, permit: OwnedSemaphorePermit) -> Delivery {
        lock(&self.outstanding).insert(claimed.id.clone());
        let receipt = RedisReceipt {
            shared: Arc::clone(&self.shared),
            keys: Arc::clone(&self.keys),
            inflight: Arc::clone(&self.inflight),
            id: claimed.id,
            token: claimed.token,
            outstanding: Arc::clone(&self.outstanding),
            acks: self.acks.clone(),
            _permit: permit,
        };
        Delivery::new(claimed.body, claimed.redelivered, Box::new(receipt))
    }
}

fn claimed(id: Value, body: Value, token: Value, again: Value) -> Result<Claimed, BrokerError> {
    let protocol =
        |what: &str| BrokerError::new(BrokerErrorKind::Protocol, format!("redis: unexpected {what} in a claim reply"));
    let id: String = redis::from_redis_value(id).map_err(|_| protocol("id"))?;
    let body: Vec<u8> = redis::from_redis_value(body).map_err(|_| protocol("message"))?;
    let token: i64 = redis::from_redis_value(token).map_err(|_| protocol("claim token"))?;
    let again: i64 = redis::from_redis_value(again).map_err(|_| protocol("flag"))?;
    Ok(Claimed { id, body: Bytes::from(body), token: token.to_string(), redelivered: again == 1 })
}

/// A free prefetch slot for the next delivery; an error once the consumer
/// is closed.
pub(crate) async fn prefetch_slot(permits: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, BrokerError> {
    Arc::clone(permits)
        .acquire_owned()
        .await
        .map_err(|_| BrokerError::new(BrokerErrorKind::Closed, "the consumer is closed"))
}

#[async_trait]
impl PauseWatching for RedisConsumer {
    fn slots(&self) -> Arc<Semaphore> {
        Arc::clone(&self.permits)
    }

    fn pause_watched(&self) -> bool {
        self.paused.receiver_count() > 0
    }

    /// Returns the claimed messages not handed out yet to the queue if it
    /// was paused since they were claimed.
    async fn check_paused(&mut self) -> Result<(), BrokerError> {
        let mut conn = self.shared.conn.clone();
        let paused: bool = redis::cmd("EXISTS")
            .arg(&self.keys.paused)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "looking whether the queue is paused"))?;
        self.learned(paused);
        if paused {
            self.buffer.clear();
            // Returned by the next rescan if this call fails.
            self.rescan = true;
            let returned = self.return_unhanded().await?;
            self.rescan = false;
            tracing::info!(queue_key = %self.keys.ready, returned, "the queue is paused; returned claimed messages");
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for RedisConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let permit = free_slot(self).await?;
        if self.shared.registry.register_once(&mut self.registered).await? {
            tracing::info!(queue_key = %self.keys.ready, "consumer registered");
        }
        loop {
            if !self.buffer.is_empty() && self.checked.elapsed() >= PAUSE_CHECK {
                self.check_paused().await?;
            }
            if let Some(claimed) = self.buffer.pop_front() {
                return Ok(self.deliver(claimed, permit));
            }
            self.rescan().await?;
            // This delivery and every other free prefetch slot.
            let room = self.permits.available_permits() + 1;
            let (next_due, paused) = match self.fetch(room).await {
                Ok(fetched) => fetched,
                Err(error) => {
                    // Its claims may have been made: look for them next time.
                    self.rescan = true;
                    return Err(error);
                }
            };
            tracing::trace!(claimed = self.buffer.len(), ?next_due, "fetched");
            if self.buffer.is_empty() {
                self.wait(next_due, paused).await;
            }
        }
    }

    fn paused(&self) -> Option<watch::Receiver<bool>> {
        Some(self.paused.subscribe())
    }

    async fn close(mut self: Box<Self>) -> Result<(), BrokerError> {
        // Everything claimed and not handed out goes back.
        self.buffer.clear();
        let returned = self.return_unhanded().await?;
        tracing::debug!(returned, "returned prefetched messages to the queue");
        // A consumer whose deliveries are all settled leaves the registry;
        // one with deliveries still running stays until the worker stops.
        if lock(&self.outstanding).is_empty() {
            self.shared.registry.unregister(self.number, &self.queue).await?;
        }
        Ok(())
    }
}

/// Settles one claimed message, while its claim is current.
struct RedisReceipt {
    shared: Arc<Shared>,
    keys: Arc<QueueKeys>,
    inflight: Arc<str>,
    id: String,
    token: String,
    outstanding: Outstanding,
    acks: Acks,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for RedisReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReceipt")
            .field("inflight", &self.inflight)
            .field("id", &self.id)
            .field("token", &self.token)
            .finish()
    }
}

#[async_trait]
impl Receipt for RedisReceipt {
    async fn settle(&self, settlement: &Settlement) -> Result<Settled, BrokerError> {
        let scripts = &self.shared.scripts;
        let keys = &self.keys;
        let invocation = match settlement {
            // Coalesced with this consumer's other acks; the ack is no
            // longer outstanding once its batch is settled.
            Settlement::Ack => return self.acks.ack(&self.id, &self.token, Vec::new()).await,
            Settlement::DeadLetter(reason) => self.dead(&scripts.dead, reason),
            Settlement::Requeue => {
                let mut invocation = self.fenced(&scripts.requeue);
                invocation.key(&keys.ready).key(&keys.redelivered).arg(&keys.wake);
                invocation
            }
            Settlement::Reschedule { body, delay } => {
                let mut invocation = self.fenced(&scripts.reschedule);
                invocation
                    .key(&keys.msgs)
                    .key(&keys.delayed)
                    .key(&keys.ready)
                    .key(&keys.redelivered)
                    .arg(MessageId::new().to_string())
                    .arg(body.as_ref())
                    .arg(crate::millis(*delay))
                    .arg(&keys.wake);
                invocation
            }
            other => {
                return Err(BrokerError::new(BrokerErrorKind::Unsupported, format!("unknown settlement {other:?}")));
            }
        };
        let mut conn = self.shared.conn.clone();
        let applied: i64 =
            invocation.invoke_async(&mut conn).await.map_err(|e| broker_error(e, "settling a message"))?;
        lock(&self.outstanding).remove(&self.id);
        Ok(if applied == 1 { Settled::Applied } else { Settled::Stale })
    }

    fn writing(&self) -> Option<&dyn WritingReceipt> {
        Some(self)
    }
}

/// Acks carry their writes in their batch's round trip, dead letters in
/// their own script call; on one server either makes them only if it
/// applies, so a stale attempt writes no result. Requeues and reschedules,
/// which end no message, and every settlement on a cluster (whose writes'
/// keys lie in other slots) write first, then settle.
#[async_trait]
impl WritingReceipt for RedisReceipt {
    async fn settle_writing(&self, settlement: &Settlement, writes: &[StoreWrite]) -> Result<Settled, BrokerError> {
        let writes = StoreWrite::within_rules(writes);
        if let Settlement::Ack = settlement {
            return self.acks.ack(&self.id, &self.token, writes).await;
        }
        if let (Settlement::DeadLetter(reason), false, false) =
            (settlement, writes.is_empty(), self.shared.conn.is_cluster())
        {
            match self.dead_writing(reason, &writes).await {
                Err(error) if error.code() == Some("OOM") => {
                    tracing::error!(
                        error = %error.detail().unwrap_or_default(),
                        "redis refused the store writes that go with a dead letter (the failure's result is not kept); \
                         dead-lettering without them"
                    );
                    return self.settle(settlement).await;
                }
                Err(error) => return Err(broker_error(error, "dead-lettering a message")),
                Ok(applied) => {
                    lock(&self.outstanding).remove(&self.id);
                    return Ok(if applied == 1 { Settled::Applied } else { Settled::Stale });
                }
            }
        }
        let prefix = crate::store::prefix(&self.shared.config);
        let groups =
            crate::store::write_groups(&prefix, writes.iter().map(|w| (w.key.as_str(), w.value.as_ref(), w.ttl)))
                .map_err(|e| BrokerError::new(BrokerErrorKind::InvalidInput, e.to_string()))?;
        crate::store::write(&self.shared.conn, groups).await.map_err(|e| broker_error(e, "writing to the store"))?;
        self.settle(settlement).await
    }
}

impl RedisReceipt {
    /// An invocation of `script`, `DEAD` or `DEAD_WRITING`, that
    /// dead-letters the message with `reason`.
    fn dead<'a>(&'a self, script: &'a redis::Script, reason: &str) -> redis::ScriptInvocation<'a> {
        let (keys, config) = (&self.keys, &self.shared.config);
        let mut invocation = self.fenced(script);
        invocation
            .key(&keys.msgs)
            .key(&keys.dead)
            .key(&keys.dead_msgs)
            .key(&keys.reasons)
            .key(&keys.dead_bytes)
            .arg(reason)
            .arg(crate::millis(config.dead_letter_ttl))
            .arg(config.dead_letter_max_count)
            .arg(config.dead_letter_max_bytes);
        invocation
    }

    /// `DEAD_WRITING` on one server: the dead letter and, only if it
    /// applies, `writes` (within the store's size rules). 1 if applied, 0
    /// if stale.
    async fn dead_writing(&self, reason: &str, writes: &[StoreWrite]) -> redis::RedisResult<i64> {
        let prefix = crate::store::prefix(&self.shared.config);
        let mut invocation = self.dead(&self.shared.scripts.dead_writing, reason);
        for write in writes {
            let key = crate::store::checked_key(&prefix, &write.key, &write.value).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "a store write outside the size rules",
                    e.to_string(),
                ))
            })?;
            invocation.key(key).arg(write.value.as_ref()).arg(dramaturg_core::store::ttl_millis(write.ttl));
        }
        let mut conn = self.shared.conn.clone();
        invocation.invoke_async(&mut conn).await
    }

    /// An invocation of a settlement script, which starts with the claim
    /// check: KEYS[1..2] are the in-flight list and the claims, ARGV[1..2]
    /// the entry id and the claim's token.
    fn fenced<'a>(&'a self, script: &'a redis::Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&*self.inflight).key(&self.keys.claims).arg(&self.id).arg(&self.token);
        invocation
    }
}

// A receipt dropped unsettled keeps its id among the outstanding ones: the
// worker drops a receipt only when it gave up settling it (the broker was
// away for too long), so the attempt's outcome is known but not recorded.
// Returning it to the queue (a rescan, `close`) would run finished work
// again at once; it stays claimed instead, and only the recovery after
// this worker stops beating returns it.
