//! The broker conformance suite on the real RabbitMQ at 127.0.0.1:5672,
//! with quorum queues (each case declares queues of its own).

#![cfg(feature = "amqp")]

use std::time::Duration;

use dramaturg::amqp::{AmqpBroker, AmqpConfig, QueueType};

async fn broker() -> AmqpBroker {
    // The test queues clean themselves up a minute after the test.
    let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")
        .queue_type(QueueType::Quorum)
        .delivery_limit(20)
        .expire_unused_queues(Duration::from_secs(60));
    AmqpBroker::with_config(config).await.expect("RabbitMQ runs on 127.0.0.1:5672 (scripts/services starts it)")
}

dramaturg_core::broker_conformance!(broker());
