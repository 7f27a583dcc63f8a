//! The store on PostgreSQL against the real server: the store conformance
//! suite (each case in a schema of its own), waits woken across
//! connections, the broker's store and the deletion of expired rows.
//! Results and aborts on PostgreSQL are tested in `results.rs` and
//! `abort.rs`. Each test works in a schema of its own, dropped when it
//! ends.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::time::{Duration, Instant};

use dramaturg::postgres::{PgConfig, PgStore};
use dramaturg::store::SetMode;
use dramaturg::{Broker as _, Store};

use support::postgres::{broker_in, own_schema, DroppingStore, URL};

mod conformance {
    use super::DroppingStore;

    dramaturg_core::store_conformance!(DroppingStore::new());
}

async fn store_in(schema: &str) -> PgStore {
    PgStore::with_config(&PgConfig::new(URL).schema(schema)).await.unwrap()
}

/// Two waiters on one key, on one store, both wake within milliseconds of
/// a `set` made through another connection pool (another process's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_waiters_on_one_key_wake_at_once_on_a_set_from_elsewhere() {
    let (schema, _drop) = own_schema();
    let (waiting, writing) = (std::sync::Arc::new(store_in(&schema).await), store_in(&schema).await);
    let keys = vec!["job:1".to_owned()];
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let (store, keys) = (std::sync::Arc::clone(&waiting), keys.clone());
            tokio::spawn(async move {
                let found = store.wait_any(&keys, Duration::from_secs(10)).await.unwrap();
                (found, Instant::now())
            })
        })
        .collect();
    // Both are registered and idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let set_at = Instant::now();
    assert!(writing.set("job:1", b"done", Duration::from_secs(60), SetMode::Always).await.unwrap());
    for waiter in waiters {
        let (found, woke_at) = waiter.await.unwrap();
        assert_eq!(found, Some(("job:1".to_owned(), b"done".to_vec())));
        let latency = woke_at - set_at;
        assert!(latency < Duration::from_millis(250), "woke {latency:?} after the set");
    }
}

/// A wait on a key nobody sets returns `None` once its timeout passes, not
/// much later.
#[tokio::test]
async fn a_wait_with_a_timeout_returns_none_in_time() {
    let (schema, _drop) = own_schema();
    let store = store_in(&schema).await;
    let started = Instant::now();
    let found = store.wait_any(&["never".to_owned()], Duration::from_millis(300)).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(found, None);
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(800), "{waited:?}");
}

/// The broker's store is not process-local, is one for the broker and its
/// clones, and shares its keys with a store of the same schema.
#[tokio::test]
async fn the_brokers_store_reaches_other_processes_in_its_schema() {
    let (schema, _drop) = own_schema();
    let broker = broker_in(&schema).await;
    let store = broker.store().unwrap();
    assert!(!store.is_process_local());
    assert!(std::sync::Arc::ptr_eq(&store, &broker.clone().store().unwrap()));
    store.set("shared", b"yes", Duration::from_secs(60), SetMode::Always).await.unwrap();
    assert_eq!(store_in(&schema).await.get("shared").await.unwrap().as_deref(), Some(&b"yes"[..]));
    assert_eq!(PgStore::for_broker(&broker).get("shared").await.unwrap().as_deref(), Some(&b"yes"[..]));
    let (other, _drop_other) = own_schema();
    assert_eq!(store_in(&other).await.get("shared").await.unwrap(), None, "another schema");
}

/// Expired keys are absent at once and their rows are deleted by the
/// sweep that a write starts.
#[tokio::test]
async fn expired_rows_are_deleted_by_a_later_write() {
    let (schema, _drop) = own_schema();
    let store = store_in(&schema).await;
    for i in 0..50 {
        store.set(&format!("short:{i}"), b"v", Duration::from_millis(1), SetMode::Always).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.get("short:0").await.unwrap(), None);
    // A new store sweeps on its first write.
    let sweeping = store_in(&schema).await;
    sweeping.set("long", b"v", Duration::from_secs(60), SetMode::Always).await.unwrap();
    let broker = broker_in(&schema).await;
    let sql = format!("SELECT count(*) FROM \"{schema}\".store");
    let count = || dramaturg::postgres::sqlx::query_scalar::<_, i64>(&sql).fetch_one(broker.pool());
    let deadline = Instant::now() + Duration::from_secs(5);
    while count().await.unwrap() > 1 {
        assert!(Instant::now() < deadline, "expired rows were not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
