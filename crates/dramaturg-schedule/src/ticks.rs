//! Which ticks a worker tries to enqueue when it wakes, and how long a
//! tick's claim must live so that no worker can claim it again.

use std::time::Duration;

use dramaturg_core::time::millis;

use crate::schedule::{Missed, Schedule};

/// The most ticks a worker tries to enqueue at one wake-up (a schedule of
/// 1 ms with a grace of seconds would otherwise have thousands due).
pub(crate) const MAX_TICKS_PER_WAKE: usize = 2000;

/// What a worker finds due when it wakes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Due {
    /// The ticks to try to enqueue, oldest first.
    pub(crate) ticks: Vec<u64>,
    /// How many ticks after the cursor are too late and left out by the
    /// missed-tick policy (counted up to [`MAX_TICKS_PER_WAKE`]).
    pub(crate) skipped: usize,
}

/// The ticks after `cursor` and at or before `now` (milliseconds since the
/// epoch) that a worker should try to enqueue: those at most the
/// schedule's grace late, and for [`Missed::CatchUp`] the latest `max` of
/// the older ones; and how many older ones are skipped. A running worker
/// passes the time it last looked as `cursor`; a starting one the last
/// tick the fleet enqueued (claims keep it from enqueuing what others
/// did).
pub(crate) fn due(schedule: &Schedule, cursor: u64, now: u64) -> Due {
    let grace = millis(schedule.grace_period());
    let catch_up = match schedule.missed_policy() {
        Missed::CatchUp { max } => max as usize,
        _ => 0,
    };
    let mut due = Due::default();
    let mut late = 0;
    let mut candidate = schedule.every().at_or_before(now);
    while let Some(tick) = candidate {
        if tick <= cursor || due.ticks.len() >= MAX_TICKS_PER_WAKE || due.skipped >= MAX_TICKS_PER_WAKE {
            break;
        }
        candidate = schedule.every().before(tick);
        if tick.saturating_add(grace) < now {
            if late == catch_up {
                due.skipped += 1;
                continue;
            }
            late += 1;
        }
        due.ticks.push(tick);
    }
    due.ticks.reverse();
    due
}

/// How long the claim of `tick` must live: longer than any worker may
/// still find the tick [`due`] — its grace, and for [`Missed::CatchUp`]
/// until `max` later ticks have passed — plus `skew`, the most the
/// workers' clocks may disagree.
pub(crate) fn claim_ttl(schedule: &Schedule, tick: u64, skew: Duration) -> Duration {
    let mut last_due = tick;
    if let Missed::CatchUp { max } = schedule.missed_policy() {
        for _ in 0..max {
            match schedule.every().after(last_due) {
                Some(next) => last_due = next,
                None => break,
            }
        }
    }
    Duration::from_millis(last_due - tick) + schedule.grace_period() + skew
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dramaturg_core::{actor::into_job_result, Actor, Context, Job};
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Tick;

    impl Actor for Tick {
        const NAME: &'static str = "tick";
        const QUEUE: &'static str = "default";
        type Output = ();
        fn into_job(self, _ctx: Context) -> Job {
            Box::pin(async { into_job_result::<Self, _>(Ok::<(), std::io::Error>(())) })
        }
    }

    fn every_second(missed: Missed) -> Schedule {
        Schedule::interval("s", Duration::from_secs(1), Tick)
            .unwrap()
            .grace(Duration::from_millis(1500))
            .unwrap()
            .missed(missed)
            .unwrap()
    }

    #[test]
    fn on_time_ticks_are_due_once_per_cursor() {
        let s = every_second(Missed::Skip);
        assert_eq!(due(&s, 10_000, 11_020).ticks, [11_000]);
        assert_eq!(due(&s, 11_020, 11_900), Due::default());
        assert_eq!(due(&s, 11_020, 13_100).ticks, [12_000, 13_000], "a late wake within the grace enqueues both");
    }

    #[test]
    fn skip_drops_ticks_older_than_the_grace_and_counts_them() {
        let s = every_second(Missed::Skip);
        // A worker starting at 20.3 s after a stop since 10 s: 19 s is within 1.5 s, 11 to 18 s are missed.
        assert_eq!(due(&s, 10_000, 20_300), Due { ticks: vec![19_000, 20_000], skipped: 8 });
    }

    #[test]
    fn catch_up_takes_the_latest_missed_ticks() {
        let s = every_second(Missed::CatchUp { max: 3 });
        assert_eq!(due(&s, 10_000, 20_300), Due { ticks: vec![16_000, 17_000, 18_000, 19_000, 20_000], skipped: 5 });
        assert_eq!(due(&s, 17_500, 20_300).ticks, [18_000, 19_000, 20_000], "never behind its cursor");
    }

    #[test]
    fn claims_outlive_the_window_in_which_a_tick_is_due() {
        let skew = Duration::from_secs(60);
        let skip = every_second(Missed::Skip);
        assert_eq!(claim_ttl(&skip, 20_000, skew), Duration::from_millis(1500) + skew);
        let catch_up = every_second(Missed::CatchUp { max: 3 });
        assert_eq!(claim_ttl(&catch_up, 20_000, skew), Duration::from_millis(4500) + skew);
        // The last worker that may find 20 s due (the 3rd latest missed tick) starts before 23 s + grace.
        assert!(due(&catch_up, 0, 24_499).ticks.contains(&20_000));
        assert!(!due(&catch_up, 0, 24_501).ticks.contains(&20_000));
    }
}
