//! The metric handles of each actor and queue, registered once with the
//! recorder and kept, with the per-thread tallies that a flush writes into
//! them: recording is an update of the thread's own tally, with no lookup
//! of a metric's name and labels on every message.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use dramaturg_core::App;

use foldhash::HashMap;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::names::{
    ACTOR, MESSAGES_DEAD_LETTERED, MESSAGES_IN_PROGRESS, MESSAGES_PROCESSED, MESSAGES_RECEIVED, MESSAGE_DURATION,
    MESSAGE_START_DELAY, OUTCOME, OUTCOMES, QUEUE,
};
use crate::tally::{End, Samples, Tallies};

/// The handles of one actor on one queue, and what was recorded for them
/// and not flushed yet.
#[derive(Debug)]
pub(crate) struct ActorMetrics {
    received: Counter,
    in_progress: Gauge,
    duration: Histogram,
    start_delay: Histogram,
    dead_lettered: Counter,
    /// One per entry of [`OUTCOMES`], registered at once so that every
    /// series exists (at zero) from the first message on.
    outcomes: [Counter; OUTCOMES.len()],
    tallies: Tallies,
    /// The attempts started, in all, at the last flush.
    flushed_started: AtomicU64,
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
            tallies: Tallies::default(),
            flushed_started: AtomicU64::new(0),
            actor: actor.to_owned(),
            queue: queue.to_owned(),
        }
    }

    /// Counts an attempt that started.
    pub(crate) fn start(&self) {
        self.tallies.start();
    }

    /// Counts an attempt that ended with the outcome labelled `label`,
    /// with its samples (seconds).
    pub(crate) fn end(&self, label: &'static str, duration: Option<f64>, start_delay: Option<f64>, dead: bool) {
        let outcome = OUTCOMES.iter().position(|o| *o == label);
        if outcome.is_none() {
            // An outcome added to the core after this list: counted all the
            // same, at once.
            let labels = [(ACTOR, self.actor.clone()), (QUEUE, self.queue.clone()), (OUTCOME, label.to_owned())];
            counter!(MESSAGES_PROCESSED, &labels).increment(1);
        }
        let end = End { outcome, duration, start_delay, dead_lettered: dead };
        self.tallies.end(&end, |samples| self.record(samples));
    }

    /// Counts a message rejected before it ran (no attempt started).
    pub(crate) fn rejected(&self, label: &'static str) {
        self.tallies.start();
        self.end(label, None, None, true);
    }

    /// Writes what was recorded since the last flush into the recorder.
    pub(crate) fn flush(&self) {
        let flushed = self.tallies.take(&self.flushed_started, |samples| self.record(samples));
        self.received.increment(flushed.received);
        self.in_progress.set(flushed.in_progress as f64);
        self.dead_lettered.increment(flushed.dead_lettered);
        for (counter, count) in self.outcomes.iter().zip(flushed.outcomes) {
            if count > 0 {
                counter.increment(count);
            }
        }
    }

    /// Writes `samples` into the histograms, draining them.
    fn record(&self, samples: &mut Samples) {
        for seconds in samples.durations.drain(..) {
            self.duration.record(seconds);
        }
        for seconds in samples.start_delays.drain(..) {
            self.start_delay.record(seconds);
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

    /// Writes what every actor and queue recorded since the last flush
    /// into the recorder.
    pub(crate) fn flush(&self) {
        for (_, handles) in self.app_actors.get().into_iter().flat_map(|actors| actors.values()) {
            handles.flush();
        }
        let others = self.others.read().unwrap_or_else(PoisonError::into_inner);
        for handles in others.values().flat_map(|queues| queues.values()) {
            handles.flush();
        }
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
