//! A broker that keeps a guard alive as long as any clone of it: what the
//! conformance suite gets, since it keeps the broker to the end, and the
//! guard (a schema to drop, a file to delete) cleans up after it.

use std::sync::Arc;

use dramaturg::{Broker, BrokerError, Consumer, DeadLetters, Outgoing, QueueAdmin};

/// `broker`, and `guard`, dropped with the last clone.
#[derive(Debug, Clone)]
pub(crate) struct Guarded<B, G> {
    pub(crate) broker: B,
    _guard: Arc<G>,
}

impl<B, G> Guarded<B, G> {
    pub(crate) fn new(broker: B, guard: G) -> Self {
        Self { broker, _guard: Arc::new(guard) }
    }
}

#[dramaturg::async_trait]
impl<B: Broker, G: std::fmt::Debug + Send + Sync + 'static> Broker for Guarded<B, G> {
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
