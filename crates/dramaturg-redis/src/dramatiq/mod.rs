//! Python Dramatiq's Redis layout (`?protocol=dramatiq`), so that Rust and
//! Python workers and producers share queues.
//!
//! # Keys of a queue `q` in namespace `ns` (default `dramatiq`)
//!
//! | key | type | holds |
//! |---|---|---|
//! | `ns:q` | list | `redis_message_id`s ready to run, oldest first |
//! | `ns:q.msgs` | hash | id → message (JSON), while ready or held |
//! | `ns:q.DQ`, `ns:q.DQ.msgs` | list, hash | delayed messages (`queue_name` `q.DQ`, `options.eta`) |
//! | `ns:q.XQ`, `ns:q.XQ.msgs` | sorted set, hash | dead letters by time (ms), with `options.traceback` |
//! | `ns:__heartbeats__` | sorted set | worker id → last heartbeat (ms) |
//! | `ns:__acks__.<worker>.<q>` | set | ids the worker fetched from `q` (or `q.DQ`) and has not settled |
//!
//! and, where Dramatiq's layout has no room, keys Python never reads: the
//! due time of a delayed body that is not JSON (`ns:q.DQ.etas`), the reason
//! of a dead letter that is not JSON (`ns:q.XQ.reasons`), and the pub/sub
//! channels `ns:__wake__.q`, `ns:__wake__.q.DQ` that wake idle Rust
//! consumers at once when Rust sends.
//!
//! Each module is one concept: `keys`, `scripts`, `message` (what goes
//! into a body on its way in), `claims` (fencing), `consumer` (fetch and
//! settlement), `delays` (holding `q.DQ`), `poll` (idle backoff),
//! `maintenance` (heartbeats, dead workers, dead-letter expiry), `admin`.

mod admin;
mod claims;
mod consumer;
mod delays;
pub(crate) mod keys;
pub(crate) mod maintenance;
mod message;
mod poll;
pub(crate) mod scripts;
pub(crate) mod url;

use dramaturg_core::{BrokerError, Outgoing};

pub(crate) use claims::Claims;
pub(crate) use consumer::DramatiqConsumer;
use keys::{DramatiqKeys, Side};
use scripts::DramatiqScripts;

use crate::{broker_error, Shared};

/// How many messages one enqueue script call carries at most.
const ENQUEUE_CHUNK: usize = 200;

/// What the broker keeps for Dramatiq's layout.
#[derive(Debug)]
pub(crate) struct DramatiqState {
    pub(crate) scripts: DramatiqScripts,
    pub(crate) claims: Claims,
}

impl DramatiqState {
    pub(crate) fn new() -> Self {
        Self { scripts: DramatiqScripts::new(), claims: Claims::default() }
    }
}

/// Enqueues `messages` as Dramatiq's `enqueue` does: each under a new
/// `redis_message_id`, into `q`, or into `q.DQ` with its `eta` (the
/// server's time plus the delay) when delayed. Consecutive messages for
/// one list go in one script call.
pub(crate) async fn enqueue(shared: &Shared, messages: &[Outgoing]) -> Result<(), BrokerError> {
    let mut run: Vec<message::Stored> = Vec::new();
    let mut run_keys: Option<(DramatiqKeys, bool)> = None;
    let mut calls = Vec::new();
    for outgoing in messages {
        let keys = DramatiqKeys::new(&shared.config.namespace, &outgoing.queue);
        let delayed = outgoing.delay.is_some_and(|d| !d.is_zero());
        let eta = outgoing.delay.filter(|_| delayed).map(|d| shared.clock.now_ms() + crate::millis(d));
        let same = run_keys.as_ref().is_some_and(|(k, d)| k.queue == keys.queue && *d == delayed);
        if !same || run.len() >= ENQUEUE_CHUNK {
            if let Some((keys, delayed)) = run_keys.take() {
                calls.push((keys, delayed, std::mem::take(&mut run)));
            }
            run_keys = Some((keys.clone(), delayed));
        }
        let side = if delayed { &keys.delayed } else { &keys.ready };
        run.push(message::stored(&outgoing.body, &side.name, eta));
    }
    if let Some((keys, delayed)) = run_keys {
        calls.push((keys, delayed, run));
    }
    let sends = calls.iter().map(|(keys, delayed, batch)| {
        let side = if *delayed { &keys.delayed } else { &keys.ready };
        enqueue_batch(shared, side, batch)
    });
    for result in futures_util::future::join_all(sends).await {
        result?;
    }
    Ok(())
}

async fn enqueue_batch(shared: &Shared, side: &Side, batch: &[message::Stored]) -> Result<(), BrokerError> {
    let mut invocation = shared.dramatiq.scripts.enqueue.prepare_invoke();
    invocation.key(&side.list).key(&side.msgs).key(&side.etas).arg(&side.wake);
    for stored in batch {
        invocation.arg(&stored.id).arg(stored.body.as_ref()).arg(&stored.raw_eta);
    }
    let mut conn = shared.conn.clone();
    invocation.invoke_async::<()>(&mut conn).await.map_err(|e| broker_error(e, "enqueue"))
}
