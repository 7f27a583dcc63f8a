//! Queue statistics, purge and dead letters in Dramatiq's layout.
//!
//! Counts come from what the layout keeps: `ready` is the length of `q`,
//! `in_flight` the messages of `q.msgs` not in `q` (held by a worker),
//! `delayed` every message of `q.DQ.msgs` (waiting in `q.DQ` or held),
//! `dead` the size of `q.XQ`.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use dramaturg_core::{BrokerError, BrokerErrorKind, DeadLetter, QueueStats, Replay};

use super::keys::DramatiqKeys;
use super::{maintenance, message};
use crate::{broker_error, RedisBroker};

/// How many ready messages one purge call removes at most.
const PURGE_BATCH: u64 = 1000;

impl RedisBroker {
    fn dramatiq_keys(&self, queue: &str) -> DramatiqKeys {
        DramatiqKeys::new(&self.shared.config.namespace, queue)
    }

    pub(crate) async fn dramatiq_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let keys = self.dramatiq_keys(queue);
        let mut conn = self.shared.conn.clone();
        let (ready, stored, delayed, dead): (u64, u64, u64, u64) = redis::pipe()
            .llen(&keys.ready.list)
            .hlen(&keys.ready.msgs)
            .hlen(&keys.delayed.msgs)
            .zcard(&keys.dead)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "stats"))?;
        Ok(QueueStats::new(ready, delayed, stored.saturating_sub(ready), dead))
    }

    /// Removes the ready messages and every delayed one (waiting or held:
    /// a holder finds its held ones gone and lets go of them).
    pub(crate) async fn dramatiq_purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let keys = self.dramatiq_keys(queue);
        let mut invocation = self.shared.dramatiq.scripts.purge.prepare_invoke();
        invocation.key(&keys.ready.list).key(&keys.ready.msgs).arg(PURGE_BATCH);
        let purged = self.in_batches(&invocation, false, "purge").await?;
        let mut conn = self.shared.conn.clone();
        let (delayed, ..): (u64, u64, u64, u64) = redis::pipe()
            .hlen(&keys.delayed.msgs)
            .del(&keys.delayed.list)
            .del(&keys.delayed.msgs)
            .del(&keys.delayed.etas)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "purge"))?;
        Ok(purged + delayed)
    }

    pub(crate) async fn dramatiq_requeue_in_flight(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut conn = self.shared.conn.clone();
        let state = &self.shared.dramatiq;
        maintenance::requeue_in_flight(&mut conn, &state.scripts, &state.claims, &self.dramatiq_keys(queue)).await
    }

    pub(crate) async fn dramatiq_dead_letters(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = self.dramatiq_keys(queue);
        let mut conn = self.shared.conn.clone();
        let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&keys.dead)
            .arg(offset)
            .arg(offset.saturating_add(limit - 1))
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "listing dead letters"))?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let (bodies, reasons): (Vec<Option<Vec<u8>>>, Vec<Option<String>>) = redis::pipe()
            .cmd("HMGET")
            .arg(&keys.dead_msgs)
            .arg(&ids)
            .cmd("HMGET")
            .arg(&keys.dead_reasons)
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .map_err(|e| broker_error(e, "listing dead letters"))?;
        if bodies.len() != ids.len() || reasons.len() != ids.len() {
            return Err(BrokerError::new(BrokerErrorKind::Protocol, "redis: unexpected dead-letter reply"));
        }
        Ok(entries
            .into_iter()
            .zip(bodies.into_iter().zip(reasons))
            .map(|((id, at), (body, kept))| {
                let body = Bytes::from(body.unwrap_or_default());
                let reason = message::reason(&body, kept);
                DeadLetter::new(id, body, reason, UNIX_EPOCH + Duration::from_millis(at as u64))
            })
            .collect())
    }

    /// Replays or deletes dead letters, 500 per script call.
    pub(crate) async fn dramatiq_move_dead(
        &self,
        queue: &str,
        which: &Replay,
        action: &str,
    ) -> Result<u64, BrokerError> {
        let keys = self.dramatiq_keys(queue);
        self.move_dead_with(which, action, &keys.dead, |target, newest| {
            let mut invocation = self.shared.dramatiq.scripts.replay.prepare_invoke();
            invocation
                .key(&keys.dead)
                .key(&keys.dead_msgs)
                .key(&keys.dead_reasons)
                .key(&keys.ready.msgs)
                .key(&keys.ready.list)
                .arg(target)
                .arg(action)
                .arg(&keys.ready.wake)
                .arg(newest);
            invocation
        })
        .await
    }
}
