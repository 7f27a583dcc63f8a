//! The Lua scripts that make each broker operation atomic. Every script
//! touches the keys of one queue only (one hash tag, so one Cluster slot),
//! and loops over a bounded number of items instead of unpacking whole
//! lists onto the Lua stack.

use redis::Script;

/// The entry pushed into an empty ready list to wake a consumer blocked on
/// it when a delayed message falls due earlier than it was told.
pub(crate) const WAKE: &str = "~wake~";

/// Enqueue messages now. KEYS: msgs, ready. ARGV: id, payload, id, payload, …
const ENQUEUE: &str = r"
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('RPUSH', KEYS[2], ARGV[i])
end
return #ARGV / 2
";

/// Enqueue one message for later. KEYS: msgs, delayed, ready, woken.
/// ARGV: id, payload, due (ms since the epoch).
const ENQUEUE_DELAYED: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local due = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[1])
if (first[2] == nil or due < tonumber(first[2])) and redis.call('LLEN', KEYS[3]) == 0 then
  redis.call('LPUSH', KEYS[3], '~wake~')
  redis.call('SET', KEYS[4], '1')
end
return 1
";

/// Promote due delayed messages, then claim up to n ready ones into the
/// consumer's in-flight list. KEYS: ready, inflight, msgs, delayed,
/// redelivered, woken. ARGV: n, now (ms). Returns the next due time (or
/// -1) followed by id, payload, redelivered triples.
const FETCH: &str = r"
local now = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('RPUSH', KEYS[1], id)
  redis.call('ZREM', KEYS[4], id)
end
local out = {}
local n = tonumber(ARGV[1])
local taken = 0
while taken < n do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not id then break end
  if id == '~wake~' then
    redis.call('LREM', KEYS[2], -1, id)
    redis.call('DEL', KEYS[6])
  else
    taken = taken + 1
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
    out[#out + 1] = redis.call('SREM', KEYS[5], id)
  end
end
local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
table.insert(out, 1, first[2] or '-1')
return out
";

/// Complete a claim made by a blocking move. KEYS: inflight, msgs,
/// redelivered, woken. ARGV: id. Returns nil for a wake-up entry.
const TAKE: &str = r"
if ARGV[1] == '~wake~' then
  redis.call('LREM', KEYS[1], -1, ARGV[1])
  redis.call('DEL', KEYS[4])
  return false
end
return {redis.call('HGET', KEYS[2], ARGV[1]) or '', redis.call('SREM', KEYS[3], ARGV[1])}
";

/// Acknowledge. KEYS: inflight, msgs. ARGV: id.
const ACK: &str = r"
redis.call('LREM', KEYS[1], 1, ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
";

/// Dead-letter, and drop dead letters past their retention (100 at most
/// per call). KEYS: inflight, msgs, dead, dead_msgs, reasons.
/// ARGV: id, reason, now (ms), retention (ms).
const DEAD: &str = r"
redis.call('LREM', KEYS[1], 1, ARGV[1])
local payload = redis.call('HGET', KEYS[2], ARGV[1]) or ''
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], payload)
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
local now = tonumber(ARGV[3])
redis.call('ZADD', KEYS[3], now, ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id)
end
return 1
";

/// Return claimed messages to the front of the queue, in their order.
/// KEYS: inflight, ready, redelivered. ARGV: ids.
const REQUEUE: &str = r"
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[i])
    redis.call('SADD', KEYS[3], ARGV[i])
    n = n + 1
  end
end
return n
";

/// Return everything a dead consumer had claimed. KEYS: inflight, ready,
/// redelivered.
const RECOVER: &str = r"
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #ids, 1, -1 do
  redis.call('LPUSH', KEYS[2], ids[i])
  if ids[i] ~= '~wake~' then
    redis.call('SADD', KEYS[3], ids[i])
  end
end
redis.call('DEL', KEYS[1])
return #ids
";

/// Move dead letters back to the queue: one (ARGV[1] = id) or the next 500
/// (ARGV[1] = ''). KEYS: dead, dead_msgs, reasons, msgs, ready. Returns
/// {replayed, looked at}.
const REPLAY: &str = r"
local ids
if ARGV[1] == '' then
  ids = redis.call('ZRANGE', KEYS[1], 0, 499)
elseif redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  ids = {ARGV[1]}
else
  ids = {}
end
local n = 0
for _, id in ipairs(ids) do
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    redis.call('HSET', KEYS[4], id, payload)
    redis.call('RPUSH', KEYS[5], id)
    n = n + 1
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return {n, #ids}
";

/// Up to ARGV[1] dead letters, oldest first. KEYS: dead, dead_msgs,
/// reasons. Returns id, payload, reason, time (ms) quadruples.
const LIST_DEAD: &str = r"
local entries = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
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

/// Remove every ready and delayed message, 1000 at a time. KEYS: ready,
/// delayed, msgs, woken. Returns how many.
const PURGE: &str = r"
local n = 0
while true do
  local ids = redis.call('LPOP', KEYS[1], 1000)
  if not ids then break end
  for _, id in ipairs(ids) do
    if id ~= '~wake~' then
      redis.call('HDEL', KEYS[3], id)
      n = n + 1
    end
  end
end
while true do
  local entries = redis.call('ZPOPMIN', KEYS[2], 1000)
  if #entries == 0 then break end
  for i = 1, #entries, 2 do
    redis.call('HDEL', KEYS[3], entries[i])
    n = n + 1
  end
end
redis.call('DEL', KEYS[4])
return n
";

/// The scripts, hashed once; `invoke_async` runs them with `EVALSHA` and
/// loads them again on `NOSCRIPT`.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) enqueue: Script,
    pub(crate) enqueue_delayed: Script,
    pub(crate) fetch: Script,
    pub(crate) take: Script,
    pub(crate) ack: Script,
    pub(crate) dead: Script,
    pub(crate) requeue: Script,
    pub(crate) recover: Script,
    pub(crate) replay: Script,
    pub(crate) list_dead: Script,
    pub(crate) purge: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            enqueue: Script::new(ENQUEUE),
            enqueue_delayed: Script::new(ENQUEUE_DELAYED),
            fetch: Script::new(FETCH),
            take: Script::new(TAKE),
            ack: Script::new(ACK),
            dead: Script::new(DEAD),
            requeue: Script::new(REQUEUE),
            recover: Script::new(RECOVER),
            replay: Script::new(REPLAY),
            list_dead: Script::new(LIST_DEAD),
            purge: Script::new(PURGE),
        }
    }
}
