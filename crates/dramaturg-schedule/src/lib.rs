//! Periodic jobs and unique jobs for [dramaturg](https://docs.rs/dramaturg),
//! claimed once across a fleet of workers in the app's
//! [store](dramaturg_core::store) (Redis for a fleet, memory for one
//! process and tests).
//!
//! - [`Periodic`]: a middleware that sends [`Schedule`]s' messages — cron
//!   expressions with seconds and time zones, or fixed intervals — from
//!   inside the app's ordinary workers. With N workers running, each tick
//!   is enqueued once: the workers claim it in the store (a worker that
//!   dies between its claim and the send loses that tick; a tick's message
//!   is processed at least once, like every message). After downtime,
//!   missed ticks are skipped or caught up on ([`Missed`]); [`next_runs`]
//!   lists when each schedule ticks next.
//! - [`UniqueJobs`]: a middleware that refuses a second send of a message
//!   while the first holds its uniqueness key — while queued, while queued
//!   or running, or for a fixed time ([`unique::Scope`]) — with
//!   [`EnqueueError::Duplicate`](dramaturg_core::EnqueueError::Duplicate)
//!   naming the message that holds it. The key is released when the
//!   message ends for good and lapses after its TTL, so a crash never
//!   blocks it for good.
//!
//! Both need a store that every worker shares: the Redis broker's, or a
//! `RedisStore` beside RabbitMQ (which has none: `for_broker` says so at
//! start).
//!
//! ```
//! use std::time::Duration;
//! use dramaturg_core::{actor::into_job_result, Actor, App, Context, EnqueueError, Job, MemoryBroker, Options};
//! use dramaturg_schedule::unique::Unique;
//! use dramaturg_schedule::UniqueJobs;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Export { customer: u64 }
//!
//! impl Actor for Export {
//!     const NAME: &'static str = "export";
//!     const QUEUE: &'static str = "default";
//!     type Output = ();
//!     fn options() -> Options {
//!         Unique::while_queued_or_running().ttl(Duration::from_secs(600)).apply(Options::default())
//!     }
//!     fn into_job(self, _ctx: Context) -> Job {
//!         Box::pin(async { into_job_result::<Self, _>(Ok::<(), std::io::Error>(())) })
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let broker = MemoryBroker::new();
//! let unique = UniqueJobs::for_broker(&broker).unwrap();
//! let app = App::builder(broker).middleware(unique).actor::<Export>().build().unwrap();
//! let first = Export { customer: 7 }.send(&app).await.unwrap();
//! match (Export { customer: 7 }).send(&app).await {
//!     Err(EnqueueError::Duplicate { existing, .. }) => assert_eq!(existing, first.id()),
//!     other => panic!("expected a duplicate, got {other:?}"),
//! }
//! Export { customer: 8 }.send(&app).await.unwrap(); // other arguments, another key
//! # });
//! ```
//!
//! `docs/schedule.md` in the repository has the guarantees, their limits
//! (clock skew, the crash window, TTLs) and recipes.

mod every;
mod fleet;
mod periodic;
mod schedule;
mod ticks;
pub mod unique;
mod unique_jobs;

pub use periodic::{
    next_runs, NextRun, Periodic, DEFAULT_MAX_CLOCK_SKEW, NAME as PERIODIC, PERIODIC_SCHEDULE, PERIODIC_TICK_MS,
};
pub use schedule::{Missed, Schedule, ScheduleError, DEFAULT_GRACE, MAX_CATCH_UP, MAX_INTERVAL, MIN_GRACE};
pub use unique_jobs::{UniqueJobs, NAME as UNIQUE_JOBS};
