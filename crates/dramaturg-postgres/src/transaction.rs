//! Enqueueing, through the broker's pool or a connection of the caller's:
//! inside the caller's transaction, the message is there exactly when the
//! caller's own writes commit.

use dramaturg_core::{Actor, App, BrokerError, EnqueueError, Outgoing, SendOptions, Sent};
use sqlx::{PgConnection, PgExecutor};

use crate::{check_queue, db_error, ms, PgBroker, Shared};

/// Inserts `messages` in one statement (all or none), and notifies their
/// queues' consumers (at commit, when `executor` is in a transaction).
pub(crate) async fn insert<'e>(
    shared: &Shared,
    executor: impl PgExecutor<'e>,
    messages: Vec<Outgoing>,
) -> Result<(), BrokerError> {
    if messages.is_empty() {
        return Ok(());
    }
    let count = messages.len();
    let mut queues = Vec::with_capacity(count);
    let mut bodies = Vec::with_capacity(count);
    let mut priorities = Vec::with_capacity(count);
    let mut delays = Vec::with_capacity(count);
    for message in messages {
        check_queue(&message.queue)?;
        priorities.push(i16::from(message.priority.unwrap_or(0)));
        delays.push(message.delay.map_or(0, ms));
        queues.push(message.queue);
        bodies.push(message.body.to_vec());
    }
    sqlx::query(&shared.sql.enqueue)
        .bind(&queues)
        .bind(&bodies)
        .bind(&priorities)
        .bind(&delays)
        .bind(&shared.sql.channel)
        .execute(executor)
        .await
        .map_err(|e| db_error(e, "enqueueing"))?;
    Ok(())
}

impl PgBroker {
    /// Enqueues `message` through `conn` — typically an open transaction
    /// of the caller's (`&mut *tx` for a `sqlx::Transaction<'_, Postgres>`)
    /// — so that it is stored, and its consumers woken, exactly when that
    /// transaction commits; a rollback leaves no trace of it. The
    /// transaction must be on the broker's database.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] of kind `InvalidInput` for a queue name the broker
    /// refuses, or the database's error (the transaction is then aborted,
    /// as for any failed statement in it).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use dramaturg_core::Outgoing;
    /// use dramaturg_postgres::PgBroker;
    ///
    /// # async fn run(broker: PgBroker) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = broker.pool().begin().await?;
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
    pub async fn enqueue_in(&self, conn: &mut PgConnection, message: Outgoing) -> Result<(), BrokerError> {
        insert(&self.shared, conn, vec![message]).await
    }

    /// Enqueues `messages` through `conn` in one statement, as
    /// [`PgBroker::enqueue_in`] does one.
    ///
    /// # Errors
    ///
    /// As [`PgBroker::enqueue_in`]; none of the messages was enqueued.
    pub async fn enqueue_many_in(&self, conn: &mut PgConnection, messages: Vec<Outgoing>) -> Result<(), BrokerError> {
        insert(&self.shared, conn, messages).await
    }

    /// Sends `actor` through `app`'s middleware and checks, as
    /// [`Actor::send_with`] does, but enqueues it through `conn`, the
    /// caller's transaction (see [`PgBroker::enqueue_in`]): the job exists
    /// exactly when the caller's writes commit. `app` should be built on
    /// this broker (or one on the same database and schema), so that its
    /// workers consume what is sent here.
    ///
    /// # Errors
    ///
    /// As [`Actor::send`]: an [`EnqueueError`] for a message the app
    /// refuses (nothing reached the database), and [`EnqueueError::Broker`]
    /// when the statement failed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use dramaturg_core::{App, Context, SendOptions};
    /// use dramaturg_postgres::PgBroker;
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
    /// # async fn run(broker: PgBroker, app: App) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = broker.pool().begin().await?;
    /// sqlx::query("UPDATE orders SET paid = true WHERE id = 42").execute(&mut *tx).await?;
    /// broker.send_in(&mut tx, &app, &SendReceipt { order: 42 }, SendOptions::default()).await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As [`PgBroker::enqueue_in`].
    pub async fn send_in<A: Actor>(
        &self,
        conn: &mut PgConnection,
        app: &App,
        actor: &A,
        options: SendOptions,
    ) -> Result<Sent<A>, EnqueueError> {
        app.send_through(actor, options, |outgoing| insert(&self.shared, conn, vec![outgoing])).await
    }
}
