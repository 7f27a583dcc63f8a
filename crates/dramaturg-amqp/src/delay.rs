//! Delay buckets: per queue, durable queues whose messages all live exactly
//! `10 ms × 2^k` and then dead-letter back into the queue. A delay is spent
//! in the largest bucket that fits what remains; when a message comes back
//! early, the consumer moves it on to the next bucket (one publish, one
//! ack) instead of holding it. Every bucket has a single TTL, so no message
//! waits behind a longer one.

/// The shortest bucket, in milliseconds.
pub(crate) const BASE_MS: u64 = 10;
/// Buckets `0..=MAX_BUCKET`: 10 ms to about 11.6 hours. Longer delays go
/// through the largest bucket more than once.
pub(crate) const MAX_BUCKET: u32 = 22;

/// The header holding a delayed message's due time (ms since the epoch).
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

/// The name of bucket `k` of `queue`.
pub(crate) fn bucket_queue(queue: &str, k: u32) -> String {
    format!("{queue}.delay.{k:02}")
}

pub(crate) use dramaturg_core::time::millis;

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
}
