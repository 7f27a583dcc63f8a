//! Wake-ups for idle consumers: one pub/sub connection per worker, however
//! many queues it consumes.
//!
//! A consumer that finds its queue empty waits on a local [`Notify`] and a
//! timer (the next delayed message, at most `max_block`), not on a
//! connection of its own. The scripts that put a message into an empty
//! ready list — or a delayed message due earlier than any other — publish
//! on the queue's channel `ns:{q}:wake`; this worker's subscription wakes
//! the queue's consumer, which claims with one script call. A wake-up lost
//! while the subscription reconnects costs at most `max_block` of latency:
//! every consumer is woken after a reconnect, and each looks again when its
//! timer runs out anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::conn::Endpoint;
use crate::{broker_error, lock};

/// How long a new consumer waits for its subscription before it goes on
/// (it then wakes on its timer until the subscription is up).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// A channel to subscribe to, and who to tell once it is.
type Request = (String, oneshot::Sender<()>);

/// The wake-ups of one worker, by channel.
pub(crate) struct Wakeups {
    notifies: Mutex<HashMap<String, Arc<Notify>>>,
    subscribe: mpsc::UnboundedSender<Request>,
    requests: Mutex<Option<mpsc::UnboundedReceiver<Request>>>,
}

impl Wakeups {
    pub(crate) fn new() -> Self {
        let (subscribe, requests) = mpsc::unbounded_channel();
        Self { notifies: Mutex::default(), subscribe, requests: Mutex::new(Some(requests)) }
    }

    /// The wake-up of `channel`, once subscribed to it (or after a short
    /// wait, if Redis cannot be reached: the consumer then wakes on its
    /// timer until the subscription is up).
    pub(crate) async fn register(&self, channel: &str) -> Arc<Notify> {
        let notify = Arc::clone(lock(&self.notifies).entry(channel.to_owned()).or_default());
        let (subscribed, confirmed) = oneshot::channel();
        if self.subscribe.send((channel.to_owned(), subscribed)).is_ok()
            && tokio::time::timeout(SUBSCRIBE_WAIT, confirmed).await.is_err()
        {
            tracing::debug!(channel, "not subscribed to wake-ups yet; waking on the timer meanwhile");
        }
        notify
    }

    fn wake(&self, channel: &str) {
        if let Some(notify) = lock(&self.notifies).get(channel) {
            notify.notify_one();
        }
    }

    fn wake_all(&self) {
        for notify in lock(&self.notifies).values() {
            notify.notify_one();
        }
    }

    /// Keeps the subscription up until `stop`: subscribes to every channel
    /// asked for, wakes the consumers of the channels published on, and
    /// after a lost connection subscribes again and wakes every consumer.
    pub(crate) async fn run(&self, endpoint: Endpoint, retry_every: Duration, mut stop: watch::Receiver<bool>) {
        let Some(mut requests) = lock(&self.requests).take() else { return };
        // On a cluster, each attempt subscribes on the next seed node, so
        // that a subscription lost with its node comes back on another.
        for attempt in 0.. {
            let session = self.session(&endpoint, attempt, &mut requests);
            tokio::select! {
                result = session => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "the wake-up subscription was lost; subscribing again");
                    }
                }
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(retry_every) => {}
                _ = stop.changed() => break,
            }
        }
        // A later worker on the same broker starts the thread again and
        // takes the requests from here.
        *lock(&self.requests) = Some(requests);
    }

    /// One connection's life: subscribe to every known channel, then relay.
    async fn session(
        &self,
        endpoint: &Endpoint,
        attempt: usize,
        requests: &mut mpsc::UnboundedReceiver<Request>,
    ) -> Result<(), dramaturg_core::BrokerError> {
        let pubsub = endpoint.pubsub(attempt).await.map_err(|e| broker_error(e, "subscribing to wake-ups"))?;
        let (mut sink, mut stream) = pubsub.split();
        let known: Vec<String> = lock(&self.notifies).keys().cloned().collect();
        for channel in &known {
            sink.subscribe(channel).await.map_err(|e| broker_error(e, "subscribing to wake-ups"))?;
        }
        // Anything published while the subscription was down is not lost
        // for long: every consumer looks again now.
        self.wake_all();
        loop {
            tokio::select! {
                request = requests.recv() => {
                    let Some((channel, subscribed)) = request else { return Ok(()) };
                    sink.subscribe(&channel).await.map_err(|e| broker_error(e, "subscribing to wake-ups"))?;
                    let _ = subscribed.send(());
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err(dramaturg_core::BrokerError::new(
                            dramaturg_core::BrokerErrorKind::Connection,
                            "redis: the wake-up subscription closed",
                        ));
                    };
                    self.wake(message.get_channel_name());
                }
            }
        }
    }
}
