//! A hostile upstream for the trust tests: an axum server on `127.0.0.1:0` that records every request
//! it gets (method, path, query, headers) and answers each scenario path the way an attacker's or a
//! broken API would. Point an `http-json` integration's `base_url` at `{url}/{scenario}`; every
//! scenario serves `GET /{scenario}/items` (records at `/items`, the next link at `/next`):
//!
//! | scenario | answer |
//! |---|---|
//! | `ok` | two records, no next link |
//! | `huge` | 200 with a body of [`HUGE_BYTES`] streamed in chunks, no `Content-Length` (never allocated) |
//! | `loop` | one record and a next link to the same page, every time |
//! | `offorigin` | one record and a next link on [`Hostile::send_elsewhere`]'s origin |
//! | `redirect` | 302 to [`Hostile::send_elsewhere`]'s origin |
//! | `samehop` | 302 to `/ok/items` on this origin, with the same query |
//! | `throttle` | 429 with `Retry-After: 86400` |
//! | `refuse` | 401 whose body echoes the request's credentials and other secret-looking values |
//!
//! Any other path answers an empty record list: a second `Hostile` is "another origin" that records
//! what reached it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::json;
use tokio::task::JoinHandle;

/// Size of the `huge` answer: 300 MB.
pub const HUGE_BYTES: u64 = 300 * 1000 * 1000;
/// Chunk of the `huge` answer (JSON white space after an opening, so any prefix is valid so far).
const CHUNK: usize = 64 * 1024;

/// One request as the server got it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Everything the request carried, as one text to search for a value.
    pub fn text(&self) -> String {
        let headers: Vec<String> = self.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        format!("{} {}?{}\n{}", self.method, self.path, self.query, headers.join("\n"))
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    /// The origin links and redirects of `offorigin` / `redirect` point to.
    elsewhere: Mutex<String>,
    /// Bytes of the `huge` answer handed to the connection so far.
    huge_sent: AtomicU64,
}

/// A running hostile upstream.
pub struct Hostile {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    handle: JoinHandle<()>,
}

impl Hostile {
    pub async fn start() -> Hostile {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let handle = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Hostile { addr, shared, handle }
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The origin `offorigin`'s next link and `redirect`'s `Location` point to (another server).
    pub fn send_elsewhere(&self, origin: &str) {
        *self.shared.elsewhere.lock().unwrap() = origin.trim_end_matches('/').to_owned();
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path.starts_with(prefix)).collect()
    }

    /// Bytes of the `huge` answer the server handed to its connections.
    pub fn huge_sent(&self) -> u64 {
        self.shared.huge_sent.load(Ordering::Relaxed)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn answer(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let recorded = Recorded {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        query: request.uri().query().unwrap_or_default().to_owned(),
        headers: request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
    };
    shared.requests.lock().unwrap().push(recorded.clone());
    let own = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_default();
    let elsewhere = shared.elsewhere.lock().unwrap().clone();
    let scenario = recorded.path.trim_start_matches('/').split('/').next().unwrap_or_default().to_owned();
    match scenario.as_str() {
        "ok" => {
            axum::Json(json!({ "items": [{ "id": "1", "name": "one" }, { "id": "2", "name": "two" }], "next": null }))
                .into_response()
        }
        "huge" => huge(shared.clone()),
        "loop" => axum::Json(json!({
            "items": [{ "id": "1", "name": "one" }],
            "next": format!("{own}/loop/items?page=2&sig=hostile-signature"),
        }))
        .into_response(),
        "offorigin" => axum::Json(json!({
            "items": [{ "id": "1", "name": "one" }],
            "next": format!("{elsewhere}/collect/items?page=2"),
        }))
        .into_response(),
        "redirect" => redirect(&format!("{elsewhere}/collect/items?page=1")),
        "samehop" => redirect(&format!("/ok/items?{}", recorded.query)),
        "throttle" => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("86400"));
            r
        }
        "refuse" => {
            // What a careless or hostile API does: echo what it got, plus secrets of its own.
            let body = json!({
                "error": "invalid credentials",
                "received_authorization": recorded.header("authorization"),
                "received_api_key": recorded.header("x-api-key"),
                "received_query": recorded.query,
                "debug": "password=hunter2-upstream session=0123456789abcdef0123456789abcdef",
            });
            (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
        }
        _ => axum::Json(json!({ "items": [], "next": null })).into_response(),
    }
}

fn redirect(location: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_str(location).expect("a header value"));
    r
}

/// [`HUGE_BYTES`] of `{"items":[` and blanks, streamed chunk by chunk from one static buffer.
fn huge(shared: Arc<Shared>) -> Response {
    static BLANKS: [u8; CHUNK] = [b' '; CHUNK];
    let chunks = HUGE_BYTES.div_ceil(CHUNK as u64);
    let stream = futures::stream::iter(0..chunks).map(move |i| {
        let chunk = if i == 0 {
            Bytes::from_static(b"{\"items\":[")
        } else {
            Bytes::from_static(&BLANKS[..(HUGE_BYTES - i * CHUNK as u64).min(CHUNK as u64) as usize])
        };
        shared.huge_sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok::<_, std::io::Error>(chunk)
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
