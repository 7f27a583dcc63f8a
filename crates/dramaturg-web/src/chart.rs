//! The overview's chart: the dashboard samples every queue's depths every
//! few seconds (what [`QueueAdmin::stats`](dramaturg_core::QueueAdmin::stats)
//! reports) and keeps the last hour, in memory. It shows what it saw since
//! it started, no more: a new dashboard starts with an empty chart.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use maud::{html, Markup};

use crate::routes::State;

/// How far back the chart goes.
const SPAN: Duration = Duration::from_secs(3600);

/// One sample: when, and the depths summed over every queue.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: SystemTime,
    /// Ready, delayed, in flight, dead.
    depths: [u64; 4],
}

/// The samples of the last hour, oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push_back(sample);
        while samples.front().is_some_and(|s| sample.at.duration_since(s.at).unwrap_or_default() > SPAN) {
            samples.pop_front();
        }
    }

    fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(PoisonError::into_inner).iter().copied().collect()
    }
}

/// Starts sampling into `state`'s history, now and every
/// `state.sample_every`, until the state is dropped (the router is gone).
/// Outside a Tokio runtime there is no sampler, and the chart says so.
pub(crate) fn start_sampler(state: &Arc<State>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("dramaturg-web: no Tokio runtime when the router was built; the chart stays empty");
        return;
    };
    let weak = Arc::downgrade(state);
    let every = state.sample_every;
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(state) = weak.upgrade() else { return };
            sample(&state).await;
        }
    });
}

/// Adds one sample of every queue's depths; a broker that fails is
/// logged, and that sample is skipped (a gap, not a zero).
async fn sample(state: &State) {
    let queues = match state.known_queues().await {
        Ok((queues, _)) => queues,
        Err(error) => {
            tracing::warn!(%error, "dramaturg-web: cannot list queues for the chart");
            return;
        }
    };
    let Ok(admin) = state.app.admin() else { return };
    let mut depths = [0u64; 4];
    for queue in &queues {
        match admin.stats(queue).await {
            Ok(stats) => {
                for (sum, n) in depths.iter_mut().zip([stats.ready, stats.delayed, stats.in_flight, stats.dead]) {
                    *sum += n;
                }
            }
            Err(error) => {
                tracing::warn!(%error, queue, "dramaturg-web: cannot sample a queue for the chart");
                return;
            }
        }
    }
    state.history.push(Sample { at: SystemTime::now(), depths });
}

/// The series of the chart: label, CSS class.
const SERIES: [(&str, &str); 4] =
    [("ready", "s-ready"), ("delayed", "s-delayed"), ("in flight", "s-inflight"), ("dead", "s-dead")];

/// The chart of the last hour as inline SVG, with its legend.
pub(crate) fn render(state: &State) -> Markup {
    let samples = state.history.snapshot();
    let (width, height) = (720.0_f64, 160.0_f64);
    let now = SystemTime::now();
    let max = samples.iter().flat_map(|s| s.depths).max().unwrap_or(0).max(1);
    #[allow(clippy::cast_precision_loss)]
    let y = |n: u64| height - (n as f64 / max as f64) * (height - 10.0);
    let x = |at: SystemTime| {
        let back = now.duration_since(at).unwrap_or_default().as_secs_f64();
        width * (1.0 - back / SPAN.as_secs_f64())
    };
    let points = |i: usize| {
        samples.iter().map(|s| format!("{:.1},{:.1}", x(s.at), y(s.depths[i]))).collect::<Vec<_>>().join(" ")
    };
    html! {
        figure.chart {
            figcaption {
                "Messages over the last hour, all queues (sampled by this dashboard every "
                (humantime::format_duration(state.sample_every)) "; max " (max) ")"
            }
            @if samples.len() < 2 {
                p.muted { "Collecting samples: the chart fills in as the dashboard runs." }
            }
            svg viewBox=(format!("0 0 {width} {height}")) preserveAspectRatio="none" role="img"
                aria-label="queue depths over the last hour" {
                @for frac in [0.25, 0.5, 0.75] {
                    line.grid x1="0" x2=(width) y1=(format!("{:.1}", height * frac)) y2=(format!("{:.1}", height * frac)) {}
                }
                @for (i, (_, class)) in SERIES.iter().enumerate() {
                    polyline class=(class) points=(points(i)) {}
                }
            }
            div.axis { span { "1 h ago" } span { "30 min" } span { "now" } }
            ul.legend {
                @for (label, class) in SERIES { li { span.swatch class=(class) {} (label) } }
            }
        }
    }
}
