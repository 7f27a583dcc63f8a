//! The metric handles of each actor and queue, registered once with the
//! recorder and kept: recording is then an atomic update, with no lookup
//! of a metric's name and labels on every message.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::names::{
    ACTOR, MESSAGES_DEAD_LETTERED, MESSAGES_IN_PROGRESS, MESSAGES_PROCESSED, MESSAGES_RECEIVED, MESSAGE_DURATION,
    MESSAGE_START_DELAY, OUTCOME, OUTCOMES, QUEUE,
};

/// The handles of one actor on one queue.
#[derive(Debug)]
pub(crate) struct ActorMetrics {
    pub(crate) received: Counter,
    pub(crate) in_progress: Gauge,
    pub(crate) duration: Histogram,
    pub(crate) start_delay: Histogram,
    pub(crate) dead_lettered: Counter,
    /// One per entry of [`OUTCOMES`], registered at once so that every
    /// series exists (at zero) from the first message on.
    outcomes: [Counter; OUTCOMES.len()],
    actor: String,
    queue: String,
}

impl ActorMetrics {
    fn new(actor: &str, queue: &str) -> Self {
        let labels = [(ACTOR, actor.to_owned()), (QUEUE, queue.to_owned())];
        Self {
            received: counter!(MESSAGES_RECEIVED, &labels),
            in_progress: gauge!(MESSAGES_IN_PROGRESS, &labels),
            duration: histogram!(MESSAGE_DURATION, &labels),
            start_delay: histogram!(MESSAGE_START_DELAY, &labels),
            dead_lettered: counter!(MESSAGES_DEAD_LETTERED, &labels),
            outcomes: OUTCOMES.map(|outcome| {
                counter!(MESSAGES_PROCESSED, ACTOR => actor.to_owned(), QUEUE => queue.to_owned(), OUTCOME => outcome)
            }),
            actor: actor.to_owned(),
            queue: queue.to_owned(),
        }
    }

    /// Counts one attempt that ended with the outcome labelled `label`.
    pub(crate) fn count_outcome(&self, label: &'static str) {
        match OUTCOMES.iter().position(|o| *o == label) {
            Some(index) => self.outcomes[index].increment(1),
            // An outcome added to the core after this list: counted all the same.
            None => {
                counter!(MESSAGES_PROCESSED, ACTOR => self.actor.clone(), QUEUE => self.queue.clone(), OUTCOME => label)
                    .increment(1)
            }
        }
    }
}

/// The handles of every actor and queue seen so far. Actor names come from
/// the app's registered actors (or [`UNKNOWN`](crate::names::UNKNOWN))
/// and queues from the app's, so the map stays as small as the app.
#[derive(Debug, Default)]
pub(crate) struct Handles {
    by_actor: RwLock<HashMap<String, HashMap<String, Arc<ActorMetrics>>>>,
}

impl Handles {
    /// The handles of `actor` on `queue`, registered on first use.
    pub(crate) fn get(&self, actor: &str, queue: &str) -> Arc<ActorMetrics> {
        let known = self.by_actor.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(handles) = known.get(actor).and_then(|queues| queues.get(queue)) {
            return Arc::clone(handles);
        }
        drop(known);
        let mut known = self.by_actor.write().unwrap_or_else(PoisonError::into_inner);
        let handles = known
            .entry(actor.to_owned())
            .or_default()
            .entry(queue.to_owned())
            .or_insert_with(|| Arc::new(ActorMetrics::new(actor, queue)));
        Arc::clone(handles)
    }
}
