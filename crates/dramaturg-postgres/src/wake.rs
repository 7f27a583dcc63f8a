//! Wake-ups of idle consumers: the heartbeat thread's `LISTEN` connection
//! hands each notification (a queue's name) to the consumers of that queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use dramaturg_core::sync::lock;
use tokio::sync::Notify;

/// The consumers of this broker value, by queue.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    consumers: Mutex<HashMap<String, Vec<Weak<Notify>>>>,
}

impl Wakes {
    /// A wake-up for a new consumer of `queue`; dropping it unregisters.
    pub(crate) fn register(&self, queue: &str) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        lock(&self.consumers).entry(queue.to_owned()).or_default().push(Arc::downgrade(&wake));
        wake
    }

    /// Wakes every consumer of `queue`. A consumer that is not waiting
    /// keeps the wake-up for its next wait (`notify_one` stores a permit),
    /// so one that arrives while it claims is not lost.
    pub(crate) fn wake(&self, queue: &str) {
        let mut consumers = lock(&self.consumers);
        if let Some(wakes) = consumers.get_mut(queue) {
            wakes.retain(|wake| wake.upgrade().map(|wake| wake.notify_one()).is_some());
            if wakes.is_empty() {
                consumers.remove(queue);
            }
        }
    }

    /// Wakes every consumer: after the listening connection was lost,
    /// when notifications may have been missed.
    pub(crate) fn wake_all(&self) {
        let queues: Vec<String> = lock(&self.consumers).keys().cloned().collect();
        for queue in queues {
            self.wake(&queue);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_up_reaches_the_consumers_of_its_queue_only() {
        let wakes = Wakes::default();
        let a = wakes.register("a");
        let b = wakes.register("b");
        wakes.wake("a");
        tokio::time::timeout(std::time::Duration::from_secs(1), a.notified()).await.expect("woken");
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), b.notified()).await;
        assert!(waited.is_err(), "b was not woken");
        drop(a);
        wakes.wake("a");
        assert!(!lock(&wakes.consumers).contains_key("a"), "a dropped consumer is forgotten");
    }
}
