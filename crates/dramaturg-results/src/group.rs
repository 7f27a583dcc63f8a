//! Groups: many messages (or pipelines) sent at once, their results read
//! in order, and a completion callback sent once when every member has
//! finished.
//!
//! How completion is counted, exactly once: see the `membership` module.

use std::marker::PhantomData;
use std::time::Duration;

use dramaturg_core::store::SetMode;
use dramaturg_core::{Actor, App, MessageId, SendOptions};
use serde::de::DeserializeOwned;

use crate::first::First;
use crate::membership::{Keys, Membership, DEFAULT_TTL};
use crate::whose::Whose;
use crate::{ComposeError, Pipeline, ResultError, ResultHandle, ResultStore};
use dramaturg_core::time::millis;

/// Many messages or pipelines sent at once, all of output `T`; their
/// results are read in order, and a completion callback (a message) is
/// sent once when every member has finished — succeeded or not — across
/// worker processes and redeliveries (see the crate docs, "Groups").
///
/// Members of different outputs go in a `Group<serde_json::Value>` with
/// [`Group::push_any`]. Needs the [`Results`](crate::Results) middleware in
/// the apps that send it and run its members.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::{actor::into_job_result, Actor, App, Context, Job, MemoryBroker, Worker};
/// use dramaturg_results::{Group, Results};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Square(u64);
/// impl Actor for Square {
///     const NAME: &'static str = "square";
///     const QUEUE: &'static str = "default";
///     type Output = u64;
///     fn into_job(self, _ctx: Context) -> Job {
///         Box::pin(async move { into_job_result::<Self, _>(Ok::<u64, std::io::Error>(self.0 * self.0)) })
///     }
/// }
///
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// let broker = MemoryBroker::new();
/// let app = App::builder(broker.clone()).middleware(Results::for_broker(&broker)).actor::<Square>().build().unwrap();
/// let group = (1..=3).fold(Group::new(), |group, n| group.push(Square(n)));
/// let sent = group.send(&app).await.unwrap();
/// let worker = tokio::spawn(Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)));
/// assert_eq!(sent.wait(Duration::from_secs(5)).await.unwrap(), vec![1, 4, 9]);
/// # worker.await.unwrap().unwrap();
/// # });
/// ```
pub struct Group<T> {
    members: Vec<Pipeline<T>>,
    callback: Option<Box<dyn First>>,
    ttl: Duration,
}

impl<T> std::fmt::Debug for Group<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("members", &self.members)
            .field("callback", &self.callback.as_ref().map(|c| c.actor()))
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl<T> Default for Group<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Group<T> {
    /// An empty group; its keys live for 24 hours.
    pub fn new() -> Self {
        Self { members: Vec::new(), callback: None, ttl: DEFAULT_TTL }
    }

    /// Adds a message to `actor`.
    #[must_use]
    pub fn push<A: Actor<Output = T>>(self, actor: A) -> Self {
        self.push_pipeline(Pipeline::new(actor))
    }

    /// Adds a message to `actor` sent with `send` (a delay, options).
    #[must_use]
    pub fn push_with<A: Actor<Output = T>>(self, actor: A, send: SendOptions) -> Self {
        self.push_pipeline(Pipeline::with(actor, send))
    }

    /// Adds a pipeline: the member finishes when its chain does.
    #[must_use]
    pub fn push_pipeline(mut self, pipeline: Pipeline<T>) -> Self {
        self.members.push(pipeline);
        self
    }

    /// Sends `actor`'s message once when every member has finished
    /// (succeeded, failed for good, aborted, skipped or could not run).
    /// Its arguments are its own: to see the members' results, keep the
    /// group's member ids (in the callback's arguments, say) and read them.
    #[must_use]
    pub fn on_completion<A: Actor>(self, actor: A) -> Self {
        self.on_completion_with(actor, SendOptions::default())
    }

    /// As [`Group::on_completion`], the callback sent with `send` (its
    /// delay counts from the moment the last member finished).
    #[must_use]
    pub fn on_completion_with<A: Actor>(mut self, actor: A, send: SendOptions) -> Self {
        self.callback = Some(crate::first::boxed(actor, send));
        self
    }

    /// How long the group's keys (its completion record and callback) live
    /// in the store: longer than the group takes to finish (default 24
    /// hours). The members' results live for their own `result_ttl`.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many members the group has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the group has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Sends every member's first message in one broker call, after keeping
    /// the completion callback (if any) in the store. The callback of a
    /// group without members is sent at once.
    ///
    /// # Errors
    ///
    /// [`ComposeError::NotEnabled`] without the [`Results`](crate::Results)
    /// middleware; [`ComposeError::Enqueue`] when a member cannot be built
    /// or sent (some members may have been sent when the broker failed
    /// part-way); [`ComposeError::Store`] when the callback cannot be kept.
    pub async fn send(self, app: &App) -> Result<GroupHandle<T>, ComposeError> {
        let store = app.state::<ResultStore>().map_err(|_| ComposeError::NotEnabled)?.store.clone();
        let id = MessageId::new();
        let size = u32::try_from(self.members.len()).map_err(|_| ComposeError::TooLarge(self.members.len()))?;
        let ttl_ms = millis(self.ttl);
        let mut callback_id = None;
        let mut callback_delay_ms = None;
        if let Some(callback) = self.callback {
            let (message, delay) = callback.message(app)?;
            app.check_sendable(&message, delay)?;
            callback_id = Some(message.id);
            callback_delay_ms = delay.map(millis);
            if size == 0 {
                app.enqueue(message, delay).await?;
            } else {
                let bytes = app.encoder().encode_message(&message).map_err(dramaturg_core::EnqueueError::from)?;
                store.set(&Keys::of(id).callback, &bytes, self.ttl, SetMode::Always).await?;
            }
        }
        let mut messages = Vec::with_capacity(self.members.len());
        let mut members = Vec::with_capacity(self.members.len());
        for (member, pipeline) in (0..size).zip(self.members) {
            let membership =
                Membership { id, size, member, ttl_ms, callback: callback_id.is_some(), callback_delay_ms };
            let (message, delay, _, last) = pipeline.into_message(app, Some(&membership))?;
            messages.push((message, delay));
            members.push(last);
        }
        app.enqueue_many(messages).await?;
        Ok(GroupHandle { id, members, callback: callback_id, app: app.clone(), output: PhantomData })
    }
}

impl Group<serde_json::Value> {
    /// Adds a message to an actor of any output, read back as JSON.
    #[must_use]
    pub fn push_any<A: Actor>(mut self, actor: A) -> Self {
        self.members.push(Pipeline::from_any(actor));
        self
    }
}

/// A sent group: its members' results in order, and how many have
/// finished.
pub struct GroupHandle<T> {
    id: MessageId,
    members: Vec<Whose>,
    callback: Option<MessageId>,
    app: App,
    output: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for GroupHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupHandle")
            .field("id", &self.id)
            .field("members", &self.members.len())
            .field("callback", &self.callback)
            .finish()
    }
}

impl<T: DeserializeOwned> GroupHandle<T> {
    /// The group's id (its keys in the store are tagged with it).
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The id of each member's result (its last message), in order.
    pub fn members(&self) -> Vec<MessageId> {
        self.members.iter().map(|whose| whose.id).collect()
    }

    /// The id of the completion callback's message, if there is one (it
    /// is sent with this id).
    pub fn callback(&self) -> Option<MessageId> {
        self.callback
    }

    /// The handle of member `index`'s result.
    pub fn member(&self, index: usize) -> Option<ResultHandle<T>> {
        self.members.get(index).map(|whose| ResultHandle::of(&self.app, whose.clone()))
    }

    /// How many members have finished.
    ///
    /// # Errors
    ///
    /// [`ResultError::Store`] when the store cannot be read,
    /// [`ResultError::NotEnabled`] without the results middleware.
    pub async fn finished(&self) -> Result<u64, ResultError> {
        let store = &self.app.state::<ResultStore>().map_err(|_| ResultError::NotEnabled)?.store;
        store.set_len(&Keys::of(self.id).done).await.map_err(|source| ResultError::Store { id: self.id, source })
    }

    /// Every member's result in order, waiting up to `timeout` in all.
    /// Members are waited for one after the other, in order: a failed
    /// member's error is returned once every member before it has
    /// finished (use [`GroupHandle::member`] to watch one member).
    ///
    /// # Errors
    ///
    /// The error of the first member, in order, that has one (see
    /// [`ResultHandle::wait`]).
    pub async fn wait(&self, timeout: Duration) -> Result<Vec<T>, ResultError> {
        self.wait_each(timeout).await.into_iter().collect()
    }

    /// Each member's result or error, in order, waiting up to `timeout` in
    /// all (a member still running when the time is up:
    /// [`ResultError::TimedOut`]).
    pub async fn wait_each(&self, timeout: Duration) -> Vec<Result<T, ResultError>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut results = Vec::with_capacity(self.members.len());
        for whose in &self.members {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            results.push(ResultHandle::of(&self.app, whose.clone()).wait(left).await);
        }
        results
    }
}
