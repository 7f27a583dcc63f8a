//! The in-memory broker: the embedded default, and the broker for testing
//! your own actors without a server.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::broker::{
    Broker, Consumer, DeadLetter, DeadLetters, Delivery, Locality, Outgoing, QueueAdmin, QueueStats, Receipt, Replay,
    Settled, Settlement,
};
use crate::error::BrokerError;
use crate::store::{MemoryStore, Store};

/// How many dead letters each queue keeps by default; older ones are dropped.
const DEFAULT_DEAD_LETTER_LIMIT: usize = 10_000;

/// A broker that keeps its queues in this process's memory.
///
/// It has the semantics of the real brokers — delays, acknowledgements,
/// dead-letter queues with replay, requeue, purge, statistics and
/// [`join`](QueueAdmin::join) — so the tests of your actors need no server.
/// Messages do not survive the process.
///
/// **Priorities** (`Options::priority`, `#[actor(priority = …)]`) are
/// honoured among ready messages: a higher priority is delivered first,
/// and messages of equal priority (no priority counts as 0) first in,
/// first out. A delayed message takes its place by priority when it falls
/// due; a delivery returned to the queue (requeue, shutdown) goes back to
/// the front; a replayed dead letter comes back at priority 0.
///
/// Every delivery is a claim; [`QueueAdmin::requeue_in_flight`] returns all
/// claimed messages of a queue as if their worker had died, so that tests
/// can check what a second run of a job does (the first run's settlement
/// then comes back [`Settled::Stale`]).
///
/// Clones share the same queues.
///
/// # Examples
///
/// ```
/// use dramaturg_core::{Broker, MemoryBroker, Outgoing, Settlement};
///
/// # tokio_test();
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn tokio_test() {
/// let broker = MemoryBroker::new();
/// broker.enqueue(Outgoing::new("default", &b"hello"[..])).await.unwrap();
/// let mut consumer = broker.consume("default", 1).await.unwrap();
/// let delivery = consumer.next().await.unwrap();
/// assert_eq!(&delivery.body()[..], b"hello");
/// delivery.settle(Settlement::Ack).await.unwrap();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    dead_letter_limit: usize,
    /// What [`Broker::store`] gives: one per broker and its clones.
    store: Arc<dyn Store>,
}

#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    /// Woken when a message becomes ready (or a new delay may be sooner).
    ready: Notify,
    /// Woken when a message is settled or purged, for `join`.
    settled: Notify,
    dead_letter_limit: usize,
    /// Whether the queue is paused, for the consumers' views
    /// ([`Consumer::paused`]); changed with [`QueueState::paused`].
    paused: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct QueueState {
    ready: Ready,
    delayed: BinaryHeap<Reverse<Delayed>>,
    /// Claimed messages by claim number: a receipt settles only while its
    /// claim is here.
    in_flight: HashMap<u64, Bytes>,
    dead: VecDeque<DeadLetter>,
    sequence: u64,
    /// Paused ([`QueueAdmin::pause`]): nothing is claimed.
    paused: bool,
}

#[derive(Debug)]
struct Entry {
    body: Bytes,
    redelivered: bool,
}

/// Ready messages, highest priority first, first in first out among equals.
#[derive(Debug, Default)]
struct Ready(VecDeque<(u8, Entry)>);

impl Ready {
    /// Queues `entry` behind every entry of the same or a higher priority.
    fn push(&mut self, priority: u8, entry: Entry) {
        let at = self.0.partition_point(|(queued, _)| *queued >= priority);
        self.0.insert(at, (priority, entry));
    }

    /// Puts `entry` first in line (a requeued delivery was next in line
    /// before), ranked with the entry it goes before.
    fn push_front(&mut self, entry: Entry) {
        let priority = self.0.front().map_or(0, |(queued, _)| *queued);
        self.0.push_front((priority, entry));
    }

    fn pop_front(&mut self) -> Option<Entry> {
        self.0.pop_front().map(|(_, entry)| entry)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

impl Extend<Entry> for Ready {
    /// Queues entries of no priority (replayed dead letters).
    fn extend<I: IntoIterator<Item = Entry>>(&mut self, entries: I) {
        for entry in entries {
            self.push(0, entry);
        }
    }
}

#[derive(Debug)]
struct Delayed {
    due: Instant,
    sequence: u64,
    priority: u8,
    body: Bytes,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.sequence) == (other.due, other.sequence)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.sequence).cmp(&(other.due, other.sequence))
    }
}

// A panic while holding a lock cannot leave the queues half-changed (every
// change is a single push or pop), so a poisoned lock is usable.
use crate::sync::lock;

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::with_dead_letter_limit(DEFAULT_DEAD_LETTER_LIMIT)
    }

    /// An empty broker whose dead-letter queues keep at most `limit` messages
    /// each (the oldest are dropped first). The default is 10,000.
    pub fn with_dead_letter_limit(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                queues: Mutex::default(),
                dead_letter_limit: limit.max(1),
                store: Arc::new(MemoryStore::new()),
            }),
        }
    }

    fn queue(&self, name: &str) -> Arc<Queue> {
        let mut queues = lock(&self.inner.queues);
        if let Some(queue) = queues.get(name) {
            return Arc::clone(queue);
        }
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            ready: Notify::new(),
            settled: Notify::new(),
            dead_letter_limit: self.inner.dead_letter_limit,
            paused: watch::Sender::new(false),
        });
        queues.insert(name.to_owned(), Arc::clone(&queue));
        queue
    }
}

impl QueueState {
    /// Moves every delayed message that is due to the ready queue; returns
    /// when the next delayed one is due.
    fn promote_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some(Reverse(next)) = self.delayed.peek() {
            if next.due > now {
                return Some(next.due);
            }
            if let Some(Reverse(due)) = self.delayed.pop() {
                self.ready.push(due.priority, Entry { body: due.body, redelivered: false });
            }
        }
        None
    }
}

impl QueueState {
    fn push(&mut self, body: Bytes, delay: Option<Duration>, priority: u8) {
        match delay.filter(|d| !d.is_zero()) {
            Some(delay) => {
                self.sequence += 1;
                let sequence = self.sequence;
                let due = Instant::now().checked_add(delay).unwrap_or_else(|| Instant::now() + crate::MAX_DELAY);
                self.delayed.push(Reverse(Delayed { due, sequence, priority, body }));
            }
            None => self.ready.push(priority, Entry { body, redelivered: false }),
        }
    }
}

impl Queue {
    fn push(&self, body: Bytes, delay: Option<Duration>, priority: u8) {
        lock(&self.state).push(body, delay, priority);
        self.ready.notify_one();
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.queue(queue);
        Ok(())
    }

    async fn enqueue(&self, message: Outgoing) -> Result<(), BrokerError> {
        check_queue(&message.queue)?;
        self.queue(&message.queue).push(message.body, message.delay, message.priority.unwrap_or(0));
        Ok(())
    }

    /// All or nothing: a bad queue name refuses the batch.
    async fn enqueue_many(&self, messages: Vec<Outgoing>) -> Result<(), BrokerError> {
        for message in &messages {
            check_queue(&message.queue)?;
        }
        for message in messages {
            self.queue(&message.queue).push(message.body, message.delay, message.priority.unwrap_or(0));
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, _prefetch: usize) -> Result<Box<dyn Consumer>, BrokerError> {
        // Deliveries are taken from the shared queue one at a time, so there
        // is nothing prefetched to bound or to give back on close.
        Ok(Box::new(MemoryConsumer { queue: self.queue(queue) }))
    }

    fn admin(&self) -> Option<&dyn QueueAdmin> {
        Some(self)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }

    fn locality(&self) -> Locality {
        Locality::Process
    }

    fn store(&self) -> Option<Arc<dyn Store>> {
        Some(Arc::clone(&self.inner.store))
    }
}

#[derive(Debug)]
struct MemoryConsumer {
    queue: Arc<Queue>,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            let notified = self.queue.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = {
                let mut state = lock(&self.queue.state);
                let next_due = state.promote_due(Instant::now());
                // Paused: wait for a resume (it wakes every consumer) or
                // the next due time, still promoting due messages.
                let entry = if state.paused { None } else { state.ready.pop_front() };
                if let Some(entry) = entry {
                    state.sequence += 1;
                    let claim = state.sequence;
                    state.in_flight.insert(claim, entry.body.clone());
                    let more = !state.ready.is_empty();
                    drop(state);
                    if more {
                        // Pass the wake-up on so other consumers see the rest.
                        self.queue.ready.notify_one();
                    }
                    let receipt = MemoryReceipt { queue: Arc::clone(&self.queue), claim };
                    return Ok(Delivery::new(entry.body, entry.redelivered, Box::new(receipt)));
                }
                next_due
            };
            match next_due {
                Some(due) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn paused(&self) -> Option<watch::Receiver<bool>> {
        Some(self.queue.paused.subscribe())
    }

    async fn close(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// Settles one in-memory delivery, while its claim holds; an unsettled
/// receipt that is dropped returns its message to the queue, as a lost
/// connection would.
#[derive(Debug)]
struct MemoryReceipt {
    queue: Arc<Queue>,
    claim: u64,
}

impl MemoryReceipt {
    fn finish(&self, settlement: &Settlement) -> Settled {
        let mut state = lock(&self.queue.state);
        let Some(body) = state.in_flight.remove(&self.claim) else { return Settled::Stale };
        match settlement {
            Settlement::Ack => {}
            Settlement::DeadLetter(reason) => {
                state.sequence += 1;
                let key = state.sequence.to_string();
                state.dead.push_back(DeadLetter::new(key, body, reason.to_string(), SystemTime::now()));
                while state.dead.len() > self.queue.dead_letter_limit {
                    state.dead.pop_front();
                }
            }
            Settlement::Requeue => {
                // Back to the front: it was next in line before.
                state.ready.push_front(Entry { body, redelivered: true });
            }
            Settlement::Reschedule { body, delay } => state.push(body.clone(), Some(*delay), 0),
        }
        drop(state);
        self.queue.ready.notify_one();
        self.queue.settled.notify_waiters();
        Settled::Applied
    }
}

#[async_trait]
impl Receipt for MemoryReceipt {
    async fn settle(&self, settlement: &Settlement) -> Result<Settled, BrokerError> {
        Ok(self.finish(settlement))
    }
}

impl Drop for MemoryReceipt {
    fn drop(&mut self) {
        self.finish(&Settlement::Requeue);
    }
}

#[async_trait]
impl QueueAdmin for MemoryBroker {
    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        // Every queue ever named has an entry: list those holding messages.
        let mut queues: Vec<String> = lock(&self.inner.queues)
            .iter()
            .filter(|(_, queue)| {
                let state = lock(&queue.state);
                !(state.ready.is_empty()
                    && state.delayed.is_empty()
                    && state.in_flight.is_empty()
                    && state.dead.is_empty())
            })
            .map(|(name, _)| name.clone())
            .collect();
        queues.sort_unstable();
        Ok(queues)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        check_queue(queue)?;
        let queue = self.queue(queue);
        let state = lock(&queue.state);
        Ok(QueueStats::new(
            state.ready.len() as u64,
            state.delayed.len() as u64,
            state.in_flight.len() as u64,
            state.dead.len() as u64,
        )
        .with_paused(state.paused))
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        check_queue(queue)?;
        let queue = self.queue(queue);
        let mut state = lock(&queue.state);
        let purged = (state.ready.len() + state.delayed.len()) as u64;
        state.ready.clear();
        state.delayed.clear();
        drop(state);
        queue.settled.notify_waiters();
        Ok(purged)
    }

    async fn requeue_in_flight(&self, queue: &str) -> Result<u64, BrokerError> {
        check_queue(queue)?;
        let queue = self.queue(queue);
        let mut state = lock(&queue.state);
        let mut claimed: Vec<(u64, Bytes)> = state.in_flight.drain().collect();
        // Oldest claim first at the front, as they were taken.
        claimed.sort_unstable_by_key(|(claim, _)| std::cmp::Reverse(*claim));
        let count = claimed.len() as u64;
        for (_, body) in claimed {
            state.ready.push_front(Entry { body, redelivered: true });
        }
        drop(state);
        queue.ready.notify_one();
        Ok(count)
    }

    async fn pause(&self, queue: &str) -> Result<(), BrokerError> {
        check_queue(queue)?;
        let queue = self.queue(queue);
        lock(&queue.state).paused = true;
        queue.paused.send_replace(true);
        Ok(())
    }

    async fn resume(&self, queue: &str) -> Result<(), BrokerError> {
        check_queue(queue)?;
        let queue = self.queue(queue);
        lock(&queue.state).paused = false;
        queue.paused.send_replace(false);
        // Every waiting consumer looks again, and one that is about to wait
        // finds the stored wake-up.
        queue.ready.notify_waiters();
        queue.ready.notify_one();
        Ok(())
    }

    async fn join(&self, queue: &str, timeout: Duration) -> Result<(), BrokerError> {
        check_queue(queue)?;
        let queue_name = queue;
        let queue = self.queue(queue);
        let wait = async {
            loop {
                let settled = queue.settled.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                let next_due = {
                    let state = lock(&queue.state);
                    if state.ready.is_empty() && state.delayed.is_empty() && state.in_flight.is_empty() {
                        return;
                    }
                    state.delayed.peek().map(|Reverse(d)| d.due)
                };
                // Delayed messages that fall due need a consumer to wake up;
                // make sure one does even if it went to sleep on a later due time.
                if let Some(due) = next_due {
                    tokio::select! {
                        () = &mut settled => {}
                        () = tokio::time::sleep_until(due) => queue.ready.notify_one(),
                    }
                } else {
                    settled.await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| BrokerError::join_timeout(queue_name, timeout))
    }
}

/// Refuses the empty queue name.
fn check_queue(queue: &str) -> Result<(), BrokerError> {
    if queue.is_empty() {
        return Err(BrokerError::new(crate::BrokerErrorKind::InvalidInput, "memory: a queue name cannot be empty"));
    }
    Ok(())
}

#[async_trait]
impl DeadLetters for MemoryBroker {
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        check_queue(queue)?;
        let queue = self.queue(queue);
        let state = lock(&queue.state);
        Ok(state.dead.iter().take(limit).cloned().collect())
    }

    async fn page(&self, queue: &str, offset: usize, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        check_queue(queue)?;
        let queue = self.queue(queue);
        let state = lock(&queue.state);
        Ok(state.dead.iter().skip(offset).take(limit).cloned().collect())
    }

    async fn replay(&self, queue: &str, which: Replay) -> Result<u64, BrokerError> {
        check_queue(queue)?;
        let queue = self.queue(queue);
        let mut state = lock(&queue.state);
        let replayed: Vec<DeadLetter> = match which {
            Replay::All => state.dead.drain(..).collect(),
            Replay::One(key) => match state.dead.iter().position(|d| d.key == key) {
                Some(index) => state.dead.remove(index).into_iter().collect(),
                None => Vec::new(),
            },
        };
        let count = replayed.len() as u64;
        state.ready.extend(replayed.into_iter().map(|d| Entry { body: d.body, redelivered: false }));
        drop(state);
        if count > 0 {
            // Consumers pass the wake-up on while messages remain.
            queue.ready.notify_one();
        }
        Ok(count)
    }

    async fn delete(&self, queue: &str, which: Replay) -> Result<u64, BrokerError> {
        check_queue(queue)?;
        let queue = self.queue(queue);
        let mut state = lock(&queue.state);
        let before = state.dead.len();
        match which {
            Replay::All => state.dead.clear(),
            Replay::One(key) => state.dead.retain(|d| d.key != key),
        }
        Ok((before - state.dead.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next_body(consumer: &mut Box<dyn Consumer>) -> String {
        let delivery = consumer.next().await.expect("a delivery");
        let body = String::from_utf8(delivery.body().to_vec()).expect("utf-8");
        delivery.settle(Settlement::Ack).await.expect("settled");
        body
    }

    #[tokio::test]
    async fn the_queues_listed_are_those_holding_messages() {
        let broker = MemoryBroker::new();
        broker.enqueue(Outgoing::new("b", &b"x"[..])).await.expect("enqueued");
        broker
            .enqueue(Outgoing::new("a", &b"y"[..]).with_delay(Some(Duration::from_secs(60))))
            .await
            .expect("enqueued");
        // Named, never holding anything.
        broker.stats("empty").await.expect("stats");
        assert_eq!(broker.queues().await.expect("listed"), ["a", "b"]);
        assert!(broker.workers().await.is_err_and(|e| e.kind() == crate::BrokerErrorKind::Unsupported));
    }

    #[tokio::test]
    async fn higher_priorities_are_delivered_first_and_equals_in_order() {
        let broker = MemoryBroker::new();
        for (body, priority) in
            [("low-1", None), ("high-1", Some(9)), ("mid", Some(5)), ("low-2", Some(0)), ("high-2", Some(9))]
        {
            broker.enqueue(Outgoing::new("q", body.as_bytes().to_vec()).with_priority(priority)).await.expect("sent");
        }
        let mut consumer = broker.consume("q", 1).await.expect("consumer");
        let mut order = Vec::new();
        for _ in 0..5 {
            order.push(next_body(&mut consumer).await);
        }
        assert_eq!(order, ["high-1", "high-2", "mid", "low-1", "low-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_message_takes_its_place_by_priority_when_due() {
        let broker = MemoryBroker::new();
        let later =
            Outgoing::new("q", &b"urgent-later"[..]).with_delay(Some(Duration::from_millis(10))).with_priority(Some(7));
        broker.enqueue(later).await.expect("sent");
        broker.enqueue(Outgoing::new("q", &b"plain"[..])).await.expect("sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut consumer = broker.consume("q", 1).await.expect("consumer");
        assert_eq!(next_body(&mut consumer).await, "urgent-later");
        assert_eq!(next_body(&mut consumer).await, "plain");
    }

    #[tokio::test]
    async fn a_consumers_view_of_the_pause_follows_pause_and_resume() {
        let broker = MemoryBroker::new();
        let consumer = broker.consume("q", 1).await.expect("consumer");
        let mut paused = consumer.paused().expect("the in-memory consumer keeps a view");
        assert!(!*paused.borrow_and_update());
        broker.pause("q").await.expect("paused");
        assert!(paused.has_changed().expect("open") && *paused.borrow_and_update());
        broker.resume("q").await.expect("resumed");
        assert!(!*paused.borrow_and_update());
    }
}
