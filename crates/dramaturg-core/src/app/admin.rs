//! What an app offers of its broker's administration: statistics, dead
//! letters, draining.

use std::time::Duration;

use super::App;
use crate::broker::{DeadLetters, QueueAdmin, QueueStats};
use crate::error::{BrokerError, BrokerErrorKind};

impl App {
    /// Queue statistics, purging and draining, when the broker offers them.
    ///
    /// # Errors
    ///
    /// [`BrokerErrorKind::Unsupported`] when it does not.
    pub fn admin(&self) -> Result<&dyn QueueAdmin, BrokerError> {
        self.inner.broker.admin().ok_or_else(|| unsupported("queue administration"))
    }

    /// Dead-letter listing and replay, when the broker offers them.
    ///
    /// # Errors
    ///
    /// [`BrokerErrorKind::Unsupported`] when it does not.
    pub fn dead_letters(&self) -> Result<&dyn DeadLetters, BrokerError> {
        self.inner.broker.dead_letters().ok_or_else(|| unsupported("dead-letter inspection"))
    }

    /// Counts of `queue`'s messages.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`], including `Unsupported`.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        self.admin()?.stats(queue).await
    }

    /// Pauses `queue` for the whole fleet until [`App::resume`]: see
    /// [`QueueAdmin::pause`]. `queue` is the broker's name for it (with the
    /// app's queue prefix, if it has one).
    ///
    /// # Errors
    ///
    /// A [`BrokerError`], including `Unsupported`.
    pub async fn pause(&self, queue: &str) -> Result<(), BrokerError> {
        self.admin()?.pause(queue).await
    }

    /// Resumes a paused `queue`: see [`QueueAdmin::resume`].
    ///
    /// # Errors
    ///
    /// A [`BrokerError`], including `Unsupported`.
    pub async fn resume(&self, queue: &str) -> Result<(), BrokerError> {
        self.admin()?.resume(queue).await
    }

    /// Waits until every queue of the app is drained (nothing ready, delayed
    /// or in flight), for at most `timeout` in all. For tests and scripts.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] of kind `Timeout` when time runs out, or `Unsupported`.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    pub async fn join(&self, timeout: Duration) -> Result<(), BrokerError> {
        let admin = self.admin()?;
        let deadline = tokio::time::Instant::now() + timeout;
        // A queue may refill from another (a follow-up message), so check
        // them all again until one pass finds every queue drained at once.
        loop {
            for queue in self.queues() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                admin.join(queue, left).await?;
            }
            let mut drained = true;
            for queue in self.queues() {
                drained &= admin.is_drained(queue).await?;
            }
            if drained {
                return Ok(());
            }
        }
    }
}

fn unsupported(what: &str) -> BrokerError {
    BrokerError::new(BrokerErrorKind::Unsupported, format!("this broker does not offer {what}"))
}
