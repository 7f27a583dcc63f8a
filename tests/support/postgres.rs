//! The PostgreSQL broker of a test, in a schema of its own that is dropped
//! when the test ends.

use std::sync::Arc;
use std::time::Duration;

use dramaturg::postgres::{PgBroker, PgConfig};
use dramaturg::{Broker, BrokerError, Consumer, DeadLetters, Outgoing, QueueAdmin};

/// The tests' database.
pub(crate) const URL: &str = "postgres://root@127.0.0.1:5432/test";

/// A schema name of the test's own.
pub(crate) fn schema() -> String {
    format!("test_{}", dramaturg::MessageId::new().to_string().to_lowercase().replace('-', "_"))
}

/// A schema of the test's own and the guard that drops it.
pub(crate) fn own_schema() -> (String, DropSchema) {
    let schema = schema();
    (schema.clone(), DropSchema(schema))
}

/// The broker in `schema`, with the tests' short heartbeat (200 ms,
/// claims lapse after 1 s) and idle consumers looking again every second.
pub(crate) async fn broker_in(schema: &str) -> PgBroker {
    let config = PgConfig::new(URL)
        .schema(schema)
        .heartbeat(Duration::from_millis(200), Duration::from_secs(1))
        .poll_interval(Duration::from_secs(1));
    PgBroker::with_config(config).await.expect("PostgreSQL runs on 127.0.0.1:5432 (scripts/services starts it)")
}

/// Drops its schema, with everything in it, when dropped (at the end of
/// the test, passed or failed).
#[derive(Debug)]
pub(crate) struct DropSchema(pub(crate) String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        // On a thread of its own: the test's runtime may be the current
        // thread, which cannot block on a future.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                use dramaturg::postgres::sqlx::{Connection, PgConnection};
                let mut conn = PgConnection::connect(URL).await?;
                dramaturg::postgres::sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop schema {}: {dropped:?}", self.0);
        }
    }
}

/// A broker that drops its schema when the last clone of it is dropped:
/// what the conformance suite gets, since it keeps the broker to the end.
#[derive(Debug, Clone)]
pub(crate) struct Dropping {
    broker: PgBroker,
    _schema: Arc<DropSchema>,
}

impl Dropping {
    /// A broker in a new schema.
    pub(crate) async fn new() -> Self {
        let schema = schema();
        let broker = broker_in(&schema).await;
        Self { broker, _schema: Arc::new(DropSchema(schema)) }
    }
}

#[dramaturg::async_trait]
impl Broker for Dropping {
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.broker.declare_queue(queue).await
    }

    async fn enqueue(&self, message: Outgoing) -> Result<(), BrokerError> {
        self.broker.enqueue(message).await
    }

    async fn enqueue_many(&self, messages: Vec<Outgoing>) -> Result<(), BrokerError> {
        self.broker.enqueue_many(messages).await
    }

    async fn consume(&self, queue: &str, prefetch: usize) -> Result<Box<dyn Consumer>, BrokerError> {
        self.broker.consume(queue, prefetch).await
    }

    fn check_queue_name(&self, name: &str) -> Result<(), BrokerError> {
        self.broker.check_queue_name(name)
    }

    fn admin(&self) -> Option<&dyn QueueAdmin> {
        self.broker.admin()
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        self.broker.dead_letters()
    }

    fn set_worker_concurrency(&self, concurrency: usize) {
        self.broker.set_worker_concurrency(concurrency);
    }

    async fn release(&self) -> Result<(), BrokerError> {
        self.broker.release().await
    }

    fn now_ms(&self) -> u64 {
        self.broker.now_ms()
    }
}
