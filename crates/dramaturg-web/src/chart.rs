//! The overview's charts.
//!
//! Queue depths: the dashboard samples every queue's depths every few
//! seconds (what [`QueueAdmin::stats`](dramaturg_core::QueueAdmin::stats)
//! reports) and keeps the last hour, in memory. It shows what it saw since
//! it started, no more: a new dashboard starts with an empty chart.
//!
//! Processed and failed messages per minute: what the workers publish to
//! the broker, read back for the last hour at each page view, so it shows
//! the hour before the dashboard started too.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dramaturg_core::{MinuteOutcomes, OutcomeCounts};
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

/// The series of the depth chart: label, CSS class.
const SERIES: [(&str, &str); 4] =
    [("ready", "s-ready"), ("delayed", "s-delayed"), ("in flight", "s-inflight"), ("dead", "s-dead")];

/// The series of the outcome chart: label, CSS class.
const OUTCOME_SERIES: [(&str, &str); 2] = [("processed", "s-processed"), ("failed", "s-failed")];

/// A plot's size in SVG units.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;

/// One line of a plot: its CSS class and its points, each a fraction of
/// the width (0: left) and a count.
type Line = (&'static str, Vec<(f64, u64)>);

/// The lines as inline SVG, scaled so that `max` reaches near the top.
fn plot(label: &str, max: u64, lines: &[Line]) -> Markup {
    #[allow(clippy::cast_precision_loss)]
    let y = |n: u64| HEIGHT - (n as f64 / max.max(1) as f64) * (HEIGHT - 10.0);
    let points = |line: &[(f64, u64)]| {
        line.iter().map(|(x, n)| format!("{:.1},{:.1}", x * WIDTH, y(*n))).collect::<Vec<_>>().join(" ")
    };
    html! {
        svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) preserveAspectRatio="none" role="img" aria-label=(label) {
            @for frac in [0.25, 0.5, 0.75] {
                line.grid x1="0" x2=(WIDTH) y1=(format!("{:.1}", HEIGHT * frac)) y2=(format!("{:.1}", HEIGHT * frac)) {}
            }
            @for (class, line) in lines {
                polyline class=(class) points=(points(line)) {}
            }
        }
    }
}

/// The axis under a plot that spans `span` up to now, and its legend.
fn axis_and_legend(span: Duration, series: &[(&str, &str)]) -> Markup {
    let ago = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string() + " ago";
    html! {
        div.axis { span { (ago(span)) } span { (ago(span / 2)) } span { "now" } }
        ul.legend {
            @for (label, class) in series { li { span class=(format!("swatch {class}")) {} (label) } }
        }
    }
}

/// The depth chart of the last hour as inline SVG, with its legend.
pub(crate) fn render(state: &State) -> Markup {
    let samples = state.history.snapshot();
    let now = SystemTime::now();
    let max = samples.iter().flat_map(|s| s.depths).max().unwrap_or(0).max(1);
    // The chart spans what it has seen, from one minute up to the hour.
    let seen = samples.first().map_or(Duration::ZERO, |s| now.duration_since(s.at).unwrap_or_default());
    let span = seen.clamp(Duration::from_secs(60), SPAN);
    let x = |at: SystemTime| 1.0 - now.duration_since(at).unwrap_or_default().as_secs_f64() / span.as_secs_f64();
    let lines: Vec<Line> = SERIES
        .iter()
        .enumerate()
        .map(|(i, (_, class))| (*class, samples.iter().map(|s| (x(s.at), s.depths[i])).collect()))
        .collect();
    html! {
        figure.chart id="depths" {
            figcaption {
                "Messages in all queues, up to the last hour"
                span.muted { " — sampled by this dashboard every " (humantime::format_duration(state.sample_every))
                    " since it started; peak " (max) }
            }
            @if samples.len() < 2 {
                p.muted { "Collecting samples: the chart fills in as the dashboard runs." }
            }
            (plot("queue depths over the last hour", max, &lines))
            (axis_and_legend(span, &SERIES))
        }
    }
}

/// The chart of processed and failed messages per minute over the last
/// hour, from the counts the workers publish to the broker
/// ([`QueueAdmin::outcomes_per_minute`](dramaturg_core::QueueAdmin::outcomes_per_minute));
/// `None` from a broker that keeps none says so instead.
pub(crate) fn render_outcomes(minutes: Option<&[MinuteOutcomes]>) -> Markup {
    let Some(minutes) = minutes else {
        return html! {
            figure.chart id="outcomes" {
                figcaption { "Processed and failed messages per minute" }
                p.notice { "No per-minute counts: this broker keeps none (RabbitMQ keeps no per-minute counts), "
                    "so processed and failed messages per minute cannot be shown. The queue depths are charted below." }
            }
        };
    };
    let totals: Vec<OutcomeCounts> = minutes.iter().map(MinuteOutcomes::total).collect();
    let processed: u64 = totals.iter().map(OutcomeCounts::processed).sum();
    let failed: u64 = totals.iter().map(|t| t.failed).sum();
    let max = totals.iter().map(OutcomeCounts::processed).max().unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let x = |i: usize| if totals.len() < 2 { 1.0 } else { i as f64 / (totals.len() - 1) as f64 };
    let series = |count: fn(&OutcomeCounts) -> u64| totals.iter().enumerate().map(|(i, t)| (x(i), count(t))).collect();
    let lines: Vec<Line> = vec![("s-processed", series(OutcomeCounts::processed)), ("s-failed", series(|t| t.failed))];
    html! {
        figure.chart id="outcomes" data-processed=(processed) data-failed=(failed) {
            figcaption {
                "Processed and failed messages per minute, last hour"
                span.muted { " — as the workers report them; " (processed) " processed, " (failed) " failed, peak "
                    (max) " a minute" }
            }
            (plot("processed and failed messages per minute over the last hour", max, &lines))
            (axis_and_legend(SPAN, &OUTCOME_SERIES))
            p.muted { "Processed: attempts that succeeded or failed. Failed: attempts that failed (retried later or "
                "dead-lettered), and deliveries dead-lettered without running. Skipped, aborted and postponed ones are in neither." }
        }
    }
}
