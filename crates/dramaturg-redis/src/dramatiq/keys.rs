//! Dramatiq's key names (`dramatiq/brokers/redis/dispatch.lua`), plus the
//! few this crate adds where Dramatiq's layout has no room, which Python
//! never reads: the reason of a dead letter whose body is not JSON (JSON
//! ones carry it in `options.traceback`), the due time of a delayed body
//! that is not JSON (JSON ones carry `options.eta`), and the pub/sub
//! channels that wake idle Rust consumers.

use dramaturg_core::dramatiq::{dead_letter_queue, delay_queue, queue_name};

/// The keys of one queue `q` (a name without `.DQ` / `.XQ`).
#[derive(Debug, Clone)]
pub(crate) struct DramatiqKeys {
    pub(crate) namespace: String,
    pub(crate) queue: String,
    pub(crate) ready: Side,
    pub(crate) delayed: Side,
    /// `ns:q.XQ`: sorted set of dead-lettered ids by time (ms).
    pub(crate) dead: String,
    /// `ns:q.XQ.msgs`.
    pub(crate) dead_msgs: String,
    /// `ns:q.XQ.reasons` (ours): reasons of dead letters that are not JSON.
    pub(crate) dead_reasons: String,
    /// `ns:__heartbeats__`.
    pub(crate) heartbeats: String,
}

/// One list of ids and what goes with it: `q` or `q.DQ`.
#[derive(Debug, Clone)]
pub(crate) struct Side {
    /// The queue's name as Dramatiq says it (`q`, `q.DQ`).
    pub(crate) name: String,
    /// `ns:<name>`: list of ids.
    pub(crate) list: String,
    /// `ns:<name>.msgs`: id → message.
    pub(crate) msgs: String,
    /// `ns:<name>.etas` (ours): due times of delayed bodies that are not
    /// JSON.
    pub(crate) etas: String,
    /// The channel that wakes this worker's idle consumer of the list.
    pub(crate) wake: String,
}

impl Side {
    fn new(namespace: &str, name: String) -> Self {
        Self {
            list: format!("{namespace}:{name}"),
            msgs: format!("{namespace}:{name}.msgs"),
            etas: format!("{namespace}:{name}.etas"),
            wake: format!("{namespace}:__wake__.{name}"),
            name,
        }
    }
}

impl DramatiqKeys {
    pub(crate) fn new(namespace: &str, queue: &str) -> Self {
        let queue = queue_name(queue);
        let dead = format!("{namespace}:{}", dead_letter_queue(queue));
        Self {
            ready: Side::new(namespace, queue.to_owned()),
            delayed: Side::new(namespace, delay_queue(queue)),
            dead_msgs: format!("{dead}.msgs"),
            dead_reasons: format!("{dead}.reasons"),
            dead,
            heartbeats: heartbeats(namespace),
            namespace: namespace.to_owned(),
            queue: queue.to_owned(),
        }
    }

    /// `ns:__acks__.<worker>.<side>`: the ids `worker` fetched from `side`
    /// and has not settled.
    pub(crate) fn acks(&self, worker: &str, side: &Side) -> String {
        acks_prefix(&self.namespace, worker) + &side.name
    }
}

/// `ns:__heartbeats__`: worker id → last heartbeat (ms).
pub(crate) fn heartbeats(namespace: &str) -> String {
    format!("{namespace}:__heartbeats__")
}

/// `ns:__acks__.<worker>.`, which every ack set of `worker` starts with.
pub(crate) fn acks_prefix(namespace: &str, worker: &str) -> String {
    format!("{namespace}:__acks__.{worker}.")
}

/// `text` with the glob characters of `SCAN … MATCH` escaped.
pub(crate) fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The pattern of every worker's ack sets of `side`.
pub(crate) fn all_acks_pattern(namespace: &str, side: &Side) -> String {
    format!("{}:__acks__.*.{}", glob_escape(namespace), glob_escape(&side.name))
}

/// Whether `key`, found by [`all_acks_pattern`], is an ack set of `side`
/// itself (not of a queue whose name ends in `.<side>`): worker ids hold no
/// dot.
pub(crate) fn is_acks_of(namespace: &str, side: &Side, key: &str) -> bool {
    key.strip_prefix(&format!("{namespace}:__acks__."))
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(_, name)| name == side.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_dramatiqs() {
        let keys = DramatiqKeys::new("dramatiq", "default");
        assert_eq!(keys.ready.list, "dramatiq:default");
        assert_eq!(keys.ready.msgs, "dramatiq:default.msgs");
        assert_eq!(keys.delayed.list, "dramatiq:default.DQ");
        assert_eq!(keys.delayed.msgs, "dramatiq:default.DQ.msgs");
        assert_eq!(keys.dead, "dramatiq:default.XQ");
        assert_eq!(keys.dead_msgs, "dramatiq:default.XQ.msgs");
        assert_eq!(keys.heartbeats, "dramatiq:__heartbeats__");
        assert_eq!(keys.acks("w1", &keys.ready), "dramatiq:__acks__.w1.default");
        assert_eq!(keys.acks("w1", &keys.delayed), "dramatiq:__acks__.w1.default.DQ");
        assert_eq!(DramatiqKeys::new("ns", "default.DQ").queue, "default");
        assert!(is_acks_of("ns", &keys.delayed, "ns:__acks__.w.default.DQ"));
        assert!(!is_acks_of("ns", &keys.ready, "ns:__acks__.w.default.DQ"));
        assert_eq!(all_acks_pattern("n*", &keys.ready), "n\\*:__acks__.*.default");
    }
}
