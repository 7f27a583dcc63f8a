//! The scripts of Dramatiq's layout. They do what Dramatiq's `dispatch.lua`
//! does, command by command, on the keys it uses — with full key names
//! passed as `KEYS` rather than built inside the script — and add what
//! dramaturg promises on top: settlements that say whether they applied
//! (fenced by the worker's ack set), dead letters with their reason,
//! retries and promotions of delayed messages as one atomic move, wake-ups
//! for idle Rust consumers, and heartbeats by the server's clock.

use redis::Script;

use crate::scripts::{script, NOW};

/// Publishes a wake-up on `channel` when `list` is empty (its idle
/// consumers may be waiting): call it before pushing onto `list`.
const WAKE_IF_EMPTY: &str = r"
local function wake_if_empty(list, channel)
  if redis.call('LLEN', list) == 0 then redis.call('PUBLISH', channel, '') end
end
";

/// Stores messages and queues their ids (Dramatiq's `enqueue`). KEYS: list,
/// msgs, etas. ARGV: wake channel, then (id, message, eta of a body that is
/// not JSON or '') triples.
const ENQUEUE: &str = r"
wake_if_empty(KEYS[1], ARGV[1])
for i = 2, #ARGV, 3 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  if ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2]) end
  redis.call('RPUSH', KEYS[1], ARGV[i])
end
return (#ARGV - 1) / 3
";

/// Takes up to ARGV[2] ids from the list into the worker's ack set and
/// returns them with their messages (Dramatiq's `fetch`); an id whose
/// message is gone is dropped. Beats. KEYS: list, msgs, acks, heartbeats.
/// ARGV: worker id, n. Returns how many ids were dropped, then id, message
/// pairs.
const FETCH: &str = r"
redis.call('ZADD', KEYS[4], now, ARGV[1])
local out, dropped = {}, 0
for _ = 1, tonumber(ARGV[2]) do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    redis.call('SADD', KEYS[3], id)
    out[#out + 1] = id
    out[#out + 1] = payload
  else
    dropped = dropped + 1
  end
end
table.insert(out, 1, dropped)
return out
";

/// As `FETCH`, from a delay queue, returning each id with its due time
/// instead of its message (0: due now — no `eta`, or not a number, as
/// Dramatiq reads it). KEYS: list, msgs, acks, heartbeats, etas. ARGV:
/// worker id, n. Returns how many ids were dropped, then id, eta pairs.
const TAKE_DELAYED: &str = r"
redis.call('ZADD', KEYS[4], now, ARGV[1])
local out, dropped = {}, 0
for _ = 1, tonumber(ARGV[2]) do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    redis.call('SADD', KEYS[3], id)
    local eta = nil
    local ok, message = pcall(cjson.decode, payload)
    if ok and type(message) == 'table' and type(message.options) == 'table' then
      eta = tonumber(message.options.eta)
    end
    if not eta then eta = tonumber(redis.call('HGET', KEYS[5], id)) end
    out[#out + 1] = id
    out[#out + 1] = math.max(0, math.floor(eta or 0))
  else
    dropped = dropped + 1
  end
end
table.insert(out, 1, dropped)
return out
";

/// Acknowledges a message (Dramatiq's `ack`), if the worker still holds
/// it. Beats. KEYS: acks, msgs, heartbeats. ARGV: id, worker id. Returns
/// 1 (applied) or 0 (stale).
const ACK: &str = r"
redis.call('ZADD', KEYS[3], now, ARGV[2])
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

/// Dead-letters a message (Dramatiq's `nack`), if the worker still holds
/// it: the message goes to the dead-letter queue as ARGV[3] (the message
/// with its `traceback`) or, when that is '', as stored, with the reason
/// ARGV[4] kept beside it when it is not ''. Beats. KEYS: acks, msgs,
/// dead, dead msgs, dead reasons, heartbeats. ARGV: id, worker id,
/// message, reason.
const DEAD: &str = r"
redis.call('ZADD', KEYS[6], now, ARGV[2])
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local payload = redis.call('HGET', KEYS[2], ARGV[1])
if not payload then return 1 end
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[3] ~= '' then payload = ARGV[3] end
-- Scored by when it died, later than the last one, so that dead letters of
-- one millisecond keep their order (Python reads the score only to expire).
local score = now
local last = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if last[2] and tonumber(last[2]) >= score then score = tonumber(last[2]) + 0.001 end
redis.call('ZADD', KEYS[3], score, ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], payload)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[5], ARGV[1], ARGV[4]) end
return 1
";

/// Replaces a held message by a new one on a list, in one step, if the
/// worker still holds it and it still exists: a retry (from the queue to
/// its delay queue, or back to the queue) and the promotion of a due
/// delayed message (from the delay queue to the queue). KEYS: acks, msgs,
/// etas (of the old), list, msgs, etas (of the new), heartbeats. ARGV: old
/// id, worker id, new id, message, wake channel, eta of a body that is not
/// JSON or ''. Returns 1 (applied) or 0 (stale or gone).
const MOVE: &str = r"
redis.call('ZADD', KEYS[7], now, ARGV[2])
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
wake_if_empty(KEYS[4], ARGV[5])
redis.call('HSET', KEYS[5], ARGV[3], ARGV[4])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[6], ARGV[3], ARGV[6]) end
redis.call('RPUSH', KEYS[4], ARGV[3])
return 1
";

/// Returns held ids to the front of their list, in their order (Dramatiq's
/// `requeue`, which appends instead), those the worker still holds and
/// whose message exists. KEYS: acks, msgs, list. ARGV: wake channel, ids.
/// Returns how many went back.
const GIVE_BACK: &str = r"
local n = 0
for i = #ARGV, 2, -1 do
  if redis.call('SREM', KEYS[1], ARGV[i]) == 1 and redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
    if n == 0 then wake_if_empty(KEYS[3], ARGV[1]) end
    redis.call('LPUSH', KEYS[3], ARGV[i])
    n = n + 1
  end
end
return n
";

/// Returns every id of an ack set whose message still exists to the list,
/// and deletes the set (Dramatiq's maintenance, for a dead worker).
/// KEYS: acks, msgs, list. ARGV: wake channel. Returns the ids returned.
const RECOVER: &str = r"
local ids = redis.call('SMEMBERS', KEYS[1])
local back = {}
for _, id in ipairs(ids) do
  if redis.call('HEXISTS', KEYS[2], id) == 1 then
    if #back == 0 then wake_if_empty(KEYS[3], ARGV[1]) end
    redis.call('RPUSH', KEYS[3], id)
    back[#back + 1] = id
  end
end
redis.call('DEL', KEYS[1])
return back
";

/// Drops dead letters older than ARGV[1] ms (Dramatiq's `dead_message_ttl`),
/// up to 1000 a call. KEYS: dead, dead msgs, dead reasons. Returns how many.
const EXPIRE_DEAD: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], 0, now - tonumber(ARGV[1]), 'LIMIT', 0, 1000)
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return #ids
";

/// A heartbeat at the server's time. KEYS: heartbeats. ARGV: worker id.
const BEAT: &str = r"
redis.call('ZADD', KEYS[1], now, ARGV[1])
return now
";

/// Workers whose last heartbeat is older than ARGV[1] ms. KEYS: heartbeats.
const LAPSED: &str = r"
return redis.call('ZRANGEBYSCORE', KEYS[1], 0, now - tonumber(ARGV[1]), 'LIMIT', 0, 100)
";

/// Removes up to ARGV[1] ready messages. KEYS: list, msgs. Returns how
/// many messages were removed and how many ids looked at.
const PURGE: &str = r"
local ids = redis.call('LPOP', KEYS[1], tonumber(ARGV[1]))
if not ids then return {0, 0} end
local n = 0
for _, id in ipairs(ids) do n = n + redis.call('HDEL', KEYS[2], id) end
return {n, #ids}
";

/// Replays (ARGV[2] = 'replay') or deletes dead letters: one (ARGV[1] =
/// id) or the next 500 dead-lettered no later than ARGV[4] (ms; ARGV[1] =
/// ''). KEYS: dead, dead msgs, dead reasons, msgs, list. ARGV[3]: wake
/// channel. Returns {done, looked at}.
const REPLAY: &str = r"
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
      wake_if_empty(KEYS[5], ARGV[3])
      redis.call('HSET', KEYS[4], id, payload)
      redis.call('RPUSH', KEYS[5], id)
    end
    n = n + 1
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return {n, #ids}
";

/// The scripts of Dramatiq's layout, hashed once.
#[derive(Debug)]
pub(crate) struct DramatiqScripts {
    pub(crate) enqueue: Script,
    pub(crate) fetch: Script,
    pub(crate) take_delayed: Script,
    pub(crate) ack: Script,
    pub(crate) dead: Script,
    pub(crate) r#move: Script,
    pub(crate) give_back: Script,
    pub(crate) recover: Script,
    pub(crate) expire_dead: Script,
    pub(crate) beat: Script,
    pub(crate) lapsed: Script,
    pub(crate) purge: Script,
    pub(crate) replay: Script,
}

impl DramatiqScripts {
    pub(crate) fn new() -> Self {
        // As in the native layout: whatever drains may run in a full Redis.
        let drain = Some("allow-oom");
        Self {
            enqueue: script(None, &[WAKE_IF_EMPTY, ENQUEUE]),
            fetch: script(drain, &[NOW, FETCH]),
            take_delayed: script(drain, &[NOW, TAKE_DELAYED]),
            ack: script(drain, &[NOW, ACK]),
            dead: script(drain, &[NOW, DEAD]),
            r#move: script(drain, &[NOW, WAKE_IF_EMPTY, MOVE]),
            give_back: script(drain, &[WAKE_IF_EMPTY, GIVE_BACK]),
            recover: script(drain, &[WAKE_IF_EMPTY, RECOVER]),
            expire_dead: script(drain, &[NOW, EXPIRE_DEAD]),
            beat: script(drain, &[NOW, BEAT]),
            lapsed: script(Some("no-writes,allow-oom"), &[NOW, LAPSED]),
            purge: script(drain, &[PURGE]),
            replay: script(None, &[WAKE_IF_EMPTY, REPLAY]),
        }
    }
}
