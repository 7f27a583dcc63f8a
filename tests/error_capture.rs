//! The error-capture middleware on the in-memory broker.

#![allow(clippy::unwrap_used)] // Tests may panic on the unexpected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dramaturg::error_capture::{ErrorCapture, Limits};
use dramaturg::prelude::*;
use dramaturg::retries::Retries;
use dramaturg::{ErrorRecord, FailureKind};
use serde::{Deserialize, Serialize};

/// An error that holds a large buffer and says when it is dropped.
#[derive(Debug)]
struct Heavy {
    _data: Vec<u8>,
    dropped: &'static AtomicBool,
}

impl std::fmt::Display for Heavy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "heavy failure {}", "x".repeat(5000))
    }
}

impl std::error::Error for Heavy {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None
    }
}

impl Drop for Heavy {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

static HEAVY_DROPPED: AtomicBool = AtomicBool::new(false);

#[derive(Actor, Serialize, Deserialize)]
#[actor(max_retries = 0)]
struct Fails {
    mode: String,
}

fn deep_panic() -> ! {
    panic!("deep trouble")
}

impl Fails {
    async fn perform(self, _ctx: &Context) -> Result<(), Heavy> {
        match self.mode.as_str() {
            "panic" => deep_panic(),
            _ => Err(Heavy { _data: vec![1; 1 << 20], dropped: &HEAVY_DROPPED }),
        }
    }
}

/// Sits just outside error capture and keeps what it sees.
struct Outside(Seen);

#[async_trait]
impl Middleware for Outside {
    fn name(&self) -> &'static str {
        "outside"
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let mut outcome = next.run(ctx).await;
        if let Outcome::Failed(failure) = &mut outcome {
            let raw = failure.error().is_some();
            let dropped = HEAVY_DROPPED.load(Ordering::SeqCst);
            self.0.lock().unwrap().push((failure.record().clone(), raw, dropped));
        }
        outcome
    }
}

type Seen = Arc<Mutex<Vec<(ErrorRecord, bool, bool)>>>;

fn app(capture: ErrorCapture, seen: &Seen) -> App {
    dramaturg::app(MemoryBroker::new())
        .replace("error_capture", capture)
        .insert_before("error_capture", Outside(Arc::clone(seen)))
        .actor::<Fails>()
        .build()
        .unwrap()
}

#[tokio::test]
async fn errors_become_bounded_records_and_the_value_is_dropped_at_once() {
    let seen = Seen::default();
    let mut limits = Limits::default();
    limits.message = 300;
    let app = app(ErrorCapture::new().limits(limits), &seen);
    Fails { mode: "error".into() }.send(&app).await.unwrap();
    Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    let seen = seen.lock().unwrap();
    let (record, raw, dropped) = &seen[0];
    assert!(!raw, "nothing outside error capture holds the error value");
    assert!(dropped, "the error value was dropped before the outcome left error capture");
    assert_eq!(record.kind, FailureKind::Error);
    assert!(record.type_name.ends_with("Heavy"), "{}", record.type_name);
    assert!(record.message.len() <= 300 && record.message.starts_with("heavy failure xxx"), "{}", record.message.len());
    assert!(record.message.ends_with('…'));
}

#[tokio::test]
async fn panics_become_failures_with_their_message_and_backtrace() {
    let seen = Seen::default();
    let app = app(ErrorCapture::new().panic_backtraces(true), &seen);
    Fails { mode: "panic".into() }.send(&app).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.failed, 1);
    let seen = seen.lock().unwrap();
    let record = &seen[0].0;
    assert_eq!((record.kind, record.message.as_str()), (FailureKind::Panic, "deep trouble"));
    let backtrace = record.backtrace.as_deref().unwrap();
    assert!(!backtrace.is_empty() && backtrace.len() <= Limits::default().backtrace);
}

#[tokio::test]
async fn panics_are_seen_by_retries() {
    let app = dramaturg::app(MemoryBroker::new())
        .replace("retries", Retries::new().max_retries(2).backoff(Duration::from_millis(1), Duration::from_millis(2)))
        .actor::<Fails>()
        .build()
        .unwrap();
    let options = SendOptions::default().with_options(|o| o.with_max_retries(2));
    Fails { mode: "panic".into() }.send_with(&app, options).await.unwrap();
    let report = Worker::new(app).run_until_drained(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.retried, report.failed), (2, 1), "{report:?}");
}
