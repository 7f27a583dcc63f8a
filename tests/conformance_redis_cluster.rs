//! The broker conformance suite on the local Redis Cluster that
//! scripts/services starts (3 masters, 3 replicas on 127.0.0.1:7000-7005),
//! each case in a namespace of its own. The cases' queues spread over the
//! masters by the slots of their names.

#![cfg(feature = "redis")]

use dramaturg::redis::{RedisBroker, RedisConfig};

async fn broker() -> RedisBroker {
    let namespace = format!("test-{}", dramaturg::MessageId::new());
    let config = RedisConfig::new("redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002/").namespace(namespace);
    RedisBroker::with_config(config)
        .await
        .expect("a Redis Cluster runs on 127.0.0.1:7000-7005 (scripts/services starts it)")
}

dramaturg_core::broker_conformance!(broker());
