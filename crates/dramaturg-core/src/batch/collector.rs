//! The collector of a batch actor: gathers its messages into batches, calls
//! the handler once per batch, and answers each message with its outcome.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::FutureExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Batch, BatchActor, BatchError, BatchLimits, BatchOutcome};
use crate::error_record::{FailureKind, RecordLimits};
use crate::failure::Failure;
use crate::output::Output;
use crate::sync::lock;
use crate::{Context, Interruption, Job};

/// A message's answer from its batch.
type Answer = Result<Output, Failure>;

/// A message waiting in a batch.
struct Waiting<A> {
    args: A,
    ctx: Context,
    reply: oneshot::Sender<Answer>,
}

/// The batch still collecting.
struct Open<A> {
    /// Tells the batch's task which open batch is its own.
    id: u64,
    items: Vec<Waiting<A>>,
    /// Hands the items to the batch's task when the batch is full.
    seal: oneshot::Sender<Vec<Waiting<A>>>,
}

/// Gathers the messages of the batch actor `A` (one per registered actor
/// of an app).
struct Collector<A> {
    limits: BatchLimits,
    open: Mutex<Option<Open<A>>>,
    next_id: AtomicU64,
}

impl<A: Send + 'static> Collector<A> {
    pub(crate) fn new(limits: BatchLimits) -> Self {
        Self { limits, open: Mutex::new(None), next_id: AtomicU64::new(0) }
    }

    /// The collector of `A` as an actor's info holds it.
    pub(crate) fn erased(limits: BatchLimits) -> Arc<dyn Any + Send + Sync> {
        Arc::new(Self::new(limits))
    }

    /// Takes the open batch `id` if it is still open.
    fn take(&self, id: u64) -> Option<Vec<Waiting<A>>> {
        let mut open = lock(&self.open);
        if open.as_ref().is_some_and(|o| o.id == id) {
            open.take().map(|o| o.items)
        } else {
            None
        }
    }
}

/// The [`Job`] of one message of the batch actor `A`: hands `args` to the
/// actor's collector when first polled and waits for this message's own
/// outcome. What `#[derive(Actor)]` writes as a batch actor's
/// [`into_job`](crate::Actor::into_job).
pub fn submit<A: BatchActor>(args: A, ctx: Context) -> Job {
    Box::pin(async move {
        let collector =
            ctx.app().actor(ctx.actor()).and_then(|actor| actor.batch_collector()).and_then(|(limits, slot)| {
                Arc::clone(slot.get_or_init(|| Collector::<A>::erased(limits))).downcast::<Collector<A>>().ok()
            });
        let Some(collector) = collector else {
            return Err(Failure::from_error(BatchError::NotBatched(A::NAME.to_owned())));
        };
        let answer = enqueue(&collector, args, ctx);
        answer.await.unwrap_or_else(|_| Err(Failure::from_error(BatchError::Lost)))
    })
}

/// Adds a message to the open batch (opening one, with its task, if none
/// is); seals the batch when it is full.
fn enqueue<A: BatchActor>(collector: &Arc<Collector<A>>, args: A, ctx: Context) -> oneshot::Receiver<Answer> {
    let (reply, answer) = oneshot::channel();
    let mut open = lock(&collector.open);
    let batch = open.get_or_insert_with(|| {
        let id = collector.next_id.fetch_add(1, Ordering::Relaxed);
        let (seal, sealed) = oneshot::channel();
        let span = tracing::info_span!("batch", actor = A::NAME, number = id);
        let task = collect(Arc::clone(collector), id, sealed, ctx.worker_stop().cloned());
        tokio::spawn(task.instrument(span));
        Open { id, items: Vec::with_capacity(collector.limits.max()), seal }
    });
    batch.items.push(Waiting { args, ctx, reply });
    if batch.items.len() >= collector.limits.max() {
        if let Some(full) = open.take() {
            drop(open);
            // The task waits on `sealed` until it took the batch itself,
            // which it cannot now: this send finds it listening.
            let _ = full.seal.send(full.items);
        }
    }
    answer
}

/// The task of batch `id`: waits until it is full, its `wait` has passed
/// or the worker stops, then runs it.
async fn collect<A: BatchActor>(
    collector: Arc<Collector<A>>,
    id: u64,
    mut sealed: oneshot::Receiver<Vec<Waiting<A>>>,
    stop: Option<CancellationToken>,
) {
    let stopping = async {
        match &stop {
            Some(stop) => stop.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let full = tokio::select! {
        biased;
        items = &mut sealed => items.ok(),
        () = tokio::time::sleep(collector.limits.wait()) => None,
        () = stopping => None,
    };
    let items = match full {
        Some(items) => items,
        // Sealed meanwhile if it is no longer open: the items are on their way.
        None => match collector.take(id) {
            Some(items) => items,
            None => sealed.await.unwrap_or_default(),
        },
    };
    drop(collector);
    run(items).await;
}

/// How a batch's handler call ended.
enum Ended {
    Returned(std::thread::Result<Result<BatchOutcome, Failure>>),
    /// Message `index` was interrupted for `reason` while the batch ran.
    Cut {
        index: usize,
        reason: Option<Interruption>,
    },
}

/// Calls the handler with the batch's messages that still wait, and
/// answers each.
async fn run<A: BatchActor>(items: Vec<Waiting<A>>) {
    // Messages that left while the batch collected (aborted, timed out)
    // are not handed to the handler.
    let items: Vec<Waiting<A>> = items.into_iter().filter(|item| !item.reply.is_closed()).collect();
    let Some(first) = items.first() else { return };
    let app = first.ctx.app().clone();
    let size = items.len();
    let mut args = Vec::with_capacity(size);
    let mut contexts = Vec::with_capacity(size);
    let mut replies = Vec::with_capacity(size);
    for Waiting { args: a, ctx, reply } in items {
        args.push(a);
        contexts.push(ctx);
        replies.push(Some(reply));
    }
    tracing::debug!(size, "batch started");
    let watched = contexts.clone();
    let handler = AssertUnwindSafe(A::perform_batch(Batch::new(args, contexts))).catch_unwind();
    let ended = tokio::select! {
        biased;
        returned = handler => Ended::Returned(returned),
        (index, reason) = interrupted(&mut replies, &watched) => Ended::Cut { index, reason },
    };
    let answers: Vec<Answer> = match ended {
        Ended::Returned(Ok(Ok(outcome))) => per_item(outcome, size),
        Ended::Returned(Ok(Err(failure))) => {
            tracing::warn!(size, error = %failure, "batch failed as a whole");
            failure.spread(size, app.error_types()).into_iter().map(Err).collect()
        }
        Ended::Returned(Err(panic)) => {
            tracing::error!(size, "batch handler panicked; every message of the batch fails with the panic");
            (0..size).map(|_| Err(Failure::from_panic(panic.as_ref(), None, &RecordLimits::default()))).collect()
        }
        Ended::Cut { index, reason } => {
            let by = watched[index].id();
            tracing::warn!(%by, ?reason, "a message of the batch was interrupted; stopping the batch");
            let kind = if reason == Some(Interruption::TimeLimit) {
                FailureKind::TimeLimitExceeded
            } else {
                FailureKind::Error
            };
            let error = || match reason {
                Some(reason) => BatchError::Interrupted { by, reason },
                None => BatchError::Left { by },
            };
            (0..size).map(|_| Err(Failure::from_error(error()).with_kind(kind))).collect()
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        if let Some(reply) = reply {
            // A message that left meanwhile (aborted) takes no answer.
            let _ = reply.send(answer);
        }
    }
}

/// Resolves when a message of the running batch was interrupted other than
/// by an abort (a time limit, shutdown): with its index and the reason. An
/// aborted message only leaves the batch (its reply is dropped); when none
/// is left, the batch has no one to answer and stops too.
async fn interrupted(
    replies: &mut [Option<oneshot::Sender<Answer>>],
    contexts: &[Context],
) -> (usize, Option<Interruption>) {
    std::future::poll_fn(|cx| {
        let mut last_left = None;
        for (index, slot) in replies.iter_mut().enumerate() {
            let Some(reply) = slot else { continue };
            if reply.poll_closed(cx).is_pending() {
                continue;
            }
            match contexts[index].interruption() {
                Some(Interruption::Abort) => {
                    *slot = None;
                    last_left = Some(index);
                }
                reason => return Poll::Ready((index, reason)),
            }
        }
        match last_left {
            Some(index) if replies.iter().all(Option::is_none) => Poll::Ready((index, Some(Interruption::Abort))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Each message's answer from the handler's outcome.
fn per_item(outcome: BatchOutcome, size: usize) -> Vec<Answer> {
    let mut failures: Vec<Option<Failure>> = (0..size).map(|_| None).collect();
    for (index, failure) in outcome.into_failures() {
        match failures.get_mut(index) {
            Some(slot @ None) => *slot = Some(failure),
            Some(Some(_)) => {
                tracing::warn!(index, "a batch outcome names a failure twice for one message; the first counts");
            }
            None => {
                tracing::error!(index, size, "a batch outcome names a failure for an index the batch does not have");
            }
        }
    }
    failures.into_iter().map(|failure| failure.map_or_else(|| Ok(Output::new(())), Err)).collect()
}
