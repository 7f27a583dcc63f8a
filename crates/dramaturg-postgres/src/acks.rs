//! Acks coalesced per broker: receipts hand their ack to one task, which
//! deletes every ack waiting when it is free in one statement (up to
//! [`ACK_BATCH`]), each row still checked against its own token. A lone
//! ack goes at once; under load, acks gather while the previous batch
//! commits, so one commit (one WAL flush) settles many.

use std::collections::HashSet;
use std::sync::Arc;

use dramaturg_core::{BrokerError, BrokerErrorKind};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::db_error;
use crate::vacuum::Vacuum;

/// The most acks one statement carries.
const ACK_BATCH: usize = 256;

/// An ack waiting for its batch: the row, its claim's token, and where to
/// say whether it applied.
struct Pending {
    id: i64,
    token: i64,
    done: oneshot::Sender<Result<bool, BrokerError>>,
}

/// The way to the ack task. The task ends when every clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Acks {
    sender: mpsc::UnboundedSender<Pending>,
}

impl Acks {
    /// Starts the ack task on the current runtime, deleting through `pool`
    /// with `statement` (`$1` ids, `$2` tokens, returning the tokens of the
    /// rows deleted), and telling `vacuum` how many rows it deleted.
    pub(crate) fn start(pool: PgPool, statement: String, vacuum: Arc<Vacuum>) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, statement, vacuum, receiver));
        Self { sender }
    }

    /// Acknowledges row `id` if its claim is still `token`: `true` when it
    /// was deleted, `false` when the claim was no longer current.
    pub(crate) async fn ack(&self, id: i64, token: i64) -> Result<bool, BrokerError> {
        let (done, result) = oneshot::channel();
        let closed = || BrokerError::new(BrokerErrorKind::Closed, "postgres: the ack task has stopped");
        self.sender.send(Pending { id, token, done }).map_err(|_| closed())?;
        result.await.map_err(|_| closed())?
    }
}

async fn run(pool: PgPool, statement: String, vacuum: Arc<Vacuum>, mut receiver: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    while receiver.recv_many(&mut batch, ACK_BATCH).await > 0 {
        let ids: Vec<i64> = batch.iter().map(|p| p.id).collect();
        let tokens: Vec<i64> = batch.iter().map(|p| p.token).collect();
        let deleted: Result<Vec<i64>, _> =
            sqlx::query_scalar(&statement).bind(&ids).bind(&tokens).fetch_all(&pool).await;
        match deleted {
            Ok(deleted) => {
                vacuum.deleted(deleted.len() as u64);
                let deleted: HashSet<i64> = deleted.into_iter().collect();
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
