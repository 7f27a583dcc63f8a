//! The PostgreSQL broker of a test, in a schema of its own that is dropped
//! when the test ends.

use std::time::Duration;

use dramaturg::postgres::{PgBroker, PgConfig};
use dramaturg::store::{Admission, Counters, SetMode, Slots};
use dramaturg::StoreError;

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

/// The settings of a broker in `schema`, with the tests' short heartbeat
/// (200 ms, claims lapse after 1 s) and idle consumers looking again every
/// second.
pub(crate) fn config_in(schema: &str) -> PgConfig {
    PgConfig::new(URL)
        .schema(schema)
        .heartbeat(Duration::from_millis(200), Duration::from_secs(1))
        .poll_interval(Duration::from_secs(1))
}

/// The broker of [`config_in`].
pub(crate) async fn broker_in(schema: &str) -> PgBroker {
    PgBroker::with_config(config_in(schema))
        .await
        .expect("PostgreSQL runs on 127.0.0.1:5432 (scripts/services starts it)")
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

/// A [`PgStore`](dramaturg::postgres::PgStore) in a schema of its own,
/// dropped with the store: what the store conformance suite gets.
#[derive(Debug)]
pub(crate) struct DroppingStore {
    store: dramaturg::postgres::PgStore,
    _schema: DropSchema,
}

impl DroppingStore {
    /// A store in a new schema, migrated.
    pub(crate) async fn new() -> Self {
        let (schema, guard) = own_schema();
        let store = dramaturg::postgres::PgStore::with_config(&PgConfig::new(URL).schema(&schema))
            .await
            .expect("PostgreSQL runs on 127.0.0.1:5432 (scripts/services starts it)");
        Self { store, _schema: guard }
    }
}

#[dramaturg::async_trait]
impl dramaturg::Store for DroppingStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(key).await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration, mode: SetMode) -> Result<bool, StoreError> {
        self.store.set(key, value, ttl, mode).await
    }

    async fn set_many(&self, entries: &[(&str, &[u8], Duration)]) -> Result<(), StoreError> {
        self.store.set_many(entries).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.store.delete(key).await
    }

    async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        self.store.delete_if(key, expected).await
    }

    async fn wait_any(&self, keys: &[String], timeout: Duration) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.store.wait_any(keys, timeout).await
    }
}

#[dramaturg::async_trait]
impl Counters for DroppingStore {
    async fn incr_by(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StoreError> {
        self.store.incr_by(key, delta, ttl).await
    }

    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<u64, StoreError> {
        self.store.set_add(key, member, ttl).await
    }

    async fn set_remove(&self, key: &str, member: &str) -> Result<u64, StoreError> {
        self.store.set_remove(key, member).await
    }

    async fn set_len(&self, key: &str) -> Result<u64, StoreError> {
        self.store.set_len(key).await
    }
}

#[dramaturg::async_trait]
impl Slots for DroppingStore {
    async fn take_slot(&self, key: &str, member: &str, cap: u64, hold: Duration) -> Result<Admission, StoreError> {
        self.store.take_slot(key, member, cap, hold).await
    }

    async fn renew_slot(&self, key: &str, member: &str, hold: Duration) -> Result<bool, StoreError> {
        self.store.renew_slot(key, member, hold).await
    }

    async fn release_slot(&self, key: &str, member: &str) -> Result<bool, StoreError> {
        self.store.release_slot(key, member).await
    }

    async fn take_paced(&self, key: &str, interval: Duration, burst: u64) -> Result<Admission, StoreError> {
        self.store.take_paced(key, interval, burst).await
    }
}
