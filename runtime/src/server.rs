//! The HTTP server of every syncfleet listener (the producer's API, the worker's probes), with the
//! limits a client cannot talk its way around:
//!
//! - **header read timeout**: a connection must deliver a request's headers within
//!   [`ServerLimits::header_read_timeout`] of the server starting to wait for them (a new
//!   connection, or an idle keep-alive one), else hyper closes it: a half-sent request holds
//!   nothing for long;
//! - **connection limit**: at most [`ServerLimits::max_connections`] connections are served at
//!   once; the server accepts no more until one closes, so the excess waits in the listen backlog
//!   instead of taking tasks and memory;
//! - **request timeout** ([`with_request_timeout`]): a request must be read and answered within
//!   [`ServerLimits::request_timeout`]; a late one gets the caller's answer (408 while its body is
//!   still arriving, 503 when the handler is slow);
//! - **shutdown deadline**: on shutdown the server stops accepting, lets in-flight requests finish
//!   and closes idle connections; whatever is still open after
//!   [`ServerLimits::shutdown_timeout`] is dropped and [`serve`] returns.
//!
//! HTTP/1.1 only (the API's clients, probes and scrapers speak it).

use std::{
    io,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes, HttpBody},
    extract::Request,
    middleware::Next,
    response::Response,
};
use http_body::{Frame, SizeHint};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

/// The time and connection limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// A connection's request headers must arrive within this.
    pub header_read_timeout: Duration,
    /// A request must be read and answered within this ([`with_request_timeout`]).
    pub request_timeout: Duration,
    /// Connections served at once; more wait until one closes.
    pub max_connections: usize,
    /// On shutdown, connections still open after this are dropped.
    pub shutdown_timeout: Duration,
}

impl ServerLimits {
    /// The worker's probe and metrics listener: small answers, few clients.
    pub const PROBES: ServerLimits = ServerLimits {
        header_read_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
        max_connections: 64,
        shutdown_timeout: Duration::from_secs(5),
    };

    /// The producer's API listener, from its `[producer]` settings.
    pub fn of_producer(p: &syncfleet_shared::config::ProducerConfig) -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_secs(p.header_read_timeout_secs),
            request_timeout: Duration::from_secs(p.request_timeout_secs),
            max_connections: p.max_connections,
            shutdown_timeout: Duration::from_secs(p.shutdown_timeout_secs),
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown`, then drains (see the module
/// documentation). Returns once every connection is closed or dropped.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    // Cancelled at the shutdown deadline: every connection still open drops.
    let deadline = CancellationToken::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(error) => {
                    // Out of file descriptors or the like: wait rather than spin.
                    tracing::warn!(%error, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        connections.spawn(connection(stream, app.clone(), limits, slot, shutdown.clone(), deadline.clone()));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.shutdown_timeout, connections.wait()).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            deadline_secs = limits.shutdown_timeout.as_secs_f64(),
            "Shutdown deadline passed: dropping the connections still open."
        );
        deadline.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// Serves one connection, holding its `slot` until it closes.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: ServerLimits,
    slot: OwnedSemaphorePermit,
    shutdown: CancellationToken,
    deadline: CancellationToken,
) {
    stream.set_nodelay(true).ok();
    let service = TowerToHyperService::new(app.map_request(|req: Request<Incoming>| req.map(Body::new)));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            // Finish the request in flight, then close; an idle connection closes at once.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                _ = deadline.cancelled() => Ok(()),
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "Connection closed with an error.");
    }
    drop(slot);
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// What a request that outlived the request timeout was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// Its body had not fully arrived (408).
    Body,
    /// Its handler had not answered (503).
    Handler,
}

/// `router` with every request bounded by `limit`: a request not answered in time is dropped and
/// answered by `answer`.
pub fn with_request_timeout<S>(router: Router<S>, limit: Duration, answer: fn(Late, Duration) -> Response) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| async move {
        let (parts, body) = req.into_parts();
        let received = Arc::new(AtomicBool::new(body.is_end_stream()));
        let body = Body::new(Tracked { inner: body, received: received.clone() });
        match tokio::time::timeout(limit, next.run(Request::from_parts(parts, body))).await {
            Ok(response) => response,
            Err(_) => {
                let late = if received.load(Ordering::Acquire) { Late::Handler } else { Late::Body };
                tracing::warn!(?late, limit_secs = limit.as_secs_f64(), "Request timed out.");
                answer(late, limit)
            }
        }
    }))
}

/// A request body that notes when it has been received whole.
struct Tracked {
    inner: Body,
    received: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.received.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::{http::StatusCode, response::IntoResponse, routing::get};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const LIMITS: ServerLimits = ServerLimits {
        header_read_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(700),
        max_connections: 2,
        shutdown_timeout: Duration::from_millis(800),
    };

    fn answer(late: Late, _: Duration) -> Response {
        match late {
            Late::Body => (StatusCode::REQUEST_TIMEOUT, "late body").into_response(),
            Late::Handler => (StatusCode::SERVICE_UNAVAILABLE, "late handler").into_response(),
        }
    }

    /// A server of `/fast` and `/slow` (30 s), with the request timeout or without.
    async fn start_with(
        timeout: bool,
    ) -> (std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<io::Result<()>>) {
        let mut app = Router::new()
            .route("/fast", get(|| async { "fast" }).post(|body: String| async move { body }))
            .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(30)).await }));
        if timeout {
            app = with_request_timeout(app, LIMITS.request_timeout, answer);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        (addr, stop.clone(), tokio::spawn(serve(listener, app, LIMITS, stop)))
    }

    async fn start() -> (std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<io::Result<()>>) {
        start_with(true).await
    }

    /// Writes `request` and reads until the server closes (or 5 s pass): what it answered.
    async fn exchange(stream: &mut TcpStream, request: &str) -> String {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_half_sent_request_is_closed_at_the_header_timeout() {
        let (addr, stop, server) = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let answer = exchange(&mut stream, "GET /fast HTTP/1.1\r\nHost: x\r\n").await;
        let waited = started.elapsed();
        assert!(!answer.contains("fast"), "{answer}");
        assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(2), "{waited:?}");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn late_bodies_and_slow_handlers_get_the_timeout_answer() {
        let (addr, stop, server) = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let answer = exchange(&mut stream, "POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc").await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let answer = exchange(&mut stream, "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let answer = exchange(&mut stream, "GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("fast"), "{answer}");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_one() {
        let (addr, stop, server) = start().await;
        let mut held = Vec::new();
        for _ in 0..LIMITS.max_connections {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /fast HTTP/1.1\r\n").await.unwrap();
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let answer = exchange(&mut stream, "GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Served only once the header timeout closed a held connection.
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_drops_what_is_still_open_at_the_deadline() {
        // No request timeout: only the deadline ends the slow request.
        let (addr, stop, server) = start_with(false).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        stop.cancel();
        server.await.unwrap().unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(700) && waited < Duration::from_millis(1500), "{waited:?}");
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }
}
