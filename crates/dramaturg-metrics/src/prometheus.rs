//! A Prometheus recorder for the [`metrics`] facade, and an HTTP endpoint
//! that serves it at `/metrics`.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In `main`, before the worker starts:
//! let server = dramaturg_metrics::prometheus::serve("0.0.0.0:9100")?;
//! println!("metrics at http://{}/metrics", server.local_addr());
//! # Ok(()) }
//! ```
//!
//! The endpoint runs on a thread of its own with a small runtime, so it
//! answers scrapes even while handlers hold every thread of the worker's
//! runtime. It stops when the [`MetricsServer`] is dropped.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio::sync::oneshot;

use crate::names::{MESSAGE_DURATION, MESSAGE_START_DELAY};

/// The buckets of the duration and start-delay histograms, in seconds:
/// from a millisecond to ten minutes.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// The content type of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the recorder's upkeep runs: it drains the samples that
/// histograms buffer (a few MB per second at the in-memory bench's rate)
/// into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The Prometheus exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExporterError {
    /// The process has a metrics recorder already (one per process, set by
    /// the first `install`); use its handle.
    #[error("a metrics recorder is installed in this process already")]
    RecorderInstalled,
    /// The address does not resolve or cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server's thread or runtime could not be started.
    #[error("cannot start the metrics server: {0}")]
    Start(#[source] std::io::Error),
}

/// Installs a Prometheus recorder as the process's [`metrics`] recorder,
/// with [`SECONDS_BUCKETS`] for dramaturg's histograms (so that they are
/// exposed as Prometheus histograms, which `histogram_quantile` can
/// aggregate across workers), and returns its handle (to render, or to
/// [`MetricsServer::start`]). A thread of its own runs the recorder's
/// upkeep every second for the life of the process, so that what
/// histograms buffer stays small whether or not anyone scrapes. Rendering
/// the handle yourself, call [`flush`](crate::flush()) first to include
/// the middleware's counts of the last second.
///
/// # Errors
///
/// [`ExporterError::RecorderInstalled`] when the process has a recorder;
/// [`ExporterError::Start`] when the upkeep thread cannot start (the
/// recorder is installed then, and [`PrometheusHandle::run_upkeep`] is
/// yours to call).
pub fn install() -> Result<PrometheusHandle, ExporterError> {
    let builder = [MESSAGE_DURATION, MESSAGE_START_DELAY].into_iter().fold(PrometheusBuilder::new(), |b, name| {
        b.set_buckets_for_metric(Matcher::Full(name.to_owned()), SECONDS_BUCKETS)
            .expect("the buckets are a non-empty constant")
    });
    let handle = builder.install_recorder().map_err(|_| ExporterError::RecorderInstalled)?;
    let upkept = handle.clone();
    std::thread::Builder::new()
        .name("dramaturg-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkept.run_upkeep();
        })
        .map_err(ExporterError::Start)?;
    Ok(handle)
}

/// [`install`]s the recorder and serves it at `http://addr/metrics`.
///
/// # Errors
///
/// [`ExporterError`]: a recorder is installed already, `addr` cannot be
/// listened on, or the server cannot start.
pub fn serve(addr: impl ToSocketAddrs + std::fmt::Display) -> Result<MetricsServer, ExporterError> {
    // Bind first: a bad address then leaves no recorder behind.
    let listener = bind(&addr)?;
    MetricsServer::on_listener(listener, install()?)
}

fn bind(addr: &(impl ToSocketAddrs + std::fmt::Display)) -> Result<StdListener, ExporterError> {
    let listener = StdListener::bind(addr).map_err(|source| ExporterError::Bind { addr: addr.to_string(), source })?;
    listener.set_nonblocking(true).map_err(ExporterError::Start)?;
    Ok(listener)
}

/// An HTTP endpoint serving a recorder's metrics at `/metrics` (`GET`;
/// other paths answer 404, other methods 405). It stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    handle: PrometheusHandle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `handle`'s metrics on `addr` (port 0: any free port; see
    /// [`MetricsServer::local_addr`]). The recorder's upkeep is not the
    /// server's: [`install`] runs it for the recorders it installs.
    ///
    /// # Errors
    ///
    /// [`ExporterError::Bind`] when `addr` cannot be listened on,
    /// [`ExporterError::Start`] when the thread cannot start.
    pub fn start(
        addr: impl ToSocketAddrs + std::fmt::Display,
        handle: PrometheusHandle,
    ) -> Result<Self, ExporterError> {
        Self::on_listener(bind(&addr)?, handle)
    }

    fn on_listener(listener: StdListener, handle: PrometheusHandle) -> Result<Self, ExporterError> {
        let local_addr = listener.local_addr().map_err(ExporterError::Start)?;
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ExporterError::Start)?;
        let (stop, stopped) = oneshot::channel();
        let served = handle.clone();
        let thread = std::thread::Builder::new()
            .name("dramaturg-metrics-http".into())
            .spawn(move || runtime.block_on(run(listener, served, stopped)))
            .map_err(ExporterError::Start)?;
        Ok(Self { local_addr, handle, stop: Some(stop), thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The recorder's handle: [`PrometheusHandle::render`] gives what a
    /// scrape would.
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn run(listener: StdListener, handle: PrometheusHandle, mut stopped: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "the metrics server cannot listen");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| {
                            let response = respond(&handle, &request);
                            async move { Ok::<_, Infallible>(response) }
                        });
                        if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                            tracing::debug!(%error, "a metrics connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: wait, not spin.
                    tracing::warn!(%error, "the metrics server could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

fn respond(handle: &PrometheusHandle, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            crate::flush();
            (StatusCode::OK, handle.render())
        }
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT_TYPE_TEXT));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, hyper::header::HeaderValue::from_static("GET"));
    }
    response
}
