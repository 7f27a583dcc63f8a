//! The Redis server's clock, as this client knows it.
//!
//! Due times, heartbeats and dead-letter times are decided inside the
//! scripts by the server's `TIME`. What is left on the client is the time a
//! message is stamped with when it is sent and the "now" its age is
//! measured against: both come from [`ServerClock::now_ms`], the local wall
//! clock plus the difference to the server's, measured with `TIME` when the
//! broker connects and again at every heartbeat. A producer whose clock is
//! 30 s slow therefore stamps its messages with the server's time, and a
//! worker whose clock is fast does not find them 30 s old.
//!
//! The difference is measured against the middle of the round trip, so it
//! is off by at most half of one. A round trip slowed by load (tens of
//! milliseconds on a busy machine) would move the estimate by as much, and
//! a message stamped before the move would fall due early by it; so, as
//! NTP clients do, a measurement replaces the kept one only when its round
//! trip is no slower than the kept one's — or when the kept one is older
//! than a minute, so that a drifting or adjusted clock is still followed. A
//! failed measurement keeps the last one.

use std::sync::atomic::{AtomicI64, Ordering};

use dramaturg_core::BrokerError;

use crate::broker_error;

/// How long the measurement with the fastest round trip is kept before any
/// later one may replace it.
const KEEP_BEST_FOR_MS: i64 = 60_000;

/// The difference between the server's clock and this process's.
#[derive(Debug)]
pub(crate) struct ServerClock {
    /// Server time minus local time, in milliseconds.
    offset_ms: AtomicI64,
    /// The round trip of the kept measurement, in milliseconds.
    round_trip_ms: AtomicI64,
    /// When the kept measurement was taken (local milliseconds).
    measured_at_ms: AtomicI64,
}

impl Default for ServerClock {
    fn default() -> Self {
        Self {
            offset_ms: AtomicI64::new(0),
            round_trip_ms: AtomicI64::new(i64::MAX),
            measured_at_ms: AtomicI64::new(0),
        }
    }
}

impl ServerClock {
    /// Reads the server's `TIME` on `conn` and keeps the difference.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the command fails; the last difference stays.
    pub(crate) async fn measure<C: redis::aio::ConnectionLike>(&self, conn: &mut C) -> Result<(), BrokerError> {
        let before = local_ms();
        let (seconds, micros): (i64, i64) =
            redis::cmd("TIME").query_async(conn).await.map_err(|e| broker_error(e, "reading the server's clock"))?;
        let after = local_ms();
        let server = seconds.saturating_mul(1000).saturating_add(micros / 1000);
        self.keep(server, before, after);
        Ok(())
    }

    /// Keeps the difference to `server`, read between local times `before`
    /// and `after`, if its round trip is no slower than the kept one's or
    /// the kept one is old.
    fn keep(&self, server: i64, before: i64, after: i64) {
        let round_trip = after.saturating_sub(before).max(0);
        let kept_for = after.saturating_sub(self.measured_at_ms.load(Ordering::Relaxed));
        if round_trip <= self.round_trip_ms.load(Ordering::Relaxed) || kept_for > KEEP_BEST_FOR_MS {
            self.offset_ms.store(server - (before + round_trip / 2), Ordering::Relaxed);
            self.round_trip_ms.store(round_trip, Ordering::Relaxed);
            self.measured_at_ms.store(after, Ordering::Relaxed);
        }
    }

    /// The server's time now, in milliseconds since the Unix epoch, as
    /// well as the last measurement tells.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(local_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed))).unwrap_or(0)
    }
}

fn local_ms() -> i64 {
    i64::try_from(dramaturg_core::now_ms()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_measurement_it_is_the_local_clock() {
        let clock = ServerClock::default();
        let (before, now, after) = (dramaturg_core::now_ms(), clock.now_ms(), dramaturg_core::now_ms());
        assert!(before <= now && now <= after);
    }

    #[test]
    fn a_slower_round_trip_does_not_move_the_estimate_until_the_best_is_old() {
        let clock = ServerClock::default();
        let t = 1_000_000;
        clock.keep(t + 5_000 + 1, t, t + 2); // offset 5,000 ms, round trip 2 ms
        assert_eq!(clock.offset_ms.load(Ordering::Relaxed), 5_000);
        // A loaded round trip of 50 ms whose middle is off by 24 ms: ignored.
        clock.keep(t + 1_000 + 5_000 + 49, t + 1_000, t + 1_050);
        assert_eq!(clock.offset_ms.load(Ordering::Relaxed), 5_000);
        // As fast a round trip: taken (the clock may have been adjusted).
        clock.keep(t + 2_000 + 7_000 + 1, t + 2_000, t + 2_002);
        assert_eq!(clock.offset_ms.load(Ordering::Relaxed), 7_000);
        // Once the best is older than a minute, any measurement is taken.
        let later = t + 2_002 + KEEP_BEST_FOR_MS + 1;
        clock.keep(later + 6_000 + 25, later, later + 50);
        assert_eq!(clock.offset_ms.load(Ordering::Relaxed), 6_000);
    }

    #[test]
    fn it_adds_the_measured_difference() {
        let clock = ServerClock::default();
        clock.offset_ms.store(-30_000, Ordering::Relaxed);
        let local = dramaturg_core::now_ms();
        let now = clock.now_ms();
        assert!(now + 30_000 >= local && now + 30_000 <= local + 1000, "{now} vs {local}");
    }
}
