//! The worker's outcomes per queue, published to the broker as deltas
//! every [`OUTCOMES_EVERY`](super::OUTCOMES_EVERY) and once at stop
//! ([`QueueAdmin::record_outcomes`]), for dashboards' per-minute charts.
//!
//! Counting is two atomic additions per message, never a broker call: the
//! publisher takes what accumulated and sends it in one call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::OutcomeCounts;
use crate::{Broker, BrokerErrorKind};

/// Succeeded and failed attempts of each of the worker's queues (by the
/// queue's number) since the last publish.
#[derive(Debug)]
pub(super) struct Tally {
    queues: Vec<(String, AtomicU64, AtomicU64)>,
}

impl Tally {
    pub(super) fn new(queues: impl IntoIterator<Item = String>) -> Self {
        Self { queues: queues.into_iter().map(|q| (q, AtomicU64::new(0), AtomicU64::new(0))).collect() }
    }

    /// Counts one attempt of queue number `queue`.
    pub(super) fn count(&self, queue: usize, succeeded: bool) {
        if let Some((_, ok, failed)) = self.queues.get(queue) {
            let counter = if succeeded { ok } else { failed };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What accumulated since the last take, for the queues with an
    /// outcome; the counters start again from zero.
    fn take(&self) -> BTreeMap<String, OutcomeCounts> {
        let mut counts = BTreeMap::new();
        for (queue, ok, failed) in &self.queues {
            let taken = OutcomeCounts::new(ok.swap(0, Ordering::Relaxed), failed.swap(0, Ordering::Relaxed));
            if !taken.is_empty() {
                counts.insert(queue.clone(), taken);
            }
        }
        counts
    }

    /// Puts back counts whose publish failed, to go with the next one.
    fn restore(&self, counts: &BTreeMap<String, OutcomeCounts>) {
        for (queue, ok, failed) in &self.queues {
            if let Some(c) = counts.get(queue) {
                ok.fetch_add(c.succeeded, Ordering::Relaxed);
                failed.fetch_add(c.failed, Ordering::Relaxed);
            }
        }
    }

    /// Sends what accumulated; whether the broker can keep outcomes.
    async fn publish(&self, broker: &dyn Broker) -> bool {
        let Some(admin) = broker.admin() else { return false };
        let counts = self.take();
        if counts.is_empty() {
            return true;
        }
        match admin.record_outcomes(&counts).await {
            Ok(()) => true,
            Err(error) if error.kind() == BrokerErrorKind::Unsupported => false,
            Err(error) => {
                tracing::debug!(%error, "cannot publish the worker's outcomes; they go with the next publish");
                self.restore(&counts);
                true
            }
        }
    }
}

/// Publishes `tally` every `every` until `stop`, then once more, so that
/// the last outcomes reach the broker. Returns at once, publishing nothing
/// more, when the broker keeps no outcomes.
pub(super) async fn publish(tally: Arc<Tally>, broker: Arc<dyn Broker>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if !tally.publish(broker.as_ref()).await {
            tracing::debug!("this broker keeps no per-minute outcomes; the worker does not publish them");
            return;
        }
    }
    tally.publish(broker.as_ref()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_returns_the_deltas_and_restore_puts_them_back() {
        let tally = Tally::new(["a".to_owned(), "b".to_owned()]);
        tally.count(0, true);
        tally.count(0, false);
        tally.count(0, true);
        tally.count(7, true);
        let taken = tally.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken["a"], OutcomeCounts::new(2, 1));
        assert!(tally.take().is_empty());
        tally.restore(&taken);
        tally.count(1, false);
        let again = tally.take();
        assert_eq!(again["a"], OutcomeCounts::new(2, 1));
        assert_eq!(again["b"], OutcomeCounts::new(0, 1));
    }
}
