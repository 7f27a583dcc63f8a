//! The Redis event backend: events are keys with a TTL, and each `notify`
//! also publishes the event on a channel named after its key, so a waiting
//! worker hears of it at once — over one pub/sub connection, with no
//! polling, and no command at all while nothing abortable runs.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use dramaturg_core::broker::redact_password;
use dramaturg_core::{BrokerError, BrokerErrorKind};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};

use crate::backend::EventBackend;

/// Abort events in Redis (usable with any broker: RabbitMQ users keep a
/// Redis for this).
pub struct RedisEvents {
    client: redis::Client,
    /// Made by `connect`, or on first use after `lazy`.
    conn: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    url: String,
    watch: tokio::sync::Mutex<Option<Subscription>>,
}

struct Subscription {
    sink: PubSubSink,
    stream: PubSubStream,
    subscribed: HashSet<String>,
}

fn error(error: redis::RedisError, what: &str) -> BrokerError {
    let (timeout, lost) =
        (error.is_timeout(), error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal());
    BrokerError::classified(error, &format!("redis events: {what}"), timeout, lost)
}

impl RedisEvents {
    /// Connects to the Redis at `url`; keys go under `dramaturg-abort:`.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when Redis cannot be reached; it shows the URL
    /// without its password.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with_prefix(url, "dramaturg-abort").await
    }

    /// Connects with keys under `prefix:`.
    ///
    /// # Errors
    ///
    /// As [`RedisEvents::connect`].
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, BrokerError> {
        let events = Self::lazy_with_prefix(url, prefix)?;
        events.conn().await?;
        Ok(events)
    }

    /// Events in the Redis at `url`, with keys under `dramaturg-abort:`,
    /// connecting on first use: for code that cannot wait here (the
    /// default stack of `dramaturg::app` on a Redis broker). Connection
    /// errors come from the first request or watch instead.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when `url` is not a valid Redis URL.
    pub fn lazy(url: &str) -> Result<Self, BrokerError> {
        Self::lazy_with_prefix(url, "dramaturg-abort")
    }

    fn lazy_with_prefix(url: &str, prefix: &str) -> Result<Self, BrokerError> {
        let shown = redact_password(url);
        let client = redis::Client::open(url).map_err(|e| error(e, &format!("opening {shown}")))?;
        Ok(Self {
            client,
            conn: tokio::sync::OnceCell::new(),
            prefix: format!("{prefix}:"),
            url: shown,
            watch: tokio::sync::Mutex::new(None),
        })
    }

    /// The shared connection, made on first use.
    async fn conn(&self) -> Result<ConnectionManager, BrokerError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                self.client.get_connection_manager().await.map_err(|e| error(e, &format!("connecting to {}", self.url)))
            })
            .await?;
        Ok(conn.clone())
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl fmt::Debug for RedisEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEvents").field("url", &self.url).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[async_trait]
impl EventBackend for RedisEvents {
    async fn notify(&self, events: &[(String, Vec<u8>)], ttl: Duration) -> Result<(), BrokerError> {
        // Redis takes a signed 64-bit PX.
        let ttl_ms = dramaturg_core::time::millis(ttl).clamp(1, u64::MAX / 2);
        let mut pipe = redis::pipe();
        for (key, value) in events {
            let key = self.key(key);
            pipe.cmd("SET").arg(&key).arg(value).arg("PX").arg(ttl_ms).ignore();
            pipe.publish(&key, value).ignore();
        }
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut conn).await.map_err(|e| error(e, "notify"))
    }

    async fn poll(&self, key: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        let mut conn = self.conn().await?;
        redis::cmd("GET").arg(self.key(key)).query_async(&mut conn).await.map_err(|e| error(e, "poll"))
    }

    async fn wait_many(&self, keys: &[String], timeout: Duration) -> Result<Option<(String, Vec<u8>)>, BrokerError> {
        let mut guard = self.watch.lock().await;
        if guard.is_none() {
            let pubsub = self.client.get_async_pubsub().await.map_err(|e| error(e, "subscribing"))?;
            let (sink, stream) = pubsub.split();
            *guard = Some(Subscription { sink, stream, subscribed: HashSet::new() });
        }
        let result = wait(self, guard.as_mut().expect("set just above"), keys, timeout).await;
        if result.is_err() {
            // Subscribe afresh next time.
            *guard = None;
        }
        result
    }
}

async fn wait(
    events: &RedisEvents,
    subscription: &mut Subscription,
    keys: &[String],
    timeout: Duration,
) -> Result<Option<(String, Vec<u8>)>, BrokerError> {
    let wanted: HashSet<String> = keys.iter().map(|k| events.key(k)).collect();
    let stale: Vec<String> = subscription.subscribed.difference(&wanted).cloned().collect();
    for channel in stale {
        subscription.sink.unsubscribe(&channel).await.map_err(|e| error(e, "unsubscribing"))?;
        subscription.subscribed.remove(&channel);
    }
    let fresh: Vec<String> = wanted.difference(&subscription.subscribed).cloned().collect();
    for channel in &fresh {
        subscription.sink.subscribe(channel).await.map_err(|e| error(e, "subscribing"))?;
        subscription.subscribed.insert(channel.clone());
    }
    // An event set before the subscription would never be published to it.
    if !fresh.is_empty() {
        let mut conn = events.conn().await?;
        let values: Vec<Option<Vec<u8>>> =
            redis::cmd("MGET").arg(&fresh).query_async(&mut conn).await.map_err(|e| error(e, "poll"))?;
        if let Some((channel, value)) = fresh.iter().zip(values).find_map(|(c, v)| Some((c, v?))) {
            return Ok(Some((channel[events.prefix.len()..].to_owned(), value)));
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = match tokio::time::timeout_at(deadline, subscription.stream.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err(BrokerError::new(BrokerErrorKind::Connection, "redis events: subscription closed")),
            Ok(Some(message)) => message,
        };
        let channel = message.get_channel_name().to_owned();
        if wanted.contains(&channel) {
            let value: Vec<u8> = message.get_payload().map_err(|e| error(e, "reading an event"))?;
            return Ok(Some((channel[events.prefix.len()..].to_owned(), value)));
        }
    }
}
