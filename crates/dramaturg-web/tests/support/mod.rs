//! What the dashboard's tests share: requests through the router, the
//! CSRF token of a page, a table row's cells, a unique name.

#![allow(dead_code, unreachable_pub)] // Each test file uses a part.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use dramaturg::{App, MessageId, Worker};
use http_body_util::BodyExt;
use tower::ServiceExt;

pub const REDIS: &str = "redis://127.0.0.1:6379";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Something unique to this test run.
pub fn unique() -> String {
    MessageId::new().to_string().to_lowercase()
}

/// A response: status, headers, body as text.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The `Location` of a redirect.
    pub fn location(&self) -> &str {
        self.headers.get(header::LOCATION).unwrap().to_str().unwrap()
    }
}

/// Sends `request` through `router`.
pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body: String::from_utf8(bytes.to_vec()).unwrap() }
}

/// `GET path`.
pub async fn get(router: &Router, path: &str) -> Reply {
    send(router, Request::get(path).body(Body::empty()).unwrap()).await
}

/// `POST path` with a form of `fields`.
pub async fn post(router: &Router, path: &str, fields: &[(&str, &str)]) -> Reply {
    post_with(router, path, fields, &[]).await
}

/// `POST path` with a form of `fields` and the extra `headers`.
pub async fn post_with(router: &Router, path: &str, fields: &[(&str, &str)], headers: &[(&str, &str)]) -> Reply {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
    let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(router, request.body(Body::from(body.join("&"))).unwrap()).await
}

/// `text` percent-encoded.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The CSRF token in the forms of `html`.
pub fn csrf(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).unwrap_or_else(|| panic!("no CSRF field in {html}")) + marker.len();
    html[start..start + 64].to_owned()
}

/// The text of each cell of the table row whose opening tag holds `marker`.
pub fn row(html: &str, marker: &str) -> Vec<String> {
    let start = html.find(marker).unwrap_or_else(|| panic!("no row {marker} in {html}"));
    let end = start + html[start..].find("</tr>").unwrap();
    html[start..end]
        .split("<td")
        .skip(1)
        .map(|cell| {
            let mut text = String::new();
            let mut in_tag = true; // the rest of `<td ...>`
            for c in cell.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            text.trim().to_owned()
        })
        .collect()
}

/// Runs a worker on `app` until `queue` holds `dead` dead letters and
/// nothing ready or in flight: the failing messages sent before it are
/// dead-lettered as in production.
pub async fn run_until_dead(app: &App, queue: &str, dead: u64) {
    let worker = Worker::new(app.clone());
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = app.stats(queue).await.unwrap();
        if stats.dead == dead && stats.ready == 0 && stats.in_flight == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{queue}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.shutdown();
    running.await.unwrap().unwrap();
}
