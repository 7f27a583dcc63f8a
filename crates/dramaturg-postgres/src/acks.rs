//! Acks coalesced per broker: receipts hand their ack to one task, which
//! deletes every ack waiting when it is free in one statement (up to
//! [`ACK_BATCH`]), each row still checked against its own token. A lone
//! ack goes at once; under load, acks gather while the previous batch
//! commits, so one commit (one WAL flush) settles many.
//!
//! Store writes that go with an ack (a message's result) are made by the
//! same statement, and only for the acks that apply: a stale attempt
//! writes nothing. A batch without writes does not touch the store's
//! table.

use std::collections::HashSet;
use std::sync::Arc;

use dramaturg_core::{BrokerError, BrokerErrorKind, StoreWrite};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::db_error;
use crate::vacuum::Vacuum;

/// The most acks one statement carries.
const ACK_BATCH: usize = 256;

/// An ack waiting for its batch: the row, its claim's token, the store
/// writes to make if it applies, and where to say whether it applied.
struct Pending {
    id: i64,
    token: i64,
    writes: Vec<StoreWrite>,
    done: oneshot::Sender<Result<bool, BrokerError>>,
}

/// What the ack task runs.
#[derive(Debug)]
pub(crate) struct Statements {
    /// `$1` ids, `$2` tokens → the tokens of the rows deleted.
    pub(crate) ack: String,
    /// The same, with the store writes of the acks that applied (see
    /// `Sql::ack_writing`).
    pub(crate) ack_writing: String,
    /// The store's channel of waits, notified of each key written.
    pub(crate) store_channel: String,
}

/// The way to the ack task. The task ends when every clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Acks {
    sender: mpsc::UnboundedSender<Pending>,
}

impl Acks {
    /// Starts the ack task on the current runtime, deleting through `pool`
    /// with `statements`, and telling `vacuum` how many rows it deleted.
    pub(crate) fn start(pool: PgPool, statements: Statements, vacuum: Arc<Vacuum>) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, statements, vacuum, receiver));
        Self { sender }
    }

    /// Acknowledges row `id` if its claim is still `token`, and then makes
    /// `writes` (within the store's size rules): `true` when it was
    /// deleted, `false` when the claim was no longer current (nothing
    /// written).
    pub(crate) async fn ack(&self, id: i64, token: i64, writes: Vec<StoreWrite>) -> Result<bool, BrokerError> {
        let (done, result) = oneshot::channel();
        let closed = || BrokerError::new(BrokerErrorKind::Closed, "postgres: the ack task has stopped");
        self.sender.send(Pending { id, token, writes, done }).map_err(|_| closed())?;
        result.await.map_err(|_| closed())?
    }
}

async fn run(
    pool: PgPool,
    statements: Statements,
    vacuum: Arc<Vacuum>,
    mut receiver: mpsc::UnboundedReceiver<Pending>,
) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    while receiver.recv_many(&mut batch, ACK_BATCH).await > 0 {
        match settle(&pool, &statements, &batch).await {
            Ok(deleted) => {
                vacuum.deleted(deleted.len() as u64);
                for pending in batch.drain(..) {
                    let _ = pending.done.send(Ok(deleted.contains(&pending.token)));
                }
            }
            Err(error) => {
                let error = db_error(error, "acknowledging messages");
                for pending in batch.drain(..) {
                    let _ = pending.done.send(Err(BrokerError::new(error.kind(), error.to_string())));
                }
            }
        }
    }
}

/// Deletes the rows of `batch` whose claims are current, with their
/// writes; returns the tokens of the rows deleted.
async fn settle(pool: &PgPool, statements: &Statements, batch: &[Pending]) -> Result<HashSet<i64>, sqlx::Error> {
    let ids: Vec<i64> = batch.iter().map(|p| p.id).collect();
    let tokens: Vec<i64> = batch.iter().map(|p| p.token).collect();
    let writes = WriteArrays::new(batch.iter().flat_map(|p| p.writes.iter().map(|w| (p.id, w))));
    if writes.keys.is_empty() {
        let deleted: Vec<i64> = sqlx::query_scalar(&statements.ack).bind(&ids).bind(&tokens).fetch_all(pool).await?;
        return Ok(deleted.into_iter().collect());
    }
    let rows: Vec<Option<i64>> = sqlx::query_scalar(&statements.ack_writing)
        .bind(&ids)
        .bind(&tokens)
        .bind(writes.keys)
        .bind(writes.values)
        .bind(writes.ttls)
        .bind(writes.owners)
        .bind(&statements.store_channel)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().flatten().collect())
}

/// Store writes as the arrays a settlement's statement takes (see
/// `schema::store_write`), each with the id of the row it goes with.
pub(crate) struct WriteArrays<'a> {
    pub(crate) keys: Vec<&'a str>,
    pub(crate) values: Vec<&'a [u8]>,
    /// Milliseconds, as the store applies them.
    pub(crate) ttls: Vec<i64>,
    pub(crate) owners: Vec<i64>,
}

impl<'a> WriteArrays<'a> {
    pub(crate) fn new(writes: impl Iterator<Item = (i64, &'a StoreWrite)>) -> Self {
        let mut arrays = Self { keys: Vec::new(), values: Vec::new(), ttls: Vec::new(), owners: Vec::new() };
        for (owner, write) in writes {
            arrays.keys.push(&write.key);
            arrays.values.push(&write.value);
            arrays.ttls.push(crate::store::ttl_ms(write.ttl));
            arrays.owners.push(owner);
        }
        arrays
    }
}
