//! The Lua scripts that make each broker operation atomic. Every script
//! touches the keys of one queue only (one hash tag, so one Cluster slot),
//! and loops over a bounded number of items instead of unpacking whole
//! lists onto the Lua stack.
//!
//! # Claims and fencing
//!
//! Claiming a message increments its counter in the queue's `claims` hash;
//! the new value is the claim's token, carried by the receipt. Every
//! settlement first checks that the counter still holds its token, and
//! otherwise changes nothing and returns 0 (stale). Returning a message to
//! the queue — a requeue, a close, the recovery of a dead worker's claims —
//! increments the counter too, so a claim that lapsed can never settle the
//! message, even after the same consumer claims it again.
//!
//! # Time
//!
//! Due times, dead-letter times and heartbeats are read from the server's
//! clock (`TIME`) inside the scripts, never from a client's, so a producer
//! or worker whose clock is off cannot make a delay early or a live worker
//! look dead.
//!
//! # Full servers
//!
//! Scripts that drain or keep the queue going without adding messages
//! (claims, settlements, heartbeats, recovery) declare `allow-oom`, so a
//! Redis at `maxmemory` with `noeviction` can still be drained; sends are
//! refused there, with a typed error.

use redis::Script;

/// The server's clock in milliseconds since the epoch, as `now`.
pub(crate) const NOW: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
";

/// Wakes the queue's idle consumers (see `wake.rs`) when the ready list is
/// empty: call it before putting a message there.
const WAKE_IF_EMPTY: &str = r"
local function wake_if_empty(ready, channel)
  if redis.call('LLEN', ready) == 0 then redis.call('PUBLISH', channel, '') end
end
";

/// Adds entry `id` to the delayed set due at `due`, waking idle consumers
/// if it is now the earliest and the ready list is empty (they wait no
/// longer than until the earliest due time they saw).
const ADD_DELAYED: &str = r"
local function add_delayed(delayed, ready, channel, id, due)
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  redis.call('ZADD', delayed, due, id)
  if first[2] == nil or due < tonumber(first[2]) then wake_if_empty(ready, channel) end
end
";

/// Drops the oldest dead letters while they are past their retention or
/// over the count or byte cap; at most `budget` per call. The byte cap
/// never drops the last one: a dead letter larger than the cap on its own
/// stays (until its retention ends or a newer one arrives) rather than
/// taking every older one with it.
const TRIM_DEAD: &str = r"
local function trim_dead(dead, msgs, reasons, bytes, now, retention, max_count, max_bytes, budget)
  local removed = 0
  while removed < budget do
    local first = redis.call('ZRANGE', dead, 0, 0, 'WITHSCORES')
    if first[1] == nil then break end
    local size = tonumber(redis.call('GET', bytes) or '0')
    local count = redis.call('ZCARD', dead)
    local over = count > max_count or (size > max_bytes and count > 1)
    if tonumber(first[2]) > now - retention and not over then break end
    local id = first[1]
    redis.call('DECRBY', bytes, redis.call('HSTRLEN', msgs, id))
    redis.call('ZREM', dead, id)
    redis.call('HDEL', msgs, id)
    redis.call('HDEL', reasons, id)
    removed = removed + 1
  end
  if redis.call('ZCARD', dead) == 0 then redis.call('DEL', bytes) end
  return removed
end
";

/// The claim check every settlement of one message starts with (acks, in
/// batches, repeat it per message in `ACK_MANY`). KEYS[1]: inflight,
/// KEYS[2]: claims. ARGV[1]: id, ARGV[2]: token.
const OWNS: &str = r"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
-- From the head: messages are mostly settled in the order they were claimed.
redis.call('LREM', KEYS[1], 1, ARGV[1])
";

/// Enqueue messages now. KEYS: msgs, ready. ARGV: wake channel, then id,
/// payload, id, payload, …
const ENQUEUE: &str = r"
local ids = {}
for i = 2, #ARGV, 2 do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then return 0 end
wake_if_empty(KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('RPUSH', KEYS[2], unpack(ids))
return #ids
";

/// Enqueue one message for later. KEYS: msgs, delayed, ready.
/// ARGV: id, payload, delay (ms), wake channel.
const ENQUEUE_DELAYED: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
add_delayed(KEYS[2], KEYS[3], ARGV[4], ARGV[1], now + tonumber(ARGV[3]))
return 1
";

/// Promote due delayed messages, then claim up to n ready ones into the
/// consumer's in-flight list — none while the queue is paused. KEYS:
/// ready, inflight, msgs, delayed, redelivered, claims, paused. ARGV: n.
/// Returns the milliseconds until the next delayed message is due (-1:
/// none), how many ids without a message were dropped, whether the queue
/// is paused (1) or not (0), then id, payload, token, redelivered
/// quadruples. The ids of a claim are moved, read and counted with one
/// variadic command each (each command a script calls costs more than
/// the work itself), at most 1,000 at a time, so that they fit the Lua
/// stack.
const FETCH: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)
if #due > 0 then
  redis.call('RPUSH', KEYS[1], unpack(due))
  redis.call('ZREM', KEYS[4], unpack(due))
end
local out = {}
local n = tonumber(ARGV[1])
local paused = redis.call('EXISTS', KEYS[7])
if paused == 1 then n = 0 end
local orphans = 0
local tokens = {}
while n > 0 do
  local ids = redis.call('LRANGE', KEYS[1], 0, math.min(n, 1000) - 1)
  if #ids == 0 then break end
  redis.call('LTRIM', KEYS[1], #ids, -1)
  redis.call('RPUSH', KEYS[2], unpack(ids))
  local payloads = redis.call('HMGET', KEYS[3], unpack(ids))
  local claims = redis.call('HMGET', KEYS[6], unpack(ids))
  local flags = redis.call('SMISMEMBER', KEYS[5], unpack(ids))
  redis.call('SREM', KEYS[5], unpack(ids))
  local counters = {}
  for k, id in ipairs(ids) do
    if payloads[k] then
      -- An id twice in one batch: its second claim voids the first.
      local token = (tokens[id] or tonumber(claims[k]) or 0) + 1
      tokens[id] = token
      counters[#counters + 1] = id
      counters[#counters + 1] = token
      out[#out + 1] = id
      out[#out + 1] = payloads[k]
      out[#out + 1] = token
      out[#out + 1] = flags[k]
      n = n - 1
    else
      -- An id whose message is gone is never handed out: drop it.
      redis.call('LREM', KEYS[2], -1, id)
      redis.call('HDEL', KEYS[6], id)
      orphans = orphans + 1
    end
  end
  if #counters > 0 then redis.call('HSET', KEYS[6], unpack(counters)) end
end
local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
local wait = -1
if first[2] then wait = math.max(0, tonumber(first[2]) - now) end
table.insert(out, 1, paused)
table.insert(out, 1, orphans)
table.insert(out, 1, wait)
return out
";

/// Acknowledges many messages (see `acks.rs`), each under its own claim:
/// the check of `OWNS`, then the message is gone. KEYS: inflight, claims,
/// msgs. The pairs id, token are `ARGV[offset + 1]`, `ARGV[offset + 2]`,
/// … (`n` of them, at most 256, so that the ids fit the Lua stack).
/// Returns 1 (applied) or 0 (stale) per pair, in order. The claims are
/// read and the hashes written with one variadic command each (each
/// command a script calls costs more than the work itself); a pair whose
/// id an earlier pair of the call acked is stale, as it would be in a call
/// of its own.
///
/// Each acked id leaves the in-flight list once (its first occurrence, as
/// `LREM … 1` would take it). When many are acked and the list is not
/// much longer than what is acked — a busy consumer, whose list holds
/// about its prefetch — the list is read once and written back without
/// them (four commands); otherwise each goes with an `LREM` from the head
/// (messages are mostly settled in the order they were claimed).
const ACK_PAIRS: &str = r"
local function remove_inflight(inflight, acked)
  local len = 0
  if #acked >= 6 then len = redis.call('LLEN', inflight) end
  if len == 0 or len > 8 * #acked then
    for _, id in ipairs(acked) do redis.call('LREM', inflight, 1, id) end
    return
  end
  local gone = {}
  for _, id in ipairs(acked) do gone[id] = true end
  local kept = {}
  for _, id in ipairs(redis.call('LRANGE', inflight, 0, -1)) do
    if gone[id] then gone[id] = nil else kept[#kept + 1] = id end
  end
  redis.call('DEL', inflight)
  if #kept > 0 then redis.call('RPUSH', inflight, unpack(kept)) end
end

local function ack_pairs(offset, n)
  local ids = {}
  for k = 1, n do ids[k] = ARGV[offset + 2 * k - 1] end
  local claims = redis.call('HMGET', KEYS[2], unpack(ids))
  local out, acked, done = {}, {}, {}
  for k, id in ipairs(ids) do
    if claims[k] == ARGV[offset + 2 * k] and not done[id] then
      done[id] = true
      acked[#acked + 1] = id
      out[k] = 1
    else
      out[k] = 0
    end
  end
  if #acked > 0 then
    remove_inflight(KEYS[1], acked)
    redis.call('HDEL', KEYS[2], unpack(acked))
    redis.call('HDEL', KEYS[3], unpack(acked))
  end
  return out
end
";

/// Acknowledges many messages (`ACK_PAIRS`). KEYS: inflight, claims,
/// msgs. ARGV: id, token, id, token, …
const ACK_MANY: &str = r"
return ack_pairs(0, #ARGV / 2)
";

/// Acknowledges many messages (`ACK_PAIRS`) and makes the store writes
/// that go with them (a message's result), each only if its ack applied:
/// `SET` with a TTL, and a `PUBLISH` of the value on the key's name, which
/// wakes its waiters. KEYS: inflight, claims, msgs, then the key of each
/// write. ARGV: the number of acks n, n pairs id, token, then per write
/// the number of its ack (1-based), its value, its TTL (ms). Without the
/// `allow-oom` flag: a full Redis refuses the whole call, and the acks are
/// then settled without their writes.
const ACK_MANY_WRITING: &str = r"
local n = tonumber(ARGV[1])
local out = ack_pairs(1, n)
for w = 1, #KEYS - 3 do
  local at = 2 + 2 * n + 3 * (w - 1)
  if out[tonumber(ARGV[at])] == 1 then
    redis.call('SET', KEYS[3 + w], ARGV[at + 1], 'PX', ARGV[at + 2])
    redis.call('PUBLISH', KEYS[3 + w], ARGV[at + 1])
  end
end
return out
";

/// The store writes that go with a dead letter (a failure's result), made
/// after `OWNS` passed and before `DEAD`: so only by the attempt that owns
/// the message. KEYS[8…]: the keys; ARGV[7…]: value, TTL (ms) per key.
/// Each is a `SET` with its TTL and a `PUBLISH` of the value on the key's
/// name, as `ACK_MANY_WRITING` makes them.
const DEAD_WRITES: &str = r"
for w = 8, #KEYS do
  local at = 7 + 2 * (w - 8)
  redis.call('SET', KEYS[w], ARGV[at], 'PX', ARGV[at + 1])
  redis.call('PUBLISH', KEYS[w], ARGV[at])
end
";

/// Dead-letter, then trim the dead letters. KEYS: inflight, claims, msgs,
/// dead, dead_msgs, reasons, dead_bytes. ARGV: id, token, reason,
/// retention (ms), max count, max bytes.
const DEAD: &str = r"
redis.call('HDEL', KEYS[2], ARGV[1])
local payload = redis.call('HGET', KEYS[3], ARGV[1])
if not payload then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], payload)
redis.call('HSET', KEYS[6], ARGV[1], ARGV[3])
-- Dead letters of one millisecond keep their order (the oldest is dropped
-- first, and listed first): a score is never below the newest one's, but
-- a microsecond above it. Formatted, because Lua writes numbers with only
-- 14 digits.
local at = now
local newest = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) >= at then at = tonumber(newest[2]) + 0.001 end
redis.call('ZADD', KEYS[4], string.format('%.3f', at), ARGV[1])
redis.call('INCRBY', KEYS[7], #payload)
trim_dead(KEYS[4], KEYS[5], KEYS[6], KEYS[7], now, tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), 100)
return 1
";

/// Replace the message by a new entry, now or after a delay. KEYS:
/// inflight, claims, msgs, delayed, ready, redelivered. ARGV: id, token,
/// new id, payload, delay (ms), wake channel.
const RESCHEDULE: &str = r"
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[6], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
local delay = tonumber(ARGV[5])
if delay <= 0 then
  wake_if_empty(KEYS[5], ARGV[6])
  redis.call('RPUSH', KEYS[5], ARGV[3])
else
  add_delayed(KEYS[4], KEYS[5], ARGV[6], ARGV[3], now + delay)
end
return 1
";

/// Return a claimed message to the front of the queue. KEYS: inflight,
/// claims, ready, redelivered. ARGV: id, token, wake channel.
const REQUEUE: &str = r"
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
wake_if_empty(KEYS[3], ARGV[3])
redis.call('LPUSH', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
";

/// Return claimed messages that were never handed out to the front of the
/// queue, in their order. KEYS: inflight, claims, ready, redelivered.
/// ARGV: wake channel, then ids.
const RETURN_UNHANDED: &str = r"
wake_if_empty(KEYS[3], ARGV[1])
local n = 0
for i = #ARGV, 2, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[i], 1)
    redis.call('LPUSH', KEYS[3], ARGV[i])
    redis.call('SADD', KEYS[4], ARGV[i])
    n = n + 1
  end
end
return n
";

/// Return everything a consumer had claimed (its worker is dead, or an
/// operator asked), voiding the claims. KEYS: inflight, ready,
/// redelivered, claims. ARGV: wake channel.
const RECOVER: &str = r"
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
if #ids > 0 then wake_if_empty(KEYS[2], ARGV[1]) end
for i = #ids, 1, -1 do
  redis.call('LPUSH', KEYS[2], ids[i])
  redis.call('SADD', KEYS[3], ids[i])
  redis.call('HINCRBY', KEYS[4], ids[i], 1)
end
redis.call('DEL', KEYS[1])
return #ids
";

/// Move dead letters back to the queue (ARGV[2] = 'replay') or delete them
/// (ARGV[2] = 'delete'): one (ARGV[1] = id) or the next 500 dead-lettered
/// no later than ARGV[4] (ms; ARGV[1] = ''). KEYS: dead, dead_msgs, reasons,
/// msgs, ready, dead_bytes. ARGV[3]: wake channel. Returns {moved or
/// deleted, looked at}.
const REPLAY: &str = r"
if ARGV[2] == 'replay' then wake_if_empty(KEYS[5], ARGV[3]) end
local ids
if ARGV[1] == '' then
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4], 'LIMIT', 0, 500)
elseif redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  ids = {ARGV[1]}
else
  ids = {}
end
local n = 0
for _, id in ipairs(ids) do
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    if ARGV[2] == 'replay' then
      redis.call('HSET', KEYS[4], id, payload)
      redis.call('RPUSH', KEYS[5], id)
    end
    redis.call('DECRBY', KEYS[6], #payload)
    n = n + 1
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[6]) end
return {n, #ids}
";

/// Up to ARGV[2] dead letters from position ARGV[1] (0: the oldest),
/// oldest first. KEYS: dead, dead_msgs, reasons. Returns id, payload, reason, time (ms) quadruples.
const LIST_DEAD: &str = r"
local entries = redis.call('ZRANGE', KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #entries, 2 do
  local id = entries[i]
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
  out[#out + 1] = entries[i + 1]
end
return out
";

/// Trim the dead letters by retention and caps (on a timer, so that they
/// shrink even when no new one arrives). KEYS: dead, dead_msgs, reasons,
/// dead_bytes. ARGV: retention (ms), max count, max bytes. Returns how many
/// were dropped (at most 1000 per call).
const TRIM: &str = r"
return trim_dead(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), 1000)
";

/// Remove up to ARGV[1] ready or delayed messages (ready first), so that a
/// purge of millions of messages is many short calls, never one long one.
/// KEYS: ready, delayed, msgs, claims, redelivered. Returns how many
/// messages were removed and how many entries were looked at.
const PURGE: &str = r"
local batch = tonumber(ARGV[1])
local n = 0
local ids = redis.call('LPOP', KEYS[1], batch)
if not ids then
  ids = {}
  local entries = redis.call('ZPOPMIN', KEYS[2], batch)
  for i = 1, #entries, 2 do ids[#ids + 1] = entries[i] end
end
for _, id in ipairs(ids) do
  if redis.call('HDEL', KEYS[3], id) == 1 then n = n + 1 end
  redis.call('HDEL', KEYS[4], id)
  redis.call('SREM', KEYS[5], id)
end
return {n, #ids}
";

/// Pause (ARGV[1] = '1') or resume (ARGV[1] = '0') a queue: the marker
/// KEYS[1] (the queue's `paused` key, kept without a TTL) is set or
/// removed; a resume wakes the queue's idle consumers on the channel
/// ARGV[2].
const PAUSE: &str = r"
if ARGV[1] == '1' then
  redis.call('SET', KEYS[1], '1')
elseif redis.call('DEL', KEYS[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], '')
end
return 1
";

/// Record a heartbeat at the server's time, the worker's concurrency (0:
/// not told), its heartbeat timeout and its consumers. KEYS: workers, the
/// worker's consumers, concurrencies, timeouts. ARGV: worker id,
/// concurrency, heartbeat timeout (ms), consumer entries.
const BEAT: &str = r"
redis.call('ZADD', KEYS[1], now, ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('HSET', KEYS[3], ARGV[1], ARGV[2]) end
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
for i = 4, #ARGV do
  redis.call('SADD', KEYS[2], ARGV[i])
end
return now
";

/// Workers whose last heartbeat is older than their own heartbeat timeout
/// by the server's clock (at most 100, oldest beats first): each worker's
/// timeout as it beat it into KEYS[2], or ARGV[1] ms for a worker that
/// beat none (an older version). KEYS: workers, timeouts.
const LAPSED: &str = r"
local own = tonumber(ARGV[1])
local floor = own
local least = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
if least and tonumber(least) < floor then floor = tonumber(least) end
local candidates = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - floor), 'WITHSCORES', 'LIMIT', 0, 100)
local lapsed = {}
for i = 1, #candidates, 2 do
  local timeout = tonumber(redis.call('ZSCORE', KEYS[2], candidates[i])) or own
  if tonumber(candidates[i + 1]) < now - timeout then table.insert(lapsed, candidates[i]) end
end
return lapsed
";

/// A script from its parts: the flags line (if any), then the helpers and
/// the body.
pub(crate) fn script(flags: Option<&str>, parts: &[&str]) -> Script {
    let mut text = String::new();
    match flags {
        // A shebang without flags: a script that writes, refused whole
        // (before it runs) by a Redis over `maxmemory`. Without a shebang,
        // Redis checks only the script's first write, and lets every later
        // one past the limit.
        Some("") => text.push_str("#!lua\n"),
        Some(flags) => {
            text.push_str("#!lua flags=");
            text.push_str(flags);
            text.push('\n');
        }
        None => {}
    }
    for part in parts {
        text.push_str(part);
    }
    Script::new(&text)
}

/// The scripts, hashed once; `invoke_async` runs them with `EVALSHA` and
/// loads them again on `NOSCRIPT`.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) enqueue: Script,
    pub(crate) enqueue_delayed: Script,
    pub(crate) fetch: Script,
    pub(crate) ack_many: Script,
    pub(crate) ack_many_writing: Script,
    pub(crate) dead: Script,
    pub(crate) dead_writing: Script,
    pub(crate) reschedule: Script,
    pub(crate) requeue: Script,
    pub(crate) return_unhanded: Script,
    pub(crate) recover: Script,
    pub(crate) replay: Script,
    pub(crate) list_dead: Script,
    pub(crate) trim: Script,
    pub(crate) purge: Script,
    pub(crate) pause: Script,
    pub(crate) beat: Script,
    pub(crate) lapsed: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        // Draining must work when Redis is full: whatever claims, settles,
        // returns or beats may run at maxmemory. Sends may not.
        let drain = Some("allow-oom");
        Self {
            enqueue: script(None, &[WAKE_IF_EMPTY, ENQUEUE]),
            enqueue_delayed: script(None, &[NOW, WAKE_IF_EMPTY, ADD_DELAYED, ENQUEUE_DELAYED]),
            fetch: script(drain, &[NOW, FETCH]),
            ack_many: script(drain, &[ACK_PAIRS, ACK_MANY]),
            // Its writes past `maxmemory` would grow a full Redis: refused
            // whole there, and the acks settled without them.
            ack_many_writing: script(Some(""), &[ACK_PAIRS, ACK_MANY_WRITING]),
            dead: script(drain, &[NOW, TRIM_DEAD, OWNS, DEAD]),
            // As `ack_many_writing`: refused whole by a full Redis, and the
            // dead letter then made without its writes.
            dead_writing: script(Some(""), &[NOW, TRIM_DEAD, OWNS, DEAD_WRITES, DEAD]),
            reschedule: script(drain, &[NOW, WAKE_IF_EMPTY, ADD_DELAYED, OWNS, RESCHEDULE]),
            requeue: script(drain, &[WAKE_IF_EMPTY, OWNS, REQUEUE]),
            return_unhanded: script(drain, &[WAKE_IF_EMPTY, RETURN_UNHANDED]),
            recover: script(drain, &[WAKE_IF_EMPTY, RECOVER]),
            replay: script(None, &[WAKE_IF_EMPTY, REPLAY]),
            list_dead: script(Some("no-writes,allow-oom"), &[LIST_DEAD]),
            trim: script(drain, &[NOW, TRIM_DEAD, TRIM]),
            purge: script(drain, &[PURGE]),
            // An operator pauses in an incident, when Redis may be full.
            pause: script(drain, &[PAUSE]),
            beat: script(drain, &[NOW, BEAT]),
            lapsed: script(Some("no-writes,allow-oom"), &[NOW, LAPSED]),
        }
    }
}
