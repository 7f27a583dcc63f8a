//! The samples of queue depths the overview's chart draws: the last hour,
//! in memory.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// How far back the samples go.
pub(crate) const SPAN: Duration = Duration::from_secs(3600);

/// One sample: when, and the depths summed over every queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) at: SystemTime,
    /// Ready, delayed, in flight, dead.
    pub(crate) depths: [u64; 4],
}

/// The samples of the last hour, oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub(crate) fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push_back(sample);
        while samples.front().is_some_and(|s| sample.at.duration_since(s.at).unwrap_or_default() > SPAN) {
            samples.pop_front();
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(PoisonError::into_inner).iter().copied().collect()
    }
}
