//! Key names. Every key of a queue shares the hash tag `{queue}`, so that
//! they live in one Redis Cluster slot and one script can touch them all.

/// The keys of one queue under a namespace.
#[derive(Debug, Clone)]
pub(crate) struct QueueKeys {
    prefix: String,
    pub(crate) ready: String,
    pub(crate) msgs: String,
    pub(crate) delayed: String,
    pub(crate) dead: String,
    pub(crate) dead_msgs: String,
    pub(crate) reasons: String,
    pub(crate) redelivered: String,
    pub(crate) claims: String,
    /// The pub/sub channel that wakes idle consumers.
    pub(crate) wake: String,
    pub(crate) dead_bytes: String,
    /// Present (no TTL) while the queue is paused.
    pub(crate) paused: String,
}

/// The suffixes of the keys that hold a queue's messages, or say it is
/// paused: what [`queue_of_key`] recognises.
const READY: &str = "ready";
const MSGS: &str = "msgs";
const DELAYED: &str = "delayed";
const DEAD: &str = "dead";
const PAUSED: &str = "paused";
const INFLIGHT: &str = "inflight:";

impl QueueKeys {
    pub(crate) fn new(namespace: &str, queue: &str) -> Self {
        let prefix = format!("{namespace}:{{{queue}}}:");
        let key = |name: &str| format!("{prefix}{name}");
        Self {
            ready: key(READY),
            msgs: key(MSGS),
            delayed: key(DELAYED),
            dead: key(DEAD),
            dead_msgs: key("dead-msgs"),
            reasons: key("dead-reasons"),
            redelivered: key("redelivered"),
            claims: key("claims"),
            wake: key("wake"),
            dead_bytes: key("dead-bytes"),
            paused: key(PAUSED),
            prefix,
        }
    }

    /// The in-flight list of consumer `consumer` of worker `worker`.
    pub(crate) fn inflight(&self, worker: &str, consumer: u64) -> String {
        format!("{}{INFLIGHT}{worker}:{consumer}", self.prefix)
    }
}

/// Refuses a `what` (namespace or queue) named `name` with a brace in it
/// on a Redis Cluster: the keys of a queue share the hash tag `{queue}`,
/// and a brace inside it moves the tag (Redis hashes what lies between
/// the first `{` and the next `}`, the whole key if that is empty), which
/// can spread one queue's keys over slots that one script cannot touch.
pub(crate) fn check_cluster_name(what: &str, name: &str) -> Result<(), dramaturg_core::BrokerError> {
    if !name.contains(['{', '}']) {
        return Ok(());
    }
    Err(dramaturg_core::BrokerError::new(
        dramaturg_core::BrokerErrorKind::InvalidInput,
        format!(
            "redis: on a Redis Cluster a {what} name cannot hold '{{' or '}}' ({:?}): the keys of a queue share \
             the hash tag {{queue}}, and a brace would move it",
            dramaturg_core::Bounded::quoted(name).as_str()
        ),
    ))
}

/// The keys of the worker registry; they share the hash tag `{registry}`,
/// so that one script can beat into both.
#[derive(Debug, Clone)]
pub(crate) struct RegistryKeys {
    /// Sorted set: worker id → time of its last heartbeat (ms).
    pub(crate) workers: String,
    /// Hash: worker id → the concurrency it told its broker.
    pub(crate) concurrency: String,
    /// Sorted set: worker id → its heartbeat timeout (ms), by which the
    /// others judge it dead.
    pub(crate) timeouts: String,
    namespace: String,
}

impl RegistryKeys {
    pub(crate) fn new(namespace: &str) -> Self {
        Self {
            workers: format!("{namespace}:{{registry}}:workers"),
            concurrency: format!("{namespace}:{{registry}}:concurrency"),
            timeouts: format!("{namespace}:{{registry}}:timeouts"),
            namespace: namespace.to_owned(),
        }
    }

    /// Hash of the outcomes of minute `minute` (minutes since the Unix
    /// epoch): `s:<queue>` and `f:<queue>` → succeeded and failed attempts.
    pub(crate) fn outcomes(&self, minute: u64) -> String {
        format!("{}:{{registry}}:outcomes:{minute}", self.namespace)
    }

    /// The keys of `queue` in the same namespace.
    pub(crate) fn queue(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.namespace, queue)
    }

    /// Set of `consumer:queue` entries naming the worker's in-flight lists.
    pub(crate) fn consumers(&self, worker: &str) -> String {
        format!("{}:{{registry}}:worker:{worker}:consumers", self.namespace)
    }
}

/// The glob pattern of every key of every queue under `namespace` (its
/// glob characters escaped), for `SCAN`.
pub(crate) fn queue_keys_pattern(namespace: &str) -> String {
    let mut pattern = String::with_capacity(namespace.len() + 4);
    for c in namespace.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(":{*");
    pattern
}

/// The queue whose key `key` is, if it is one of the keys that hold a
/// queue's messages (ready, delayed, stored, dead or in flight) or mark
/// it paused, under `namespace`.
pub(crate) fn queue_of_key<'a>(namespace: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(namespace)?.strip_prefix(":{")?;
    // A queue name may hold `}:` itself: try each place from the end.
    let mut end = rest.len();
    while let Some(at) = rest[..end].rfind("}:") {
        let suffix = &rest[at + 2..];
        if [READY, DELAYED, MSGS, DEAD, PAUSED].contains(&suffix) || suffix.starts_with(INFLIGHT) {
            return Some(&rest[..at]);
        }
        end = at;
    }
    None
}

/// A registry entry for consumer `consumer` of `queue`.
pub(crate) fn consumer_entry(consumer: u64, queue: &str) -> String {
    format!("{consumer}:{queue}")
}

/// The consumer number and queue of a registry entry.
pub(crate) fn parse_consumer_entry(entry: &str) -> Option<(u64, &str)> {
    let (consumer, queue) = entry.split_once(':')?;
    Some((consumer.parse().ok()?, queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_share_a_hash_tag() {
        let keys = QueueKeys::new("ns", "mail");
        for key in [
            &keys.ready,
            &keys.msgs,
            &keys.delayed,
            &keys.dead,
            &keys.wake,
            &keys.claims,
            &keys.dead_bytes,
            &keys.paused,
            &keys.inflight("w1", 3),
        ] {
            assert!(key.starts_with("ns:{mail}:"), "{key}");
        }
        assert_eq!(keys.inflight("w1", 3), "ns:{mail}:inflight:w1:3");
    }

    #[test]
    fn queues_are_read_back_from_their_keys() {
        let keys = QueueKeys::new("ns", "a}:b");
        for key in [&keys.ready, &keys.delayed, &keys.msgs, &keys.dead, &keys.paused, &keys.inflight("w", 1)] {
            assert_eq!(queue_of_key("ns", key), Some("a}:b"), "{key}");
        }
        assert_eq!(queue_of_key("ns", &keys.claims), None);
        assert_eq!(queue_of_key("ns", "ns:{registry}:workers"), None);
        assert_eq!(queue_of_key("other", &keys.ready), None);
        assert_eq!(queue_keys_pattern("n*s"), "n\\*s:{*");
    }

    #[test]
    fn consumer_entries_round_trip_even_with_colons_in_queue_names() {
        let entry = consumer_entry(7, "a:b");
        assert_eq!(parse_consumer_entry(&entry), Some((7, "a:b")));
        assert_eq!(parse_consumer_entry("x"), None);
    }
}
