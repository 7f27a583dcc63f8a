//! The broker conformance suite on the real Redis at 127.0.0.1:6379, each
//! case in a namespace of its own.

#![cfg(feature = "redis")]

use dramaturg::redis::{RedisBroker, RedisConfig};

async fn broker() -> RedisBroker {
    let namespace = format!("test-{}", dramaturg::MessageId::new());
    RedisBroker::with_config(RedisConfig::new("redis://127.0.0.1:6379").namespace(namespace))
        .await
        .expect("Redis runs on 127.0.0.1:6379 (scripts/services starts it)")
}

dramaturg_core::broker_conformance!(broker());
