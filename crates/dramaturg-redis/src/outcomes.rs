//! Outcomes per queue and minute, kept on the server for dashboards: one
//! hash per minute (`ns:{registry}:outcomes:<minute>`, minutes since the
//! Unix epoch by the server's clock) whose fields `s:<queue>` and
//! `f:<queue>` count succeeded and failed attempts. Workers add their
//! deltas every few seconds with one pipelined `HINCRBY`s-and-`EXPIRE`
//! call; each hash lives [`KEEP`] after its last write.

use std::collections::BTreeMap;
use std::time::Duration;

use dramaturg_core::{BrokerError, MinuteOutcomes, OutcomeCounts, OUTCOME_MINUTES};

use crate::broker_error;
use crate::conn::Conn;
use crate::keys::RegistryKeys;

/// How long a minute's counts are kept after their last write: twice the
/// hour that is read back.
const KEEP: Duration = Duration::from_secs(2 * 3600);

const MINUTE_MS: u64 = 60_000;

/// The field of `queue`'s succeeded (`s`) or failed (`f`) count.
fn field(kind: char, queue: &str) -> String {
    format!("{kind}:{queue}")
}

/// Adds `counts` to the minute of `now_ms`, in one round trip.
pub(crate) async fn record(
    conn: &mut Conn,
    keys: &RegistryKeys,
    now_ms: u64,
    counts: &BTreeMap<String, OutcomeCounts>,
) -> Result<(), BrokerError> {
    let key = keys.outcomes(now_ms / MINUTE_MS);
    let mut pipe = redis::pipe();
    for (queue, counts) in counts.iter().filter(|(_, counts)| !counts.is_empty()) {
        for (kind, n) in [('s', counts.succeeded), ('f', counts.failed)] {
            if n > 0 {
                pipe.hincr(&key, field(kind, queue), n).ignore();
            }
        }
    }
    if pipe.cmd_iter().next().is_none() {
        return Ok(());
    }
    pipe.expire(&key, KEEP.as_secs() as i64).ignore();
    pipe.query_async::<()>(conn).await.map_err(|e| broker_error(e, "recording outcomes"))
}

/// The [`OUTCOME_MINUTES`] minutes up to that of `now_ms`, oldest first,
/// in one round trip.
pub(crate) async fn per_minute(
    conn: &mut Conn,
    keys: &RegistryKeys,
    now_ms: u64,
) -> Result<Vec<MinuteOutcomes>, BrokerError> {
    let last = now_ms / MINUTE_MS;
    let minutes: Vec<u64> = (0..OUTCOME_MINUTES as u64).rev().map(|back| last.saturating_sub(back)).collect();
    let mut pipe = redis::pipe();
    for minute in &minutes {
        pipe.hgetall(keys.outcomes(*minute));
    }
    let hashes: Vec<BTreeMap<String, u64>> =
        pipe.query_async(conn).await.map_err(|e| broker_error(e, "reading outcomes"))?;
    Ok(minutes
        .iter()
        .zip(hashes)
        .map(|(minute, hash)| {
            let mut queues: BTreeMap<String, OutcomeCounts> = BTreeMap::new();
            for (field, n) in hash {
                let Some((kind, queue)) = field.split_once(':') else { continue };
                let counts = queues.entry(queue.to_owned()).or_default();
                match kind {
                    "s" => counts.succeeded = counts.succeeded.saturating_add(n),
                    "f" => counts.failed = counts.failed.saturating_add(n),
                    _ => {}
                }
            }
            MinuteOutcomes::new(std::time::UNIX_EPOCH + Duration::from_millis(minute * MINUTE_MS), queues)
        })
        .collect())
}
