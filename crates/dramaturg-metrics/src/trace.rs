//! Trace context carried in messages: the sending span's W3C
//! `traceparent` (and `tracestate`) travels in the message's options, and
//! the worker's `message` span continues that trace — through retries
//! (a retry keeps its message's options) and callbacks and other messages
//! sent while a message runs (they are sent inside its span, so their
//! parent is that attempt).
//!
//! It works through OpenTelemetry: the process needs a `tracing`
//! subscriber with a [`tracing_opentelemetry`] layer. Without one there
//! is no trace to carry and nothing is added to messages.
//!
//! ```
//! use dramaturg_core::{App, MemoryBroker};
//! use dramaturg_metrics::trace::TraceContext;
//!
//! let app = App::builder(MemoryBroker::new()).middleware(TraceContext::new()).build().unwrap();
//! assert_eq!(app.middleware_names(), ["trace_context"]);
//! ```

use dramaturg_core::{DeclaredOption, Message, Middleware, OptionKey, Options};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The middleware's name in the stack.
pub const NAME: &str = "trace_context";

/// The option that carries the sending span's context, in the W3C Trace
/// Context format: `00-<trace id>-<span id>-<flags>`.
pub const TRACEPARENT: OptionKey<String> = OptionKey::new("traceparent");

/// The option that carries the W3C `tracestate` (vendors' data) with
/// [`TRACEPARENT`], when there is any.
pub const TRACESTATE: OptionKey<String> = OptionKey::new("tracestate");

/// Writes the current span's trace context into every message sent, and
/// makes the worker's span of each message its child. Its place in the
/// stack does not matter.
///
/// A message that already has a `traceparent` (set by its sender, or sent
/// again as it was) keeps it. A `traceparent` that is not valid W3C trace
/// context is ignored: the message runs in a trace of its own.
#[derive(Debug, Default)]
pub struct TraceContext {
    propagator: TraceContextPropagator,
}

impl TraceContext {
    /// The middleware.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A message's options as the propagator writes them.
struct Writer<'a>(&'a mut Options);

impl Injector for Writer<'_> {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT.name() || key == TRACESTATE.name() {
            self.0.extra.insert(key.to_owned(), value.into());
        }
    }
}

/// A message's options as the propagator reads them.
struct Reader<'a>(&'a Options);

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.extra.get(key).and_then(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT.name(), TRACESTATE.name()].into_iter().filter(|k| self.0.extra.contains_key(*k)).collect()
    }
}

impl Middleware for TraceContext {
    fn name(&self) -> &'static str {
        NAME
    }

    fn before_enqueue(&self, message: &mut Message) -> Result<(), dramaturg_core::BoxError> {
        if message.options.extra.contains_key(TRACEPARENT.name()) {
            return Ok(());
        }
        let context = tracing::Span::current().context();
        if context.span().span_context().is_valid() {
            self.propagator.inject_context(&context, &mut Writer(&mut message.options));
        }
        Ok(())
    }

    fn on_message_span(&self, message: &Message, span: &tracing::Span) {
        if !message.options.extra.contains_key(TRACEPARENT.name()) {
            return;
        }
        let parent = self.propagator.extract(&Reader(&message.options));
        if !parent.span().span_context().is_valid() {
            tracing::debug!(id = %message.id, "the message's traceparent is not valid W3C trace context: ignored");
            return;
        }
        // No OpenTelemetry layer, or a span filtered out: nothing to link.
        if let Err(error) = span.set_parent(parent) {
            tracing::debug!(id = %message.id, %error, "the message's span cannot continue its trace");
        }
    }

    fn declared_options(&self) -> Vec<DeclaredOption> {
        // Local: a message sent while this one runs gets the context of
        // this attempt's span, not a copy of this message's parent.
        vec![TRACEPARENT.declare_local(), TRACESTATE.declare_local()]
    }
}
