//! The runtime a broker value's connections live on: a small tokio runtime
//! on a thread of its own.
//!
//! lapin runs a connection's heartbeat, its RPC loop and the tasks that
//! answer the server on the runtime it connects with, and its socket and
//! timers wait on that runtime's drivers. On the worker's runtime, async
//! jobs that compute for seconds without reaching an `.await`, one on every
//! runtime thread, would starve all of them: no heartbeat goes out,
//! RabbitMQ closes the connection after two missed ones, and every
//! unacknowledged delivery of it goes back to the queue to run a second
//! time. So each broker value connects through a runtime of its own
//! (lapin's `connect_with_runtime`), on a thread that runs nothing else,
//! and the tasks that serve a connection — the watch of its blocked state,
//! the collection of its publisher confirms — run there too.
//!
//! What callers await (a publisher confirm, an acknowledgement, the next
//! delivery) are futures that thread completes and wakes, so they work from
//! any runtime: the worker's stays the caller's.
//!
//! The thread ends once the broker value, its clones and its consumers are
//! dropped: it first lets the connections it served close (for up to
//! [`CLOSE_GRACE`]), so that RabbitMQ gets a `connection.close` rather
//! than a dropped socket.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dramaturg_core::{BrokerError, BrokerErrorKind};
use lapin::{Connection, ConnectionProperties, ConnectionStatus};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The longest the thread waits, once its broker value is gone, for the
/// connections to close before it ends (and their sockets with it).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How often the closing thread looks at the connections' state (lapin
/// tells no one when it changes).
const CLOSE_POLL: Duration = Duration::from_millis(10);

/// The thread and runtime of a broker value's connections; they end when
/// this value is dropped.
pub(crate) struct ConnectionRuntime {
    handle: Handle,
    /// The connections opened through this runtime (by their state), for
    /// the thread to wait for their close.
    opened: Arc<Mutex<Vec<ConnectionStatus>>>,
    /// Dropped with this value, which tells the thread to end.
    _stop: oneshot::Sender<()>,
}

impl ConnectionRuntime {
    /// Starts the thread and its runtime.
    pub(crate) fn start() -> Result<Self, BrokerError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| cannot_start("runtime").with_source(e))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let opened = Arc::new(Mutex::new(Vec::new()));
        let closing = Arc::clone(&opened);
        std::thread::Builder::new()
            .name("dramaturg-amqp".into())
            .spawn(move || {
                runtime.block_on(async {
                    // Ends when the sender is dropped: nothing is ever sent.
                    let _ = stopped.await;
                    let _ = tokio::time::timeout(CLOSE_GRACE, all_closed(&closing)).await;
                });
            })
            .map_err(|e| cannot_start("thread").with_source(e))?;
        Ok(Self { handle, opened, _stop: stop })
    }

    /// Connects to `url` on this runtime: lapin spawns the connection's
    /// tasks here and registers its socket and timers with this runtime's
    /// drivers. Awaitable from any runtime.
    pub(crate) async fn connect(&self, url: &str, properties: ConnectionProperties) -> lapin::Result<Connection> {
        let runtime = async_rs::Runtime::tokio_with_handle(self.handle.clone());
        let connection = Connection::connect_with_runtime(url, properties, runtime).await?;
        let mut opened = dramaturg_core::sync::lock(&self.opened);
        opened.retain(|status| !is_done(status));
        opened.push(connection.status().clone());
        Ok(connection)
    }

    /// The runtime, for the tasks that serve a connection.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// Whether a connection is closed or failed: nothing more to wait for.
fn is_done(status: &ConnectionStatus) -> bool {
    status.closed() || status.errored()
}

/// Waits until every connection in `opened` is closed or failed.
async fn all_closed(opened: &Mutex<Vec<ConnectionStatus>>) {
    while !dramaturg_core::sync::lock(opened).iter().all(is_done) {
        tokio::time::sleep(CLOSE_POLL).await;
    }
}

fn cannot_start(what: &str) -> BrokerError {
    BrokerError::new(BrokerErrorKind::Other, format!("amqp: cannot start the {what} of the RabbitMQ connections"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_ends_with_its_value() {
        let runtime = ConnectionRuntime::start().expect("started");
        // A task that never ends on its own: the runtime's end drops it, and
        // the sender it holds with it.
        let (held, watched) = std::sync::mpsc::channel::<()>();
        runtime.handle().spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        assert_eq!(watched.recv_timeout(Duration::from_millis(200)), Err(std::sync::mpsc::RecvTimeoutError::Timeout));
        drop(runtime);
        // No connection to wait for: it ends at once, well within the grace.
        assert_eq!(watched.recv_timeout(CLOSE_GRACE), Err(std::sync::mpsc::RecvTimeoutError::Disconnected));
    }
}
