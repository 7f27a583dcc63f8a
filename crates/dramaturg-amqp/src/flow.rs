//! Flow control: RabbitMQ's `connection.blocked` / `connection.unblocked`
//! and the deadline of every publish.
//!
//! Under a memory or disk alarm RabbitMQ stops reading from every
//! connection that publishes, and tells it so with `connection.blocked`
//! (lapin then stops writing to it too). Nothing sent on that connection
//! goes through until `connection.unblocked`: not a publish, not a
//! declare, not an acknowledgement. So publishes have a connection of
//! their own, watched here, and every publish is bounded by the send
//! timeout: it fails fast (or waits, as configured) instead of hanging.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dramaturg_core::{Bounded, BrokerError, BrokerErrorKind};
use futures_util::StreamExt;
use lapin::{Connection, Event};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::{AmqpConfig, OnBlocked};

/// Why RabbitMQ blocked the publishing connection, while it does (its
/// reason, e.g. `low on memory`).
pub(crate) type BlockState = watch::Receiver<Option<Arc<str>>>;

/// Watches `connection` for `connection.blocked` / `connection.unblocked`,
/// logs each change once, and publishes the state, from a task on
/// `runtime` (the connection's own, so that the state is kept up even
/// while the caller's runtime is busy). The task ends when the
/// connection's events end or every receiver is gone.
pub(crate) fn watch_blocked(connection: &Connection, runtime: &Handle) -> BlockState {
    let (state, receiver) = watch::channel(None);
    let mut events = connection.events_listener();
    runtime.spawn(async move {
        let mut since = None;
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = state.closed() => return,
            };
            match event {
                Some(Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(
                        %reason,
                        "RabbitMQ blocked the publishing connection (a resource alarm); sends fail or wait until it \
                         unblocks it, consumers and acknowledgements go on"
                    );
                    since = Some(Instant::now());
                    state.send_replace(Some(Bounded::reason(&reason).as_str().into()));
                }
                Some(Event::ConnectionUnblocked) => {
                    let blocked_for = since.take().map(|since| since.elapsed());
                    tracing::info!(?blocked_for, "RabbitMQ unblocked the publishing connection");
                    state.send_replace(None);
                }
                Some(_) => {}
                None => return,
            }
        }
    });
    receiver
}

/// Runs `work`, which publishes on a connection whose state is `blocked`,
/// so that it ends by `deadline`: on a blocked connection it fails at once
/// or waits for the unblock (as `config` says) before `work` starts; once
/// started, it fails when the deadline passes, or — with
/// [`OnBlocked::Fail`] — when the connection gets blocked.
pub(crate) async fn bounded<T>(
    config: &AmqpConfig,
    blocked: &BlockState,
    deadline: tokio::time::Instant,
    work: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    let mut blocked = blocked.clone();
    let reason = blocked.borrow_and_update().clone();
    if let Some(reason) = reason {
        match config.on_blocked {
            OnBlocked::Fail => return Err(blocked_before_sending(&reason, None)),
            OnBlocked::Wait => match tokio::time::timeout_at(deadline, changed_to(&mut blocked, false)).await {
                Ok(Some(_)) => {}
                Ok(None) => return Err(connection_gone()),
                Err(_) => return Err(blocked_before_sending(&reason, Some(config.send_timeout))),
            },
        }
    }
    let fail_on_block = async {
        if config.on_blocked == OnBlocked::Fail {
            if let Some(reason) = changed_to(&mut blocked, true).await {
                return reason.unwrap_or_else(|| "blocked".into());
            }
        }
        std::future::pending().await
    };
    tokio::select! {
        biased;
        result = work => result,
        reason = fail_on_block => Err(BrokerError::new(
            BrokerErrorKind::Blocked,
            format!(
                "amqp: RabbitMQ blocked publishing ({reason}) while the message was being sent; it may or may not \
                 have been taken, so a resend may deliver it twice"
            ),
        )),
        () = tokio::time::sleep_until(deadline) => {
            let reason = blocked.borrow().clone();
            Err(timed_out(config.send_timeout, reason.as_deref()))
        }
    }
}

/// Waits until the connection is `blocked` (or not); returns the reason it
/// is blocked for, or `None` if the connection is gone.
pub(crate) async fn changed_to(state: &mut BlockState, blocked: bool) -> Option<Option<Arc<str>>> {
    state.wait_for(|reason| reason.is_some() == blocked).await.ok().map(|reason| reason.clone())
}

/// The error of a send refused on a blocked connection; `waited` is how
/// long it waited for the unblock.
fn blocked_before_sending(reason: &str, waited: Option<Duration>) -> BrokerError {
    let waited = waited.map(|waited| format!(" (waited {waited:?} for it to clear)")).unwrap_or_default();
    BrokerError::new(
        BrokerErrorKind::Blocked,
        format!(
            "amqp: RabbitMQ has blocked publishing ({reason}){waited}; the message was not sent. Retry once the \
             alarm clears"
        ),
    )
}

/// The error of a publish that ran past its send timeout.
pub(crate) fn timed_out(timeout: Duration, blocked: Option<&str>) -> BrokerError {
    let blocked = blocked.map(|reason| format!(" (RabbitMQ has blocked publishing: {reason})")).unwrap_or_default();
    BrokerError::new(
        BrokerErrorKind::Timeout,
        format!(
            "amqp: the send did not complete within its send timeout of {timeout:?}{blocked}; the message may or may \
             not have been taken, so a resend may deliver it twice"
        ),
    )
}

fn connection_gone() -> BrokerError {
    BrokerError::new(BrokerErrorKind::Connection, "amqp: the publishing connection closed while blocked")
}
