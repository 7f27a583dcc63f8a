//! Results in Python Dramatiq's Redis layout ([`DramatiqResults`]), so that
//! Python's `message.get_result()` reads what a Rust actor returned and a
//! Rust handle reads what a Python actor returned.
//!
//! Dramatiq's `RedisBackend` (`dramatiq/results/backends/redis.py`) keeps
//! a message's result under the MD5 hex digest of
//! `<namespace>:<queue>:<actor>:<message id>` (namespace
//! `dramatiq-results`, the queue without a `.DQ`/`.XQ` suffix, the id as a
//! UUID), as a Redis list of one JSON element with a `PEXPIRE` of the
//! result's TTL; an exception is kept as
//! `{"__t": "dramatiq.results.Result", "exn": {"type": …, "msg": …}}`, a
//! skipped message as `null`. A reader takes `LINDEX key 0`, and a waiter
//! `BRPOPLPUSH key key timeout` (which leaves the element for the next).

use std::time::Duration;

use dramaturg_core::broker::redact_password;
use dramaturg_core::encoder::decode_value;
use dramaturg_core::store::{StoreError, StoreErrorKind};
use dramaturg_core::{Encoder, ErrorRecord, FailureKind, RecordLimits};
use md5::{Digest, Md5};
use redis::aio::ConnectionManager;
use serde_json::{json, Value};

use crate::stored::Stored;
use crate::whose::Whose;

/// Dramatiq's marker of a kept exception.
const CANARY: &str = "dramatiq.results.Result";

/// The exception type under which dramatiq-abort keeps an aborted message.
const ABORT: &str = "Abort";

/// The namespace of Dramatiq's result keys unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "dramatiq-results";

/// Results kept in Python Dramatiq's Redis layout, for
/// [`Results::dramatiq_layout`](crate::Results::dramatiq_layout).
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), dramaturg_core::store::StoreError> {
/// use dramaturg_results::DramatiqResults;
///
/// let layout = DramatiqResults::connect("redis://127.0.0.1:6379/0").await?.namespace("dramatiq-results");
/// # let _ = layout; Ok(()) }
/// ```
#[derive(Clone)]
pub struct DramatiqResults {
    client: redis::Client,
    conn: ConnectionManager,
    namespace: String,
}

impl std::fmt::Debug for DramatiqResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DramatiqResults").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

fn connection_error(error: redis::RedisError, what: &str) -> StoreError {
    StoreError::new(StoreErrorKind::Connection, format!("dramatiq results: {what} failed: {error}")).with_source(error)
}

impl DramatiqResults {
    /// Connects to the Redis at `url` (Python's `RedisBackend(url=…)`);
    /// keys in the `dramatiq-results` namespace.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the URL is invalid or the server cannot be
    /// reached (the URL is not in it: it may hold a password).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| {
            StoreError::new(
                StoreErrorKind::InvalidInput,
                format!("dramatiq results: invalid Redis URL {}: {:?}", redact_password(url), e.kind()),
            )
        })?;
        let conn = ConnectionManager::new(client.clone()).await.map_err(|e| connection_error(e, "connect"))?;
        Ok(Self { client, conn, namespace: DEFAULT_NAMESPACE.to_owned() })
    }

    /// Keys in `namespace` (Python's `RedisBackend(namespace=…)`).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The Redis key of `whose` result, as Dramatiq computes it.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`] when the queue and actor of the
    /// message are not known (a handle made from a bare id).
    pub(crate) fn key(&self, whose: &Whose) -> Result<String, StoreError> {
        let Some((queue, actor)) = &whose.names else {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                "Dramatiq's result keys name the queue and actor: make the handle with SentExt::result or ResultHandle::of_message",
            ));
        };
        let queue = queue.strip_suffix(".DQ").or_else(|| queue.strip_suffix(".XQ")).unwrap_or(queue);
        let logical = format!("{}:{queue}:{actor}:{}", self.namespace, whose.id.to_uuid_string());
        Ok(Md5::digest(logical.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect())
    }

    /// Keeps `stored` as `whose` result for `ttl`, as Python's backend
    /// does: one transaction of `DEL`, `LPUSH`, `PEXPIRE`.
    pub(crate) async fn keep(
        &self,
        whose: &Whose,
        stored: &Stored,
        ttl: Duration,
        encoder: &dyn Encoder,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_vec(&to_json(stored, encoder)?)
            .map_err(|e| StoreError::new(StoreErrorKind::InvalidInput, format!("dramatiq results: {e}")))?;
        let key = self.key(whose)?;
        let ttl_ms = dramaturg_core::store::ttl_millis(ttl);
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .del(&key)
            .ignore()
            .lpush(&key, json)
            .ignore()
            .pexpire(&key, i64::try_from(ttl_ms).unwrap_or(i64::MAX))
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| connection_error(e, "keep"))
    }

    /// `whose` result if it is kept now.
    pub(crate) async fn get(&self, whose: &Whose, encoder: &dyn Encoder) -> Result<Option<Stored>, StoreError> {
        let mut conn = self.conn.clone();
        let data: Option<Vec<u8>> = redis::cmd("LINDEX")
            .arg(self.key(whose)?)
            .arg(0)
            .query_async(&mut conn)
            .await
            .map_err(|e| connection_error(e, "get"))?;
        data.map(|bytes| from_json(&bytes, encoder)).transpose()
    }

    /// `whose` result, waiting up to `timeout` on a connection of its own
    /// (`BRPOPLPUSH` blocks the connection it runs on).
    pub(crate) async fn wait(
        &self,
        whose: &Whose,
        timeout: Duration,
        encoder: &dyn Encoder,
    ) -> Result<Option<Stored>, StoreError> {
        if let Some(found) = self.get(whose, encoder).await? {
            return Ok(Some(found));
        }
        // Redis reads a timeout of 0 as "forever"; below a millisecond
        // there is nothing left to wait for.
        if timeout < Duration::from_millis(1) {
            return Ok(None);
        }
        let key = self.key(whose)?;
        // Its replies may take the whole wait, and a second more.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout + Duration::from_secs(1)));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| connection_error(e, "connect"))?;
        let data: Option<Vec<u8>> = redis::cmd("BRPOPLPUSH")
            .arg(&key)
            .arg(&key)
            .arg(timeout.as_secs_f64())
            .query_async(&mut conn)
            .await
            .map_err(|e| connection_error(e, "wait"))?;
        data.map(|bytes| from_json(&bytes, encoder)).transpose()
    }
}

/// What Python's backend keeps for `stored`.
fn to_json(stored: &Stored, encoder: &dyn Encoder) -> Result<Value, StoreError> {
    let exception = |type_name: &str, message: &str| json!({"__t": CANARY, "exn": {"type": type_name, "msg": message}});
    Ok(match stored {
        Stored::Succeeded(bytes) => decode_value::<Value>(encoder, bytes)
            .map_err(|e| StoreError::new(StoreErrorKind::InvalidInput, format!("dramatiq results: {e}")))?,
        Stored::Failed(record) => exception(&record.type_name, &record.message),
        Stored::Aborted(reason) => exception(ABORT, reason),
        Stored::Skipped(_) => Value::Null,
    })
}

/// What `bytes`, kept by Python's backend (or ours), stand for.
fn from_json(bytes: &[u8], encoder: &dyn Encoder) -> Result<Stored, StoreError> {
    let invalid = |what: String| StoreError::new(StoreErrorKind::InvalidInput, format!("dramatiq results: {what}"));
    let value: Value = serde_json::from_slice(bytes).map_err(|e| invalid(format!("a kept result is not JSON: {e}")))?;
    if value.get("__t").and_then(Value::as_str) == Some(CANARY) {
        let text = |field: &str| value["exn"][field].as_str().unwrap_or_default().to_owned();
        let (type_name, message) = (text("type"), text("msg"));
        if type_name == ABORT {
            return Ok(Stored::Aborted(message));
        }
        let record =
            ErrorRecord::new(FailureKind::Error, &type_name, &message, Vec::new(), None, &RecordLimits::default());
        return Ok(Stored::Failed(record));
    }
    let bytes = encoder.encode_args(&value).map_err(|e| invalid(e.to_string()))?;
    Ok(Stored::Succeeded(bytes))
}

#[cfg(test)]
mod tests {
    use dramaturg_core::dramatiq::Dramatiq;
    use dramaturg_core::encoder::MessagePack;

    use super::*;

    #[test]
    fn outcomes_map_to_what_python_keeps_and_back() {
        for encoder in [&Dramatiq as &dyn Encoder, &MessagePack] {
            let ok = Stored::Succeeded(encoder.encode_args(&json!({"w": 3})).unwrap());
            assert_eq!(to_json(&ok, encoder).unwrap(), json!({"w": 3}));
            assert_eq!(from_json(br#"{"w": 3}"#, encoder).unwrap(), ok);
            let failed = Stored::failure("ValueError", "bad");
            let kept = to_json(&failed, encoder).unwrap();
            assert_eq!(kept, json!({"__t": CANARY, "exn": {"type": "ValueError", "msg": "bad"}}));
            assert_eq!(from_json(kept.to_string().as_bytes(), encoder).unwrap(), failed);
            let aborted = Stored::Aborted("stop".into());
            assert_eq!(
                from_json(to_json(&aborted, encoder).unwrap().to_string().as_bytes(), encoder).unwrap(),
                aborted
            );
            assert_eq!(to_json(&Stored::Skipped("old".into()), encoder).unwrap(), Value::Null);
            assert!(from_json(b"not json", encoder).is_err());
        }
    }
}
