//! How long an idle consumer waits before it looks again.
//!
//! Python's producers publish no wake-up, so a consumer of Dramatiq's
//! layout must poll: 5 ms after it last found something, doubling up to
//! `max_poll` (1 s by default, as Dramatiq's consumers), so that a busy
//! queue is served at once and an idle one costs one command a second.

use std::time::Duration;

/// The first wait after a poll that found something.
const FIRST: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Self {
        Self { next: FIRST, max }
    }

    /// Something was found: the next wait is short again.
    pub(crate) fn reset(&mut self) {
        self.next = FIRST;
    }

    /// The wait before the next poll (and doubles the one after it).
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(30));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(waits, [5, 10, 20, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), FIRST);
    }
}
