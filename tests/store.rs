//! The store conformance suite on the in-memory store and, with the
//! `redis` feature, on the Redis store at 127.0.0.1:6379 (each case under
//! a namespace of its own).

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod memory {
    dramaturg_core::store_conformance!(async { dramaturg::MemoryStore::new() });
}

#[cfg(feature = "redis")]
mod redis {
    use dramaturg::redis::{RedisBroker, RedisConfig, RedisStore};
    use dramaturg::{Broker, Store};

    fn config() -> RedisConfig {
        RedisConfig::new("redis://127.0.0.1:6379").namespace(format!("test-{}", dramaturg::MessageId::new()))
    }

    async fn store() -> RedisStore {
        RedisStore::with_config(&config()).await.expect("Redis runs on 127.0.0.1:6379 (scripts/services starts it)")
    }

    dramaturg_core::store_conformance!(store());

    /// The broker's store shares its namespace: a key set through one
    /// broker's store is read through another's, and not through a store
    /// in another namespace.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_brokers_store_reaches_other_processes_in_its_namespace() {
        let config = config();
        let (one, two) = (
            RedisBroker::with_config(config.clone()).await.unwrap(),
            RedisBroker::with_config(config.clone()).await.unwrap(),
        );
        let (one, two) = (one.store().unwrap(), two.store().unwrap());
        assert!(!one.is_process_local());
        let ttl = std::time::Duration::from_secs(60);
        one.set("shared", b"yes", ttl, dramaturg::store::SetMode::Always).await.unwrap();
        assert_eq!(two.get("shared").await.unwrap().as_deref(), Some(&b"yes"[..]));
        assert_eq!(store().await.get("shared").await.unwrap(), None, "another namespace");
        let standalone = RedisStore::with_config(&config).await.unwrap();
        assert_eq!(standalone.get("shared").await.unwrap().as_deref(), Some(&b"yes"[..]));
    }

    /// The password of the URL is in no error or debug output (this Redis
    /// has no password, so connecting with one fails).
    #[tokio::test]
    async fn no_password_is_shown() {
        let shown = match RedisStore::connect("redis://:hunter2@127.0.0.1:6379/0").await {
            Ok(store) => format!("{store:?}"),
            Err(error) => format!("{error} {error:?}"),
        };
        assert!(shown.contains("127.0.0.1") && !shown.contains("hunter2"), "{shown}");
    }
}

/// The in-memory broker's store is process-local and shared by its clones.
#[tokio::test]
async fn the_memory_brokers_store_is_shared_by_its_clones() {
    use dramaturg::{Broker, MemoryBroker};
    let broker = MemoryBroker::new();
    let (one, two) = (broker.store().unwrap(), broker.clone().store().unwrap());
    assert!(one.is_process_local());
    one.set("k", b"v", std::time::Duration::from_secs(60), dramaturg::store::SetMode::Always).await.unwrap();
    assert_eq!(two.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(MemoryBroker::new().store().unwrap().get("k").await.unwrap(), None);
}
