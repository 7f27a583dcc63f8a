//! The metric handles of each actor and queue, registered once with the
//! recorder and kept: recording is then an atomic update, with no lookup
//! of a metric's name and labels on every message.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use dramaturg_core::App;

use foldhash::HashMap;
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
                let labels = [(ACTOR, self.actor.clone()), (QUEUE, self.queue.clone()), (OUTCOME, label.to_owned())];
                counter!(MESSAGES_PROCESSED, &labels).increment(1);
            }
        }
    }
}

/// The handles of every actor and queue seen so far.
///
/// Those of the app's own actors on their own queues are registered when
/// a worker starts ([`Handles::register_app`]) and read without a lock or
/// a reference count; any other pair (an actor sent to another queue, a
/// rejected message, a stack run without a worker) is registered on first
/// use in a map behind a lock.
///
/// Actor names come from the app's registered actors (or
/// [`UNKNOWN`](crate::names::UNKNOWN)) and queues from the app's, so the
/// maps stay as small as the app — and their keys are not an attacker's,
/// so a fast hash without a random key will do (SipHash was most of the
/// middleware's cost per message).
#[derive(Debug, Default)]
pub(crate) struct Handles {
    /// Actor → its queue and its handles there.
    app_actors: OnceLock<HashMap<String, (String, ActorMetrics)>>,
    others: RwLock<HashMap<String, HashMap<String, Arc<ActorMetrics>>>>,
}

/// Handles found by [`Handles::get`].
pub(crate) enum Found<'a> {
    App(&'a ActorMetrics),
    Other(Arc<ActorMetrics>),
}

impl std::ops::Deref for Found<'_> {
    type Target = ActorMetrics;

    fn deref(&self) -> &ActorMetrics {
        match self {
            Found::App(handles) => handles,
            Found::Other(handles) => handles,
        }
    }
}

impl Handles {
    /// Registers the handles of every actor of `app` on its queue, once
    /// (later calls, from other workers of the app, change nothing).
    pub(crate) fn register_app(&self, app: &App) {
        self.app_actors.get_or_init(|| {
            app.actors()
                .map(|info| {
                    let handles = ActorMetrics::new(info.name(), info.queue());
                    (info.name().to_owned(), (info.queue().to_owned(), handles))
                })
                .collect()
        });
    }

    /// The handles of `actor` on `queue`, registered on first use.
    pub(crate) fn get(&self, actor: &str, queue: &str) -> Found<'_> {
        if let Some((_, handles)) = self.app_actors.get().and_then(|a| a.get(actor)).filter(|(q, _)| q == queue) {
            return Found::App(handles);
        }
        let known = self.others.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(handles) = known.get(actor).and_then(|queues| queues.get(queue)) {
            return Found::Other(Arc::clone(handles));
        }
        drop(known);
        let mut known = self.others.write().unwrap_or_else(PoisonError::into_inner);
        let handles = known
            .entry(actor.to_owned())
            .or_default()
            .entry(queue.to_owned())
            .or_insert_with(|| Arc::new(ActorMetrics::new(actor, queue)));
        Found::Other(Arc::clone(handles))
    }
}
