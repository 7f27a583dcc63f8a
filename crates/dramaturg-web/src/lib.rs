//! A web dashboard for [dramaturg](https://docs.rs/dramaturg): every
//! queue's depths (and a chart of them over the last hour), a chart of
//! processed and failed messages per minute from the workers' counts
//! ([`QueueAdmin::outcomes_per_minute`](dramaturg_core::QueueAdmin::outcomes_per_minute)),
//! a queue's messages a page at a time with their actor and arguments
//! decoded, dead letters a page at a time (replay, delete), the workers
//! with their concurrency and the messages they hold, a message looked up
//! by id (done, with its stored result, when the app keeps results), and
//! abort, pause, resume and purge.
//!
//! It is an [axum] [`Router`]: mount it into your own app, or let the
//! `dramaturg web` command serve it. Pages are rendered on the server; the
//! one stylesheet and the small script are compiled into the binary.
//!
//! ```no_run
//! # async fn run(app: dramaturg_core::App) -> std::io::Result<()> {
//! use dramaturg_web::{Auth, Dashboard};
//!
//! let dashboard = Dashboard::new(app).auth(Auth::token("s3cret")).mount_path("/jobs").router();
//! let router = axum::Router::new().nest("/jobs", dashboard);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, router).await
//! # }
//! ```
//!
//! # Safe by default
//!
//! - Actions that change state (replay, delete, abort, cancel, purge,
//!   pause, resume) are `POST`s that carry a per-dashboard random token in
//!   a hidden field; a `POST` without it, with another, or that the
//!   browser marks `Sec-Fetch-Site: cross-site`, is refused with 403.
//! - [`Dashboard::read_only`] hides the actions and refuses them (403).
//! - [`Dashboard::auth`] asks for a token (a bearer token, or HTTP basic
//!   auth whose password is the token) or a user and password; anything
//!   else answers 401. For your own authentication, wrap the router in
//!   your own tower layer (`router.layer(...)`) instead.
//! - No broker URL and no password is ever rendered.

mod chart;
mod history;
mod page;
mod routes;
mod security;
mod state;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use dramaturg_core::App;

pub use security::Auth;

/// How often the dashboard samples queue depths for the overview's chart.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// The dashboard of one app: build it, then take its [`Router`].
#[derive(Debug, Clone)]
pub struct Dashboard {
    app: App,
    read_only: bool,
    auth: Option<Auth>,
    mount_path: String,
    queues: Vec<String>,
    sample_every: Duration,
}

impl Dashboard {
    /// The dashboard of `app`'s broker (its encoder decodes the messages,
    /// its abort middleware receives the abort requests).
    pub fn new(app: App) -> Self {
        Self {
            app,
            read_only: false,
            auth: None,
            mount_path: String::new(),
            queues: Vec::new(),
            sample_every: SAMPLE_EVERY,
        }
    }

    /// Shows no action and refuses every `POST` with 403 (`true`).
    #[must_use]
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Asks every request for `auth`; without, the dashboard asks for
    /// nothing (bind it to loopback, or put your own layer in front).
    #[must_use]
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The path the router is nested under (`"/jobs"` for
    /// `Router::new().nest("/jobs", router)`), for the links of its pages.
    /// Empty (the default) when it is served at the root.
    #[must_use]
    pub fn mount_path(mut self, path: impl Into<String>) -> Self {
        self.mount_path = path.into().trim_end_matches('/').to_owned();
        self
    }

    /// Queues to show besides those the broker lists: the app's own
    /// queues always, and these. RabbitMQ lists none, so name them there.
    #[must_use]
    pub fn queues(mut self, queues: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.queues.extend(queues.into_iter().map(Into::into));
        self
    }

    /// How often queue depths are sampled for the chart ([`SAMPLE_EVERY`]
    /// by default); the chart keeps the last hour.
    #[must_use]
    pub fn sample_every(mut self, every: Duration) -> Self {
        self.sample_every = every.max(Duration::from_secs(1));
        self
    }

    /// The router: pages under `/`, assets under `/assets/`. Call it inside
    /// a Tokio runtime: it starts the sampler of the chart, which stops
    /// when the router (every clone of it) is dropped.
    pub fn router(self) -> Router {
        let state = Arc::new(state::State::new(self));
        chart::start_sampler(&state);
        routes::router(state)
    }

    /// Serves the dashboard on `listener` until `shutdown` completes, then
    /// lets the requests under way finish. What `dramaturg web` runs.
    ///
    /// # Errors
    ///
    /// An I/O error from the listener.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes the listener and every connection.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await
    }
}
