//! Sending: per-message choices, the enqueue hooks, the checks every
//! message passes, and the hand-over to the broker.

use std::future::Future;
use std::time::Duration;

use super::App;
use crate::actor::ActorInfo;
use crate::broker::Outgoing;
use crate::encoder::encode_value;
use crate::error::EnqueueError;
use crate::message::ETA;
use crate::{Actor, Message, MessageId, Options, Sent};

/// The longest delay a message can be sent or retried with: 365 days.
/// Longer ones are refused ([`EnqueueError::DelayTooLong`]); a job that is
/// due in more than a year belongs in a scheduler.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Per-message choices for [`Actor::send_with`]: a delay and option
/// overrides.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::SendOptions;
///
/// let send = SendOptions::default()
///     .with_delay(Duration::from_secs(60))
///     .with_options(|o| o.with_max_retries(0).with_extra("tenant", "acme"));
/// assert_eq!(send.options.max_retries, Some(0));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SendOptions {
    /// Hold the message back this long before it may run.
    pub delay: Option<Duration>,
    /// Options that override the actor's.
    pub options: Options,
}

impl SendOptions {
    /// Holds the message back for `delay`.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Changes the per-message options.
    #[must_use]
    pub fn with_options(mut self, change: impl FnOnce(Options) -> Options) -> Self {
        self.options = change(self.options);
        self
    }
}

impl App {
    /// Sends `actor` with `options`: the future behind [`Actor::send`].
    ///
    /// The arguments are encoded before this returns, so the future owns
    /// everything it needs.
    ///
    /// # Errors
    ///
    /// See [`Actor::send`].
    pub fn send<A: Actor>(
        &self,
        actor: &A,
        options: SendOptions,
    ) -> impl Future<Output = Result<Sent<A>, EnqueueError>> + Send + 'static {
        let message = self.message(actor, options.options);
        let app = self.clone();
        async move { app.enqueue(message?, options.delay).await.map(Sent::from_id) }
    }

    /// Sends many messages to one actor in one broker call (one round trip
    /// on brokers that support it). Returns their handles in order.
    ///
    /// # Errors
    ///
    /// See [`Actor::send`]. If the broker fails part-way, some messages may
    /// have been enqueued.
    pub fn send_many<'a, A: Actor>(
        &self,
        actors: impl IntoIterator<Item = &'a A>,
    ) -> impl Future<Output = Result<Vec<Sent<A>>, EnqueueError>> + Send + 'static {
        let messages: Result<Vec<_>, _> =
            actors.into_iter().map(|actor| self.message(actor, Options::default()).map(|m| (m, None))).collect();
        let app = self.clone();
        async move { Ok(app.enqueue_many(messages?).await?.into_iter().map(Sent::from_id).collect()) }
    }

    /// Builds the message for `actor` without sending it.
    ///
    /// # Errors
    ///
    /// [`EnqueueError::UnknownActor`] if the app does not know the actor,
    /// [`EnqueueError::Encode`] if its arguments cannot be encoded.
    pub fn message<A: Actor>(&self, actor: &A, options: Options) -> Result<Message, EnqueueError> {
        let Some(info) = self.inner.actors.get(A::NAME) else {
            return Err(EnqueueError::UnknownActor(A::NAME.to_owned()));
        };
        let args = encode_value(self.encoder(), actor)?;
        let mut message = Message::new(info.queue(), A::NAME, args.into());
        message.enqueued_at_ms = self.broker().now_ms();
        message.options = options;
        Ok(message)
    }

    /// Enqueues a message built earlier (retries re-enqueue this way): runs
    /// the enqueue hooks, encodes, checks the size and hands it to the broker.
    ///
    /// # Errors
    ///
    /// [`EnqueueError`]; nothing was enqueued.
    ///
    /// # Cancel safety
    ///
    /// If cancelled, the message may or may not have been enqueued.
    pub async fn enqueue(&self, message: Message, delay: Option<Duration>) -> Result<MessageId, EnqueueError> {
        let broker = &self.inner.broker;
        self.enqueue_through(message, delay, |outgoing| broker.enqueue(outgoing)).await
    }

    /// Sends `actor` as [`App::send`] does — enqueue hooks, send claims,
    /// option, delay and size checks, encoding — but hands the encoded
    /// message to `hand_over` instead of the app's broker: for brokers that
    /// can store a message as part of work of the caller's own, such as
    /// the PostgreSQL broker's enqueue inside the caller's database
    /// transaction (`PgBroker::send_in`), so that the message is sent
    /// exactly when that work commits.
    ///
    /// Middleware that claim something on every send (unique jobs) make
    /// their claim before `hand_over` runs and release it when it fails;
    /// a claim whose message is rolled back later is kept until it
    /// expires, as for a message that was sent and then purged.
    ///
    /// # Errors
    ///
    /// As [`App::send`]; the error of `hand_over` as
    /// [`EnqueueError::Broker`].
    ///
    /// # Cancel safety
    ///
    /// As [`App::enqueue`]: if cancelled, `hand_over` may or may not have
    /// run.
    pub async fn send_through<A, F, Fut>(
        &self,
        actor: &A,
        options: SendOptions,
        hand_over: F,
    ) -> Result<Sent<A>, EnqueueError>
    where
        A: Actor,
        F: FnOnce(Outgoing) -> Fut,
        Fut: Future<Output = Result<(), crate::BrokerError>>,
    {
        let message = self.message(actor, options.options)?;
        self.enqueue_through(message, options.delay, hand_over).await.map(Sent::from_id)
    }

    /// [`App::enqueue`], handing the encoded message to `hand_over`.
    async fn enqueue_through<F, Fut>(
        &self,
        mut message: Message,
        delay: Option<Duration>,
        hand_over: F,
    ) -> Result<MessageId, EnqueueError>
    where
        F: FnOnce(Outgoing) -> Fut,
        Fut: Future<Output = Result<(), crate::BrokerError>>,
    {
        self.before_enqueue(&mut message)?;
        let claimed = if self.claims_on_send() {
            self.claim(&mut message).await?;
            Some(message.clone())
        } else {
            None
        };
        let sent = async {
            let (id, outgoing, delayed) = self.outgoing(message, delay)?;
            hand_over(outgoing).await?;
            if let Some(delayed) = delayed {
                self.after_delayed_enqueue(&delayed).await;
            }
            Ok(id)
        }
        .await;
        if let (Err(_), Some(claimed)) = (&sent, &claimed) {
            self.release_claims(claimed, self.inner.claimers.len()).await;
        }
        sent
    }

    /// Whether a middleware of the stack claims something on every send
    /// ([`Middleware::send_claim`](crate::Middleware::send_claim)).
    fn claims_on_send(&self) -> bool {
        !self.inner.claimers.is_empty()
    }

    /// Makes every middleware's send claim for `message`, in stack order;
    /// when one fails, releases those made before it.
    async fn claim(&self, message: &mut Message) -> Result<(), EnqueueError> {
        for (i, middleware) in self.inner.claimers.iter().enumerate() {
            if let Some(claim) = middleware.send_claim() {
                if let Err(error) = claim.claim(self, message).await {
                    self.release_claims(message, i).await;
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Releases the send claims of the first `made` claiming middleware.
    async fn release_claims(&self, message: &Message, made: usize) {
        for middleware in &self.inner.claimers[..made] {
            if let Some(claim) = middleware.send_claim() {
                claim.release(self, message).await;
            }
        }
    }

    /// As [`App::enqueue`], trying again for up to `retry_for` while the
    /// broker fails for a reason that may pass (connection lost, timeout),
    /// with a backoff from 50 ms doubling to 1 s: what a middleware that
    /// sends messages on a message's behalf (callbacks, the next step of a
    /// pipeline) does before it gives up.
    ///
    /// # Errors
    ///
    /// The last [`EnqueueError`]: one that will not pass, or any once
    /// `retry_for` is spent.
    pub async fn enqueue_retrying(
        &self,
        message: Message,
        delay: Option<Duration>,
        retry_for: Duration,
    ) -> Result<MessageId, EnqueueError> {
        crate::broker::retry_sends(retry_for, || self.enqueue(message.clone(), delay)).await
    }

    async fn after_delayed_enqueue(&self, (message, delay): &(Message, Duration)) {
        for middleware in &self.inner.stack {
            middleware.after_delayed_enqueue(self, message, *delay).await;
        }
    }

    /// Enqueues many messages built earlier in one broker call. The
    /// middleware's send claims are made for each message; when any
    /// message is refused or the broker fails, every claim made is
    /// released.
    ///
    /// # Errors
    ///
    /// [`EnqueueError`]; if it comes from the broker, some messages may have
    /// been enqueued.
    pub async fn enqueue_many(
        &self,
        messages: Vec<(Message, Option<Duration>)>,
    ) -> Result<Vec<MessageId>, EnqueueError> {
        let claims = self.claims_on_send();
        let mut claimed: Vec<Message> = Vec::new();
        let sent = self.enqueue_batch(messages, claims.then_some(&mut claimed)).await;
        if sent.is_err() {
            for message in &claimed {
                self.release_claims(message, self.inner.claimers.len()).await;
            }
        }
        sent
    }

    /// [`App::enqueue_many`] but for releasing claims: the messages whose
    /// claims were made are put in `claimed` (when the stack makes any).
    async fn enqueue_batch(
        &self,
        messages: Vec<(Message, Option<Duration>)>,
        mut claimed: Option<&mut Vec<Message>>,
    ) -> Result<Vec<MessageId>, EnqueueError> {
        let mut ids = Vec::with_capacity(messages.len());
        let mut batch = Vec::with_capacity(messages.len());
        let mut delayed = Vec::new();
        for (mut message, delay) in messages {
            self.before_enqueue(&mut message)?;
            if let Some(claimed) = claimed.as_deref_mut() {
                match self.claim(&mut message).await {
                    Ok(()) => claimed.push(message.clone()),
                    // The key's holder is a message of this very batch,
                    // which will not be sent either.
                    Err(EnqueueError::Duplicate { existing, key }) if claimed.iter().any(|m| m.id == existing) => {
                        return Err(EnqueueError::DuplicateInBatch { first: existing, second: message.id, key });
                    }
                    Err(error) => return Err(error),
                }
            }
            let (id, outgoing, waiting) = self.outgoing(message, delay)?;
            ids.push(id);
            batch.push(outgoing);
            delayed.extend(waiting);
        }
        self.inner.broker.enqueue_many(batch).await?;
        for waiting in &delayed {
            self.after_delayed_enqueue(waiting).await;
        }
        Ok(ids)
    }

    /// Checks that `message` could be sent with `delay` now — the enqueue
    /// hooks accept it, its options have their types, the delay fits its
    /// age limit, its size fits — without sending it: for messages that
    /// are sent later on a message's behalf (a pipeline's next step, a
    /// group's callback), so that their mistakes show when the whole is
    /// sent, not when a step runs.
    ///
    /// # Errors
    ///
    /// The [`EnqueueError`] that [`App::enqueue`] would return before
    /// reaching the broker.
    pub fn check_sendable(&self, message: &Message, delay: Option<Duration>) -> Result<(), EnqueueError> {
        let mut message = message.clone();
        self.before_enqueue(&mut message)?;
        self.outgoing(message, delay).map(drop)
    }

    /// Runs every middleware's enqueue hook on `message`.
    fn before_enqueue(&self, message: &mut Message) -> Result<(), EnqueueError> {
        for middleware in &self.inner.stack {
            middleware
                .before_enqueue(message)
                .map_err(|source| EnqueueError::Rejected { middleware: middleware.name(), source })?;
        }
        Ok(())
    }

    /// The message, whose enqueue hooks ran, to hand to the broker, and
    /// the message itself when it is delayed (for the middleware's
    /// `after_delayed_enqueue`).
    #[allow(clippy::type_complexity)]
    fn outgoing(
        &self,
        mut message: Message,
        delay: Option<Duration>,
    ) -> Result<(MessageId, Outgoing, Option<(Message, Duration)>), EnqueueError> {
        message.options.check_known()?;
        for declared in &self.inner.declared_options {
            if let Some(value) = message.options.extra.get(declared.name()) {
                declared.check(value)?;
            }
        }
        let actor = self.inner.actors.get(message.actor.as_str()).map(ActorInfo::options);
        let priority = message.options.priority.or(actor.and_then(|a| a.priority));
        let delay = delay.filter(|d| !d.is_zero());
        if let Some(delay) = delay {
            if delay > MAX_DELAY {
                return Err(EnqueueError::DelayTooLong { delay, max: MAX_DELAY });
            }
            // Due at exactly its max_age, it is already too old when it runs.
            let max_age = message.options.max_age.or(actor.and_then(|a| a.max_age));
            if let Some(max_age) = max_age.filter(|max_age| delay >= *max_age) {
                return Err(EnqueueError::DelayBeyondMaxAge { delay, max_age });
            }
            // When it falls due (Dramatiq's `eta` option), so that the age
            // limit can tell a message delayed past its max_age from one
            // that waited too long.
            let eta = message.enqueued_at_ms.saturating_add(crate::time::millis(delay));
            message.options.extra.insert(ETA.name().to_owned(), eta.into());
        }
        let body = self.encoder().encode_message(&message)?;
        if body.len() > self.inner.max_message_size {
            return Err(EnqueueError::TooLarge { size: body.len(), limit: self.inner.max_message_size });
        }
        let id = message.id;
        match delay {
            Some(delay) => {
                let outgoing =
                    Outgoing::new(message.queue.as_str(), body).with_delay(Some(delay)).with_priority(priority);
                Ok((id, outgoing, Some((message, delay))))
            }
            None => Ok((id, Outgoing::new(message.queue, body).with_priority(priority), None)),
        }
    }
}
