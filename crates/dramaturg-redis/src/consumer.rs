//! Consuming a queue: batched claims, blocking waits, fenced settlement.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::{BrokerError, BrokerErrorKind, Consumer, Delivery, MessageId, Receipt, Settled, Settlement};
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::keys::QueueKeys;
use crate::scripts::WAKE;
use crate::{broker_error, Shared};

/// A claimed message not yet handed out.
struct Claimed {
    id: String,
    body: Bytes,
    token: String,
    redelivered: bool,
}

/// Entry ids handed out and not settled yet.
type Outstanding = Arc<Mutex<HashSet<String>>>;

fn lock(outstanding: &Outstanding) -> std::sync::MutexGuard<'_, HashSet<String>> {
    outstanding.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connection a consumer blocks on, with its server-side client id so
/// that a wait can be ended from another connection (`CLIENT UNBLOCK`).
struct Blocking {
    conn: MultiplexedConnection,
    client_id: i64,
}

pub(crate) struct RedisConsumer {
    shared: Arc<Shared>,
    keys: Arc<QueueKeys>,
    inflight: Arc<str>,
    /// A connection of this consumer's own for blocking waits, so that they
    /// never hold up the shared connection.
    blocking: Option<Blocking>,
    buffer: VecDeque<Claimed>,
    permits: Arc<Semaphore>,
    outstanding: Outstanding,
    /// When to look for claims whose reply was lost: after a failed claim
    /// or wait, at once and again once any wait still pending on the old
    /// connection must have ended.
    rescans: Vec<Instant>,
}

impl RedisConsumer {
    pub(crate) fn new(shared: Arc<Shared>, keys: QueueKeys, number: u64, prefetch: usize) -> Self {
        let inflight = keys.inflight(&shared.worker_id, number).into();
        Self {
            shared,
            keys: Arc::new(keys),
            inflight,
            blocking: None,
            buffer: VecDeque::new(),
            permits: Arc::new(Semaphore::new(prefetch.max(1))),
            outstanding: Outstanding::default(),
            rescans: Vec::new(),
        }
    }

    /// Remembers that a claim's reply may have been lost.
    fn lost_reply(&mut self) {
        let now = Instant::now();
        self.rescans = vec![now, now + self.shared.config.max_block + Duration::from_secs(3)];
    }

    /// Claims up to `n` ready messages (promoting due delayed ones first);
    /// returns how long until the next delayed message is due, if any.
    async fn fetch(&mut self, n: usize) -> Result<Option<Duration>, BrokerError> {
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
            .key(&self.keys.woken)
            .key(&self.keys.claims)
            .arg(n)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "fetch"))?;
        let mut values = reply.into_iter();
        let number = |v: Option<Value>| v.and_then(|v| redis::from_redis_value::<i64>(v).ok());
        let next_due = number(values.next()).and_then(|ms| u64::try_from(ms).ok()).map(Duration::from_millis);
        let orphans = number(values.next()).unwrap_or(0);
        if orphans > 0 {
            tracing::warn!(queue_key = %self.keys.ready, orphans, "dropped ids whose message is gone from the queue");
        }
        while let (Some(id), Some(body), Some(token), Some(again)) =
            (values.next(), values.next(), values.next(), values.next())
        {
            self.buffer.push_back(claimed(id, body, token, again)?);
        }
        Ok(next_due)
    }

    /// Waits on the queue until a message arrives, the next delayed message
    /// is due, or the longest block passes.
    async fn block(&mut self, next_due: Option<Duration>) -> Result<(), BrokerError> {
        let mut wait = self.shared.config.max_block;
        if let Some(due) = next_due {
            wait = wait.min(due);
        }
        if wait < Duration::from_millis(1) {
            return Ok(());
        }
        tracing::trace!(queue_key = %self.keys.ready, ?wait, "waiting for messages");
        let blocking = match &mut self.blocking {
            Some(blocking) => blocking,
            None => {
                let blocking = self.open_blocking().await?;
                self.blocking.insert(blocking)
            }
        };
        let mut wait_cmd = redis::cmd("BLMOVE");
        wait_cmd.arg(&self.keys.ready).arg(&*self.inflight).arg("LEFT").arg("RIGHT").arg(wait.as_secs_f64());
        let trouble = self.shared.registry.connection_trouble.notified();
        let moved: Result<Option<String>, _> = tokio::select! {
            moved = wait_cmd.query_async(&mut blocking.conn) => moved,
            () = trouble => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the heartbeat lost the connection",
            ))),
        };
        let id = match moved {
            Ok(Some(id)) => id,
            Ok(None) => return Ok(()),
            Err(error) => {
                // A claim whose reply is lost stays in the in-flight list
                // until the rescan returns it; open a fresh connection next
                // time.
                self.blocking = None;
                self.lost_reply();
                return Err(broker_error(error, "waiting for messages"));
            }
        };
        let mut conn = self.shared.conn.clone();
        let taken: Option<Vec<Value>> = match self
            .shared
            .scripts
            .take
            .key(&*self.inflight)
            .key(&self.keys.msgs)
            .key(&self.keys.redelivered)
            .key(&self.keys.woken)
            .key(&self.keys.claims)
            .arg(&id)
            .invoke_async(&mut conn)
            .await
        {
            Ok(taken) => taken,
            Err(error) => {
                self.lost_reply();
                return Err(broker_error(error, "claiming a message"));
            }
        };
        match taken.map(Vec::into_iter).as_mut().map(|v| (v.next(), v.next(), v.next())) {
            Some((Some(body), Some(token), Some(again))) => {
                self.buffer.push_back(claimed(Value::BulkString(id.into_bytes()), body, token, again)?);
            }
            Some(_) => {
                tracing::warn!(queue_key = %self.keys.ready, "dropped an id whose message is gone from the queue");
            }
            None => {}
        }
        Ok(())
    }

    async fn open_blocking(&self) -> Result<Blocking, BrokerError> {
        // Replies to a wait come within `max_block`; a little more than
        // that without one means the connection died unnoticed.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.shared.config.max_block + Duration::from_secs(2)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let mut conn = self
            .shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| broker_error(e, "opening a consumer connection"))?;
        let client_id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "opening a consumer connection"))?;
        Ok(Blocking { conn, client_id })
    }

    /// Ends a wait still pending on the blocking connection (so that it
    /// cannot claim anything after this), and drops the connection.
    async fn unblock(&mut self) {
        if let Some(blocking) = self.blocking.take() {
            let mut conn = self.shared.conn.clone();
            let unblocked: Result<i64, _> =
                redis::cmd("CLIENT").arg("UNBLOCK").arg(blocking.client_id).query_async(&mut conn).await;
            if let Err(error) = unblocked {
                tracing::debug!(%error, "could not end a pending wait; the server ends it with the connection");
            }
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
                .filter(|id| id != WAKE && !outstanding.contains(id) && !self.buffer.iter().any(|c| c.id == *id))
                .collect()
        };
        if unhanded.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.shared.scripts.return_unhanded.prepare_invoke();
        invocation.key(&*self.inflight).key(&self.keys.claims).key(&self.keys.ready).key(&self.keys.redelivered);
        for id in &unhanded {
            invocation.arg(id);
        }
        invocation.invoke_async(&mut conn).await.map_err(|e| broker_error(e, "returning messages"))
    }

    /// Runs the rescans that are due.
    async fn rescan(&mut self) -> Result<(), BrokerError> {
        let now = Instant::now();
        if !self.rescans.iter().any(|at| *at <= now) {
            return Ok(());
        }
        let returned = self.return_unhanded().await?;
        self.rescans.retain(|at| *at > now);
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

#[async_trait]
impl Consumer for RedisConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| BrokerError::new(BrokerErrorKind::Closed, "the consumer is closed"))?;
        loop {
            if let Some(claimed) = self.buffer.pop_front() {
                return Ok(self.deliver(claimed, permit));
            }
            self.rescan().await?;
            // This delivery and every other free prefetch slot.
            let room = self.permits.available_permits() + 1;
            let next_due = match self.fetch(room).await {
                Ok(next_due) => next_due,
                Err(error) => {
                    self.lost_reply();
                    return Err(error);
                }
            };
            tracing::trace!(claimed = self.buffer.len(), ?next_due, "fetched");
            if self.buffer.is_empty() {
                self.block(next_due).await?;
            }
        }
    }

    async fn close(mut self: Box<Self>) -> Result<(), BrokerError> {
        // End a wait left pending by a cancelled `next` first, so that it
        // cannot claim a message after the in-flight list was looked at;
        // then everything claimed and not handed out goes back.
        self.unblock().await;
        self.buffer.clear();
        let returned = self.return_unhanded().await?;
        tracing::debug!(returned, "returned prefetched messages to the queue");
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
        let config = &self.shared.config;
        let keys = &self.keys;
        let invocation = match settlement {
            Settlement::Ack => {
                let mut invocation = self.fenced(&scripts.ack);
                invocation.key(&keys.msgs);
                invocation
            }
            Settlement::DeadLetter(reason) => {
                let mut invocation = self.fenced(&scripts.dead);
                invocation
                    .key(&keys.msgs)
                    .key(&keys.dead)
                    .key(&keys.dead_msgs)
                    .key(&keys.reasons)
                    .key(&keys.dead_bytes)
                    .arg(reason.as_str())
                    .arg(crate::millis(config.dead_letter_ttl))
                    .arg(config.dead_letter_max_count)
                    .arg(config.dead_letter_max_bytes);
                invocation
            }
            Settlement::Requeue => {
                let mut invocation = self.fenced(&scripts.requeue);
                invocation.key(&keys.ready).key(&keys.redelivered);
                invocation
            }
            Settlement::Reschedule { body, delay } => {
                let mut invocation = self.fenced(&scripts.reschedule);
                invocation
                    .key(&keys.msgs)
                    .key(&keys.delayed)
                    .key(&keys.ready)
                    .key(&keys.woken)
                    .key(&keys.redelivered)
                    .arg(MessageId::new().to_string())
                    .arg(body.as_ref())
                    .arg(crate::millis(*delay));
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
}

impl RedisReceipt {
    /// An invocation of a settlement script, which starts with the claim
    /// check: KEYS[1..2] are the in-flight list and the claims, ARGV[1..2]
    /// the entry id and the claim's token.
    fn fenced<'a>(&'a self, script: &'a redis::Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&*self.inflight).key(&self.keys.claims).arg(&self.id).arg(&self.token);
        invocation
    }
}

impl Drop for RedisReceipt {
    fn drop(&mut self) {
        lock(&self.outstanding).remove(&self.id);
    }
}
