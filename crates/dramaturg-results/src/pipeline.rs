//! Pipelines: a chain of messages where each step's output is the next
//! step's arguments.
//!
//! The first message carries the rest of the chain in its `pipeline`
//! option ([`Continuation`]): the id, actor, queue, options and delay of
//! every step still to come, and the id of the last one, whose result is
//! the pipeline's. When a step succeeds the results middleware sends the
//! next one (its arguments: the step's output, as encoded by the app's
//! encoder) with the rest of the chain; when a step ends any other way
//! (final failure, abort, skip, or it could not run) the chain stops there
//! and that outcome is kept as the last step's result, so that a waiter on
//! the pipeline sees it at once.

use std::marker::PhantomData;
use std::time::Duration;

use dramaturg_core::{Actor, App, Context, EnqueueError, Message, MessageId, OptionKey, Options, Output, SendOptions};
use serde::{Deserialize, Serialize};

use crate::first::First;
use crate::membership::Membership;
use crate::whose::Whose;
use crate::{ComposeError, ResultHandle, ResultStore, RESULT_TTL, STORE_RESULTS};
use dramaturg_core::time::millis;

/// The option that carries the rest of a pipeline.
pub(crate) const PIPELINE: OptionKey<Continuation> = OptionKey::new("pipeline");

/// How long sending the next step is tried again while the broker fails
/// for a reason that may pass.
const SEND_RETRY_FOR: Duration = Duration::from_secs(5);

/// A step still to come.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Step {
    id: MessageId,
    actor: String,
    queue: String,
    #[serde(default)]
    options: Options,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
}

/// The rest of a pipeline, in the `pipeline` option of each step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Continuation {
    /// How long the pipeline's result (the last step's) is kept, in
    /// milliseconds.
    pub(crate) ttl_ms: u64,
    /// The steps after this one, in order.
    pub(crate) next: Vec<Step>,
}

impl Continuation {
    /// The last step, where the pipeline's result is kept; `None` when no
    /// step comes after this one (a continuation is only sent with steps).
    pub(crate) fn last_step(&self) -> Option<Whose> {
        self.next.last().map(|step| Whose::named(step.id, &step.queue, &step.actor))
    }

    /// Sends the step after `ctx`'s, with `output` as its arguments and the
    /// rest of the chain (and the group the pipeline belongs to) in its
    /// options.
    ///
    /// # Errors
    ///
    /// Why it could not be sent (after trying again for a while when the
    /// broker may come back).
    pub(crate) async fn send_next(&self, ctx: &Context, output: &Output) -> Result<(), String> {
        let Some((step, rest)) = self.next.split_first() else { return Ok(()) };
        let app = ctx.app();
        let args = output.encode(app.encoder()).map_err(|e| format!("the output cannot be encoded: {e}"))?;
        let mut message = Message::new(step.queue.clone(), step.actor.clone(), args.into());
        message.id = step.id;
        message.enqueued_at_ms = app.broker().now_ms();
        message.options = step.options.clone();
        if !rest.is_empty() {
            let continuation = Self { ttl_ms: self.ttl_ms, next: rest.to_vec() };
            message.options = message.options.with_option(PIPELINE, continuation);
        }
        // The group the pipeline belongs to travels as it is.
        let group = crate::membership::GROUP.name();
        if let Some(membership) = ctx.options().extra.get(group) {
            message.options.extra.insert(group.to_owned(), membership.clone());
        }
        let delay = step.delay_ms.map(Duration::from_millis);
        app.enqueue_retrying(message, delay, SEND_RETRY_FOR).await.map(drop).map_err(|e| e.to_string())
    }
}

/// The next step of a pipeline may take `T`, the output of the step
/// before it, as its arguments: `T` encoded by the app's encoder decodes
/// as `Self`. Every actor takes itself; for another type, say so with an
/// empty impl — for a newtype around the output, say:
///
/// ```
/// use dramaturg_results::PipeInput;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Image { bytes: Vec<u8> }
/// #[derive(Serialize, Deserialize)]
/// struct Publish(Image);
/// // A newtype struct decodes from what it wraps.
/// impl PipeInput<Image> for Publish {}
/// ```
///
/// A claim that does not hold shows when the step runs: its arguments do
/// not decode, the step fails (it cannot run), and so does the pipeline.
pub trait PipeInput<T> {}

impl<T: Actor> PipeInput<T> for T {}

/// A step before it is sent.
struct Planned {
    actor: &'static str,
    send: SendOptions,
}

/// A chain of messages where each step's output is the next step's
/// arguments; `T` is the last step's output, the pipeline's result.
///
/// Each step is a message of its own (retries, time limits and aborts
/// apply per step). The first step that does not succeed for good stops
/// the chain, and its outcome (failure, abort, skip) becomes the
/// pipeline's result. Needs the [`Results`](crate::Results) middleware in
/// the apps that send it and run its steps.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::{actor::into_job_result, Actor, App, Context, Job, MemoryBroker, Worker};
/// use dramaturg_results::{Pipeline, Results};
/// use serde::{Deserialize, Serialize};
///
/// /// Counts the words of a text.
/// #[derive(Serialize, Deserialize)]
/// struct Count { text: String }
/// /// Doubles a number (it takes the count as its arguments).
/// #[derive(Serialize, Deserialize)]
/// struct Double(u64);
/// impl dramaturg_results::PipeInput<u64> for Double {}
///
/// impl Actor for Count {
///     const NAME: &'static str = "count";
///     const QUEUE: &'static str = "default";
///     type Output = u64;
///     fn into_job(self, _ctx: Context) -> Job {
///         Box::pin(async move { into_job_result::<Self, _>(Ok::<u64, std::io::Error>(self.text.split_whitespace().count() as u64)) })
///     }
/// }
/// impl Actor for Double {
///     const NAME: &'static str = "double";
///     const QUEUE: &'static str = "default";
///     type Output = u64;
///     fn into_job(self, _ctx: Context) -> Job {
///         Box::pin(async move { into_job_result::<Self, _>(Ok::<u64, std::io::Error>(self.0 * 2)) })
///     }
/// }
///
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// let broker = MemoryBroker::new();
/// let app = App::builder(broker.clone())
///     .middleware(Results::for_broker(&broker))
///     .actor::<Count>()
///     .actor::<Double>()
///     .build()
///     .unwrap();
/// let pipeline = Pipeline::new(Count { text: "one two three".into() }).then::<Double>();
/// let sent = pipeline.send(&app).await.unwrap();
/// let worker = tokio::spawn(Worker::new(app.clone()).run_until_drained(Duration::from_secs(5)));
/// assert_eq!(sent.wait(Duration::from_secs(5)).await.unwrap(), 6);
/// # worker.await.unwrap().unwrap();
/// # });
/// ```
pub struct Pipeline<T> {
    first: Box<dyn First>,
    steps: Vec<Planned>,
    output: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Pipeline<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<&str> = std::iter::once(self.first.actor()).chain(self.steps.iter().map(|s| s.actor)).collect();
        f.debug_struct("Pipeline").field("steps", &steps).finish()
    }
}

impl<T> Pipeline<T> {
    /// A pipeline whose first step is `actor`'s message.
    pub fn new<A: Actor<Output = T>>(actor: A) -> Self {
        Self::with(actor, SendOptions::default())
    }

    /// As [`Pipeline::new`], the first step sent with `send` (a delay,
    /// options).
    pub fn with<A: Actor<Output = T>>(actor: A, send: SendOptions) -> Self {
        Self { first: crate::first::boxed(actor, send), steps: Vec::new(), output: PhantomData }
    }

    /// A pipeline of one message to an actor of any output, read as `T`
    /// (a group's [`push_any`](crate::Group::push_any)).
    pub(crate) fn from_any<A: Actor>(actor: A) -> Self {
        Self { first: crate::first::boxed(actor, SendOptions::default()), steps: Vec::new(), output: PhantomData }
    }

    /// Adds a step: a message to `B`, whose arguments are the output of
    /// the step before.
    #[must_use]
    pub fn then<B: Actor + PipeInput<T>>(self) -> Pipeline<B::Output> {
        self.then_with::<B>(SendOptions::default())
    }

    /// As [`Pipeline::then`], the step sent with `send`: its delay counts
    /// from the moment the step before succeeded; its options override
    /// `B`'s.
    #[must_use]
    pub fn then_with<B: Actor + PipeInput<T>>(mut self, send: SendOptions) -> Pipeline<B::Output> {
        self.steps.push(Planned { actor: B::NAME, send });
        Pipeline { first: self.first, steps: self.steps, output: PhantomData }
    }

    /// How many steps the pipeline has.
    pub fn len(&self) -> usize {
        1 + self.steps.len()
    }

    /// Always `false`: a pipeline has its first step.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Sends the first step; the others follow as each one succeeds.
    ///
    /// # Errors
    ///
    /// [`ComposeError::NotEnabled`] when the app has no
    /// [`Results`](crate::Results) middleware; [`ComposeError::Enqueue`]
    /// when a step's actor is unknown to the app or the first message
    /// cannot be sent.
    pub async fn send(self, app: &App) -> Result<PipelineHandle<T>, ComposeError> {
        let (message, delay, steps, last) = self.into_message(app, None)?;
        app.enqueue(message, delay).await?;
        Ok(PipelineHandle { result: ResultHandle::of(app, last), steps })
    }

    /// The first message, its delay, the ids of every step and the last
    /// step, with the chain (and `membership` of a group) in its options.
    pub(crate) fn into_message(
        self,
        app: &App,
        membership: Option<&Membership>,
    ) -> Result<(Message, Option<Duration>, Vec<MessageId>, Whose), ComposeError> {
        let results = app.state::<ResultStore>().map_err(|_| ComposeError::NotEnabled)?;
        let (mut message, delay) = self.first.message(app)?;
        let mut next = Vec::with_capacity(self.steps.len());
        for planned in self.steps {
            let info = app.actor(planned.actor).ok_or_else(|| EnqueueError::UnknownActor(planned.actor.to_owned()))?;
            // Its options and delay are checked now, not when it is due.
            let mut probe = Message::new(info.queue(), planned.actor, Default::default());
            probe.options = planned.send.options.clone();
            app.check_sendable(&probe, planned.send.delay)?;
            next.push(Step {
                id: MessageId::new(),
                actor: planned.actor.to_owned(),
                queue: info.queue().to_owned(),
                options: planned.send.options,
                delay_ms: planned.send.delay.map(millis),
            });
        }
        let ids: Vec<MessageId> = std::iter::once(message.id).chain(next.iter().map(|s| s.id)).collect();
        let ttl_ms = millis(results.ttl);
        // The last step keeps its result: it is the pipeline's.
        let last_options = next.last_mut().map_or(&mut message.options, |step| &mut step.options);
        keep_result(last_options, ttl_ms);
        let ttl_ms = last_options.option(RESULT_TTL).ok().flatten().unwrap_or(ttl_ms);
        let last = match next.last() {
            Some(step) => Whose::named(step.id, &step.queue, &step.actor),
            None => Whose::of(&message),
        };
        if !next.is_empty() {
            let continuation = Continuation { ttl_ms, next };
            message.options = std::mem::take(&mut message.options).with_option(PIPELINE, continuation);
        }
        if let Some(membership) = membership {
            message.options =
                std::mem::take(&mut message.options).with_option(crate::membership::GROUP, membership.clone());
        }
        Ok((message, delay, ids, last))
    }
}

/// Asks for the message's result to be kept, for `ttl_ms` unless its
/// options say otherwise.
fn keep_result(options: &mut Options, ttl_ms: u64) {
    let mut kept = std::mem::take(options).with_option(STORE_RESULTS, true);
    if !matches!(kept.option(RESULT_TTL), Ok(Some(_))) {
        kept = kept.with_option(RESULT_TTL, ttl_ms);
    }
    *options = kept;
}

/// A sent pipeline: the ids of its steps and its result, typed by the last
/// step's output.
pub struct PipelineHandle<T> {
    steps: Vec<MessageId>,
    result: ResultHandle<T>,
}

impl<T> std::fmt::Debug for PipelineHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineHandle").field("steps", &self.steps).finish()
    }
}

impl<T> PipelineHandle<T> {
    /// The ids of the steps' messages, in order (the first is sent; the
    /// others are sent as the chain goes on, with these ids).
    pub fn steps(&self) -> &[MessageId] {
        &self.steps
    }

    /// The handle of the pipeline's result: the last step's.
    pub fn result(&self) -> &ResultHandle<T> {
        &self.result
    }
}

impl<T: serde::de::DeserializeOwned> PipelineHandle<T> {
    /// The pipeline's result if it has one now: the last step's output,
    /// or the outcome of the step that stopped the chain.
    ///
    /// # Errors
    ///
    /// As [`ResultHandle::get`].
    pub async fn get(&self) -> Result<T, crate::ResultError> {
        self.result.get().await
    }

    /// The pipeline's result, waiting up to `timeout` for it.
    ///
    /// # Errors
    ///
    /// As [`ResultHandle::wait`].
    pub async fn wait(&self, timeout: Duration) -> Result<T, crate::ResultError> {
        self.result.wait(timeout).await
    }
}
