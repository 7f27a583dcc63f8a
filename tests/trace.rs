//! Trace propagation on the real Redis: a message sent inside a producer's
//! span is processed in a `message` span of the same trace, child of the
//! producer's span — its retry too — and the callback it sends is a child
//! of the attempt that sent it. Spans are collected by OpenTelemetry's
//! in-memory exporter.
//!
//! A process has one global tracing subscriber, so this file has one test.

#![cfg(all(feature = "opentelemetry", feature = "redis"))]
#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

mod support;

use std::time::Duration;

use dramaturg::metrics::trace::{TraceContext, TRACEPARENT};
use dramaturg::prelude::*;
use dramaturg::{EnqueueError, Message, MessageId};
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

const URL: &str = "redis://127.0.0.1:6379";

/// Fails its first attempt; its success sends `TracedDone`.
#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "trace-work", min_backoff = "10ms", max_backoff = "20ms", on_success = TracedDone)]
struct Flaky {
    n: u64,
}

impl Flaky {
    async fn perform(self, ctx: &Context) -> Result<(), std::io::Error> {
        if ctx.retries() == 0 {
            return Err(std::io::Error::other("first attempts fail"));
        }
        std::hint::black_box(self.n);
        Ok(())
    }
}

#[derive(Actor, Serialize, Deserialize)]
#[actor(queue = "trace-work")]
struct TracedDone {
    message_id: MessageId,
}

impl TracedDone {
    async fn perform(self, _ctx: &Context) -> Result<(), std::io::Error> {
        std::hint::black_box(self.message_id);
        Ok(())
    }
}

/// The worker's spans of messages, by the actor field they record.
fn message_spans<'a>(spans: &'a [SpanData], actor: &str) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.name == "message")
        .filter(|s| {
            s.attributes.iter().any(|kv| kv.key.as_str() == "actor" && kv.value.as_str().trim_matches('"') == actor)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_continues_the_senders_trace_through_retries_and_callbacks() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let broker = support::redis_broker(URL, &support::namespace()).await;
    let app =
        dramaturg::app(broker).middleware(TraceContext::new()).actor::<Flaky>().actor::<TracedDone>().build().unwrap();

    // Sent inside the producer's span: the message carries its context.
    let producer = tracing::info_span!("producer");
    let sent = async { Flaky { n: 1 }.send(&app).await.unwrap() }.instrument(producer).await;
    // Sent outside any span: nothing to carry.
    let untraced = Flaky { n: 2 }.send(&app).await.unwrap();
    // A traceparent that is not W3C trace context: ignored, not an error.
    let mut bad = app.message(&Flaky { n: 3 }, Default::default()).unwrap();
    bad.options.extra.insert(TRACEPARENT.name().to_owned(), "00-nonsense".into());
    app.enqueue(bad, None).await.unwrap();
    // A traceparent of the wrong type is refused when sent.
    let mut wrong: Message = app.message(&Flaky { n: 4 }, Default::default()).unwrap();
    wrong.options.extra.insert(TRACEPARENT.name().to_owned(), 42.into());
    assert!(matches!(app.enqueue(wrong, None).await, Err(EnqueueError::InvalidOption(_))));

    let report = Worker::new(app.clone()).run_until_drained(Duration::from_secs(30)).await.unwrap();
    assert_eq!((report.succeeded, report.retried), (6, 3), "{report:?}");
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let producer = spans.iter().find(|s| s.name == "producer").unwrap();
    let trace = producer.span_context.trace_id();
    let in_trace: Vec<&SpanData> = spans.iter().filter(|s| s.span_context.trace_id() == trace).collect();

    // Both attempts of the traced message: children of the producer's span.
    let attempts: Vec<&SpanData> =
        message_spans(&spans, "flaky").into_iter().filter(|s| s.span_context.trace_id() == trace).collect();
    assert_eq!(attempts.len(), 2, "{in_trace:#?}");
    for attempt in &attempts {
        assert_eq!(attempt.parent_span_id, producer.span_context.span_id(), "{attempt:#?}");
        let id = attempt.attributes.iter().find(|kv| kv.key.as_str() == "id").unwrap();
        assert_eq!(id.value.as_str(), sent.id().to_string());
    }
    // Its callback: a child of the attempt that succeeded and sent it.
    let callbacks: Vec<&SpanData> =
        message_spans(&spans, "traced_done").into_iter().filter(|s| s.span_context.trace_id() == trace).collect();
    assert_eq!(callbacks.len(), 1, "{in_trace:#?}");
    let parents: Vec<SpanId> = attempts.iter().map(|a| a.span_context.span_id()).collect();
    assert!(parents.contains(&callbacks[0].parent_span_id), "{callbacks:#?}");
    // Nothing else is in the producer's trace: the untraced message and
    // the one with a bad traceparent run in traces of their own.
    assert_eq!(in_trace.len(), 4, "{in_trace:#?}");
    let others = message_spans(&spans, "flaky").into_iter().filter(|s| s.span_context.trace_id() != trace).count();
    assert_eq!(others, 4, "two attempts each of the untraced message and of the bad one ({untraced:?})");
}
