//! What makes a message unique: its scope, its key's time to live and its
//! key, as options of an actor or of one message.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use dramaturg_core::{Message, OptionKey, Options};
use sha2::{Digest, Sha256};

/// The scope of a message's uniqueness: `"queued"`, `"queued_or_running"`
/// or `"fixed"` (see [`Scope`]). Setting it makes the actor's (or the
/// message's) messages unique; write it with [`Unique::apply`].
pub const UNIQUE: OptionKey<String> = OptionKey::new("unique");

/// How long the uniqueness key lives, in milliseconds: for
/// [`Scope::Fixed`], how long it holds; for the other scopes, the longest
/// it holds when nothing releases it (a worker died) — default
/// [`DEFAULT_TTL`].
pub const UNIQUE_TTL_MS: OptionKey<u64> = OptionKey::new("unique_ttl_ms");

/// The uniqueness key, within the actor (default: a digest of the
/// message's encoded arguments, so that messages with equal arguments are
/// duplicates).
pub const UNIQUE_KEY: OptionKey<String> = OptionKey::new("unique_key");

/// The longest [`UNIQUE_KEY`], in bytes: with the actor's name it stays
/// within the store's key size.
pub const MAX_KEY_BYTES: usize = 512;

/// The store key a sent message holds, written by the middleware when it
/// claims it, for the worker to release. Not for users to set.
pub const UNIQUE_CLAIM: OptionKey<String> = OptionKey::new("unique_claim");

/// The default [`UNIQUE_TTL_MS`]: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// How long a message holds its uniqueness key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// From the send until a worker takes the message (`"queued"`): a
    /// second send is refused while the first waits, and accepted once
    /// it has started.
    Queued,
    /// From the send until the message ends for good — succeeds, fails
    /// with no retry left, is skipped or aborted, or is dead-lettered
    /// (`"queued_or_running"`). An attempt that will be retried keeps the
    /// key.
    QueuedOrRunning,
    /// For a fixed time from the send, however the message ends
    /// (`"fixed"`, with [`UNIQUE_TTL_MS`]): at most one such message per
    /// period.
    Fixed,
}

impl Scope {
    /// The option's text: `"queued"`, `"queued_or_running"` or `"fixed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::QueuedOrRunning => "queued_or_running",
            Self::Fixed => "fixed",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = UniqueConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "queued" => Ok(Self::Queued),
            "queued_or_running" => Ok(Self::QueuedOrRunning),
            "fixed" => Ok(Self::Fixed),
            other => Err(UniqueConfigError(format!(
                "unknown uniqueness scope {other:?}: use \"queued\", \"queued_or_running\" or \"fixed\""
            ))),
        }
    }
}

/// A message's uniqueness options cannot be used: an unknown scope, a
/// time to live of zero, an option of the wrong type. Sends refuse them
/// ([`EnqueueError::Rejected`](dramaturg_core::EnqueueError::Rejected)),
/// and an actor declaring them fails the app's build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid uniqueness options: {0}")]
pub struct UniqueConfigError(pub String);

/// Uniqueness for an actor or a message: a [`Scope`], a time to live and
/// optionally a key of its own. Written into [`Options`] with
/// [`Unique::apply`], as an actor's options or one message's.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::{Options, SendOptions};
/// use dramaturg_schedule::unique::{Scope, Unique, UNIQUE, UNIQUE_KEY};
///
/// // For an actor (in `Actor::options`): one export per arguments while queued or running.
/// let options = Unique::while_queued_or_running().ttl(Duration::from_secs(600)).apply(Options::default());
/// assert_eq!(options.option(UNIQUE).unwrap().as_deref(), Some("queued_or_running"));
///
/// // For one message: at most one per customer per hour, whatever the arguments.
/// let send = SendOptions::default()
///     .with_options(|o| Unique::for_duration(Duration::from_secs(3600)).key("customer-42").apply(o));
/// assert_eq!(send.options.option(UNIQUE_KEY).unwrap().as_deref(), Some("customer-42"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unique {
    scope: Scope,
    ttl: Duration,
    key: Option<String>,
}

impl Unique {
    /// Unique from the send until a worker takes the message
    /// ([`Scope::Queued`]), for at most [`DEFAULT_TTL`].
    pub fn while_queued() -> Self {
        Self { scope: Scope::Queued, ttl: DEFAULT_TTL, key: None }
    }

    /// Unique from the send until the message ends for good
    /// ([`Scope::QueuedOrRunning`]), for at most [`DEFAULT_TTL`].
    pub fn while_queued_or_running() -> Self {
        Self { scope: Scope::QueuedOrRunning, ttl: DEFAULT_TTL, key: None }
    }

    /// Unique for `period` from the send ([`Scope::Fixed`]).
    pub fn for_duration(period: Duration) -> Self {
        Self { scope: Scope::Fixed, ttl: period, key: None }
    }

    /// How long the key lives: the fixed period, or the longest the other
    /// scopes hold it when nothing releases it (a crashed worker, a
    /// message that waits in its queue longer than this — it then stops
    /// being unique). Whole milliseconds, at least 1 (a shorter one is
    /// refused when the message is sent); stores keep a key at most 10
    /// years.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// A key of its own within the actor instead of the digest of the
    /// arguments: messages with the same key are duplicates whatever
    /// their arguments. 1 to [`MAX_KEY_BYTES`] bytes (checked when the
    /// message is sent).
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The scope.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// `options` with these uniqueness options written in.
    pub fn apply(&self, options: Options) -> Options {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let options = options.with_option(UNIQUE, self.scope.as_str().to_owned()).with_option(UNIQUE_TTL_MS, ttl_ms);
        match &self.key {
            Some(key) => options.with_option(UNIQUE_KEY, key.clone()),
            None => options,
        }
    }

    /// The uniqueness `options` ask for: `None` when they set no scope.
    ///
    /// # Errors
    ///
    /// [`UniqueConfigError`] for an unknown scope, a TTL of 0, a key that
    /// is empty or longer than [`MAX_KEY_BYTES`], or an option of the
    /// wrong type.
    pub fn from_options(options: &Options) -> Result<Option<Self>, UniqueConfigError> {
        let invalid = |e: dramaturg_core::OptionError| UniqueConfigError(e.to_string());
        let Some(scope) = options.option(UNIQUE).map_err(invalid)? else {
            return Ok(None);
        };
        let scope = scope.parse()?;
        let ttl = match options.option(UNIQUE_TTL_MS).map_err(invalid)? {
            Some(0) => {
                return Err(UniqueConfigError("a unique_ttl_ms of 0 holds no key; it must be at least 1".into()))
            }
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_TTL,
        };
        let key = options.option(UNIQUE_KEY).map_err(invalid)?;
        if let Some(key) = &key {
            if key.is_empty() || key.len() > MAX_KEY_BYTES {
                return Err(UniqueConfigError(format!(
                    "a unique_key must have 1 to {MAX_KEY_BYTES} bytes, not {}",
                    key.len()
                )));
            }
        }
        Ok(Some(Self { scope, ttl, key }))
    }

    /// The store key of `message` under these options:
    /// `unique:<actor>:key:<key>`, or `unique:<actor>:args:<SHA-256 of the
    /// encoded arguments, hex>`.
    pub(crate) fn store_key(&self, message: &Message) -> String {
        match &self.key {
            Some(key) => format!("unique:{}:key:{key}", message.actor),
            None => {
                let digest = Sha256::digest(&message.args);
                let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
                format!("unique:{}:args:{hex}", message.actor)
            }
        }
    }

    /// How long the key lives.
    pub(crate) fn time_to_live(&self) -> Duration {
        self.ttl
    }
}
