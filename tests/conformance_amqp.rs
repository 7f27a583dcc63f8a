//! The broker conformance suite on the real RabbitMQ at 127.0.0.1:5672
//! (each case declares queues of its own).

use dramaturg::amqp::AmqpBroker;

async fn broker() -> AmqpBroker {
    AmqpBroker::connect("amqp://guest:guest@127.0.0.1:5672/%2f")
        .await
        .expect("RabbitMQ runs on 127.0.0.1:5672 (scripts/services starts it)")
}

dramaturg_core::broker_conformance!(broker());
