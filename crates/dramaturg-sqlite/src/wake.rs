//! Wake-ups within one process. SQLite has no `LISTEN`/`NOTIFY`: what a
//! process writes wakes the idle consumers of the same file in that
//! process at once, through a registry of files; consumers of other
//! processes see it at their next look (`poll_interval`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use dramaturg_core::sync::lock;
use tokio::sync::watch;

/// The files open in this process, each with its wake-ups.
static FILES: Mutex<Vec<(PathBuf, Weak<Wakes>)>> = Mutex::new(Vec::new());

/// The wake-ups of one file, shared by every broker value on it in this
/// process.
pub(crate) fn of_file(path: &Path) -> Arc<Wakes> {
    let mut files = lock(&FILES);
    files.retain(|(_, wakes)| wakes.strong_count() > 0);
    if let Some(wakes) = files.iter().find(|(p, _)| p == path).and_then(|(_, wakes)| wakes.upgrade()) {
        return wakes;
    }
    let wakes = Arc::new(Wakes::default());
    files.push((path.to_owned(), Arc::downgrade(&wakes)));
    wakes
}

/// A counter per queue that a write bumps and idle consumers watch: a
/// consumer that was claiming when it changed sees the change at its next
/// wait, so no wake-up is lost.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    queues: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Wakes {
    /// What a consumer of `queue` waits on.
    pub(crate) fn watch(&self, queue: &str) -> watch::Receiver<u64> {
        lock(&self.queues).entry(queue.to_owned()).or_insert_with(|| watch::Sender::new(0)).subscribe()
    }

    /// Wakes the consumers of `queue` in this process, and forgets the
    /// queue if it has none left.
    pub(crate) fn wake(&self, queue: &str) {
        let mut queues = lock(&self.queues);
        if let Some(sender) = queues.get(queue) {
            if sender.receiver_count() == 0 {
                queues.remove(queue);
            } else {
                sender.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wake_up_reaches_every_consumer_of_its_file_and_queue() {
        let file = of_file(Path::new("/nonexistent/a.db"));
        let same = of_file(Path::new("/nonexistent/a.db"));
        assert!(Arc::ptr_eq(&file, &same), "brokers on one file share their wake-ups");
        let mut a = file.watch("a");
        let mut b = file.watch("b");
        same.wake("a");
        tokio::time::timeout(Duration::from_secs(1), a.changed()).await.expect("woken").expect("open");
        assert!(tokio::time::timeout(Duration::from_millis(50), b.changed()).await.is_err(), "b was not woken");
        drop(a);
        file.wake("a");
        assert!(!lock(&file.queues).contains_key("a"), "a queue without consumers is forgotten");
    }
}
