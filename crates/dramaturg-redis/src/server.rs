//! What the broker checks of the server when it connects: a version whose
//! scripts it can run, and a memory policy under which Redis never drops a
//! message to make room.
//!
//! Redis with `maxmemory` and an evicting policy (`allkeys-lru`,
//! `volatile-lru`, …) deletes keys when full: a queue's `msgs` hash, its
//! ready list, a claims hash — every send succeeded and the messages are
//! gone without a trace. So the broker refuses such a server unless told
//! otherwise ([`RedisConfig::allow_eviction`](crate::RedisConfig::allow_eviction)),
//! as BullMQ does. Under `noeviction`, a full Redis refuses sends with
//! `OOM` ([`BrokerErrorKind::Full`]) and can still be drained.

use crate::broker_error;
use crate::conn::Conn;
use dramaturg_core::{BrokerError, BrokerErrorKind};

/// The oldest Redis whose features the scripts use: script flags
/// (`#!lua flags=allow-oom`), `LMOVE` and `BLMOVE`, `LPOP` with a count.
const MIN_MAJOR: u32 = 7;

/// What the checks found, for the connect log line.
#[derive(Debug)]
pub(crate) struct ServerInfo {
    pub(crate) version: Option<String>,
    pub(crate) policy: Option<String>,
    pub(crate) replica: bool,
}

/// Checks the server at the other end of `conn` (shown as `shown`); on a
/// Redis Cluster, every master that serves slots (what the first one
/// found is reported).
pub(crate) async fn check(conn: &mut Conn, shown: &str, allow_eviction: bool) -> Result<ServerInfo, BrokerError> {
    let masters = conn.masters().await.map_err(|e| broker_error(e, &format!("listing the masters of {shown}")))?;
    let mut found = None;
    for mut master in masters {
        let info = check_node(&mut master, shown, allow_eviction).await?;
        found.get_or_insert(info);
    }
    found.ok_or_else(|| {
        BrokerError::new(
            BrokerErrorKind::Unavailable,
            format!("redis: the cluster at {shown} has no master serving slots"),
        )
    })
}

/// Checks one server (or one master of a cluster).
async fn check_node(conn: &mut Conn, shown: &str, allow_eviction: bool) -> Result<ServerInfo, BrokerError> {
    // INFO with no section: its default sections hold the version, the
    // memory policy and the role, and a server older than 7 (which takes
    // one section at most) understands it too.
    let info: Option<String> = match redis::cmd("INFO").query_async(conn).await {
        Ok(info) => Some(info),
        Err(error) if error.code().is_some() => {
            // Renamed or forbidden (ACL): the checks below say what they miss.
            tracing::debug!(%error, "INFO is not available");
            None
        }
        Err(error) => return Err(broker_error(error, &format!("reading the server's INFO from {shown}"))),
    };
    let field = |name: &str| info.as_deref().and_then(|info| info_field(info, name)).map(str::to_owned);
    let version = field("redis_version");
    match version.as_deref().map(major) {
        Some(Some(major)) if major >= MIN_MAJOR => {}
        Some(_) => {
            let found = version.as_deref().unwrap_or_default();
            return Err(BrokerError::new(
                BrokerErrorKind::Unsuitable,
                format!(
                    "redis: the server at {shown} runs Redis {found}; this broker needs Redis {MIN_MAJOR}.0 or later \
                     (its scripts use script flags and LMOVE)"
                ),
            ));
        }
        None => tracing::warn!(
            server = %shown,
            "cannot read the Redis version (INFO is renamed or forbidden); this broker needs Redis {MIN_MAJOR}.0 or later"
        ),
    }
    let policy = match config_policy(conn).await {
        Some(policy) => Some(policy),
        None => field("maxmemory_policy"),
    };
    match policy.as_deref() {
        Some("noeviction") => {}
        Some(policy) if allow_eviction => tracing::warn!(
            server = %shown,
            policy,
            "REDIS MAY LOSE MESSAGES: maxmemory-policy is {policy}, so a full Redis deletes keys — queued messages, \
             claims, dead letters — without a trace. Allowed by RedisConfig::allow_eviction; set \
             maxmemory-policy noeviction to keep every message"
        ),
        Some(policy) => {
            return Err(BrokerError::new(
                BrokerErrorKind::Unsuitable,
                format!(
                    "redis: the server at {shown} has maxmemory-policy {policy}: when full it deletes keys, and \
                     queued messages vanish without a trace. Set maxmemory-policy noeviction (a full Redis then \
                     refuses sends and can be drained), or accept the loss with RedisConfig::allow_eviction(true)"
                ),
            ));
        }
        None => tracing::warn!(
            server = %shown,
            "cannot read maxmemory-policy (CONFIG and INFO are renamed or forbidden); unless it is noeviction, \
             a full Redis deletes queued messages"
        ),
    }
    if field("redis_mode").as_deref() == Some("cluster") && !conn.is_cluster() {
        return Err(BrokerError::new(
            BrokerErrorKind::InvalidInput,
            format!(
                "redis: the server at {shown} is a node of a Redis Cluster; name the cluster with a \
                 redis+cluster://host:port,host:port URL (or RedisConfig::cluster), so that every key reaches the \
                 node that serves its slot"
            ),
        ));
    }
    let replica = field("role").as_deref() == Some("slave");
    if replica {
        tracing::warn!(
            server = %shown,
            "the server is a read-only replica: sends fail and consuming waits until it is a primary again"
        );
    }
    Ok(ServerInfo { version, policy, replica })
}

/// `maxmemory-policy` from `CONFIG GET`, or `None` if CONFIG is renamed,
/// disabled or forbidden.
async fn config_policy(conn: &mut Conn) -> Option<String> {
    let reply: Result<Vec<String>, _> = redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(conn).await;
    match reply {
        Ok(pair) => pair.into_iter().nth(1),
        Err(error) => {
            tracing::debug!(%error, "CONFIG GET maxmemory-policy is not available; reading INFO instead");
            None
        }
    }
}

/// The value of `name` in an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

/// The major version of a version string such as `7.0.15`.
fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_versions_are_read() {
        let info =
            "# Server\r\nredis_version:6.2.14\r\nredis_mode:standalone\r\n# Memory\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(info_field(info, "redis_version"), Some("6.2.14"));
        assert_eq!(info_field(info, "redis_mode"), Some("standalone"));
        assert_eq!(info_field(info, "maxmemory_policy"), Some("allkeys-lru"));
        assert_eq!(info_field(info, "redis"), None);
        assert_eq!(major("6.2.14"), Some(6));
        assert_eq!(major("7.0.15"), Some(7));
        assert_eq!(major("x"), None);
    }
}
