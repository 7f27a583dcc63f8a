//! The routes: pages (`GET`) and actions (`POST`, CSRF-checked).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, Path, Query, Request, State as Extract};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use dramaturg_abort::{abort, AbortError, AbortOptions};
use dramaturg_core::{
    BrokerError, BrokerErrorKind, DecodedMessage, MessageId, QueueStats, Replay, ReplayError, ReplayRetries, Waiting,
    Whereabouts, WorkerInfo, HELD_LISTED,
};
use dramaturg_results::{ResultError, ResultHandle};
use maud::{html, Markup};
use serde::Deserialize;

use crate::chart;
use crate::page::{self, action, count, encode, frame, pager, short, time, Tab};
use crate::security::{is_action, unauthorized};
pub(crate) use crate::state::State;

/// Messages per page of a queue or of its dead letters.
pub(crate) const PAGE: usize = 50;
/// The last page of dead letters one may ask for: 50,000 dead letters, the
/// Redis broker's default cap (RabbitMQ streams past those before a page).
const LAST_PAGE: u64 = 1000;

/// Every route, behind the authentication and read-only gate.
pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/queues/{queue}", get(queue_page))
        .route("/queues/{queue}/dead", get(dead_page))
        // GET: one dead letter by key or id; POST: `replay` or `delete`.
        .route("/queues/{queue}/dead/{item}", get(dead_letter_page).post(dead_action))
        .route("/queues/{queue}/{action}", post(queue_action))
        .route("/workers", get(workers))
        .route("/lookup", get(lookup))
        .route("/messages/{id}/abort", post(abort_message))
        .route("/assets/dashboard.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], page::CSS) }))
        .route("/assets/dashboard.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], page::JS) }))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), gate))
        .with_state(state)
}

/// Authentication first (401), then read-only mode (403 for actions).
async fn gate(Extract(state): Extract<Arc<State>>, request: Request, next: Next) -> Response {
    if let Some(auth) = &state.auth {
        if !auth.allows(request.headers()) {
            return unauthorized().into_response();
        }
    }
    if state.read_only && is_action(request.method()) {
        return Failure::new(StatusCode::FORBIDDEN, "refused: this dashboard is read-only").into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert("x-frame-options", header::HeaderValue::from_static("DENY"));
    headers.insert("x-content-type-options", header::HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", header::HeaderValue::from_static("same-origin"));
    headers.insert(
        "content-security-policy",
        header::HeaderValue::from_static(
            "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

/// A request that did not succeed: its status and why, as a small page.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<BrokerError> for Failure {
    fn from(error: BrokerError) -> Self {
        let status = match error.kind() {
            BrokerErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
            BrokerErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        // The brokers keep passwords out of their errors.
        Self::new(status, error.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = html! {
            (maud::DOCTYPE)
            html lang="en" { head { meta charset="utf-8"; title { "dramaturg: " (self.status) } }
                body { h1 { (self.status) } p { (self.message) } } }
        };
        (self.status, body).into_response()
    }
}

type Page = Result<Markup, Failure>;

/// The note an action leaves for the page it redirects to.
#[derive(Debug, Deserialize)]
struct Note {
    note: Option<String>,
}

/// `queue` if the broker accepts the name (a clear 400 if not) and knows
/// the queue (404 if not). A broker that cannot list its queues (RabbitMQ)
/// declares a queue when it is looked at, so there only the app's queues
/// and those named to the dashboard are known: a request must not create
/// queues.
async fn checked(state: &State, queue: &str) -> Result<(), Failure> {
    state.app.broker().check_queue_name(queue).map_err(Failure::from)?;
    if state.names(queue) {
        return Ok(());
    }
    match state.app.admin()?.queues().await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == BrokerErrorKind::Unsupported => Err(Failure::not_found(format!(
            "no queue {queue:?} here: this broker cannot list its queues, and looking at one would declare it; \
             the dashboard shows the app's queues and those given to it (Dashboard::queues, --queue)"
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn overview(Extract(state): Extract<Arc<State>>, Query(note): Query<Note>) -> Page {
    let (queues, listable) = state.known_queues().await?;
    let admin = state.app.admin()?;
    let mut rows = Vec::with_capacity(queues.len());
    for queue in queues {
        let stats = admin.stats(&queue).await?;
        rows.push((queue, stats));
    }
    let minutes = match admin.outcomes_per_minute().await {
        Ok(minutes) => Some(minutes),
        Err(e) if e.kind() == BrokerErrorKind::Unsupported => None,
        Err(e) => return Err(e.into()),
    };
    let body = html! {
        (chart::render_outcomes(minutes.as_deref()))
        (chart::render(&state))
        @if !listable {
            p.muted { "This broker cannot list its queues (RabbitMQ): the app's queues and those given to the dashboard are shown." }
        }
        table id="queues" {
            thead { tr { th { "Queue" } th.num { "Ready" } th.num { "Delayed" } th.num { "In flight" } th.num { "Dead" } th { "State" } } }
            tbody {
                @for (queue, stats) in &rows {
                    tr data-queue=(queue) {
                        td { a href=(state.link(&format!("/queues/{}", encode(queue)))) { (queue) } }
                        (count(stats.ready)) (count(stats.delayed)) (in_flight_cell(stats))
                        td.num.zero[stats.dead == 0] {
                            a href=(state.link(&format!("/queues/{}/dead", encode(queue)))) { (stats.dead) }
                        }
                        td { @if stats.paused { span.badge.warn { "paused" } } @else { "running" } }
                    }
                }
                @if rows.is_empty() { tr { td colspan="6" .muted { "No queue holds messages." } } }
            }
        }
        p.muted { label { input #autorefresh type="checkbox"; " refresh every 5 s" } }
    };
    Ok(frame(&state, "Queues", Some(Tab::Overview), note.note.as_deref(), &body))
}

/// The query of a paged list: which messages (queue page only), which
/// page, the note of the last action.
#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    page: Option<u64>,
    note: Option<String>,
}

async fn queue_page(
    Extract(state): Extract<Arc<State>>,
    Path(queue): Path<String>,
    Query(query): Query<ListQuery>,
) -> Page {
    checked(&state, &queue).await?;
    let which = match query.state.as_deref() {
        None | Some("ready") => Waiting::Ready,
        Some("delayed") => Waiting::Delayed,
        Some(other) => return Err(Failure::bad_request(format!("no such state {other:?}: ready or delayed"))),
    };
    let page_number = query.page.unwrap_or(0);
    let stats = state.app.stats(&queue).await?;
    let listed = match state.app.queued_views(&queue, which, page_number.saturating_mul(PAGE as u64), PAGE).await {
        Ok(views) => Some(views),
        Err(e) if e.kind() == BrokerErrorKind::Unsupported => None,
        Err(e) => return Err(e.into()),
    };
    let path = format!("/queues/{}", encode(&queue));
    let state_name = if which == Waiting::Ready { "ready" } else { "delayed" };
    let body = html! {
        p.counts {
            span { b { (stats.ready) } " ready" } span { b { (stats.delayed) } " delayed" }
            span { b { (in_flight_text(&stats)) } " in flight" }
            span { a href=(state.link(&format!("{path}/dead"))) { b { (stats.dead) } " dead" } }
            @if stats.paused { span.badge.warn { "paused" } }
        }
        div.actions {
            @if stats.paused {
                (action(&state, &format!("{path}/resume"), &[], "Resume", "", None))
            } @else {
                (action(&state, &format!("{path}/pause"), &[], "Pause", "", None))
            }
            (action(&state, &format!("{path}/purge"), &[], "Purge ready and delayed", "danger",
                Some("Remove every ready and delayed message of this queue?")))
        }
        nav.tabs {
            a href=(state.link(&format!("{path}?state=ready"))) class=[(which == Waiting::Ready).then_some("active")] { "Ready" }
            a href=(state.link(&format!("{path}?state=delayed"))) class=[(which == Waiting::Delayed).then_some("active")] { "Delayed" }
        }
        @match &listed {
            None => p.notice {
                "This broker cannot show a queue's messages without consuming them (RabbitMQ delivers, it does not list): "
                "only the counts above are known. Find one message by its id on the dead-letter page, or abort it by id."
            },
            Some(views) => {
                table id="messages" {
                    thead { tr { th { "#" } th { "Id" } th { "Actor" } th { "Arguments" } th.num { "Retries" }
                        th { @if which == Waiting::Delayed { "Due" } @else { "Enqueued" } } th {} } }
                    tbody {
                        @for (i, view) in views.messages.iter().enumerate() {
                            tr {
                                td.num { (page_number.saturating_mul(PAGE as u64) + i as u64 + 1) }
                                @match &view.message {
                                    Ok(m) => {
                                        td.mono { a href=(state.link(&format!("/lookup?id={}", m.id))) { (m.id) } }
                                        td { (m.actor) } td.mono.args { (short(&m.args.to_string(), 120)) } td.num { (m.retries) }
                                        td.nowrap { (view.due.map_or_else(|| time(page::from_ms(m.enqueued_at_ms)), time)) }
                                        td { (abort_buttons(&state, &m.id.to_string())) }
                                    }
                                    Err(why) => { td.mono { (short(&view.id, 30)) } td.muted colspan="4" { (why) } td {} }
                                }
                            }
                        }
                        @if views.messages.is_empty() { tr { td colspan="7" .muted { "No " (state_name) " message on this page." } } }
                    }
                }
                (pager(&state, &path, page_number, page_number.saturating_add(1).saturating_mul(PAGE as u64) < views.total, &format!("&state={state_name}")))
            }
        }
    };
    Ok(frame(&state, &format!("Queue {queue}"), Some(Tab::Overview), query.note.as_deref(), &body))
}

/// The in-flight count across the fleet, or `?` where the broker cannot
/// tell it (RabbitMQ tells a client only its own unacknowledged deliveries).
fn in_flight_text(stats: &QueueStats) -> String {
    stats.fleet_in_flight().map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// [`in_flight_text`] in a table cell.
fn in_flight_cell(stats: &QueueStats) -> Markup {
    match stats.fleet_in_flight() {
        Some(n) => count(n),
        None => html! { td.num title="RabbitMQ does not tell how many deliveries the fleet holds" { "?" } },
    }
}

/// Abort and cancel buttons for message `id`.
fn abort_buttons(state: &State, id: &str) -> Markup {
    let path = format!("/messages/{}/abort", encode(id));
    html! {
        (action(state, &path, &[("mode", "cancel")], "Cancel", "small", None))
        (action(state, &path, &[("mode", "abort")], "Abort", "small danger", Some("Abort this message, interrupting it if it runs?")))
    }
}

async fn dead_page(
    Extract(state): Extract<Arc<State>>,
    Path(queue): Path<String>,
    Query(query): Query<ListQuery>,
) -> Page {
    checked(&state, &queue).await?;
    let page_number = query.page.unwrap_or(0);
    if page_number > LAST_PAGE {
        return Err(Failure::bad_request(format!(
            "dead letters are shown up to page {} ({} letters); replay or delete them all, or use the API",
            LAST_PAGE + 1,
            (LAST_PAGE + 1).saturating_mul(PAGE as u64)
        )));
    }
    let skip = usize::try_from(page_number).unwrap_or(usize::MAX).saturating_mul(PAGE);
    // This page's dead letters and one more, to know whether a next page exists.
    let mut views = state.app.dead_letter_page(&queue, skip, PAGE + 1).await?;
    let has_next = views.len() > PAGE;
    views.truncate(PAGE);
    let path = format!("/queues/{}/dead", encode(&queue));
    let body = html! {
        p { a href=(state.link(&format!("/queues/{}", encode(&queue)))) { "← queue " (queue) } }
        div.actions {
            (action(&state, &format!("{path}/replay"), &[("all", "1"), ("reset", "1")], "Replay all (retries reset)", "",
                Some("Replay every dead letter of this queue, with its retries given back?")))
            (action(&state, &format!("{path}/delete"), &[("all", "1")], "Delete all", "danger",
                Some("Delete every dead letter of this queue for good?")))
        }
        table id="dead" {
            thead { tr { th { "Id" } th { "Actor" } th { "Arguments" } th.num { "Retries" } th { "Dead since" } th { "Reason" } th {} } }
            tbody {
                @for view in &views {
                    tr data-key=(view.key) {
                        @let shown = view.message.as_ref().map_or_else(|_| short(&view.key, 30), |m| m.id.to_string());
                        td.mono { a href=(state.link(&format!("{path}/{}", encode(&view.key)))) { (shown) } }
                        @match &view.message {
                            Ok(m) => { td { (m.actor) } td.mono.args { (short(&m.args.to_string(), 80)) } td.num { (m.retries) } }
                            Err(why) => { td.muted colspan="3" { (short(why, 120)) } }
                        }
                        td.nowrap { (time(view.at)) }
                        td.reason { (short(&view.reason, 140)) }
                        td.nowrap {
                            (action(&state, &format!("{path}/replay"), &[("key", &view.key), ("reset", "1")], "Replay", "small", None))
                            (action(&state, &format!("{path}/delete"), &[("key", &view.key)], "Delete", "small danger",
                                Some("Delete this dead letter for good?")))
                        }
                    }
                }
                @if views.is_empty() { tr { td colspan="7" .muted { "No dead letter on this page." } } }
            }
        }
        (pager(&state, &path, page_number, has_next, ""))
    };
    Ok(frame(&state, &format!("Dead letters of {queue}"), Some(Tab::Overview), query.note.as_deref(), &body))
}

async fn dead_letter_page(Extract(state): Extract<Arc<State>>, Path((queue, key)): Path<(String, String)>) -> Page {
    checked(&state, &queue).await?;
    let view =
        state.app.find_dead_letter(&queue, &key).await?.ok_or_else(|| {
            Failure::not_found(format!("no dead letter of queue {queue:?} has the id or key {key:?}"))
        })?;
    let path = format!("/queues/{}/dead", encode(&queue));
    let body = html! {
        p { a href=(state.link(&path)) { "← dead letters of " (queue) } }
        dl {
            dt { "Key" } dd.mono { (view.key) }
            dt { "Dead since" } dd { (time(view.at)) }
            (message_fields(view.message.as_ref()))
            dt { "Reason" } dd { pre.reason { (view.reason) } }
        }
        div.actions {
            (action(&state, &format!("{path}/replay"), &[("key", &view.key), ("reset", "1")], "Replay (retries reset)", "", None))
            (action(&state, &format!("{path}/replay"), &[("key", &view.key)], "Replay as it was", "", None))
            (action(&state, &format!("{path}/delete"), &[("key", &view.key)], "Delete", "danger", Some("Delete this dead letter for good?")))
        }
    };
    Ok(frame(&state, "Dead letter", Some(Tab::Overview), None, &body))
}

/// The fields of a decoded message, for a `<dl>`.
fn message_fields(message: Result<&DecodedMessage, &String>) -> Markup {
    html! {
        @match message {
            Ok(m) => {
                dt { "Id" } dd.mono { (m.id) }
                dt { "Actor" } dd { (m.actor) }
                dt { "Queue" } dd { (m.queue) }
                dt { "Retries" } dd { (m.retries) }
                dt { "Enqueued" } dd { (time(page::from_ms(m.enqueued_at_ms))) }
                dt { "Arguments" } dd { pre { (page::pretty(&m.args)) } }
                dt { "Options" } dd { pre { (page::pretty(&serde_json::to_value(&m.options).unwrap_or_default())) } }
            }
            Err(why) => { dt { "Message" } dd.muted { (why) } }
        }
    }
}

/// The fields of a replay or delete form.
#[derive(Debug, Deserialize)]
struct Which {
    csrf: Option<String>,
    key: Option<String>,
    all: Option<String>,
    reset: Option<String>,
}

/// What an action form carries at least.
#[derive(Debug, Deserialize)]
struct Plain {
    csrf: Option<String>,
}

impl State {
    /// A 403 unless the `POST` is one of this dashboard's forms.
    fn guard(&self, headers: &HeaderMap, csrf: Option<&str>) -> Result<(), Failure> {
        self.csrf.check(headers, csrf).map_err(|why| Failure::new(StatusCode::FORBIDDEN, why))
    }

    /// Which dead letters a form names: all, or one that exists (404 if not).
    async fn target(&self, queue: &str, which: &Which) -> Result<Replay, Failure> {
        match (&which.key, which.all.as_deref()) {
            (_, Some("1")) => Ok(Replay::All),
            (Some(key), _) => {
                let found = self.app.find_dead_letter(queue, key).await?;
                let view = found.ok_or_else(|| {
                    Failure::not_found(format!("no dead letter of queue {queue:?} has the id or key {key:?}"))
                })?;
                Ok(Replay::One(view.key))
            }
            (None, _) => Err(Failure::bad_request("name a dead letter (key) or all of them (all=1)")),
        }
    }

    /// A 303 to `path` with `note` shown there.
    fn back(&self, path: &str, note: &str) -> Redirect {
        let joiner = if path.contains('?') { '&' } else { '?' };
        Redirect::to(&self.link(&format!("{path}{joiner}note={}", encode(note))))
    }
}

/// `POST /queues/{queue}/dead/{replay,delete}`: replay or delete one dead
/// letter (`key`) or all (`all=1`); a replay resets the retries with `reset=1`.
async fn dead_action(
    Extract(state): Extract<Arc<State>>,
    Path((queue, verb)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<Which>,
) -> Result<Redirect, Failure> {
    state.guard(&headers, form.csrf.as_deref())?;
    checked(&state, &queue).await?;
    if verb != "replay" && verb != "delete" {
        return Err(Failure::not_found(format!("no action {verb:?}: replay or delete")));
    }
    let target = state.target(&queue, &form).await?;
    let note = if verb == "delete" {
        format!("Deleted {} dead letters.", state.app.dead_letters()?.delete(&queue, target).await?)
    } else {
        let retries = if form.reset.as_deref() == Some("1") { ReplayRetries::Reset } else { ReplayRetries::Keep };
        let report = state.app.replay_dead_letters(&queue, target, retries).await.map_err(|e| match e {
            ReplayError::Broker(error) => Failure::from(error),
            other => Failure::new(StatusCode::BAD_GATEWAY, other.to_string()),
        })?;
        let mut note = format!("Replayed {} dead letters.", report.replayed);
        if !report.undecodable.is_empty() {
            note.push_str(&format!(" {} left: they do not decode.", report.undecodable.len()));
        }
        note
    };
    tracing::info!(queue, action = verb, "dramaturg-web: {note}");
    Ok(state.back(&format!("/queues/{}/dead", encode(&queue)), &note))
}

/// `POST /queues/{queue}/{purge,pause,resume}`: the queue's own actions.
async fn queue_action(
    Extract(state): Extract<Arc<State>>,
    Path((queue, verb)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<Plain>,
) -> Result<Redirect, Failure> {
    state.guard(&headers, form.csrf.as_deref())?;
    checked(&state, &queue).await?;
    let note = match verb.as_str() {
        "purge" => format!("Purged {} messages.", state.app.admin()?.purge(&queue).await?),
        "pause" => {
            state.app.pause(&queue).await?;
            "Paused: no worker claims its messages until resumed.".to_owned()
        }
        "resume" => {
            state.app.resume(&queue).await?;
            "Resumed.".to_owned()
        }
        other => return Err(Failure::not_found(format!("no action {other:?}: purge, pause or resume"))),
    };
    tracing::info!(queue, action = verb, "dramaturg-web: {note}");
    Ok(state.back(&format!("/queues/{}", encode(&queue)), &note))
}

async fn workers(Extract(state): Extract<Arc<State>>) -> Page {
    let listed = match state.app.admin()?.workers().await {
        Ok(workers) => Some(workers),
        Err(e) if e.kind() == BrokerErrorKind::Unsupported => None,
        Err(e) => return Err(e.into()),
    };
    let now = page::from_ms(state.app.broker().now_ms());
    let body = html! {
        @match &listed {
            None => p.notice { "This broker keeps no registry of workers (RabbitMQ tells no client who consumes)." },
            Some(workers) => table id="workers" {
                thead { tr { th { "Worker" } th.num { "Concurrency" } th { "Last heartbeat" } th { "Age" }
                    th { "Queues: messages held" } th { "Holding now" } } }
                tbody {
                    @for worker in workers {
                        tr data-worker=(worker.id) {
                            td.mono { (worker.id) }
                            td.num.concurrency { @if let Some(n) = worker.concurrency { (n) } @else { span.muted { "unknown" } } }
                            td { (time(worker.last_beat)) }
                            td { (page::ago(worker.last_beat, now)) }
                            td { @for (queue, n) in &worker.in_flight { span.chip { (queue) ": " (n) } } }
                            td { (held(&state, worker)) }
                        }
                    }
                    @if workers.is_empty() { tr { td colspan="6" .muted { "No worker is registered." } } }
                }
            },
        }
        p.muted { "Holding now: the messages a worker has claimed — running, or waiting for a concurrency slot — the oldest claims first, "
            (HELD_LISTED) " at most per worker." }
        p.muted { "A worker whose last heartbeat is older than its heartbeat timeout is dead; its messages go back to their queues at the next recovery." }
    };
    Ok(frame(&state, "Workers", Some(Tab::Workers), None, &body))
}

/// The messages `worker` holds, as links to their lookup with their actor
/// and queue, and how many more it holds than are listed.
fn held(state: &State, worker: &WorkerInfo) -> Markup {
    let holding: u64 = worker.in_flight.values().sum();
    let more = holding.saturating_sub(worker.held.len() as u64);
    html! {
        ul.held {
            @for message in &worker.held {
                li {
                    @match message.body.as_ref().map(|body| state.app.encoder().decode_message(body)) {
                        Some(Ok(m)) => {
                            a.mono href=(state.link(&format!("/lookup?id={}", m.id))) { (m.id) } " " (m.actor)
                        }
                        Some(Err(_)) => { span.mono { (short(&message.id, 30)) } " " span.muted { "(does not decode)" } }
                        None => { span.mono { (short(&message.id, 30)) } " " span.muted { "(settled meanwhile)" } }
                    }
                    " on " (message.queue)
                }
            }
        }
        @if more > 0 { span.muted { "and " (more) " more" } }
    }
}

#[derive(Debug, Deserialize)]
struct LookupQuery {
    id: Option<String>,
    note: Option<String>,
}

async fn lookup(Extract(state): Extract<Arc<State>>, Query(query): Query<LookupQuery>) -> Result<Response, Failure> {
    let form = html! {
        form.lookup method="get" action=(state.link("/lookup")) {
            input name="id" placeholder="message id" value=[query.id.as_deref()] size="40" required;
            button type="submit" { "Find" }
        }
    };
    let Some(id) = query.id.as_deref().map(str::trim).filter(|id| !id.is_empty()) else {
        return Ok(frame(&state, "Find a message", Some(Tab::Lookup), None, &form).into_response());
    };
    let parsed: MessageId =
        id.parse().map_err(|e: dramaturg_core::ParseMessageIdError| Failure::bad_request(e.to_string()))?;
    // The canonical form (a lower-case ULID, a UUID's other spellings).
    let id = &parsed.to_string();
    let (queues, _) = state.known_queues().await?;
    let mut found = None;
    let mut browsable = true;
    for queue in &queues {
        match state.app.locate_message(queue, id).await {
            Ok(Some(hit)) => {
                found = Some((queue.clone(), (hit.whereabouts, hit.message)));
                break;
            }
            Ok(None) => {}
            Err(e) if e.kind() == BrokerErrorKind::Unsupported => {
                browsable = false;
                // Still: its dead letters can be searched.
                if let Some(view) = state.app.find_dead_letter(queue, id).await? {
                    found = Some((queue.clone(), (Whereabouts::Dead, view.message)));
                    break;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    let Some((queue, (whereabouts, message))) = found else {
        if let Some(done) = finished(&state, parsed).await {
            let body = html! {
                (form)
                dl id="found" {
                    dt { "Where" } dd { span id="whereabouts" class=(format!("badge {}", done.class)) { "done" } " " (done.label) }
                    dt { (done.field) } dd { pre id="result" { (done.detail) } }
                }
            };
            return Ok(frame(&state, "Find a message", Some(Tab::Lookup), query.note.as_deref(), &body).into_response());
        }
        let body = html! {
            (form)
            p.notice {
                "No queue holds message " code { (id) } ": never sent, or done (settled messages leave the broker)."
                @if !browsable { " This broker can only search dead letters (RabbitMQ cannot list a queue's messages)." }
            }
            (abort_buttons(&state, &parsed.to_string()))
        };
        let page = frame(&state, "Find a message", Some(Tab::Lookup), query.note.as_deref(), &body);
        return Ok((StatusCode::NOT_FOUND, page).into_response());
    };
    let (label, class) = match whereabouts {
        Whereabouts::Ready => ("queued (ready)".to_owned(), "ok"),
        Whereabouts::Delayed { due: Some(due) } => (format!("delayed until {}", time(due)), "ok"),
        Whereabouts::Delayed { due: None } => ("delayed".to_owned(), "ok"),
        Whereabouts::InFlight => ("held by a worker (running, or fetched and waiting for a slot)".to_owned(), "warn"),
        Whereabouts::Dead => ("dead-lettered".to_owned(), "bad"),
        _ => ("elsewhere".to_owned(), ""),
    };
    let body = html! {
        (form)
        dl id="found" {
            dt { "Where" } dd { span id="whereabouts" class=(format!("badge {class}")) { (label) } " in queue "
                a href=(state.link(&format!("/queues/{}", encode(&queue)))) { (queue) } }
            (message_fields(message.as_ref()))
        }
        @if whereabouts == Whereabouts::Dead {
            p { a href=(state.link(&format!("/queues/{}/dead/{}", encode(&queue), encode(id)))) { "The dead letter, to replay or delete →" } }
        } @else {
            div.actions { (abort_buttons(&state, &parsed.to_string())) }
        }
    };
    Ok(frame(&state, "Find a message", Some(Tab::Lookup), query.note.as_deref(), &body).into_response())
}

/// A message's stored result, as the lookup shows it.
#[derive(Debug)]
struct Finished {
    label: &'static str,
    class: &'static str,
    field: &'static str,
    detail: String,
}

/// The result of message `id` if the app has a results backend and keeps
/// it now; `None` otherwise (no backend, none stored, or the store failed:
/// logged, and the lookup says where the message is, as without one).
async fn finished(state: &State, id: MessageId) -> Option<Finished> {
    let stored = ResultHandle::<serde_json::Value>::new(&state.app, id).get().await;
    let (label, class, field, detail) = match stored {
        Ok(value) => ("(succeeded)", "ok", "Result", page::pretty(&value)),
        Err(ResultError::Failed { record, .. }) => ("(failed)", "bad", "Error", record.summary()),
        Err(ResultError::Aborted { reason, .. }) => ("(aborted)", "warn", "Why", reason),
        Err(ResultError::Skipped { reason, .. }) => ("(skipped)", "warn", "Why", reason),
        Err(ResultError::Decode { source, .. }) => {
            ("(succeeded)", "ok", "Result", format!("kept, but not readable as JSON: {source}"))
        }
        Err(ResultError::NotYet(_) | ResultError::NotEnabled) => return None,
        Err(error) => {
            tracing::warn!(%error, "dramaturg-web: cannot read a message's result");
            return None;
        }
    };
    Some(Finished { label, class, field, detail })
}

#[derive(Debug, Deserialize)]
struct AbortForm {
    csrf: Option<String>,
    mode: Option<String>,
}

/// How long an abort request from the dashboard lasts.
const ABORT_TTL: Duration = Duration::from_secs(90);

async fn abort_message(
    Extract(state): Extract<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<AbortForm>,
) -> Result<Redirect, Failure> {
    state.guard(&headers, form.csrf.as_deref())?;
    let parsed: MessageId =
        id.parse().map_err(|e: dramaturg_core::ParseMessageIdError| Failure::bad_request(e.to_string()))?;
    let options = match form.mode.as_deref() {
        Some("cancel") => AbortOptions::cancel(),
        Some("abort") | None => AbortOptions::abort(),
        Some(other) => return Err(Failure::bad_request(format!("no such mode {other:?}: abort or cancel"))),
    }
    .with_ttl(ABORT_TTL);
    abort(&state.app, parsed, options).await.map_err(|e| match e {
        AbortError::NotConfigured => Failure::new(StatusCode::NOT_IMPLEMENTED, e.to_string()),
        AbortError::EventsNotShared { .. } => Failure::new(
            StatusCode::NOT_IMPLEMENTED,
            "this broker keeps no abort requests (RabbitMQ): give the dashboard an app whose abort middleware uses the workers' Redis",
        ),
        other => Failure::new(StatusCode::BAD_GATEWAY, other.to_string()),
    })?;
    tracing::info!(message_id = %parsed, mode = form.mode.as_deref().unwrap_or("abort"), "dramaturg-web: abort requested");
    let verb = if form.mode.as_deref() == Some("cancel") { "Cancel" } else { "Abort" };
    let note = format!(
        "{verb} requested: the workers act on it within moments (it lasts {}).",
        humantime::format_duration(ABORT_TTL)
    );
    Ok(state.back(&format!("/lookup?id={}", encode(&parsed.to_string())), &note))
}
