//! Pausing a queue for the whole fleet (native layout).
//!
//! RabbitMQ has no key–value store, and a passive declare of a missing
//! queue (the obvious marker) makes it close the channel, which lapin logs
//! as an ERROR — at every look. The marker is a binding instead, as for the
//! delay bucket record (`link::RECORD_EXCHANGE`): a paused queue `q` is an
//! exchange-to-exchange binding from [`PAUSE_RECORD`] to [`PAUSE_PROBES`]
//! with routing key `q`. Both exchanges are durable, so the binding is
//! too: a queue stays paused across worker restarts and a server restart.
//! Pausing binds, resuming unbinds (both idempotent).
//!
//! A [`Probe`] looks without an error either way: it publishes a token to
//! [`PAUSE_RECORD`] with routing key `q` (confirmed, not mandatory: an
//! unroutable probe is dropped silently), and the token reaches its private
//! queue, bound to [`PAUSE_PROBES`] with key `q`, only while the binding
//! exists. Each consumer keeps a [`Watch`]: a task that looks every
//! [`LOOK_EVERY`] and tells the consumer when the answer changes.

use std::sync::Arc;
use std::time::Duration;

use dramaturg_core::{BrokerError, MessageId};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeUnbindOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};
use tokio::sync::watch;

use crate::error::amqp_error;
use crate::link::Link;
use crate::names::{check_queue, short};
use crate::Shared;

/// The exchange whose bindings (to [`PAUSE_PROBES`], keyed by queue name)
/// mark the paused queues.
pub(crate) const PAUSE_RECORD: &str = "dramaturg.paused";
/// Where the probes of paused queues are routed; lookups bind private
/// queues to it.
pub(crate) const PAUSE_PROBES: &str = "dramaturg.paused.probes";

/// How often a consumer looks whether its queue was paused or resumed.
pub(crate) const LOOK_EVERY: Duration = Duration::from_millis(400);

/// Declares the two exchanges (durable, idempotent).
async fn declare_exchanges(channel: &Channel) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    for name in [PAUSE_RECORD, PAUSE_PROBES] {
        channel
            .exchange_declare(name.into(), ExchangeKind::Direct, durable, FieldTable::default())
            .await
            .map_err(|e| amqp_error(e, "declaring the pause record"))?;
    }
    Ok(())
}

/// Pauses (`true`) or resumes `queue`: binds or unbinds its marker, on a
/// channel of its own on the consuming connection (which RabbitMQ does not
/// block in a resource alarm, when an operator may well want to pause).
pub(crate) async fn set_paused(shared: &Shared, queue: &str, paused: bool) -> Result<(), BrokerError> {
    check_queue(queue)?;
    let key = short(queue, "queue name")?;
    let channel = shared.consuming_channel().await?;
    let result = async {
        declare_exchanges(&channel).await?;
        if paused {
            channel
                .exchange_bind(
                    PAUSE_PROBES.into(),
                    PAUSE_RECORD.into(),
                    key,
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| amqp_error(e, "pausing a queue"))
        } else {
            channel
                .exchange_unbind(
                    PAUSE_PROBES.into(),
                    PAUSE_RECORD.into(),
                    key,
                    ExchangeUnbindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| amqp_error(e, "resuming a queue"))
        }
    }
    .await;
    let _ = channel.close(200, "done".into()).await;
    result
}

/// Looks whether one queue is paused, as often as asked, on a channel of
/// its own on the publishing connection (a probe is a publish).
pub(crate) struct Probe {
    link: Arc<Link>,
    channel: Channel,
    inbox: ShortString,
    key: ShortString,
    timeout: Duration,
}

impl Probe {
    /// A probe of `queue`, within the send timeout; refused at once while
    /// RabbitMQ blocks the publishing connection (it would read nothing
    /// of the probe's until the alarm clears).
    pub(crate) async fn open(shared: &Shared, queue: &str) -> Result<Self, BrokerError> {
        check_queue(queue)?;
        let key = short(queue, "queue name")?;
        let timeout = shared.config.send_timeout;
        let link = shared.publishing_link(tokio::time::Instant::now() + timeout).await?;
        refuse_if_blocked(&link, timeout)?;
        let channel = match tokio::time::timeout(timeout, link.channel()).await {
            Ok(channel) => channel?,
            Err(_) => return Err(crate::flow::timed_out(timeout, None)),
        };
        let opened = async {
            declare_exchanges(&channel).await?;
            crate::link::probe_inbox(&channel, PAUSE_PROBES, queue).await
        };
        let opened = match tokio::time::timeout(timeout, opened).await {
            Ok(opened) => opened,
            Err(_) => Err(crate::flow::timed_out(timeout, None)),
        };
        match opened {
            Ok(inbox) => Ok(Self { link, channel, inbox, key, timeout }),
            Err(error) => {
                close(&channel, timeout).await;
                Err(error)
            }
        }
    }

    /// Whether the queue is paused now, within the send timeout; refused
    /// at once while RabbitMQ blocks the publishing connection.
    pub(crate) async fn is_paused(&self) -> Result<bool, BrokerError> {
        refuse_if_blocked(&self.link, self.timeout)?;
        let look = async {
            let token = MessageId::new().to_string();
            self.channel
                .basic_publish(
                    PAUSE_RECORD.into(),
                    self.key.clone(),
                    BasicPublishOptions::default(),
                    token.as_bytes(),
                    lapin::BasicProperties::default(),
                )
                .await
                .map_err(|e| amqp_error(e, "looking whether a queue is paused"))?
                .await
                .map_err(|e| amqp_error(e, "looking whether a queue is paused"))?;
            // Confirmed: routed (or not) by now. Other workers' probes of
            // the same queue land here too; only ours answers.
            let mut paused = false;
            let no_ack = BasicGetOptions { no_ack: true };
            while let Some(got) = self
                .channel
                .basic_get(self.inbox.clone(), no_ack)
                .await
                .map_err(|e| amqp_error(e, "looking whether a queue is paused"))?
            {
                paused |= got.delivery.data == token.as_bytes();
            }
            Ok(paused)
        };
        match tokio::time::timeout(self.timeout, look).await {
            Ok(result) => result,
            Err(_) => Err(crate::flow::timed_out(self.timeout, None)),
        }
    }

    /// Closes its channel (and so its private queue).
    pub(crate) async fn close(self) {
        close(&self.channel, self.timeout).await;
    }
}

/// Closes a probe's `channel`, waiting no longer than `timeout` (on a
/// blocked connection the server answers nothing; the channel then goes
/// with its connection).
async fn close(channel: &Channel, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, channel.close(200, "done".into())).await;
}

/// A look refused because RabbitMQ blocks the publishing connection.
fn refuse_if_blocked(link: &Link, timeout: Duration) -> Result<(), BrokerError> {
    if link.is_blocked() {
        return Err(crate::flow::timed_out(timeout, Some("a resource alarm")));
    }
    Ok(())
}

/// Whether `queue` is paused, looked up once.
pub(crate) async fn is_paused(shared: &Shared, queue: &str) -> Result<bool, BrokerError> {
    let probe = Probe::open(shared, queue).await?;
    let paused = probe.is_paused().await;
    probe.close().await;
    paused
}

/// A consumer's view of whether its queue is paused, kept up to date by a
/// task that looks every [`LOOK_EVERY`] until the view is dropped.
pub(crate) type Watch = watch::Receiver<bool>;

/// Looks once (so that a worker started while its queue is paused claims
/// nothing), then keeps looking in a task of its own. A look that fails
/// keeps the last answer — the first, "not paused", with a warning: a
/// worker that cannot publish (a resource alarm) still consumes.
pub(crate) async fn watch(shared: Arc<Shared>, queue: String) -> Watch {
    let mut probe = None;
    let first = look(&shared, &queue, &mut probe).await.unwrap_or_else(|error| {
        tracing::warn!(%queue, %error, "could not look whether the queue is paused; consuming until a look succeeds");
        false
    });
    let (tell, view) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tell.closed() => break,
                () = tokio::time::sleep(LOOK_EVERY) => {}
            }
            match look(&shared, &queue, &mut probe).await {
                Ok(paused) => {
                    tell.send_if_modified(|was| {
                        let changed = *was != paused;
                        if changed {
                            tracing::info!(%queue, paused, "the queue was {}", if paused { "paused" } else { "resumed" });
                        }
                        *was = paused;
                        changed
                    });
                }
                Err(error) => tracing::debug!(%queue, %error, "could not look whether the queue is paused"),
            }
        }
        if let Some(probe) = probe {
            probe.close().await;
        }
    });
    view
}

/// One look through `probe`, opened first if needed; a probe that failed
/// is closed, and the next look opens another.
async fn look(shared: &Shared, queue: &str, probe: &mut Option<Probe>) -> Result<bool, BrokerError> {
    let current = match probe.take() {
        Some(current) => current,
        None => Probe::open(shared, queue).await?,
    };
    match current.is_paused().await {
        Ok(paused) => {
            *probe = Some(current);
            Ok(paused)
        }
        Err(error) => {
            current.close().await;
            Err(error)
        }
    }
}
