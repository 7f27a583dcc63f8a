//! The watchdog: notices, from a thread of its own, when a message's task
//! holds its runtime thread without yielding for longer than a threshold —
//! an async actor that computes or calls blocking code — and names the
//! actor.
//!
//! Each running message has a slot; every poll of its task stores when it
//! started and, when it ends, that it ended (two relaxed stores and a clock
//! read per poll). The watchdog reads the slots a few times per threshold.
//! It can only notice: a thread cannot be taken back from the code that
//! holds it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::App;

/// What a running message's task shares with the watchdog.
#[derive(Debug, Default)]
struct Slot {
    /// Microseconds after the epoch, plus one, at which the current poll
    /// started; 0 while the task is not being polled.
    poll_started: AtomicU64,
    /// Index of the actor in `Shared::actors`, plus one; 0 while unknown.
    actor: AtomicUsize,
    /// The `poll_started` value last reported, so a poll counts once.
    reported: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    epoch: Instant,
    threshold: Duration,
    slots: Box<[Slot]>,
    free: Mutex<Vec<usize>>,
    actors: Vec<&'static str>,
    index: HashMap<&'static str, usize>,
    blocked: AtomicU64,
    stop: AtomicBool,
}

/// The watchdog of one worker; stops its thread when dropped.
#[derive(Debug)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// A watchdog for `slots` messages at once of `app`'s actors, reporting
    /// polls longer than `threshold`; `None` for a zero threshold (off).
    pub(crate) fn start(app: &App, slots: usize, threshold: Duration) -> Option<Self> {
        if threshold.is_zero() {
            return None;
        }
        let actors: Vec<&'static str> = app.actors().map(crate::ActorInfo::name).collect();
        let index = actors.iter().enumerate().map(|(i, name)| (*name, i)).collect();
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            threshold,
            slots: (0..slots).map(|_| Slot::default()).collect(),
            free: Mutex::new((0..slots).rev().collect()),
            actors,
            index,
            blocked: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let watched = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("dramaturg-watchdog".into())
            .spawn(move || watch(&watched))
            .map_err(|error| tracing::warn!(%error, "cannot start the watchdog thread; blocked runtimes go unnoticed"))
            .ok()?;
        Some(Self { shared, thread: Some(thread) })
    }

    /// How many polls held a runtime thread past the threshold so far.
    pub(crate) fn blocked(&self) -> u64 {
        self.shared.blocked.load(Ordering::Relaxed)
    }

    /// A slot for one message, given back when the lease is dropped.
    pub(crate) fn lease(&self) -> Option<Lease> {
        let index = crate::sync::lock(&self.shared.free).pop()?;
        Some(Lease { shared: Arc::clone(&self.shared), index })
    }

    /// Tells the thread to end, without waiting for it.
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One message's slot.
#[derive(Debug)]
pub(crate) struct Lease {
    shared: Arc<Shared>,
    index: usize,
}

impl Lease {
    fn slot(&self) -> &Slot {
        &self.shared.slots[self.index]
    }

    /// Names the actor the message is for.
    pub(crate) fn set_actor(&self, name: &str) {
        if let Some(i) = self.shared.index.get(name) {
            self.slot().actor.store(i + 1, Ordering::Relaxed);
        }
    }

    /// Runs `future`, recording when each of its polls starts and ends.
    pub(crate) async fn watch<F: Future>(&self, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let slot = self.slot();
        let epoch = self.shared.epoch;
        std::future::poll_fn(|cx| {
            let polling = Polling::start(slot, epoch);
            let poll = future.as_mut().poll(cx);
            drop(polling);
            match poll {
                Poll::Ready(output) => Poll::Ready(output),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let slot = self.slot();
        slot.poll_started.store(0, Ordering::Relaxed);
        slot.actor.store(0, Ordering::Relaxed);
        crate::sync::lock(&self.shared.free).push(self.index);
    }
}

/// A poll in progress; marks it ended when dropped, even by a panic.
struct Polling<'a>(&'a Slot);

impl<'a> Polling<'a> {
    fn start(slot: &'a Slot, epoch: Instant) -> Self {
        let micros = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        slot.poll_started.store(micros + 1, Ordering::Relaxed);
        Self(slot)
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.poll_started.store(0, Ordering::Relaxed);
    }
}

/// The watchdog thread: looks at every slot a few times per threshold and
/// warns once per actor.
fn watch(shared: &Shared) {
    let period = (shared.threshold / 4).clamp(Duration::from_millis(5), Duration::from_millis(250));
    let threshold = u64::try_from(shared.threshold.as_micros()).unwrap_or(u64::MAX);
    let mut warned: HashSet<&'static str> = HashSet::new();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(period);
        let now = u64::try_from(shared.epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1;
        for slot in &shared.slots {
            let started = slot.poll_started.load(Ordering::Relaxed);
            if started == 0
                || now.saturating_sub(started) < threshold
                || slot.reported.load(Ordering::Relaxed) == started
            {
                continue;
            }
            slot.reported.store(started, Ordering::Relaxed);
            shared.blocked.fetch_add(1, Ordering::Relaxed);
            let actor = slot.actor.load(Ordering::Relaxed).checked_sub(1).and_then(|i| shared.actors.get(i).copied());
            let Some(actor) = actor else { continue };
            if warned.insert(actor) {
                let seconds = Duration::from_micros(now - started).as_secs_f64();
                tracing::warn!(
                    actor,
                    "actor {actor:?} blocked a runtime thread for {seconds:.1} s; mark it `blocking` or \
                     `isolated` (or make it reach an `.await` more often): while it holds the thread, other messages on it wait and its \
                     time limit cannot stop it"
                );
            }
        }
    }
}
