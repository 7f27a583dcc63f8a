//! The error-capture middleware of [dramaturg](https://docs.rs/dramaturg):
//! the innermost step around the actor.
//!
//! - A panic in the actor becomes a failure of kind `Panic` whose message is
//!   the panic's payload.
//! - Every failure is captured at once into a bounded
//!   [`ErrorRecord`](dramaturg_core::ErrorRecord): type name, display
//!   message, source chain and optional backtrace, each truncated to
//!   [`RecordLimits`] (about 4 KiB in all by default). The original error
//!   value is dropped right here, so whatever large data it held is freed
//!   before retries, callbacks, logs or dead-letter queues see the failure.
//!
//! With [`ErrorCapture::panic_backtraces`], the backtrace of a panic is taken
//! where it happened (through a panic hook that records it only while an
//! actor runs under this middleware) and kept in the record.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context as TaskContext, Poll};

use dramaturg_core::{async_trait, Context, Failure, Middleware, Next, Outcome, RecordLimits};
use futures_util::FutureExt;

pub use dramaturg_core::RecordLimits as Limits;

/// The error-capture middleware. Named `"error_capture"` in the stack.
///
/// # Examples
///
/// ```
/// use dramaturg_error_capture::{ErrorCapture, Limits};
///
/// let mut limits = Limits::default();
/// limits.message = 512;
/// let capture = ErrorCapture::new().limits(limits).panic_backtraces(true);
/// # let _ = capture;
/// ```
#[derive(Debug, Clone, Default)]
pub struct ErrorCapture {
    limits: RecordLimits,
    backtraces: bool,
}

impl ErrorCapture {
    /// Default limits, no backtraces.
    pub fn new() -> Self {
        Self::default()
    }

    /// Truncates records to `limits`.
    #[must_use]
    pub fn limits(mut self, limits: RecordLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Records where panics happened. Installs a panic hook once per process
    /// (it calls the hook that was there before).
    #[must_use]
    pub fn panic_backtraces(mut self, enabled: bool) -> Self {
        if enabled {
            install_panic_hook();
        }
        self.backtraces = enabled;
        self
    }
}

thread_local! {
    /// Whether a panic on this thread now happens inside a captured actor.
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    /// The backtrace of the last such panic.
    static LAST_BACKTRACE: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                let backtrace = std::backtrace::Backtrace::force_capture().to_string();
                LAST_BACKTRACE.with(|last| *last.borrow_mut() = Some(backtrace));
            }
            previous(info);
        }));
    });
}

/// Polls the inner future with [`CAPTURING`] set, so that the panic hook
/// knows a panic there is ours to record.
struct Capturing<F>(F);

impl<F: Future + Unpin> Future for Capturing<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let was = CAPTURING.with(|c| c.replace(true));
        let poll = Pin::new(&mut self.0).poll(cx);
        CAPTURING.with(|c| c.set(was));
        poll
    }
}

#[async_trait]
impl Middleware for ErrorCapture {
    fn name(&self) -> &'static str {
        dramaturg_core::middleware::names::ERROR_CAPTURE
    }

    async fn handle(&self, ctx: &Context, next: Next<'_>) -> Outcome {
        let attempt = AssertUnwindSafe(Box::pin(next.run(ctx))).catch_unwind();
        let result = if self.backtraces { Capturing(attempt).await } else { attempt.await };
        match result {
            Ok(Outcome::Failed(mut failure)) => {
                // What the middleware outside ask of the error, answered
                // while it is still here (by type, not by name).
                failure.note_types(ctx.app().error_types());
                failure.capture(&self.limits);
                Outcome::Failed(failure)
            }
            Ok(outcome) => outcome,
            Err(panic) => {
                let backtrace =
                    if self.backtraces { LAST_BACKTRACE.with(|last| last.borrow_mut().take()) } else { None };
                // A middleware inside this one may have panicked after the
                // actor had succeeded: then the work stands.
                ctx.controls().outcome_of_panic(Failure::from_panic(panic.as_ref(), backtrace.as_deref(), &self.limits))
            }
        }
    }
}
