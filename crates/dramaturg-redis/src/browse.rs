//! Reading a queue's messages without consuming them: a page of the ready
//! list or of the delayed set, and where one message is.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use dramaturg_core::{
    BrokerError, BrokerErrorKind, Located, QueueBrowser, QueuePage, QueuedMessage, Waiting, Whereabouts,
};

use redis::Script;

use crate::{broker_error, RedisBroker};

#[async_trait]
impl QueueBrowser for RedisBroker {
    /// `LRANGE` of the ready list, or `ZRANGE` of the delayed set, bounded
    /// by the page, then `HMGET` of those messages only, in one `MULTI`.
    async fn page(&self, queue: &str, which: Waiting, offset: u64, limit: usize) -> Result<QueuePage, BrokerError> {
        self.browsable()?;
        let keys = self.keys(queue);
        let mut conn = self.shared.conn.clone();
        let start = isize::try_from(offset).unwrap_or(isize::MAX);
        let stop = start.saturating_add(isize::try_from(limit).unwrap_or(isize::MAX)).saturating_sub(1);
        let (total, entries): (u64, Vec<(String, Option<SystemTime>)>) = if limit == 0 {
            let total: u64 = match which {
                Waiting::Ready => redis::cmd("LLEN").arg(&keys.ready).query_async(&mut conn).await,
                Waiting::Delayed => redis::cmd("ZCARD").arg(&keys.delayed).query_async(&mut conn).await,
            }
            .map_err(|e| broker_error(e, "counting a queue"))?;
            (total, Vec::new())
        } else {
            match which {
                Waiting::Ready => {
                    let (total, ids): (u64, Vec<String>) = redis::pipe()
                        .atomic()
                        .llen(&keys.ready)
                        .lrange(&keys.ready, start, stop)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| broker_error(e, "reading a queue"))?;
                    (total, ids.into_iter().map(|id| (id, None)).collect())
                }
                Waiting::Delayed => {
                    let (total, scored): (u64, Vec<(String, f64)>) = redis::pipe()
                        .atomic()
                        .zcard(&keys.delayed)
                        .zrange_withscores(&keys.delayed, start, stop)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| broker_error(e, "reading delayed messages"))?;
                    (total, scored.into_iter().map(|(id, due)| (id, Some(at_ms(due)))).collect())
                }
            }
        };
        if entries.is_empty() {
            return Ok(QueuePage { total, messages: Vec::new() });
        }
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let bodies: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(&keys.msgs)
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "reading messages"))?;
        let messages = entries
            .into_iter()
            .zip(bodies)
            .map(|((id, due), body)| QueuedMessage { id, due, body: body.map(Bytes::from) })
            .collect();
        Ok(QueuePage { total, messages })
    }

    /// The entry `id`, then the entries whose body contains `id`: a script
    /// scans the stored messages, then the dead letters, a thousand per
    /// call (`HSCAN`, so Redis is never held long); then each candidate's
    /// place in one `MULTI`.
    async fn locate(&self, queue: &str, id: &str) -> Result<Vec<Located>, BrokerError> {
        self.browsable()?;
        let keys = self.keys(queue);
        let mut entries = vec![id.to_owned()];
        for hash in [&keys.msgs, &keys.dead_msgs] {
            entries.extend(self.scan_for(hash, id).await?);
        }
        entries.dedup();
        let mut found = Vec::new();
        for entry in entries {
            if let Some(located) = self.whereabouts(queue, entry).await? {
                found.push(located);
            }
        }
        Ok(found)
    }
}

/// One step of a scan of a hash of messages for those whose body holds a
/// text. KEYS: the hash. ARGV: cursor, text, count. Returns the next
/// cursor, then the matching fields.
static SCAN_BODIES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local step = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', tonumber(ARGV[3]))
local out = { step[1] }
local pairs = step[2]
for i = 1, #pairs, 2 do
  if string.find(pairs[i + 1], ARGV[2], 1, true) then out[#out + 1] = pairs[i] end
end
return out
",
    )
});

/// How many entries one step of [`SCAN_BODIES`] reads.
const SCAN_STEP: u64 = 1000;

impl RedisBroker {
    /// The fields of `hash` whose value contains `text`.
    async fn scan_for(&self, hash: &str, text: &str) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.shared.conn.clone();
        let mut cursor = "0".to_owned();
        let mut found = Vec::new();
        loop {
            let mut reply: Vec<String> = SCAN_BODIES
                .key(hash)
                .arg(&cursor)
                .arg(text)
                .arg(SCAN_STEP)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| broker_error(e, "looking a message up"))?;
            if reply.is_empty() {
                return Ok(found);
            }
            cursor = reply.remove(0);
            found.append(&mut reply);
            if cursor == "0" {
                return Ok(found);
            }
        }
    }

    /// Where entry `entry` of `queue` is: one `MULTI` of the delayed and
    /// dead scores, the stored and dead bodies, and the ready list's
    /// `LPOS`. A stored message neither delayed nor ready is claimed.
    async fn whereabouts(&self, queue: &str, entry: String) -> Result<Option<Located>, BrokerError> {
        let keys = self.keys(queue);
        let mut conn = self.shared.conn.clone();
        type Found = (Option<f64>, Option<f64>, Option<Vec<u8>>, Option<Vec<u8>>, Option<u64>);
        let (delayed, dead, body, dead_body, ready_at): Found = redis::pipe()
            .atomic()
            .zscore(&keys.delayed, &entry)
            .zscore(&keys.dead, &entry)
            .hget(&keys.msgs, &entry)
            .hget(&keys.dead_msgs, &entry)
            .cmd("LPOS")
            .arg(&keys.ready)
            .arg(&entry)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "looking a message up"))?;
        let found = match (body, dead_body) {
            (Some(body), _) => {
                let whereabouts = match (delayed, ready_at) {
                    (Some(due), _) => Whereabouts::Delayed { due: Some(at_ms(due)) },
                    (None, Some(_)) => Whereabouts::Ready,
                    (None, None) => Whereabouts::InFlight,
                };
                Some(Located { entry, whereabouts, body: Bytes::from(body) })
            }
            (None, Some(body)) if dead.is_some() => {
                Some(Located { entry, whereabouts: Whereabouts::Dead, body: Bytes::from(body) })
            }
            _ => None,
        };
        Ok(found)
    }

    /// Browsing reads this crate's layout; Dramatiq's is not browsed.
    fn browsable(&self) -> Result<(), BrokerError> {
        if self.is_dramatiq() {
            return Err(BrokerError::new(BrokerErrorKind::Unsupported, "the Dramatiq layout cannot be browsed"));
        }
        Ok(())
    }
}

/// A sorted-set score in milliseconds since the epoch, as a time.
fn at_ms(score: f64) -> SystemTime {
    // Scores are whole milliseconds (dead letters: a thousandth more).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ms = score.max(0.0) as u64;
    UNIX_EPOCH + Duration::from_millis(ms)
}
