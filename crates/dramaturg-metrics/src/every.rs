//! A worker's task that does something at an interval until stopped: the
//! queue depth sampler and the flusher of the tallies.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running task that calls its tick now and then every interval.
#[derive(Debug)]
pub(crate) struct Every {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Every {
    /// Runs `tick` now and then every `interval` (after the last one ended,
    /// when one runs late), until stopped; a tick under way when stopped is
    /// dropped.
    pub(crate) fn start<F, T>(interval: Duration, mut tick: F) -> Self
    where
        F: FnMut() -> T + Send + 'static,
        T: Future<Output = ()> + Send,
    {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                tokio::select! {
                    () = stopped.cancelled() => return,
                    () = tick() => {}
                }
            }
        });
        Self { stop, task }
    }

    /// Stops the task and waits for it to end.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
