//! Enqueueing, through the broker's pool or a connection of the caller's:
//! inside the caller's transaction, the message is there exactly when the
//! caller's own writes commit.

use dramaturg_core::{Actor, App, BrokerError, EnqueueError, Outgoing, SendOptions, Sent};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::{check_queue, db_error, ms, now, schema, Shared, SqliteBroker};

/// The most messages one `INSERT` carries: 4 parameters each, well under
/// SQLite's limit of 32,766 parameters per statement.
const INSERT_BATCH: usize = 500;

/// Checks every message's queue, then inserts them on `conn`, in order:
/// one statement per [`INSERT_BATCH`] messages.
async fn insert(conn: &mut SqliteConnection, messages: &[Outgoing]) -> Result<(), BrokerError> {
    for message in messages {
        check_queue(&message.queue)?;
    }
    let now = now();
    for batch in messages.chunks(INSERT_BATCH) {
        let mut statement = QueryBuilder::<Sqlite>::new(schema::ENQUEUE);
        statement.push_values(batch, |mut row, message| {
            row.push_bind(&message.queue)
                .push_bind(message.body.as_ref())
                .push_bind(i64::from(message.priority.unwrap_or(0)))
                .push_bind(now.saturating_add(message.delay.map_or(0, ms)));
        });
        statement.build().execute(&mut *conn).await.map_err(|e| db_error(e, "enqueueing"))?;
    }
    Ok(())
}

/// Wakes the consumers of this process of every queue of `messages`.
fn wake(shared: &Shared, messages: &[Outgoing]) {
    let mut queues: Vec<&str> = messages.iter().map(|m| m.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    for queue in queues {
        shared.wakes.wake(queue);
    }
}

/// Inserts `messages` in a transaction of their own (all or none) and
/// wakes their consumers.
pub(crate) async fn insert_committed(shared: &Shared, messages: Vec<Outgoing>) -> Result<(), BrokerError> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut tx = shared.pool.begin_with("BEGIN IMMEDIATE").await.map_err(|e| db_error(e, "enqueueing"))?;
    insert(&mut tx, &messages).await?;
    tx.commit().await.map_err(|e| db_error(e, "committing messages"))?;
    wake(shared, &messages);
    Ok(())
}

/// Inserts `messages` through the caller's `conn`; consumers of this
/// process look at once, and find them if the caller has committed by then,
/// or at their next look.
async fn insert_in(shared: &Shared, conn: &mut SqliteConnection, messages: Vec<Outgoing>) -> Result<(), BrokerError> {
    insert(conn, &messages).await?;
    wake(shared, &messages);
    Ok(())
}

impl SqliteBroker {
    /// Enqueues `message` through `conn` — typically an open transaction
    /// of the caller's on the broker's file (`&mut tx` for a
    /// `sqlx::Transaction<'_, Sqlite>`, e.g. from [`SqliteBroker::pool`]) —
    /// so that it is stored exactly when that transaction commits; a
    /// rollback leaves no trace of it. Consumers see it at their next look
    /// after the commit (at most `poll_interval`).
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] of kind `InvalidInput` for a queue name the broker
    /// refuses, or the database's error (roll the transaction back).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use dramaturg_core::Outgoing;
    /// use dramaturg_sqlite::SqliteBroker;
    ///
    /// # async fn run(broker: SqliteBroker) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = broker.pool().begin_with("BEGIN IMMEDIATE").await?;
    /// sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
    /// broker.enqueue_in(&mut tx, Outgoing::new("emails", b"order 42".to_vec())).await?;
    /// tx.commit().await?; // the order and its message, or neither
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// If cancelled, the statement may or may not have run in the
    /// transaction; roll it back to be sure.
    pub async fn enqueue_in(&self, conn: &mut SqliteConnection, message: Outgoing) -> Result<(), BrokerError> {
        insert_in(&self.shared, conn, vec![message]).await
    }

    /// Enqueues `messages` through `conn`, as [`SqliteBroker::enqueue_in`]
    /// does one.
    ///
    /// # Errors
    ///
    /// As [`SqliteBroker::enqueue_in`]; roll the transaction back, and none
    /// of the messages is enqueued.
    ///
    /// # Cancel safety
    ///
    /// As [`SqliteBroker::enqueue_in`].
    pub async fn enqueue_many_in(
        &self,
        conn: &mut SqliteConnection,
        messages: Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        insert_in(&self.shared, conn, messages).await
    }

    /// Sends `actor` through `app`'s middleware and checks, as
    /// [`Actor::send_with`] does, but enqueues it through `conn`, the
    /// caller's transaction (see [`SqliteBroker::enqueue_in`]): the job
    /// exists exactly when the caller's writes commit. `app` should be
    /// built on this broker (or one on the same file), so that its workers
    /// consume what is sent here.
    ///
    /// # Errors
    ///
    /// As [`Actor::send`]: an [`EnqueueError`] for a message the app
    /// refuses (nothing reached the file), and [`EnqueueError::Broker`]
    /// when the statement failed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use dramaturg_core::{App, Context, SendOptions};
    /// use dramaturg_sqlite::SqliteBroker;
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct SendReceipt { order: i64 }
    /// # impl dramaturg_core::Actor for SendReceipt {
    /// #     const NAME: &'static str = "send_receipt";
    /// #     const QUEUE: &'static str = "default";
    /// #     type Output = ();
    /// #     fn into_job(self, _ctx: Context) -> dramaturg_core::Job {
    /// #         Box::pin(async { dramaturg_core::actor::into_job_result::<Self, _>(Ok::<(), std::io::Error>(())) })
    /// #     }
    /// # }
    ///
    /// # async fn run(broker: SqliteBroker, app: App) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = broker.pool().begin_with("BEGIN IMMEDIATE").await?;
    /// sqlx::query("UPDATE orders SET paid = 1 WHERE id = 42").execute(&mut *tx).await?;
    /// broker.send_in(&mut tx, &app, &SendReceipt { order: 42 }, SendOptions::default()).await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As [`SqliteBroker::enqueue_in`].
    pub async fn send_in<A: Actor>(
        &self,
        conn: &mut SqliteConnection,
        app: &App,
        actor: &A,
        options: SendOptions,
    ) -> Result<Sent<A>, EnqueueError> {
        app.send_through(actor, options, |outgoing| insert_in(&self.shared, conn, vec![outgoing])).await
    }
}
