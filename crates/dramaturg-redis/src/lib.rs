//! The Redis broker of [dramaturg](https://docs.rs/dramaturg).
//!
//! # How it keeps every message
//!
//! - **Reliable fetch.** A consumer claims messages atomically (a Lua
//!   script moves their ids from the queue's ready list into the consumer's
//!   own in-flight list); they leave Redis only when settled.
//! - **Fenced settlement.** Each claim carries a token (a per-message claim
//!   counter); a settlement applies only while its claim is current, so a
//!   worker that stalled past its lease cannot touch a message another
//!   worker took over (it gets `Settled::Stale`).
//! - **Heartbeats apart from user code.** Each worker beats from a thread
//!   of its own, with the server's clock. When a worker dies, the next
//!   heartbeat tick of any live worker after `heartbeat_timeout` returns the
//!   dead worker's claimed messages to the front of their queues — without
//!   `KEYS`, and only from a worker that has itself beaten for a whole
//!   timeout (so an outage recovers no live worker).
//! - **No idle polling, few connections.** An idle consumer waits for a
//!   wake-up that the scripts publish when a message lands in its empty
//!   queue (or a delayed one falls due sooner), through one pub/sub
//!   subscription per worker, and looks again every `max_block` (5 s) at
//!   the latest. A worker holds four connections however many queues it
//!   consumes (see `docs/redis.md`).
//! - **Delayed messages live in Redis**, in a sorted set by due time, and are
//!   moved to their queue atomically when due. A delay of hours costs nothing
//!   and survives restarts of every worker.
//! - **Dead letters** are kept per queue with their reason for
//!   `dead_letter_ttl` (7 days), at most 50,000 and 64 MiB per queue (the
//!   oldest go first), and can be listed and replayed. Each worker trims
//!   the dead letters of the queues it consumes when one is written and on
//!   a timer (every minute).
//! - **Keys** live under a namespace (`dramaturg` by default), and every key
//!   of a queue carries the hash tag `{queue}` so that a queue lives in one
//!   Redis Cluster slot. The broker runs on one server or on a Redis
//!   Cluster (`redis+cluster://host:port,host:port/`,
//!   [`RedisConfig::cluster`]; see `docs/redis.md`, "Redis Cluster"). Scripts are sent once and run by hash (`EVALSHA`),
//!   and sent again after `NOSCRIPT`.
//! - **Throughput**: consumers claim a batch per round trip; a consumer's
//!   acks are settled in batches, up to 256 per script call, without
//!   waiting to fill one (each claim still checked on its own); settlements
//!   and sends from many tasks share one multiplexed connection, which
//!   pipelines them; `send_many` enqueues a batch in one script call per
//!   queue.
//! - **Connection loss**: commands fail with a `Connection` error while
//!   Redis is away (producers may retry for a while:
//!   [`RedisConfig::retry_enqueue_for`]); the connection reconnects with
//!   backoff, and the worker logs and retries consuming with backoff.
//!
//! # Keys of a queue `q` in namespace `ns`
//!
//! | key | type | holds |
//! |---|---|---|
//! | `ns:{q}:msgs` | hash | entry id → encoded message, while live |
//! | `ns:{q}:ready` | list | entry ids ready to run, oldest first |
//! | `ns:{q}:delayed` | sorted set | entry ids by due time (ms) |
//! | `ns:{q}:inflight:<worker>:<n>` | list | entry ids claimed by a consumer |
//! | `ns:{q}:redelivered` | set | entry ids returned to the queue after a claim |
//! | `ns:{q}:dead`, `dead-msgs`, `dead-reasons` | sorted set, hashes | dead letters by time, their messages, their reasons |
//! | `ns:{q}:claims` | hash | entry id → claim counter (the owner token of fenced settlement) |
//! | `ns:{q}:dead-bytes` | string | bytes of the dead letters' messages |
//! | `ns:{q}:wake` | pub/sub channel | wakes idle consumers |
//! | `ns:{registry}:workers` | sorted set | worker id → last heartbeat (ms, server time) |
//! | `ns:{registry}:worker:<id>:consumers` | set | the worker's in-flight lists |
//! | `ns:{registry}:concurrency` | hash | worker id → the concurrency it runs at |
//! | `ns:{registry}:timeouts` | sorted set | worker id → its heartbeat timeout (ms), by which the others judge it dead |
//! | `ns:{registry}:outcomes:<minute>` | hash, kept 2 h | `s:<queue>`, `f:<queue>` → succeeded and failed attempts in that minute (minutes since the epoch, server time) |
//! | `ns:store:<key>` | string or set, with a TTL | [`RedisStore`] keys (abort requests: `ns:store:abort:<id>`) |
//!
//! # The store
//!
//! [`RedisStore`] is the [`Store`] on the broker's server that
//! [`Broker::store`] gives, so that features which share keys between
//! workers (abort requests, by default) reach every worker of the broker.
//! It can also be connected on its own, beside another broker.

mod acks;
mod admin;
mod browse;
mod clock;
mod conn;
mod consumer;
mod dramatiq;
mod keys;
mod outcomes;
mod registry;
mod scripts;
mod server;
mod store;
mod waits;
mod wake;

pub use dramaturg_core::Protocol;
pub use store::RedisStore;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dramaturg_core::broker::redact_password;
pub(crate) use dramaturg_core::sync::lock;
pub(crate) use dramaturg_core::time::millis;
use dramaturg_core::{
    Broker, BrokerError, BrokerErrorKind, Consumer, DeadLetters, MessageId, Outgoing, QueueAdmin, Store,
};
use redis::RedisError;

use crate::clock::ServerClock;
use crate::conn::{Conn, Endpoint, Timeouts};
use crate::keys::QueueKeys;
use crate::registry::Registry;
use crate::scripts::Scripts;

/// How many messages one enqueue script call carries at most.
const ENQUEUE_CHUNK: usize = 200;

/// Settings of a [`RedisBroker`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://:secret@127.0.0.1:6379/0")
///     .namespace("billing")
///     .heartbeat(Duration::from_secs(2), Duration::from_secs(10))
///     .retry_enqueue_for(Duration::from_secs(5));
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    namespace: String,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    dead_letter_ttl: Duration,
    dead_letter_max_count: u64,
    dead_letter_max_bytes: u64,
    dead_letter_trim_every: Duration,
    max_block: Duration,
    retry_enqueue_for: Duration,
    allow_eviction: bool,
    /// The layout of the queues on the server.
    protocol: Protocol,
    /// A `?protocol=` value in the URL that names no protocol: refused at
    /// connect.
    unknown_protocol: Option<String>,
    /// Whether `namespace` / `heartbeat` were set, so that choosing
    /// Dramatiq's layout does not override them with its defaults.
    namespace_set: bool,
    heartbeat_set: bool,
    /// Dramatiq layout: the longest an idle consumer waits before it polls
    /// again.
    max_poll: Duration,
    /// Dramatiq layout: how many delayed messages one consumer holds.
    max_held_delays: usize,
    #[cfg(feature = "tls")]
    tls_root_certificate: Option<Vec<u8>>,
}

impl RedisConfig {
    /// Settings for the server at `url` (`redis://[user][:password@]host[:port][/db]`,
    /// or `rediss://` with the `tls` feature), with the defaults: namespace
    /// `dramaturg`, a heartbeat every 3 s with a 15 s timeout, dead letters
    /// kept 7 days (at most 50,000 and 64 MiB of messages per queue,
    /// trimmed every minute), idle consumers looking again every 5 s, no
    /// enqueue retries, no server with an evicting memory policy.
    ///
    /// `?protocol=dramatiq` in the URL chooses Python Dramatiq's layout
    /// (see [`RedisConfig::protocol`]), `?protocol=native` this crate's own;
    /// the parameter is taken out of the URL before it reaches the Redis
    /// client (whose own `protocol=resp2` / `resp3` pass through). Any other
    /// value is refused when the broker connects. `?namespace=billing` sets
    /// the namespace as [`RedisConfig::namespace`] does. In a Unix socket
    /// URL (`redis+unix:///run/redis.sock?db=1&user=…&pass=…`) the client
    /// reads `db`, `user` and `pass` too; over TCP they belong in the URL
    /// itself (`redis://user:password@host:port/db`). Any other query
    /// parameter (a typo, or `pass` in a TCP URL, which the client would
    /// ignore) is refused when connecting, with an error of kind
    /// [`BrokerErrorKind::InvalidInput`].
    ///
    /// A **Redis Cluster** is named by `redis+cluster://` (or
    /// `rediss+cluster://` with the `tls` feature) and a comma-separated
    /// list of some of its nodes (seeds: the client learns the others from
    /// them), `redis+cluster://[user][:password@]host:port,host:port[/][?namespace=…]`,
    /// or built with [`RedisConfig::cluster`]. See `docs/redis.md`, "Redis
    /// Cluster", for what works there.
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        let (url, params) = dramatiq::url::take_params(&url);
        let mut config = Self {
            url,
            namespace: "dramaturg".into(),
            heartbeat_interval: Duration::from_secs(3),
            heartbeat_timeout: Duration::from_secs(15),
            dead_letter_ttl: Duration::from_secs(7 * 24 * 3600),
            dead_letter_max_count: 50_000,
            dead_letter_max_bytes: 64 << 20,
            dead_letter_trim_every: Duration::from_secs(60),
            max_block: Duration::from_secs(5),
            retry_enqueue_for: Duration::ZERO,
            allow_eviction: false,
            protocol: Protocol::Native,
            unknown_protocol: None,
            namespace_set: false,
            heartbeat_set: false,
            max_poll: Duration::from_secs(1),
            max_held_delays: 1000,
            #[cfg(feature = "tls")]
            tls_root_certificate: None,
        };
        if let Some(namespace) = params.namespace {
            config = config.namespace(namespace);
        }
        match params.protocol {
            Some(Ok(protocol)) => config = config.protocol(protocol),
            Some(Err(value)) => config.unknown_protocol = Some(value),
            None => {}
        }
        config
    }

    /// Settings for the Redis Cluster of which `nodes` are some nodes
    /// (`redis://[user][:password@]host:port` each, as the redis crate's
    /// `ClusterClient` takes them; the first node's user, password and
    /// query apply to all): the same as
    /// `RedisConfig::new("redis+cluster://host:port,host:port/")`.
    ///
    /// # Examples
    ///
    /// ```
    /// use dramaturg_redis::RedisConfig;
    ///
    /// let config = RedisConfig::cluster(["redis://:secret@10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .namespace("billing");
    /// let shown = format!("{config:?}");
    /// assert!(shown.contains("redis+cluster://:***@10.0.0.1:7000,10.0.0.2:7000/"), "{shown}");
    /// ```
    pub fn cluster<S: AsRef<str>>(nodes: impl IntoIterator<Item = S>) -> Self {
        let nodes: Vec<S> = nodes.into_iter().collect();
        Self::new(conn::cluster_url(&nodes))
    }

    /// Lays the queues out as `protocol` says: [`Protocol::Native`] (the
    /// default), or [`Protocol::Dramatiq`], Python Dramatiq's keys and JSON
    /// messages, so that Python and Rust workers and producers share
    /// queues (see `docs/redis.md`, "Dramatiq's layout"). Dramatiq's layout
    /// brings Dramatiq's defaults for what was not set: namespace
    /// `dramatiq`, a worker counted dead after 60 s without a heartbeat
    /// (heartbeats every 5 s).
    #[must_use]
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        let dramatiq = protocol == Protocol::Dramatiq;
        if !self.namespace_set {
            self.namespace = if dramatiq { "dramatiq" } else { "dramaturg" }.into();
        }
        if !self.heartbeat_set {
            (self.heartbeat_interval, self.heartbeat_timeout) = if dramatiq {
                (Duration::from_secs(5), Duration::from_secs(60))
            } else {
                (Duration::from_secs(3), Duration::from_secs(15))
            };
        }
        self
    }

    /// Dramatiq layout: the longest an idle consumer waits before it looks
    /// at its queue again (default 1 s, as Dramatiq's `worker_timeout`).
    /// Python's producers publish no wake-up, so idle consumers poll: from
    /// 5 ms after the last message, doubling up to this. Messages sent from
    /// Rust wake idle Rust consumers at once.
    #[must_use]
    pub fn max_poll(mut self, max_poll: Duration) -> Self {
        self.max_poll = max_poll.max(Duration::from_millis(5));
        self
    }

    /// Dramatiq layout: how many delayed messages each consumer takes from
    /// its queue's delay queue and holds until they fall due (default
    /// 1000; it keeps their ids and due times, not their bodies).
    #[must_use]
    pub fn max_held_delays(mut self, limit: usize) -> Self {
        self.max_held_delays = limit.max(1);
        self
    }

    /// Trusts the certificate authority in `pem` (instead of the system's
    /// trust store) for `rediss://` connections: for servers with a
    /// certificate from a private CA.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_certificate = Some(pem.into());
        self
    }

    /// Puts every key under `namespace` (default `dramaturg`; `dramatiq` in
    /// Dramatiq's layout, as Python's).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self.namespace_set = true;
        self
    }

    /// How often workers beat, and after how long without a beat a worker
    /// counts as dead and its claimed messages are returned to their queues.
    /// Each worker records its timeout with its beats, and the others judge
    /// it by that one, so workers with different timeouts can share queues.
    /// The interval is at least 10 ms and the timeout at least the
    /// interval (smaller values are raised to those); keep the timeout
    /// several intervals long (the defaults: 3 s and 15 s), since up to one
    /// interval may have passed since a worker's last beat when it stalls —
    /// a stall longer than the timeout minus one interval may already count
    /// as a death.
    #[must_use]
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval.max(Duration::from_millis(10));
        self.heartbeat_timeout = timeout.max(self.heartbeat_interval);
        self.heartbeat_set = true;
        self
    }

    /// How long dead letters are kept (default 7 days).
    #[must_use]
    pub fn dead_letter_ttl(mut self, ttl: Duration) -> Self {
        self.dead_letter_ttl = ttl;
        self
    }

    /// The most dead letters each queue keeps, by count and by the bytes of
    /// their messages (defaults 50,000 and 64 MiB); past either, the
    /// oldest are dropped. The newest dead letter is always kept, even when
    /// its message alone is larger than `max_bytes` (messages are bounded
    /// by the app's `max_message_size`). Enforced when a message is dead-lettered (up to 100
    /// per dead letter), and on the timer of
    /// [`RedisConfig::dead_letter_trim_every`] (up to 1,000 per queue per
    /// pass).
    #[must_use]
    pub fn dead_letter_caps(mut self, max_count: u64, max_bytes: u64) -> Self {
        self.dead_letter_max_count = max_count.max(1);
        self.dead_letter_max_bytes = max_bytes;
        self
    }

    /// How often each worker trims the dead letters of the queues it
    /// consumes by retention and caps (default 60 s), so that they shrink
    /// even when no new dead letter arrives. A queue is also trimmed at the
    /// first heartbeat after this worker starts consuming it. The timer
    /// runs on the heartbeat, so the period is at least one heartbeat
    /// interval.
    ///
    /// Only queues this worker consumes are trimmed: finding every queue
    /// with dead letters would take a scan of the keyspace. The dead letters
    /// of a queue that no worker consumes any more stay (within the caps)
    /// until a worker consumes it again, or they are deleted through
    /// [`DeadLetters::delete`].
    #[must_use]
    pub fn dead_letter_trim_every(mut self, period: Duration) -> Self {
        self.dead_letter_trim_every = period;
        self
    }

    /// The longest an idle consumer waits before it looks again (default
    /// 5 s: one claim script per 5 s per idle queue). It also bounds the
    /// latency of a wake-up lost while the subscription reconnects.
    #[must_use]
    pub fn max_block(mut self, max_block: Duration) -> Self {
        self.max_block = max_block.max(Duration::from_millis(10));
        self
    }

    /// Retries a send that fails for a connection reason, with backoff, for
    /// up to `duration` (default zero: the error is returned at once).
    #[must_use]
    pub fn retry_enqueue_for(mut self, duration: Duration) -> Self {
        self.retry_enqueue_for = duration;
        self
    }

    /// Connects even to a server whose `maxmemory-policy` evicts keys
    /// (default `false`: such a server is refused with a
    /// [`BrokerErrorKind::Unsuitable`] error). An evicting Redis that
    /// fills up deletes queued messages, claims and dead letters without a
    /// trace; with this set, the broker logs a warning at every connect and
    /// goes on. For caches shared with throwaway jobs, never for work that
    /// must run.
    #[must_use]
    pub fn allow_eviction(mut self, allow: bool) -> Self {
        self.allow_eviction = allow;
        self
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_password(&self.url))
            .field("namespace", &self.namespace)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("dead_letter_ttl", &self.dead_letter_ttl)
            .field("dead_letter_max_count", &self.dead_letter_max_count)
            .field("dead_letter_max_bytes", &self.dead_letter_max_bytes)
            .field("dead_letter_trim_every", &self.dead_letter_trim_every)
            .field("max_block", &self.max_block)
            .field("retry_enqueue_for", &self.retry_enqueue_for)
            .field("allow_eviction", &self.allow_eviction)
            .field("protocol", &self.protocol)
            .field("max_poll", &self.max_poll)
            .field("max_held_delays", &self.max_held_delays)
            .finish()
    }
}

/// A [`Broker`] on Redis. Cheap to clone: clones share connections and the
/// worker's identity (one heartbeat per broker value and its clones).
#[derive(Clone)]
pub struct RedisBroker {
    shared: Arc<Shared>,
}

/// What the broker, its consumers and its receipts share.
struct Shared {
    config: RedisConfig,
    endpoint: Endpoint,
    conn: Conn,
    /// What [`Broker::store`] gives, made on first use.
    store: std::sync::OnceLock<Arc<dyn Store>>,
    scripts: Arc<Scripts>,
    worker_id: String,
    consumers: AtomicU64,
    registry: Arc<Registry>,
    /// The server's clock, for message timestamps and ages.
    clock: Arc<ServerClock>,
    /// The scripts and claims of Dramatiq's layout.
    dramatiq: Arc<dramatiq::DramatiqState>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.registry.stop();
    }
}

fn open_client(config: &RedisConfig, url: &str) -> redis::RedisResult<redis::Client> {
    #[cfg(feature = "tls")]
    if let Some(pem) = &config.tls_root_certificate {
        let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) };
        return redis::Client::build_with_tls(url, certificates);
    }
    #[cfg(not(feature = "tls"))]
    let _ = config;
    redis::Client::open(url)
}

/// The server, or for a `redis+cluster://` URL the cluster, of `config`.
fn open_endpoint(config: &RedisConfig) -> redis::RedisResult<Endpoint> {
    let Some(nodes) = conn::cluster_nodes(&config.url) else {
        return Ok(Endpoint::Server(Arc::new(open_client(config, &config.url)?)));
    };
    if nodes.is_empty() {
        return Err(RedisError::from((redis::ErrorKind::InvalidClientConfig, "a cluster URL must name a node")));
    }
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut builder = redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str));
    #[cfg(feature = "tls")]
    if let Some(pem) = &config.tls_root_certificate {
        builder = builder.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) });
    }
    let seed = Arc::new(open_client(config, &nodes[0])?);
    Ok(Endpoint::Cluster { client: Arc::new(builder.build()?), seed })
}

/// The URL query parameters read: this crate's (`protocol=native|dramatiq`
/// and `namespace`, taken out before the URL reaches the client) and the
/// Redis client's (`protocol=resp2|resp3`).
const URL_PARAMETERS: &[&str] = &["namespace", "protocol"];

/// The Redis client's query parameters of a Unix socket URL
/// (`redis+unix:///path?db=1&user=…&pass=…`); in a TCP URL it ignores them.
const UNIX_URL_PARAMETERS: &[&str] = &["db", "user", "pass"];

/// Refuses what the Redis client would silently ignore in `url`: query
/// parameters it does not read (a typo), its Unix socket parameters in a
/// TCP URL (where a password in `?pass=` would never be sent), and a
/// database number in a cluster URL (a cluster has database 0 only).
fn check_url(url: &str) -> Result<(), BrokerError> {
    let invalid = |message: String| Err(BrokerError::new(BrokerErrorKind::InvalidInput, message));
    let unix = ["unix:", "redis+unix:", "valkey+unix:"].iter().any(|scheme| url.starts_with(scheme));
    if unix {
        let known = [URL_PARAMETERS, UNIX_URL_PARAMETERS].concat();
        return dramaturg_core::broker::check_url_parameters(url, &known);
    }
    let socket_only =
        UNIX_URL_PARAMETERS.iter().find(|name| dramaturg_core::broker::query_parameter(url, name).is_some());
    if let Some(name) = socket_only {
        let form = if conn::cluster_nodes(url).is_some() {
            "the user and password in the URL itself: redis+cluster://user:password@host:port,host:port/"
        } else {
            "the user, password and database in the URL itself: redis://user:password@host:port/db"
        };
        return invalid(format!(
            "the URL's query parameter {name:?} is read for Unix socket URLs only; over TCP give {form}"
        ));
    }
    if let Some(db) = conn::cluster_database(url) {
        return invalid(format!(
            "a Redis Cluster has database 0 only; remove /{db} from the cluster URL (use a namespace to keep \
             applications apart)"
        ));
    }
    dramaturg_core::broker::check_url_parameters(url, URL_PARAMETERS)
}

/// The endpoint of `config` and a multiplexed, reconnecting connection to
/// it.
async fn connect_endpoint(config: &RedisConfig) -> Result<(Endpoint, Conn), BrokerError> {
    let shown = redact_password(&config.url);
    #[cfg(feature = "tls")]
    if config.url.starts_with("rediss") {
        // rustls needs a process-wide crypto provider; ring is the one
        // this crate builds with. An already installed one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    check_url(&config.url)
        .map_err(|e| BrokerError::new(BrokerErrorKind::InvalidInput, format!("redis: {shown}: {e}")))?;
    // The client does no I/O here: what it refuses is the URL (a port or
    // database number out of range, a bad certificate).
    let endpoint = open_endpoint(config).map_err(|e| {
        BrokerError::new(BrokerErrorKind::InvalidInput, format!("redis: opening {shown} failed: {e}")).with_source(e)
    })?;
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        response: Duration::from_secs(10),
        max_delay: Duration::from_secs(2),
    };
    let conn = endpoint.connect(timeouts).await.map_err(|e| {
        if e.to_string().contains("cluster support disabled") {
            let message = format!(
                "redis: {shown} names a Redis Cluster, but its nodes are single servers (cluster support \
                 disabled): use redis://host:port for a single server"
            );
            return BrokerError::new(BrokerErrorKind::InvalidInput, message).with_source(e);
        }
        broker_error(e, &format!("connecting to {shown}"))
    })?;
    Ok((endpoint, conn))
}

/// A Redis error as a [`BrokerError`], classified, without any URL in it.
///
/// Besides lost connections and timeouts, the server's transient refusals
/// are retryable: `OOM` (full: [`BrokerErrorKind::Full`]), and `READONLY`,
/// `LOADING`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `BUSY`, `UNBLOCKED`,
/// `MISCONF`, `NOREPLICAS` (unavailable for now, as during a failover:
/// [`BrokerErrorKind::Unavailable`]), and `NOSCRIPT` (also
/// `Unavailable`): a script call loads its script again after `NOSCRIPT`
/// and tries once more, and the scripts can be flushed again in between
/// (`SCRIPT FLUSH`, a restart, a failover to a replica that never ran
/// them), so the next try loads them anew. Everything else is a protocol
/// error.
pub(crate) fn broker_error(error: RedisError, what: &str) -> BrokerError {
    let kind = error_kind(&error);
    BrokerError::new(kind, format!("redis: {what} failed: {error}")).with_source(error)
}

fn error_kind(error: &RedisError) -> BrokerErrorKind {
    if error.is_timeout() {
        return BrokerErrorKind::Timeout;
    }
    if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() {
        return BrokerErrorKind::Connection;
    }
    match error.code() {
        Some("OOM") => BrokerErrorKind::Full,
        Some(
            "READONLY" | "LOADING" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "BUSY" | "UNBLOCKED" | "MISCONF"
            | "NOREPLICAS" | "NOSCRIPT",
        ) => BrokerErrorKind::Unavailable,
        _ => BrokerErrorKind::Protocol,
    }
}

impl RedisBroker {
    /// Connects to the server at `url` with the default settings.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the URL is invalid or the server cannot be
    /// reached. It names the URL without its password. An error of kind
    /// [`BrokerErrorKind::Unsuitable`] when the server runs a Redis older
    /// than 7.0, or has a `maxmemory-policy` other than `noeviction` (see
    /// [`RedisConfig::allow_eviction`]). A read-only replica is accepted,
    /// with a warning: writes wait until it is a primary again.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::with_config(RedisConfig::new(url)).await
    }

    /// Connects with `config`.
    ///
    /// # Errors
    ///
    /// As [`RedisBroker::connect`].
    pub async fn with_config(config: RedisConfig) -> Result<Self, BrokerError> {
        if let Some(value) = &config.unknown_protocol {
            return Err(BrokerError::new(
                BrokerErrorKind::InvalidInput,
                format!(
                    "redis: unknown protocol {:?} in the URL: expected \"native\" or \"dramatiq\" (or the Redis \
                     client's \"resp2\", \"resp3\")",
                    dramaturg_core::Bounded::quoted(value).as_str()
                ),
            ));
        }
        let shown = redact_password(&config.url);
        if config.protocol == Protocol::Dramatiq && conn::cluster_nodes(&config.url).is_some() {
            return Err(BrokerError::new(
                BrokerErrorKind::Unsupported,
                "redis: Dramatiq's layout cannot run on a Redis Cluster: its keys carry no hash tag, so a queue's \
                 keys (and Python's scripts) span slots; use the native layout on a cluster",
            ));
        }
        if conn::cluster_nodes(&config.url).is_some() {
            keys::check_cluster_name("namespace", &config.namespace)?;
        }
        let (endpoint, mut conn) = connect_endpoint(&config).await?;
        let server = server::check(&mut conn, &shown, config.allow_eviction).await?;
        // Dramatiq's broker ids are UUID4s (and hold no dot, which its ack
        // set names rely on).
        let worker_id = match config.protocol {
            Protocol::Dramatiq => uuid::Uuid::new_v4().to_string(),
            _ => MessageId::new().to_string(),
        };
        let scripts = Arc::new(Scripts::new());
        let dramatiq = Arc::new(dramatiq::DramatiqState::new());
        let clock = Arc::new(ServerClock::default());
        if let Err(error) = clock.measure(&mut conn).await {
            tracing::warn!(%error, "cannot read the server's clock; message ages follow this process's clock until a heartbeat reads it");
        }
        let registry = Arc::new(Registry::new(
            endpoint.clone(),
            conn.clone(),
            Arc::clone(&scripts),
            worker_id.clone(),
            config.clone(),
            Arc::clone(&clock),
            Arc::clone(&dramatiq),
        ));
        tracing::debug!(
            url = %shown,
            namespace = %config.namespace,
            protocol = ?config.protocol,
            worker = %worker_id,
            version = server.version.as_deref().unwrap_or("unknown"),
            maxmemory_policy = server.policy.as_deref().unwrap_or("unknown"),
            replica = server.replica,
            "connected to redis"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                endpoint,
                conn,
                store: std::sync::OnceLock::new(),
                scripts,
                worker_id,
                consumers: AtomicU64::new(0),
                registry,
                clock,
                dramatiq,
            }),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &RedisConfig {
        &self.shared.config
    }

    /// This broker's worker id (as it appears in the registry).
    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    /// The layout of this broker's queues.
    pub fn protocol(&self) -> Protocol {
        self.shared.config.protocol
    }

    fn is_dramatiq(&self) -> bool {
        self.shared.config.protocol == Protocol::Dramatiq
    }

    /// A consumer of `queue` in Dramatiq's layout, with its delay queue.
    async fn consume_dramatiq(
        &self,
        queue: &str,
        number: u64,
        prefetch: usize,
    ) -> Result<Box<dyn Consumer>, BrokerError> {
        let keys = dramatiq::keys::DramatiqKeys::new(&self.shared.config.namespace, queue);
        let registry = &self.shared.registry;
        let (wake, beaten) = registry.register(number, &keys.queue, &keys.ready.wake).await?;
        let delayed_wake = registry.wakeup(&keys.delayed.wake).await;
        let registered = match beaten {
            Ok(()) => true,
            Err(error) if error.is_retryable() => {
                tracing::warn!(%queue, %error, "cannot beat yet; the consumer beats again before it fetches");
                false
            }
            Err(error) => return Err(error),
        };
        let shared = Arc::clone(&self.shared);
        Ok(Box::new(dramatiq::DramatiqConsumer::new(shared, keys, number, prefetch, (wake, delayed_wake), registered)))
    }

    /// Refuses a message for no queue (the empty name), for a queue whose
    /// name the server cannot hold ([`Broker::check_queue_name`]), and one
    /// with a priority: the Redis broker delivers first in, first out, and a priority
    /// it would ignore must not look honoured.
    fn check_outgoing(&self, message: &Outgoing) -> Result<(), BrokerError> {
        check_queue(&message.queue)?;
        self.check_queue_name(&message.queue)?;
        match message.priority {
            Some(priority) if priority > 0 => Err(BrokerError::new(
                BrokerErrorKind::InvalidInput,
                format!(
                    "redis: a priority ({priority}) was set for a message to {:?}, but the Redis broker delivers first \
                     in, first out; use a queue per priority (and a worker per queue, or more concurrency for the \
                     urgent one), or RabbitMQ with max_priority",
                    dramaturg_core::Bounded::quoted(&message.queue).as_str()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.shared.config.namespace, queue)
    }

    async fn with_retries<F, Fut>(&self, send: F) -> Result<(), BrokerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), BrokerError>>,
    {
        dramaturg_core::broker::retry_sends(self.shared.config.retry_enqueue_for, send).await
    }

    async fn enqueue_now(&self, queue: &str, batch: &[(String, bytes::Bytes)]) -> Result<(), BrokerError> {
        let keys = self.keys(queue);
        let mut invocation = self.shared.scripts.enqueue.prepare_invoke();
        invocation.key(&keys.msgs).key(&keys.ready).arg(&keys.wake);
        for (id, body) in batch {
            invocation.arg(id).arg(body.as_ref());
        }
        let mut conn = self.shared.conn.clone();
        invocation.invoke_async::<()>(&mut conn).await.map_err(|e| broker_error(e, "enqueue"))
    }

    async fn enqueue_later(&self, message: &Outgoing, delay: Duration) -> Result<(), BrokerError> {
        let keys = self.keys(&message.queue);
        let mut conn = self.shared.conn.clone();
        self.shared
            .scripts
            .enqueue_delayed
            .key(&keys.msgs)
            .key(&keys.delayed)
            .key(&keys.ready)
            .arg(MessageId::new().to_string())
            .arg(message.body.as_ref())
            .arg(millis(delay))
            .arg(&keys.wake)
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(|e| broker_error(e, "delayed enqueue"))
    }
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("config", &self.shared.config)
            .field("worker_id", &self.shared.worker_id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn declare_queue(&self, _queue: &str) -> Result<(), BrokerError> {
        // Redis keys come into being when used.
        Ok(())
    }

    async fn enqueue(&self, message: Outgoing) -> Result<(), BrokerError> {
        self.check_outgoing(&message)?;
        if self.is_dramatiq() {
            let batch = [message];
            return self.with_retries(|| dramatiq::enqueue(&self.shared, &batch)).await;
        }
        match message.delay {
            Some(delay) => self.with_retries(|| self.enqueue_later(&message, delay)).await,
            None => {
                let batch = [(MessageId::new().to_string(), message.body.clone())];
                self.with_retries(|| self.enqueue_now(&message.queue, &batch)).await
            }
        }
    }

    async fn enqueue_many(&self, messages: Vec<Outgoing>) -> Result<(), BrokerError> {
        // Consecutive messages for one queue go in one script call; the
        // calls share the multiplexed connection, which pipelines them in
        // order.
        for message in &messages {
            self.check_outgoing(message)?;
        }
        if self.is_dramatiq() {
            return self.with_retries(|| dramatiq::enqueue(&self.shared, &messages)).await;
        }
        let mut calls = Vec::new();
        let mut run: Option<(String, Vec<(String, bytes::Bytes)>)> = None;
        for message in &messages {
            if let Some(delay) = message.delay {
                calls.extend(run.take().map(Call::Now));
                calls.push(Call::Later(message, delay));
                continue;
            }
            match &mut run {
                Some((queue, batch)) if *queue == message.queue && batch.len() < ENQUEUE_CHUNK => {
                    batch.push((MessageId::new().to_string(), message.body.clone()));
                }
                _ => {
                    calls.extend(run.take().map(Call::Now));
                    run = Some((message.queue.clone(), vec![(MessageId::new().to_string(), message.body.clone())]));
                }
            }
        }
        calls.extend(run.map(Call::Now));
        let sends = calls.iter().map(|call| {
            self.with_retries(move || async move {
                match call {
                    Call::Now((queue, batch)) => self.enqueue_now(queue, batch).await,
                    Call::Later(message, delay) => self.enqueue_later(message, *delay).await,
                }
            })
        });
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: usize) -> Result<Box<dyn Consumer>, BrokerError> {
        self.check_queue_name(queue)?;
        let number = self.shared.consumers.fetch_add(1, Ordering::Relaxed);
        if self.is_dramatiq() {
            return self.consume_dramatiq(queue, number, prefetch).await;
        }
        // A server that refuses the registration for now (a replica during
        // a failover, a lost connection) does not stop the worker: the
        // consumer registers before its first claim, and until then its
        // `next` fails with the reason, which the worker logs and retries
        // with backoff.
        let (wake, beaten) = self.shared.registry.register(number, queue, &self.keys(queue).wake).await?;
        let registered = match beaten {
            Ok(()) => true,
            Err(error) if error.is_retryable() => {
                tracing::warn!(%queue, %error, "cannot register this consumer yet; it retries before it claims");
                false
            }
            Err(error) => return Err(error),
        };
        Ok(Box::new(consumer::RedisConsumer::new(Arc::clone(&self.shared), queue, number, prefetch, wake, registered)))
    }

    /// On a Redis Cluster, refuses a name with `{` or `}` in it: the
    /// keys of a queue share the hash tag `{queue}`, and a brace would
    /// move it. Anywhere else, every name is fine.
    fn check_queue_name(&self, name: &str) -> Result<(), BrokerError> {
        if self.shared.conn.is_cluster() {
            keys::check_cluster_name("queue", name)?;
        }
        Ok(())
    }

    fn admin(&self) -> Option<&dyn QueueAdmin> {
        Some(self)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }

    fn browser(&self) -> Option<&dyn dramaturg_core::QueueBrowser> {
        Some(self)
    }

    /// Recorded with every heartbeat, in the hash `ns:{registry}:concurrency`.
    fn set_worker_concurrency(&self, concurrency: usize) {
        self.shared.registry.set_concurrency(concurrency);
    }

    async fn release(&self) -> Result<(), BrokerError> {
        self.shared.registry.deregister().await
    }

    fn locality(&self) -> dramaturg_core::broker::Locality {
        dramaturg_core::broker::Locality::server(self.shared.config.url.clone())
    }

    /// A [`RedisStore`] on this broker's server and connection
    /// ([`RedisStore::for_broker`]), one for the broker and its clones.
    fn store(&self) -> Option<Arc<dyn Store>> {
        Some(Arc::clone(self.shared.store.get_or_init(|| Arc::new(RedisStore::for_broker(self)))))
    }

    /// The server's time (`TIME`, read at connect and at every heartbeat,
    /// applied to the local clock).
    fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    /// Dramatiq's JSON encoder in Dramatiq's layout; `None` (the app
    /// chooses) in the native one.
    fn encoder(&self) -> Option<Arc<dyn dramaturg_core::Encoder>> {
        match self.shared.config.protocol {
            Protocol::Dramatiq => Some(Arc::new(dramaturg_core::dramatiq::Dramatiq)),
            _ => None,
        }
    }
}

/// Refuses the empty queue name.
pub(crate) fn check_queue(queue: &str) -> Result<(), BrokerError> {
    if queue.is_empty() {
        return Err(BrokerError::new(BrokerErrorKind::InvalidInput, "redis: a queue name cannot be empty"));
    }
    Ok(())
}

/// One script call of `enqueue_many`.
enum Call<'a> {
    Now((String, Vec<(String, bytes::Bytes)>)),
    Later(&'a Outgoing, Duration),
}
