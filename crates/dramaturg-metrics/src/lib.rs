//! Metrics for [dramaturg](https://docs.rs/dramaturg) through the
//! [`metrics`] facade, so that the process picks its exporter; with the
//! `prometheus` feature, a ready Prometheus recorder and an HTTP endpoint
//! that serves it ([`prometheus`]).
//!
//! - [`Metrics`]: the middleware. Counters of attempts by actor, queue and
//!   outcome, an in-progress gauge, histograms of processing time and of the
//!   wait before a message starts, and gauges of each queue's depth sampled
//!   from the broker while a worker runs. The names and labels are in
//!   [`names`].
//!
//! - [`trace`] (feature `opentelemetry`): the W3C trace context of the
//!   sending span carried in each message, continued by the worker's span.
//!
//! Without a recorder, the metrics go nowhere; without the middleware in
//! the stack, nothing runs at all.
//!
//! ```
//! use std::time::Duration;
//! use dramaturg_core::{actor::into_job_result, Actor, App, Context, Job, MemoryBroker, Worker};
//! use dramaturg_metrics::Metrics;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize;
//!
//! impl Actor for Resize {
//!     const NAME: &'static str = "resize";
//!     const QUEUE: &'static str = "images";
//!     type Output = ();
//!     fn into_job(self, _ctx: Context) -> Job {
//!         Box::pin(async { into_job_result::<Self, _>(Ok::<(), std::io::Error>(())) })
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! // A recorder first (here none: the calls are no-ops), then the app.
//! let app = App::builder(MemoryBroker::new()).middleware(Metrics::new()).actor::<Resize>().build().unwrap();
//! Resize.send(&app).await.unwrap();
//! let report = Worker::new(app).run_until_drained(Duration::from_secs(10)).await.unwrap();
//! assert_eq!(report.succeeded, 1);
//! # });
//! ```
//!
//! The operations guide (`docs/operations.md`) lists the metrics with
//! Grafana queries.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod every;
mod flush;
mod handles;
mod middleware;
pub mod names;
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub mod prometheus;
mod sampler;
mod tally;
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod trace;

pub use flush::{flush, FLUSH_INTERVAL};
pub use middleware::{Metrics, DEFAULT_SAMPLE_INTERVAL, NAME};
