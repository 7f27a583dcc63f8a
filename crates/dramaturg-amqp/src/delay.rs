//! Delay buckets: per queue, durable queues whose messages all live exactly
//! `10 ms × 2^k` and then dead-letter back into the queue. A delay is spent
//! in the largest bucket that fits what remains; when a message comes back
//! early, the consumer moves it on to the next bucket (one publish, one
//! ack) instead of holding it. Every bucket has a single TTL, so no message
//! waits behind a longer one.
//!
//! No client's clock decides anything. A message published into bucket `k`
//! carries what it must still wait *after* that bucket
//! ([`REMAINING_HEADER`]): RabbitMQ dead-letters it back only when the
//! bucket's TTL has run out on the server, so the consumer that receives it
//! knows it has waited at least `10 ms × 2^k` and only needs the recorded
//! remainder, without reading a clock.

use std::time::Duration;

use lapin::types::AMQPValue;

/// The shortest bucket, in milliseconds.
pub(crate) const BASE_MS: u64 = 10;
/// Buckets `0..=MAX_BUCKET`: 10 ms to about 11.6 hours. Longer delays go
/// through the largest bucket more than once.
pub(crate) const MAX_BUCKET: u32 = 22;

/// The header holding what a message in a delay bucket must still wait
/// once the bucket lets it go, in milliseconds (0: it is due then).
pub(crate) const REMAINING_HEADER: &str = "x-dramaturg-remaining";

/// The header of earlier versions: a delayed message's due time in
/// milliseconds since the epoch, by the clock of whoever sent it. Read only
/// for messages that do not carry [`REMAINING_HEADER`] (sent by an earlier
/// version), and written so that workers of an earlier version, during a
/// rolling upgrade, do not run a message early.
pub(crate) const DUE_HEADER: &str = "x-dramaturg-due";

/// How long messages live in bucket `k`.
pub(crate) fn bucket_ttl_ms(k: u32) -> u64 {
    BASE_MS << k
}

/// The bucket for a message due in `remaining_ms`, or `None` to deliver it
/// now. Messages are never delivered early, and at most one base unit late.
pub(crate) fn bucket_for(remaining_ms: u64) -> Option<u32> {
    if remaining_ms == 0 {
        return None;
    }
    let units = (remaining_ms / BASE_MS).max(1);
    Some((63 - units.leading_zeros()).min(MAX_BUCKET))
}

/// Where a message that must still wait `remaining_ms` goes: the bucket
/// that fits, and what it must wait after that bucket; `None` if it is due.
pub(crate) fn next_hop(remaining_ms: u64) -> Option<(u32, u64)> {
    bucket_for(remaining_ms).map(|k| (k, remaining_ms.saturating_sub(bucket_ttl_ms(k))))
}

/// `delay` in whole milliseconds, rounded up, so that a delay is never cut
/// short.
pub(crate) fn millis_rounded_up(delay: Duration) -> u64 {
    u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// The name of bucket `k` of `queue`.
pub(crate) fn bucket_queue(queue: &str, k: u32) -> String {
    format!("{queue}.delay.{k:02}")
}

pub(crate) use dramaturg_core::time::millis;

/// The whole-number header `key` of a delivery, if it has one.
pub(crate) fn header_u64(properties: &lapin::BasicProperties, key: &str) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(value) => u64::try_from(*value).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_fit_what_remains() {
        assert_eq!(bucket_for(0), None);
        assert_eq!(bucket_for(3), Some(0));
        assert_eq!(bucket_for(9), Some(0));
        assert_eq!(bucket_for(10), Some(0));
        assert_eq!(bucket_for(25), Some(1));
        assert_eq!(bucket_for(1_000), Some(6));
        assert_eq!(bucket_ttl_ms(6), 640);
        assert_eq!(bucket_for(u64::MAX / 4), Some(MAX_BUCKET));
    }

    #[test]
    fn any_delay_is_spent_in_few_hops_and_never_overshoots_by_more_than_a_base_unit() {
        for delay in [7u64, 15, 999, 1_000, 61_234, 3_600_000, 7 * 24 * 3_600_000] {
            let (mut remaining, mut hops) = (delay, 0);
            while let Some(k) = bucket_for(remaining) {
                remaining = remaining.saturating_sub(bucket_ttl_ms(k));
                hops += 1;
            }
            assert!(hops <= 40, "{delay} ms took {hops} hops");
            assert_eq!(remaining, 0, "{delay}");
        }
    }

    #[test]
    fn the_buckets_of_a_delay_add_up_to_it_and_never_to_less() {
        for delay in [1u64, 7, 10, 15, 999, 1_000, 10_000, 61_234, 3_600_000, 7 * 24 * 3_600_000] {
            let (mut remaining, mut waited) = (delay, 0);
            while let Some((k, after)) = next_hop(remaining) {
                waited += bucket_ttl_ms(k);
                assert!(after < remaining, "{delay}: no progress");
                remaining = after;
            }
            assert!(waited >= delay && waited < delay + BASE_MS, "{delay} ms waited {waited} ms");
        }
        assert_eq!(millis_rounded_up(Duration::from_micros(1_001)), 2);
        assert_eq!(millis_rounded_up(Duration::from_millis(5)), 5);
        assert_eq!(millis_rounded_up(Duration::MAX), u64::MAX);
    }
}
