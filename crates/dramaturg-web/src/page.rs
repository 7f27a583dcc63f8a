//! The parts every page shares: the frame, forms that carry the CSRF
//! token, links, times and arguments shown short.

use std::time::{Duration, SystemTime};

use maud::{html, Markup, DOCTYPE};

use crate::state::State;

/// The stylesheet, compiled in.
pub(crate) const CSS: &str = include_str!("../assets/dashboard.css");
/// The script (confirmations, auto-refresh), compiled in.
pub(crate) const JS: &str = include_str!("../assets/dashboard.js");

/// Which tab of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tab {
    Overview,
    Workers,
    Lookup,
}

/// A whole page: head, navigation, the note of the last action, `body`.
pub(crate) fn frame(state: &State, title: &str, tab: Option<Tab>, note: Option<&str>, body: &Markup) -> Markup {
    let nav = |this: Tab, path: &str, label: &str| {
        html! { a href=(state.link(path)) class=[(tab == Some(this)).then_some("active")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · dramaturg" }
                link rel="stylesheet" href=(state.link("/assets/dashboard.css"));
                script src=(state.link("/assets/dashboard.js")) defer {}
            }
            body {
                header {
                    a.brand href=(state.link("/")) { "dramaturg" }
                    nav {
                        (nav(Tab::Overview, "/", "Queues"))
                        (nav(Tab::Workers, "/workers", "Workers"))
                        (nav(Tab::Lookup, "/lookup", "Find a message"))
                    }
                    @if state.read_only { span.badge { "read-only" } }
                }
                main {
                    h1 { (title) }
                    @if let Some(note) = note { p.note role="status" { (note) } }
                    (body)
                }
            }
        }
    }
}

/// A one-button form that `POST`s `fields` and the CSRF token to `path`;
/// nothing in read-only mode. `confirm` asks first (with the script).
pub(crate) fn action(
    state: &State,
    path: &str,
    fields: &[(&str, &str)],
    label: &str,
    class: &str,
    confirm: Option<&str>,
) -> Markup {
    if state.read_only {
        return html! {};
    }
    html! {
        form.inline method="post" action=(state.link(path)) data-confirm=[confirm] {
            input type="hidden" name="csrf" value=(state.csrf.as_str());
            @for (name, value) in fields { input type="hidden" name=(name) value=(value); }
            button type="submit" class=(class) { (label) }
        }
    }
}

/// `text` percent-encoded for a path segment or a query value.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `at` in UTC to the second, as `2026-12-03 02:15:44Z` (RFC 3339 with a space).
pub(crate) fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string().replacen('T', " ", 1)
}

/// How long ago `at` was, by `now`, to the tenth of a second.
pub(crate) fn ago(at: SystemTime, now: SystemTime) -> String {
    let age = now.duration_since(at).unwrap_or(Duration::ZERO);
    format!("{:.1}s ago", age.as_secs_f64())
}

/// Milliseconds since the epoch as a time.
pub(crate) fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// `text` cut to `max` characters, with `…` when cut.
pub(crate) fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// JSON, indented, for a `<pre>`.
pub(crate) fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Links to the previous and next page of a paged list.
pub(crate) fn pager(state: &State, path: &str, page: u64, has_next: bool, extra: &str) -> Markup {
    html! {
        nav.pager {
            @if page > 0 { a href=(state.link(&format!("{path}?page={}{extra}", page - 1))) { "← previous" } }
            span { "page " (page.saturating_add(1)) }
            @if has_next { a href=(state.link(&format!("{path}?page={}{extra}", page.saturating_add(1)))) { "next →" } }
        }
    }
}

/// A cell with a number, dimmed when zero.
pub(crate) fn count(n: u64) -> Markup {
    html! { td.num.zero[n == 0] { (n) } }
}
