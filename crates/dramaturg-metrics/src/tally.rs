//! Per-thread tallies of what the middleware records, written into the
//! recorder's handles by [`flush`](crate::flush): a message updates memory
//! that its own runtime thread owns, not counters, gauges and histogram
//! buffers that every thread of the worker updates (whose cache lines the
//! threads then pass to each other on every message).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use dramaturg_core::sync::lock;

use crate::names::OUTCOMES;

/// How many tallies each actor and queue has; threads share them beyond.
const SHARDS: usize = 16;

/// Samples a shard holds before the thread that records writes them to
/// the histograms itself (when nothing flushes: no worker runs the
/// flusher).
const MAX_PENDING_SAMPLES: usize = 4096;

/// What one actor on one queue recorded, by thread.
#[derive(Debug)]
pub(crate) struct Tallies {
    shards: Box<[Shard]>,
}

/// What the threads of one shard recorded: cumulative starts and ends (the
/// in-progress gauge is their difference), and counts and samples not
/// flushed yet. Aligned so that two shards never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    started: AtomicU64,
    ended: AtomicU64,
    dead_lettered: AtomicU64,
    /// In the order of [`OUTCOMES`]; outcomes outside it are counted at
    /// once, not here.
    outcomes: [AtomicU64; OUTCOMES.len()],
    samples: Mutex<Samples>,
}

/// Histogram samples not flushed yet, in seconds.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    pub(crate) durations: Vec<f64>,
    pub(crate) start_delays: Vec<f64>,
}

impl Samples {
    fn len(&self) -> usize {
        self.durations.len() + self.start_delays.len()
    }
}

/// The counts the tallies held since the last flush.
#[derive(Debug, Default)]
pub(crate) struct Flushed {
    pub(crate) received: u64,
    pub(crate) in_progress: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) outcomes: [u64; OUTCOMES.len()],
}

/// How one attempt ended, for [`Tallies::end`].
pub(crate) struct End {
    /// Its index in [`OUTCOMES`]; `None` for an outcome outside it
    /// (counted by the caller).
    pub(crate) outcome: Option<usize>,
    pub(crate) duration: Option<f64>,
    pub(crate) start_delay: Option<f64>,
    pub(crate) dead_lettered: bool,
}

/// This thread's shard index.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
    INDEX.with(|index| *index)
}

impl Default for Tallies {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Shard::default()).collect() }
    }
}

impl Tallies {
    /// Counts an attempt that started.
    pub(crate) fn start(&self) {
        self.shards[shard()].started.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an attempt that ended. When too many samples wait for a
    /// flush, hands them to `record` (which drains them; their buffers
    /// keep their capacity).
    pub(crate) fn end(&self, end: &End, record: impl FnOnce(&mut Samples)) {
        let shard = &self.shards[shard()];
        shard.ended.fetch_add(1, Ordering::Relaxed);
        if let Some(outcome) = end.outcome {
            shard.outcomes[outcome].fetch_add(1, Ordering::Relaxed);
        }
        if end.dead_lettered {
            shard.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        if end.duration.is_none() && end.start_delay.is_none() {
            return;
        }
        let mut samples = lock(&shard.samples);
        samples.durations.extend(end.duration);
        samples.start_delays.extend(end.start_delay);
        if samples.len() >= MAX_PENDING_SAMPLES {
            record(&mut samples);
        }
    }

    /// Takes the counts recorded since the last call, and hands every
    /// shard's samples to `record` (which drains them); `received` counts
    /// the starts since then (`last_started`, updated, is their total at
    /// the last call).
    pub(crate) fn take(&self, last_started: &AtomicU64, mut record: impl FnMut(&mut Samples)) -> Flushed {
        let mut flushed = Flushed::default();
        let (mut started, mut ended) = (0, 0);
        for shard in &self.shards {
            started += shard.started.load(Ordering::Relaxed);
            ended += shard.ended.load(Ordering::Relaxed);
            flushed.dead_lettered += shard.dead_lettered.swap(0, Ordering::Relaxed);
            for (total, count) in flushed.outcomes.iter_mut().zip(&shard.outcomes) {
                *total += count.swap(0, Ordering::Relaxed);
            }
            record(&mut lock(&shard.samples));
        }
        flushed.received = started - last_started.swap(started, Ordering::Relaxed);
        flushed.in_progress = started.saturating_sub(ended);
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_takes_what_every_thread_recorded_once() {
        let tallies = std::sync::Arc::new(Tallies::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let tallies = std::sync::Arc::clone(&tallies);
                std::thread::spawn(move || {
                    for i in 0..100 {
                        tallies.start();
                        if i < 90 {
                            let end =
                                End { outcome: Some(0), duration: Some(0.5), start_delay: None, dead_lettered: i < 3 };
                            tallies.end(&end, |_| panic!("90 samples are not too many"));
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let last = AtomicU64::new(0);
        let mut durations = 0;
        let flushed = tallies.take(&last, |samples| durations += samples.durations.drain(..).count());
        assert_eq!((flushed.received, flushed.in_progress, flushed.dead_lettered), (400, 40, 12));
        assert_eq!(flushed.outcomes[0], 360);
        assert_eq!(durations, 360);
        let again = tallies.take(&last, |samples| assert_eq!(samples.len(), 0));
        assert_eq!((again.received, again.in_progress, again.outcomes[0]), (0, 40, 0));
    }
}
