//! Consuming a queue: batched claims, blocking waits, settlement.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::{BrokerError, BrokerErrorKind, Consumer, Delivery, Receipt, Settlement};
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::keys::QueueKeys;
use crate::scripts::WAKE;
use crate::{broker_error, now_ms, Shared};

/// A claimed message not yet handed out.
struct Claimed {
    id: String,
    body: Bytes,
    redelivered: bool,
}

/// Entry ids handed out and not settled yet.
type Outstanding = Arc<Mutex<HashSet<String>>>;

pub(crate) struct RedisConsumer {
    shared: Arc<Shared>,
    keys: Arc<QueueKeys>,
    inflight: Arc<str>,
    /// A connection of this consumer's own for blocking waits, so that they
    /// never hold up the shared connection.
    blocking: Option<MultiplexedConnection>,
    buffer: VecDeque<Claimed>,
    permits: Arc<Semaphore>,
    outstanding: Outstanding,
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
        }
    }

    /// Claims up to `n` ready messages (promoting due delayed ones first);
    /// returns when the next delayed message is due, if any.
    async fn fetch(&mut self, n: usize) -> Result<Option<u64>, BrokerError> {
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
            .arg(n)
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "fetch"))?;
        let mut values = reply.into_iter();
        let next_due = values.next().and_then(|v| redis::from_redis_value::<f64>(v).ok()).filter(|due| *due >= 0.0);
        while let (Some(id), Some(body), Some(again)) = (values.next(), values.next(), values.next()) {
            self.buffer.push_back(claimed(id, body, again)?);
        }
        Ok(next_due.map(|due| due as u64))
    }

    /// Waits on the queue until a message arrives, the next delayed message
    /// is due, or the longest block passes.
    async fn block(&mut self, next_due: Option<u64>) -> Result<(), BrokerError> {
        let mut wait = self.shared.config.max_block;
        if let Some(due) = next_due {
            wait = wait.min(Duration::from_millis(due.saturating_sub(now_ms())));
        }
        if wait < Duration::from_millis(1) {
            return Ok(());
        }
        tracing::trace!(queue_key = %self.keys.ready, ?wait, "waiting for messages");
        let conn = match &mut self.blocking {
            Some(conn) => conn,
            None => {
                // Replies to a wait come within `max_block`; a little more
                // than that without one means the connection died unnoticed.
                let config = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(self.shared.config.max_block + Duration::from_secs(2)))
                    .set_connection_timeout(Some(Duration::from_secs(5)));
                let conn = self
                    .shared
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| broker_error(e, "opening a consumer connection"))?;
                self.blocking.insert(conn)
            }
        };
        let mut wait_cmd = redis::cmd("BLMOVE");
        wait_cmd.arg(&self.keys.ready).arg(&*self.inflight).arg("LEFT").arg("RIGHT").arg(wait.as_secs_f64());
        let trouble = self.shared.registry.connection_trouble.notified();
        let moved: Result<Option<String>, _> = tokio::select! {
            moved = wait_cmd.query_async(conn) => moved,
            // A claim whose reply is lost here stays in the in-flight list,
            // and goes back to the queue when this consumer closes.
            () = trouble => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the heartbeat lost the connection",
            ))),
        };
        let id = match moved {
            Ok(Some(id)) => id,
            Ok(None) => return Ok(()),
            Err(error) => {
                // Open a fresh connection next time.
                self.blocking = None;
                return Err(broker_error(error, "waiting for messages"));
            }
        };
        let mut conn = self.shared.conn.clone();
        let taken: Option<(Value, Value)> = self
            .shared
            .scripts
            .take
            .key(&*self.inflight)
            .key(&self.keys.msgs)
            .key(&self.keys.redelivered)
            .key(&self.keys.woken)
            .arg(&id)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "claiming a message"))?;
        if let Some((body, again)) = taken {
            self.buffer.push_back(claimed(Value::BulkString(id.into_bytes()), body, again)?);
        }
        Ok(())
    }

    fn deliver(&self, claimed: Claimed, permit: OwnedSemaphorePermit) -> Delivery {
        self.outstanding.lock().unwrap_or_else(PoisonError::into_inner).insert(claimed.id.clone());
        let receipt = RedisReceipt {
            shared: Arc::clone(&self.shared),
            keys: Arc::clone(&self.keys),
            inflight: Arc::clone(&self.inflight),
            id: claimed.id,
            outstanding: Arc::clone(&self.outstanding),
            _permit: permit,
        };
        Delivery::new(claimed.body, claimed.redelivered, Box::new(receipt))
    }
}

fn claimed(id: Value, body: Value, again: Value) -> Result<Claimed, BrokerError> {
    let protocol =
        |what: &str| BrokerError::new(BrokerErrorKind::Protocol, format!("redis: unexpected {what} in a fetch reply"));
    let id: String = redis::from_redis_value(id).map_err(|_| protocol("id"))?;
    let body: Vec<u8> = redis::from_redis_value(body).map_err(|_| protocol("message"))?;
    let again: i64 = redis::from_redis_value(again).map_err(|_| protocol("flag"))?;
    Ok(Claimed { id, body: Bytes::from(body), redelivered: again == 1 })
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
            // This delivery and every other free prefetch slot.
            let room = self.permits.available_permits() + 1;
            let next_due = self.fetch(room).await?;
            tracing::trace!(claimed = self.buffer.len(), ?next_due, "fetched");
            if self.buffer.is_empty() {
                self.block(next_due).await?;
            }
        }
    }

    async fn close(self: Box<Self>) -> Result<(), BrokerError> {
        // Everything claimed and not handed out goes back: the buffer, and
        // any claim whose reply was dropped when a wait was cancelled.
        let mut conn = self.shared.conn.clone();
        let claimed: Vec<String> = redis::cmd("LRANGE")
            .arg(&*self.inflight)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "listing claimed messages"))?;
        let unhanded: Vec<String> = {
            let outstanding = self.outstanding.lock().unwrap_or_else(PoisonError::into_inner);
            claimed.into_iter().filter(|id| !outstanding.contains(id) && id != WAKE).collect()
        };
        if unhanded.is_empty() {
            return Ok(());
        }
        let mut invocation = self.shared.scripts.requeue.prepare_invoke();
        invocation.key(&*self.inflight).key(&self.keys.ready).key(&self.keys.redelivered);
        for id in &unhanded {
            invocation.arg(id);
        }
        let returned: u64 =
            invocation.invoke_async(&mut conn).await.map_err(|e| broker_error(e, "returning messages"))?;
        tracing::debug!(returned, "returned prefetched messages to the queue");
        Ok(())
    }
}

/// Settles one claimed message.
struct RedisReceipt {
    shared: Arc<Shared>,
    keys: Arc<QueueKeys>,
    inflight: Arc<str>,
    id: String,
    outstanding: Outstanding,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for RedisReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReceipt").field("inflight", &self.inflight).field("id", &self.id).finish()
    }
}

#[async_trait]
impl Receipt for RedisReceipt {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), BrokerError> {
        let mut conn = self.shared.conn.clone();
        let scripts = &self.shared.scripts;
        let result = match settlement {
            Settlement::Ack => {
                scripts.ack.key(&*self.inflight).key(&self.keys.msgs).arg(&self.id).invoke_async::<()>(&mut conn).await
            }
            Settlement::DeadLetter(reason) => {
                let retention = u64::try_from(self.shared.config.dead_letter_ttl.as_millis()).unwrap_or(u64::MAX / 2);
                scripts
                    .dead
                    .key(&*self.inflight)
                    .key(&self.keys.msgs)
                    .key(&self.keys.dead)
                    .key(&self.keys.dead_msgs)
                    .key(&self.keys.reasons)
                    .arg(&self.id)
                    .arg(reason)
                    .arg(now_ms())
                    .arg(retention)
                    .invoke_async::<()>(&mut conn)
                    .await
            }
            Settlement::Requeue => {
                scripts
                    .requeue
                    .key(&*self.inflight)
                    .key(&self.keys.ready)
                    .key(&self.keys.redelivered)
                    .arg(&self.id)
                    .invoke_async::<()>(&mut conn)
                    .await
            }
            other => {
                return Err(BrokerError::new(BrokerErrorKind::Unsupported, format!("unknown settlement {other:?}")));
            }
        };
        self.outstanding.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
        result.map_err(|e| broker_error(e, "settling a message"))
    }
}
