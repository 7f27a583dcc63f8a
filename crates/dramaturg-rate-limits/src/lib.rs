//! Rate and concurrency limits for [dramaturg](https://docs.rs/dramaturg)
//! that hold across a fleet of workers, kept in the app's
//! [store](dramaturg_core::store) (Redis for a fleet, memory for one
//! process and tests).
//!
//! - [`Limiter`]: a concurrency limit (at most N holders of a key at once,
//!   on renewed leases), a sliding window (at most N per period) or a GCRA
//!   bucket (N per period, paced, with a burst). Inside an actor,
//!   [`Limiter::acquire`] waits for a place and [`Limiter::try_acquire`]
//!   does not; the [`Permit`] gives a concurrency slot back when dropped,
//!   also by a panic.
//! - [`RateLimits`]: the middleware that enforces limits declared on an
//!   actor (options [`RATE_LIMIT`], [`CONCURRENCY`], [`LIMIT_KEY`]). A
//!   message over its limit is put off without running, failing or using
//!   a retry ([`Outcome::Postponed`](dramaturg_core::Outcome::Postponed)).
//!
//! ```
//! use std::time::Duration;
//! use dramaturg_core::{actor::into_job_result, Actor, App, Context, Job, MemoryBroker, Options, Worker};
//! use dramaturg_rate_limits::{RateLimits, CONCURRENCY, RATE_LIMIT};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct CallApi;
//!
//! impl Actor for CallApi {
//!     const NAME: &'static str = "call_api";
//!     const QUEUE: &'static str = "default";
//!     type Output = ();
//!     fn options() -> Options {
//!         Options::default().with_option(RATE_LIMIT, "100/s".to_owned()).with_option(CONCURRENCY, 2)
//!     }
//!     fn into_job(self, _ctx: Context) -> Job {
//!         Box::pin(async { into_job_result::<Self, _>(Ok::<(), std::io::Error>(())) })
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let broker = MemoryBroker::new();
//! let limits = RateLimits::for_broker(&broker).unwrap();
//! let app = App::builder(broker).middleware(limits).actor::<CallApi>().build().unwrap();
//! for _ in 0..10 {
//!     CallApi.send(&app).await.unwrap();
//! }
//! let report = Worker::new(app).run_until_drained(Duration::from_secs(10)).await.unwrap();
//! assert_eq!(report.succeeded, 10);
//! assert_eq!(report.retried, 0);
//! # });
//! ```
//!
//! The guide's "Rate and concurrency limits" section has recipes.

mod limiter;
mod middleware;
mod rate;

pub use limiter::{LimitError, Limiter, Permit, DEFAULT_LEASE, DEFAULT_RECHECK, DEFAULT_TIMEOUT};
pub use middleware::{LimitConfigError, RateLimits, WhenUnreachable, CONCURRENCY, LIMIT_KEY, NAME, RATE_LIMIT};
pub use rate::{ParseRateError, Rate};
