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
//! is off by at most half of one (well under a millisecond on a local
//! network); a failed measurement keeps the last one.

use std::sync::atomic::{AtomicI64, Ordering};

use dramaturg_core::BrokerError;

use crate::broker_error;

/// The difference between the server's clock and this process's.
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    /// Server time minus local time, in milliseconds.
    offset_ms: AtomicI64,
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
        let local = before + (after - before) / 2;
        self.offset_ms.store(server - local, Ordering::Relaxed);
        Ok(())
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
    fn it_adds_the_measured_difference() {
        let clock = ServerClock::default();
        clock.offset_ms.store(-30_000, Ordering::Relaxed);
        let local = dramaturg_core::now_ms();
        let now = clock.now_ms();
        assert!(now + 30_000 >= local && now + 30_000 <= local + 1000, "{now} vs {local}");
    }
}
