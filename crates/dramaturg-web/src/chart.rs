//! The overview's chart: the dashboard samples every queue's depths every
//! few seconds (what [`QueueAdmin::stats`](dramaturg_core::QueueAdmin::stats)
//! reports) and keeps the last hour, in memory. It shows what it saw since
//! it started, no more: a new dashboard starts with an empty chart.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use maud::{html, Markup};

use crate::history::{Sample, SPAN};
use crate::state::State;

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
    // The chart spans what it has seen, from one minute up to the hour.
    let seen = samples.first().map_or(Duration::ZERO, |s| now.duration_since(s.at).unwrap_or_default());
    let span = seen.clamp(Duration::from_secs(60), SPAN);
    let x = |at: SystemTime| {
        let back = now.duration_since(at).unwrap_or_default().as_secs_f64();
        width * (1.0 - back / span.as_secs_f64())
    };
    let ago = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string() + " ago";
    let points = |i: usize| {
        samples.iter().map(|s| format!("{:.1},{:.1}", x(s.at), y(s.depths[i]))).collect::<Vec<_>>().join(" ")
    };
    html! {
        figure.chart {
            figcaption {
                "Messages in all queues, up to the last hour"
                span.muted { " — sampled by this dashboard every " (humantime::format_duration(state.sample_every))
                    " since it started; peak " (max) }
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
            div.axis { span { (ago(span)) } span { (ago(span / 2)) } span { "now" } }
            ul.legend {
                @for (label, class) in SERIES { li { span class=(format!("swatch {class}")) {} (label) } }
            }
        }
    }
}
