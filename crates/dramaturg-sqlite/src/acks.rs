//! Acks coalesced per broker: receipts hand their ack to one task, which
//! deletes every ack waiting when it is free in one statement (up to
//! [`ACK_BATCH`]). A lone ack goes at once; under load, acks gather while
//! the previous statement runs, so one write transaction settles many.

use std::collections::HashSet;

use dramaturg_core::{BrokerError, BrokerErrorKind};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::{db_error, schema};

/// The most acks one statement carries.
const ACK_BATCH: usize = 256;

/// An ack on its way: the row, its claim's token, and where to say
/// whether it applied.
type Waiting = (i64, i64, oneshot::Sender<Result<bool, BrokerError>>);

/// The way to the ack task, which ends when every clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Acks {
    sender: mpsc::UnboundedSender<Waiting>,
}

impl Acks {
    /// Starts the ack task on the current runtime, deleting through `pool`.
    pub(crate) fn start(pool: SqlitePool) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(delete_batches(pool, receiver));
        Self { sender }
    }

    /// Deletes row `id` if its claim is still `token`: whether it was.
    pub(crate) async fn ack(&self, id: i64, token: i64) -> Result<bool, BrokerError> {
        let (done, applied) = oneshot::channel();
        let stopped = || BrokerError::new(BrokerErrorKind::Closed, "sqlite: the ack task has stopped");
        self.sender.send((id, token, done)).map_err(|_| stopped())?;
        applied.await.map_err(|_| stopped())?
    }
}

/// A JSON array of `numbers`, as `json_each` reads it.
pub(crate) fn json_array(numbers: impl Iterator<Item = i64>) -> String {
    let items: Vec<String> = numbers.map(|n| n.to_string()).collect();
    format!("[{}]", items.join(","))
}

async fn delete_batches(pool: SqlitePool, mut receiver: mpsc::UnboundedReceiver<Waiting>) {
    let mut waiting = Vec::with_capacity(ACK_BATCH);
    while receiver.recv_many(&mut waiting, ACK_BATCH).await > 0 {
        let deleted: Result<Vec<i64>, _> = sqlx::query_scalar(schema::ACK_MANY)
            .bind(json_array(waiting.iter().map(|w| w.0)))
            .bind(json_array(waiting.iter().map(|w| w.1)))
            .fetch_all(&pool)
            .await;
        // The tokens of the rows deleted: which acks applied.
        let deleted = deleted
            .map(|tokens| tokens.into_iter().collect::<HashSet<i64>>())
            .map_err(|e| db_error(e, "acknowledging"));
        for (_, token, done) in waiting.drain(..) {
            let _ = done.send(match &deleted {
                Ok(tokens) => Ok(tokens.contains(&token)),
                Err(error) => Err(BrokerError::new(error.kind(), error.to_string())),
            });
        }
    }
}
