//! Sending to actors this app does not run — a Python Dramatiq actor on a
//! shared broker — known by name and queue: typed ([`Remote`]) or untyped
//! ([`App::send_call`]).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use serde::Serialize;

use super::{App, SendOptions};
use crate::encoder::encode_value;
use crate::{Call, EnqueueError, Message, MessageId};

/// An actor that runs elsewhere (a Python Dramatiq actor), declared by its
/// name, its queue and the type of its arguments, so that Rust sends it
/// typed messages. Its messages go through the app's enqueue hooks and
/// encoder like any other (with the app's queue prefix); no worker of
/// this app consumes them unless a local actor shares the queue (do not:
/// a worker dead-letters messages of actors it does not know).
///
/// With the [Dramatiq encoder](crate::dramatiq), a struct with named
/// fields is sent as keyword arguments, a tuple struct as positional ones.
///
/// # Examples
///
/// ```
/// use dramaturg_core::{App, MemoryBroker, Remote};
/// use serde::Serialize;
///
/// /// `def send_invoice(customer_id, amount)` in Python.
/// #[derive(Serialize)]
/// struct SendInvoice { customer_id: u64, amount: f64 }
///
/// const SEND_INVOICE: Remote<SendInvoice> = Remote::new("send_invoice", "billing");
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let app = App::builder(MemoryBroker::new()).build().unwrap();
/// let id = SEND_INVOICE.send(&app, &SendInvoice { customer_id: 7, amount: 9.5 }).await.unwrap();
/// # let _ = id;
/// # });
/// ```
pub struct Remote<A> {
    name: &'static str,
    queue: &'static str,
    args: PhantomData<fn(&A)>,
}

impl<A> Remote<A> {
    /// The actor `name` on `queue` (without the app's queue prefix).
    pub const fn new(name: &'static str, queue: &'static str) -> Self {
        Self { name, queue, args: PhantomData }
    }

    /// The actor's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Its queue, without the app's queue prefix.
    pub const fn queue(&self) -> &'static str {
        self.queue
    }
}

impl<A: Serialize> Remote<A> {
    /// Sends `args` to the actor; returns the message id once the broker
    /// has the message.
    ///
    /// # Errors
    ///
    /// [`EnqueueError`]: the arguments cannot be encoded, the message is too
    /// large, a middleware refused it, or the broker did not take it.
    pub fn send(&self, app: &App, args: &A) -> impl Future<Output = Result<MessageId, EnqueueError>> + Send + 'static {
        self.send_with(app, args, SendOptions::default())
    }

    /// Sends `args` with a delay or per-message options.
    ///
    /// # Errors
    ///
    /// As [`Remote::send`].
    pub fn send_with(
        &self,
        app: &App,
        args: &A,
        options: SendOptions,
    ) -> impl Future<Output = Result<MessageId, EnqueueError>> + Send + 'static {
        let args = encode_value(app.encoder(), args).map_err(EnqueueError::from);
        app.send_encoded(self.name, self.queue, args, options)
    }
}

impl<A> Clone for Remote<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Remote<A> {}

impl<A> fmt::Debug for Remote<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("name", &self.name).field("queue", &self.queue).finish()
    }
}

impl App {
    /// Sends a call to the actor `actor` on `queue` (the app's queue
    /// prefix is put in front), known only by name: the untyped way to
    /// reach an actor that runs elsewhere (see [`Remote`] for the typed
    /// one). Returns the message id once the broker has the message.
    ///
    /// # Errors
    ///
    /// [`EnqueueError::Encode`] when the app's encoder cannot carry the
    /// call (positional and keyword arguments at once need the Dramatiq
    /// encoder, [`Encoder::encode_call`](crate::Encoder::encode_call)), and
    /// what [`Remote::send`] returns.
    ///
    /// # Examples
    ///
    /// ```
    /// use dramaturg_core::{App, Call, MemoryBroker, SendOptions};
    /// use serde_json::json;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let app = App::builder(MemoryBroker::new()).build().unwrap();
    /// let call = Call::positional([json!(7), json!({"rows": [1, 2]})]);
    /// app.send_call("import_rows", "imports", &call, SendOptions::default()).await.unwrap();
    /// # });
    /// ```
    pub fn send_call(
        &self,
        actor: &str,
        queue: &str,
        call: &Call,
        options: SendOptions,
    ) -> impl Future<Output = Result<MessageId, EnqueueError>> + Send + 'static {
        let args = self.encoder().encode_call(call).map_err(EnqueueError::from);
        self.send_encoded(actor, queue, args, options)
    }

    fn send_encoded(
        &self,
        actor: &str,
        queue: &str,
        args: Result<Vec<u8>, EnqueueError>,
        options: SendOptions,
    ) -> impl Future<Output = Result<MessageId, EnqueueError>> + Send + 'static {
        let message = args.map(|args| {
            let mut message = Message::new(format!("{}{queue}", self.inner.queue_prefix), actor, args.into());
            message.enqueued_at_ms = self.broker().now_ms();
            message.options = options.options;
            message
        });
        let app = self.clone();
        async move { app.enqueue(message?, options.delay).await }
    }
}
