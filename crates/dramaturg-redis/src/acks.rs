//! Coalesced acknowledgements: the acks of one consumer's deliveries are
//! settled many to one script call.
//!
//! Every settlement is fenced (see `scripts.rs`), and a fenced ack is one
//! `EVALSHA` whose fixed cost in Redis — looking the script up, setting up
//! and tearing down the Lua call — is larger than its few commands. At
//! full speed acks are by far the most frequent settlement, so they share
//! calls: each consumer has one task that takes every ack queued since its
//! last call (at most [`MAX_BATCH`]) and settles them with one `ACK_MANY`,
//! which checks each claim on its own, exactly as a single ack would.
//!
//! Nothing waits to fill a batch: while one call is in flight, the acks
//! that arrive meanwhile queue up and go together in the next. An ack
//! alone goes at once, in a call of its own.
//!
//! Store writes that go with an ack (a message's result, see
//! `WritingReceipt`) travel in the same round trip. On a single server
//! they go in the same script call (`ACK_MANY_WRITING`), made only for the
//! acks that apply, so a stale attempt writes nothing; a full Redis
//! refuses that call whole, and the acks are then settled without their
//! writes. On a cluster, where the writes' keys lie in other slots, the
//! batch is their `SET`s and `PUBLISH`es (one pipeline per key) followed
//! by the `ACK_MANY` call, so Redis makes every write before it settles
//! any ack of the batch.
//!
//! A settle future dropped after its ack was queued loses nothing: the
//! task settles the ack anyway and drops the answer. The task ends when the
//! consumer and all its receipts are gone; an ack that finds it gone (the
//! runtime is shutting down) settles with a call of its own.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use dramaturg_core::{BrokerError, BrokerErrorKind, Settled, StoreWrite};
use redis::{ErrorKind, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot};

use crate::conn::Conn;
use crate::keys::QueueKeys;
use crate::scripts::Scripts;
use crate::{broker_error, lock};

/// The most acks one script call settles: bounds the call's time in Redis
/// (each ack is a few O(1) commands and an `LREM` from the head of a short
/// list).
const MAX_BATCH: usize = 256;

/// A consumer's entry ids handed out and not settled yet (its receipts and
/// this module take them out as they are settled).
pub(crate) type Outstanding = Arc<Mutex<HashSet<String>>>;

/// What an ack is answered with.
type Answer = Result<Settled, BrokerError>;

/// One queued ack.
struct Pending {
    id: String,
    token: String,
    /// Store writes to make before the ack.
    writes: Vec<StoreWrite>,
    answer: oneshot::Sender<Answer>,
}

/// Where one consumer's acks are settled: its receipts hold clones.
#[derive(Clone)]
pub(crate) struct Acks {
    queue: mpsc::UnboundedSender<Pending>,
    settler: Arc<Settler>,
}

/// What settling acks takes: the keys of one consumer's claims.
struct Settler {
    conn: Conn,
    scripts: Arc<Scripts>,
    keys: Arc<QueueKeys>,
    inflight: Arc<str>,
    outstanding: Outstanding,
    /// The prefix of the broker's store keys.
    store_prefix: String,
}

impl Acks {
    /// Starts the task that settles the acks of the consumer whose
    /// in-flight list is `inflight`. Must be called within a Tokio runtime.
    pub(crate) fn start(
        conn: Conn,
        scripts: Arc<Scripts>,
        keys: Arc<QueueKeys>,
        inflight: Arc<str>,
        outstanding: Outstanding,
        store_prefix: String,
    ) -> Self {
        let settler = Arc::new(Settler { conn, scripts, keys, inflight, outstanding, store_prefix });
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::clone(&settler), pending));
        Self { queue, settler }
    }

    /// Acknowledges entry `id` under the claim `token`: `Applied`, or
    /// `Stale` when the claim is not current (then nothing changed; a
    /// second ack of an applied claim is stale too).
    /// `writes` (in the broker's store, each within the store's size
    /// rules) are made before it.
    pub(crate) async fn ack(&self, id: &str, token: &str, writes: Vec<StoreWrite>) -> Answer {
        let (answer, answered) = oneshot::channel();
        let pending = Pending { id: id.to_owned(), token: token.to_owned(), writes, answer };
        if let Err(mpsc::error::SendError(pending)) = self.queue.send(pending) {
            // The task is gone: settle alone.
            let mut settled = self.settler.settle(std::slice::from_ref(&pending)).await?;
            return Ok(settled.pop().unwrap_or(Settled::Stale));
        }
        answered.await.unwrap_or_else(|_| {
            // The task was dropped mid-call (its runtime is shutting down):
            // the ack may or may not have been applied. A retry is safe.
            Err(BrokerError::new(BrokerErrorKind::Connection, "redis: the ack was cut off before its answer came"))
        })
    }
}

/// Settles queued acks, a batch per call, until every sender is gone.
async fn run(settler: Arc<Settler>, mut pending: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match settler.settle(&batch).await {
            Ok(settled) => {
                for (ack, settled) in batch.drain(..).zip(settled) {
                    // A settle future dropped meanwhile no longer listens.
                    let _ = ack.answer.send(Ok(settled));
                }
            }
            Err(error) => {
                for ack in batch.drain(..) {
                    let _ = ack.answer.send(Err(BrokerError::new(error.kind(), error.to_string())));
                }
            }
        }
    }
}

impl Settler {
    /// Settles `batch` with one `ACK_MANY` call, after its store writes;
    /// one answer per ack, in order. A settled ack (applied or stale) is no
    /// longer outstanding.
    async fn settle(&self, batch: &[Pending]) -> Result<Vec<Settled>, BrokerError> {
        let what = if batch.len() == 1 { "settling a message" } else { "settling messages" };
        let reply = self.write_and_settle(batch).await.map_err(|e| broker_error(e, what))?;
        self.answers(batch, reply)
    }

    /// One pipeline: the writes of `batch` (checked against the store's
    /// size rules by the receipts), then `ACK_MANY` by its hash (on a
    /// cluster, where the writes' keys lie in other slots, the writes go
    /// first, one pipeline per key, and the ack after them); on
    /// `NOSCRIPT` the script is loaded and the pipeline sent again, which
    /// writes the same values again. A write Redis refuses (out of memory)
    /// is logged and does not hold the acks back: the scripts run when
    /// Redis is full, and so do settlements.
    async fn write_and_settle(&self, batch: &[Pending]) -> redis::RedisResult<Vec<Value>> {
        if !self.conn.is_cluster() && batch.iter().any(|ack| !ack.writes.is_empty()) {
            match self.settle_writing(batch).await {
                Err(error) if error.code() == Some("OOM") => {
                    // Full: the call was refused whole; the acks go on
                    // below, their writes refused and logged there.
                }
                done => return done,
            }
        }
        let writes = batch.iter().flat_map(|ack| &ack.writes).map(|w| (w.key.as_str(), w.value.as_ref(), w.ttl));
        let writes = crate::store::write_groups(&self.store_prefix, writes).map_err(|e| {
            redis::RedisError::from((ErrorKind::Client, "a store write outside the size rules", e.to_string()))
        })?;
        let mut ack = redis::cmd("EVALSHA");
        ack.arg(self.scripts.ack_many.get_hash())
            .arg(3)
            .arg(&*self.inflight)
            .arg(&self.keys.claims)
            .arg(&self.keys.msgs);
        for pending in batch {
            ack.arg(&pending.id).arg(&pending.token);
        }
        let mut ack_group = redis::pipe();
        ack_group.add_command(ack);
        let mut conn = self.conn.clone();
        for loaded in [false, true] {
            let mut replies = if conn.is_cluster() && !writes.is_empty() {
                let mut replies = conn.query_groups(writes.clone()).await?;
                replies.extend(conn.query_groups(vec![ack_group.clone()]).await?);
                replies
            } else {
                conn.query_groups([writes.as_slice(), std::slice::from_ref(&ack_group)].concat()).await?
            };
            match replies.pop().unwrap_or(Value::Nil) {
                Value::ServerError(error) if !loaded && error.kind() == Some(ServerErrorKind::NoScript) => {
                    self.scripts.ack_many.prepare_invoke().load_async(&mut conn).await?;
                }
                // Nothing settled: the writes go again with the next try.
                Value::ServerError(error) => return Err(error.into()),
                Value::Array(reply) => {
                    let mut refused = replies.iter().filter_map(|reply| match reply {
                        Value::ServerError(error) => Some(error),
                        _ => None,
                    });
                    if let Some(error) = refused.next() {
                        tracing::error!(
                            refused_commands = 1 + refused.count(),
                            error = %error.details().unwrap_or_default(),
                            "redis refused store writes that go with acks (results not kept); the acks are settled"
                        );
                    }
                    return Ok(reply);
                }
                other => {
                    return Err(redis::RedisError::from((
                        ErrorKind::Client,
                        "unexpected answer to ACK_MANY",
                        format!("{other:?}"),
                    )))
                }
            }
        }
        Err(redis::RedisError::from((ErrorKind::Client, "ACK_MANY is not loaded after SCRIPT LOAD")))
    }

    /// On a single server: `ACK_MANY_WRITING`, one script call that
    /// settles the acks of `batch` and makes the writes of each ack that
    /// applied (a stale attempt writes nothing), with its values sent once.
    /// A full Redis refuses it whole (`OOM`).
    async fn settle_writing(&self, batch: &[Pending]) -> redis::RedisResult<Vec<Value>> {
        let mut call = self.scripts.ack_many_writing.prepare_invoke();
        call.key(&*self.inflight).key(&self.keys.claims).key(&self.keys.msgs).arg(batch.len());
        for pending in batch {
            call.arg(&pending.id).arg(&pending.token);
        }
        for (number, pending) in batch.iter().enumerate() {
            for write in &pending.writes {
                let key = crate::store::checked_key(&self.store_prefix, &write.key, &write.value).map_err(|e| {
                    redis::RedisError::from((ErrorKind::Client, "a store write outside the size rules", e.to_string()))
                })?;
                call.key(key)
                    .arg(number + 1)
                    .arg(write.value.as_ref())
                    .arg(dramaturg_core::store::ttl_millis(write.ttl));
            }
        }
        let mut conn = self.conn.clone();
        call.invoke_async(&mut conn).await
    }

    /// The answers of an `ACK_MANY` reply, one per ack of `batch`.
    fn answers(&self, batch: &[Pending], reply: Vec<Value>) -> Result<Vec<Settled>, BrokerError> {
        if reply.len() != batch.len() {
            return Err(BrokerError::new(
                BrokerErrorKind::Protocol,
                format!("redis: {} answers to {} acks", reply.len(), batch.len()),
            ));
        }
        let mut outstanding = lock(&self.outstanding);
        let settled = batch
            .iter()
            .zip(reply)
            .map(|(ack, applied)| {
                outstanding.remove(&ack.id);
                if matches!(applied, Value::Int(1)) {
                    Settled::Applied
                } else {
                    Settled::Stale
                }
            })
            .collect();
        Ok(settled)
    }
}
