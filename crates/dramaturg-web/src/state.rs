//! What every handler shares: the app, the options, the CSRF token, the
//! chart's samples.

use std::time::Duration;

use dramaturg_core::{App, BrokerError, BrokerErrorKind};

use crate::history::History;
use crate::security::{Auth, CsrfToken};
use crate::Dashboard;

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) app: App,
    pub(crate) read_only: bool,
    pub(crate) auth: Option<Auth>,
    mount_path: String,
    queues: Vec<String>,
    pub(crate) csrf: CsrfToken,
    pub(crate) history: History,
    pub(crate) sample_every: Duration,
}

impl State {
    pub(crate) fn new(dashboard: Dashboard) -> Self {
        Self {
            app: dashboard.app,
            read_only: dashboard.read_only,
            auth: dashboard.auth,
            mount_path: dashboard.mount_path,
            queues: dashboard.queues,
            csrf: CsrfToken::new(),
            history: History::default(),
            sample_every: dashboard.sample_every,
        }
    }

    /// `path` (from the dashboard's root) under the mount path.
    pub(crate) fn link(&self, path: &str) -> String {
        if path == "/" && !self.mount_path.is_empty() {
            // A nested router answers at the mount path itself, not with a slash after it.
            return self.mount_path.clone();
        }
        format!("{}{path}", self.mount_path)
    }

    /// Whether `queue` is one of the app's or named to the dashboard.
    pub(crate) fn names(&self, queue: &str) -> bool {
        self.app.queues().iter().chain(&self.queues).any(|known| known == queue)
    }

    /// The queues to show, sorted: those the broker lists, the app's, and
    /// those named to the dashboard; and whether the broker could list.
    pub(crate) async fn known_queues(&self) -> Result<(Vec<String>, bool), BrokerError> {
        let listed = match self.app.admin()?.queues().await {
            Ok(queues) => Some(queues),
            Err(e) if e.kind() == BrokerErrorKind::Unsupported => None,
            Err(e) => return Err(e),
        };
        let listable = listed.is_some();
        let mut queues: Vec<String> = listed.unwrap_or_default();
        queues.extend(self.app.queues().iter().cloned());
        queues.extend(self.queues.iter().cloned());
        queues.sort();
        queues.dedup();
        Ok((queues, listable))
    }
}
