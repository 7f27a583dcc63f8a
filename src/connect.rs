//! Choosing a broker from a URL at run time.

use std::sync::Arc;

use dramaturg_core::broker::redact_password;
use dramaturg_core::{Broker, BrokerError, MemoryBroker};

/// A broker URL could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL's scheme names no broker this build knows.
    #[error("unknown broker URL scheme {scheme:?}: {hint}")]
    UnknownScheme {
        /// The scheme found in the URL.
        scheme: String,
        /// What would work instead: the schemes this build knows, and the
        /// features that bring the others.
        hint: String,
    },
    /// The URL has no `scheme:` part.
    #[error("invalid broker URL: expected a URL such as memory://, got {0:?}")]
    InvalidUrl(String),
    /// The broker could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Every scheme `connect` can know, and whether this build does (with the
/// feature that brings it).
const SCHEMES: [(&str, bool, &str); 10] = [
    ("memory", true, ""),
    ("redis", cfg!(feature = "redis"), "redis"),
    ("rediss", cfg!(feature = "redis-tls"), "redis-tls"),
    ("redis+cluster", cfg!(feature = "redis"), "redis"),
    ("rediss+cluster", cfg!(feature = "redis-tls"), "redis-tls"),
    ("amqp", cfg!(feature = "amqp"), "amqp"),
    ("amqps", cfg!(feature = "amqp-tls"), "amqp-tls"),
    ("postgres", cfg!(feature = "postgres"), "postgres"),
    ("postgresql", cfg!(feature = "postgres"), "postgres"),
    ("sqlite", cfg!(feature = "sqlite"), "sqlite"),
];

/// What to say about a scheme this build does not understand, from the
/// features it was compiled with.
fn hint() -> String {
    let known: Vec<String> = SCHEMES.iter().filter(|(_, on, _)| *on).map(|(s, ..)| format!("{s}://")).collect();
    let missing: Vec<String> = SCHEMES
        .iter()
        .filter(|(_, on, _)| !*on)
        .map(|(scheme, _, feature)| format!("{scheme}:// needs the `{feature}` feature"))
        .collect();
    let mut hint = format!("this build knows {}", known.join(", "));
    if !missing.is_empty() {
        hint.push_str("; ");
        hint.push_str(&missing.join(", "));
    }
    hint
}

/// Connects to the broker a URL names: `memory://` (a new in-memory
/// broker), `redis://` and `rediss://` (with the `redis` and `redis-tls`
/// features; `redis+cluster://host:port,host:port/` and
/// `rediss+cluster://…` for a Redis Cluster), `amqp://` and `amqps://` (with the `amqp` and `amqp-tls`
/// features), `postgres://` and `postgresql://` (with the `postgres`
/// feature; `?schema=` names the schema of the broker's tables), and
/// `sqlite://path` (with the `sqlite` feature: `sqlite://jobs.db` relative
/// to the working directory, `sqlite:///var/lib/app/jobs.db` absolute; an
/// in-memory SQLite database is refused, `memory://` is the in-memory
/// broker).
///
/// # Errors
///
/// [`ConnectError::UnknownScheme`] for other schemes, and
/// [`ConnectError::InvalidUrl`] for text that is not a URL, and
/// [`ConnectError::Broker`] when the broker cannot be reached. The URL's
/// password, if any, is never part of the error.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let broker = dramaturg::connect("memory://").await.unwrap();
/// let app = dramaturg::App::builder_shared(broker).build().unwrap();
/// # let _ = app;
/// assert!(dramaturg::connect("carrier-pigeon://coop").await.is_err());
/// # }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn Broker>, ConnectError> {
    // `sqlite:jobs.db` and `sqlite::memory:` name SQLite too, without `//`.
    let scheme = match url.split_once("://") {
        Some((scheme, _rest)) => scheme,
        None if url.starts_with("sqlite:") => "sqlite",
        // Shown without anything after a possible `user:password@`.
        None => return Err(ConnectError::InvalidUrl(redact_password(url))),
    };
    match scheme {
        "memory" => Ok(Arc::new(MemoryBroker::new())),
        #[cfg(feature = "redis")]
        "redis" | "redis+cluster" => Ok(Arc::new(dramaturg_redis::RedisBroker::connect(url).await?)),
        #[cfg(feature = "redis-tls")]
        "rediss" | "rediss+cluster" => Ok(Arc::new(dramaturg_redis::RedisBroker::connect(url).await?)),
        #[cfg(feature = "amqp")]
        "amqp" => Ok(Arc::new(dramaturg_amqp::AmqpBroker::connect(url).await?)),
        #[cfg(feature = "amqp-tls")]
        "amqps" => Ok(Arc::new(dramaturg_amqp::AmqpBroker::connect(url).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(dramaturg_postgres::PgBroker::connect(url).await?)),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(dramaturg_sqlite::SqliteBroker::connect(url).await?)),
        other => Err(ConnectError::UnknownScheme { scheme: other.to_owned(), hint: hint() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_unknown_scheme_error_lists_the_features_compiled_in() {
        let Err(ConnectError::UnknownScheme { hint, .. }) = connect("carrier-pigeon://coop").await else {
            panic!("expected an unknown scheme");
        };
        for (scheme, on, feature) in SCHEMES {
            let known = hint.split(';').next().unwrap_or_default();
            assert_eq!(known.contains(&format!(" {scheme}://")), on, "{scheme}: {hint}");
            if !feature.is_empty() {
                assert_eq!(hint.contains(&format!("needs the `{feature}` feature")), !on, "{feature}: {hint}");
            }
        }
    }
}
