//! Heartbeats and housekeeping in Dramatiq's layout, run on the registry's
//! heartbeat thread (see `registry.rs`), never on a worker's runtime:
//!
//! - a heartbeat (`ZADD ns:__heartbeats__ <now ms> <worker>`) every
//!   heartbeat interval, whether the worker is busy or idle, so that
//!   Python's maintenance (which takes a worker for dead after its
//!   `heartbeat_timeout`, 60 s) never takes a live Rust worker for dead;
//! - the return of dead workers' messages, of any language: for each
//!   worker whose heartbeat is older than the timeout, the ids in its ack
//!   sets of the queues this worker serves (`q` and `q.DQ`) whose message
//!   still exists go back to their list, the sets are deleted, and the
//!   worker leaves the heartbeats once it has no ack set left (found with
//!   `SCAN`, never `KEYS`);
//! - the expiry of dead letters older than `dead_letter_ttl` (Dramatiq's
//!   `dead_message_ttl`, 7 days).

use std::collections::BTreeSet;

use dramaturg_core::BrokerError;

use super::keys::{acks_prefix, all_acks_pattern, glob_escape, heartbeats, is_acks_of, DramatiqKeys, Side};
use super::scripts::DramatiqScripts;
use super::Claims;
use crate::conn::Conn;
use crate::{broker_error, millis, RedisConfig};

/// This worker's heartbeat, at the server's time.
pub(crate) async fn beat(
    conn: &mut Conn,
    scripts: &DramatiqScripts,
    namespace: &str,
    worker: &str,
) -> Result<(), BrokerError> {
    scripts
        .beat
        .key(heartbeats(namespace))
        .arg(worker)
        .invoke_async::<()>(conn)
        .await
        .map_err(|e| broker_error(e, "heartbeat"))
}

/// Returns the messages that workers without a heartbeat for the timeout
/// held from `queues`.
pub(crate) async fn recover_dead(
    conn: &mut Conn,
    scripts: &DramatiqScripts,
    config: &RedisConfig,
    worker: &str,
    queues: &BTreeSet<String>,
) -> Result<(), BrokerError> {
    let namespace = &config.namespace;
    let dead: Vec<String> = scripts
        .lapsed
        .key(heartbeats(namespace))
        .arg(millis(config.heartbeat_timeout))
        .invoke_async(conn)
        .await
        .map_err(|e| broker_error(e, "listing workers"))?;
    for dead_worker in dead.iter().filter(|w| **w != worker) {
        let mut recovered = 0;
        for queue in queues {
            let keys = DramatiqKeys::new(namespace, queue);
            for side in [&keys.ready, &keys.delayed] {
                recovered += recover(conn, scripts, &keys.acks(dead_worker, side), side).await?.len();
            }
        }
        let pattern = format!("{}*", glob_escape(&acks_prefix(namespace, dead_worker)));
        if scan(conn, &pattern, true).await?.is_empty() {
            redis::cmd("ZREM")
                .arg(heartbeats(namespace))
                .arg(dead_worker)
                .query_async::<()>(conn)
                .await
                .map_err(|e| broker_error(e, "removing a dead worker"))?;
        }
        if recovered > 0 {
            tracing::warn!(dead_worker = %dead_worker, recovered, "returned a dead worker's messages to their queues");
        }
    }
    Ok(())
}

/// Returns every id of the ack set `acks` whose message still exists to
/// `side`'s list, and deletes the set; the ids returned.
pub(crate) async fn recover(
    conn: &mut Conn,
    scripts: &DramatiqScripts,
    acks: &str,
    side: &Side,
) -> Result<Vec<String>, BrokerError> {
    scripts
        .recover
        .key(acks)
        .key(&side.msgs)
        .key(&side.list)
        .arg(&side.wake)
        .invoke_async(conn)
        .await
        .map_err(|e| broker_error(e, "returning held messages"))
}

/// The keys matching `pattern`, by `SCAN`; only whether there is one when
/// `first_only`.
async fn scan(conn: &mut Conn, pattern: &str, first_only: bool) -> Result<Vec<String>, BrokerError> {
    let mut cursor = 0u64;
    let mut found = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(|e| broker_error(e, "scanning keys"))?;
        found.extend(keys);
        if next == 0 || (first_only && !found.is_empty()) {
            return Ok(found);
        }
        cursor = next;
    }
}

/// Returns every message of `queue` held by any worker (live or not) to
/// the queue, as if they had died: for operators and tests. Returns how
/// many.
pub(crate) async fn requeue_in_flight(
    conn: &mut Conn,
    scripts: &DramatiqScripts,
    claims: &Claims,
    keys: &DramatiqKeys,
) -> Result<u64, BrokerError> {
    let side = &keys.ready;
    let mut returned = 0;
    for acks in scan(conn, &all_acks_pattern(&keys.namespace, side), false).await? {
        if !is_acks_of(&keys.namespace, side, &acks) {
            continue;
        }
        let ids = recover(conn, scripts, &acks, side).await?;
        claims.returned(&side.list, ids.iter().map(String::as_str));
        returned += ids.len() as u64;
    }
    Ok(returned)
}

/// Drops the dead letters of `queues` older than the retention.
pub(crate) async fn expire_dead_letters(
    conn: &mut Conn,
    scripts: &DramatiqScripts,
    config: &RedisConfig,
    queues: &BTreeSet<String>,
) -> Result<(), BrokerError> {
    for queue in queues {
        let keys = DramatiqKeys::new(&config.namespace, queue);
        let removed: u64 = scripts
            .expire_dead
            .key(&keys.dead)
            .key(&keys.dead_msgs)
            .key(&keys.dead_reasons)
            .arg(millis(config.dead_letter_ttl))
            .invoke_async(conn)
            .await
            .map_err(|e| broker_error(e, "expiring dead letters"))?;
        if removed > 0 {
            tracing::debug!(%queue, removed, "expired dead letters");
        }
    }
    Ok(())
}

/// Leaves the heartbeats if this worker holds nothing from `queues` any
/// more; otherwise stays, so that what it holds is recovered once its
/// heartbeat lapses.
pub(crate) async fn deregister(
    conn: &mut Conn,
    config: &RedisConfig,
    worker: &str,
    queues: &BTreeSet<String>,
) -> Result<bool, BrokerError> {
    let mut pipe = redis::pipe();
    for queue in queues {
        let keys = DramatiqKeys::new(&config.namespace, queue);
        pipe.scard(keys.acks(worker, &keys.ready)).scard(keys.acks(worker, &keys.delayed));
    }
    // No queue served (any more): nothing to count, and Redis refuses an
    // empty pipeline.
    let held: u64 = if queues.is_empty() {
        0
    } else {
        let held: Vec<u64> = pipe.query_async(conn).await.map_err(|e| broker_error(e, "deregistering"))?;
        held.iter().sum()
    };
    if held > 0 {
        tracing::warn!(held, "stopping with messages not settled; they return after the heartbeat timeout");
        return Ok(false);
    }
    redis::cmd("ZREM")
        .arg(heartbeats(&config.namespace))
        .arg(worker)
        .query_async::<()>(conn)
        .await
        .map_err(|e| broker_error(e, "deregistering"))?;
    Ok(true)
}
