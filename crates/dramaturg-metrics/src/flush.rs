//! Writing the middleware's per-thread tallies into the recorder: before
//! every scrape of the Prometheus endpoint, every [`FLUSH_INTERVAL`] while
//! a worker runs, when it stops, and whenever [`flush`] is called.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dramaturg_core::sync::lock;

use crate::every::Every;
use crate::handles::Handles;

/// How often a worker writes what the middleware tallied into the
/// recorder: what a scrape through another exporter than
/// [`prometheus`](crate::prometheus) may lag behind by.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The handles of every [`Metrics`](crate::Metrics) value alive.
static LIVE: Mutex<Vec<Weak<Handles>>> = Mutex::new(Vec::new());

/// Registers `handles` for [`flush`].
pub(crate) fn register(handles: &Arc<Handles>) {
    let mut live = lock(&LIVE);
    live.retain(|handles| handles.strong_count() > 0);
    live.push(Arc::downgrade(handles));
}

/// Writes what every [`Metrics`](crate::Metrics) middleware of the process
/// tallied since its last flush into the installed recorder.
///
/// The middleware counts on each runtime thread apart and writes the
/// counts into the recorder's counters, gauges and histograms at a flush,
/// so that messages on different threads do not contend for the same
/// atomics. The Prometheus endpoint ([`prometheus::serve`](crate::prometheus::serve))
/// flushes before every scrape, and each worker every [`FLUSH_INTERVAL`]
/// and when it stops; call this before reading the recorder by other
/// means to see every message up to now.
pub fn flush() {
    let live: Vec<Arc<Handles>> = lock(&LIVE).iter().filter_map(Weak::upgrade).collect();
    for handles in live {
        handles.flush();
    }
}

/// A worker's task that flushes `handles` every `interval` until stopped.
pub(crate) fn start(handles: Arc<Handles>, interval: Duration) -> Every {
    Every::start(interval, move || {
        handles.flush();
        std::future::ready(())
    })
}
