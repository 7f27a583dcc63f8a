//! The PostgreSQL broker of a test, in a schema of its own that is dropped
//! when the test ends.

use std::time::Duration;

use dramaturg::postgres::{PgBroker, PgConfig};

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

/// A broker in a new schema, dropped when the last clone of the broker is
/// dropped: what the conformance suite gets, since it keeps the broker to
/// the end.
pub(crate) async fn dropping() -> super::guarded::Guarded<PgBroker, DropSchema> {
    let schema = schema();
    let broker = broker_in(&schema).await;
    super::guarded::Guarded::new(broker, DropSchema(schema))
}
