//! The SQLite broker of a test, on a file of its own in a directory that
//! is deleted when the test ends.

use std::path::PathBuf;
use std::time::Duration;

use dramaturg::sqlite::{SqliteBroker, SqliteConfig};

use super::guarded::Guarded;

/// A directory of the test's own, deleted when dropped (at the end of the
/// test, passed or failed).
#[derive(Debug)]
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("dramaturg-sqlite-{}", dramaturg::MessageId::new()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }

    /// The URL of the database file `jobs.db` in it.
    pub(crate) fn url(&self) -> String {
        format!("sqlite://{}", self.0.join("jobs.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tests' settings for `url`: a short heartbeat (200 ms, claims lapse
/// after 1 s).
pub(crate) fn config(url: &str) -> SqliteConfig {
    SqliteConfig::new(url).heartbeat(Duration::from_millis(200), Duration::from_secs(1))
}

/// The broker on `url`, with the tests' settings.
pub(crate) async fn broker_at(url: &str) -> SqliteBroker {
    SqliteBroker::with_config(config(url)).await.expect("the test's file opens")
}

/// A broker on a new file, deleted when the last clone of the broker is
/// dropped: what the conformance suite gets.
pub(crate) async fn removing() -> Guarded<SqliteBroker, TempDir> {
    let dir = TempDir::new();
    let broker = broker_at(&dir.url()).await;
    Guarded::new(broker, dir)
}
