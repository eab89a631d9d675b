//! The HTTP client connectors call upstream APIs with: one [`HttpClients`] per worker process, one
//! [`HttpClient`] per step.
//!
//! Every try of a request goes through, in order:
//! 1. the upstream policy's checks before sending (below);
//! 2. the upstream's concurrency gate (a semaphore per upstream key in this process);
//! 3. the fleet-wide [`RateBudget`] in Redis (shared cool-down first, then a GCRA slot);
//! 4. the request with its own timeout, its answer read as a stream under the body cap.
//!
//! Connect errors, timeouts, 408, 429 and 5xx are tried again after an exponential backoff with random
//! jitter (`syncfleet_shared::retry::Backoff`), or after the upstream's `Retry-After` on 429/503; a
//! 429's hint becomes the upstream's cool-down for every worker. Other statuses fail at once.
//!
//! # The upstream policy
//!
//! Every upstream is treated as hostile. The rules hold for every pack because they live here, in
//! the client, configured once per process from `[upstream]` ([`UpstreamPolicy`]):
//!
//! - **Origin lock.** A step's client knows its integration's origin (scheme, host, port of the base
//!   URL, given to [`HttpClients::client`]). A request to any other origin — a paging `next` link, a
//!   URL a pack built — is refused before it is sent ([`HttpError::OffOrigin`], permanent), so no
//!   header, token or query credential leaves. Redirects are followed only on the request's origin,
//!   at most [`policy::MAX_REDIRECTS`]; any other 3xx fails the request ([`HttpError::Redirect`]).
//! - **Public networks only.** An upstream address that is loopback, private (RFC 1918, `fc00::/7`),
//!   link-local (`169.254.169.254`), CGNAT (`100.64.0.0/10`), unspecified, multicast, broadcast or
//!   reserved, also in its IPv4-mapped form, is refused unless it is in `upstream.allow_networks`
//!   ([`HttpError::NonPublic`], permanent): IP literals before sending, names in the client's
//!   resolver as each connection is made (so a name that re-resolves to a private address is
//!   refused too). Through an HTTP proxy (`HTTPS_PROXY`) the address checked is the proxy's.
//! - **Bounded reads.** Answers are read as a stream: a `Content-Length` or a body over
//!   `upstream.max_body_bytes` (default 32 MiB) fails the request for good without reading the rest
//!   ([`HttpError::TooLarge`]); an error answer's body is read only up to
//!   [`ERROR_BODY_BYTES`]. Paging loops count their pages with [`Pages`] ([`HttpClient::pages`]): more
//!   than `upstream.max_pages` (default 100,000) in one read, or a cursor or next link seen before
//!   in it, ends the read ([`HttpError::Paging`], permanent).
//! - **Capped `Retry-After`.** A hint up to `upstream.max_retry_after_secs` (default 900) is obeyed
//!   (a 429's becomes the fleet's cool-down of the upstream). A longer one is not: the request fails
//!   at once ([`HttpError::RetryAfterTooLong`], transient; as a `StepError` the step is retried
//!   after the cap) and sets **no** cool-down, so one integration's upstream asking for a day does
//!   not stop the other integrations on the same upstream key.
//! - **Redaction** ([`redact`]). Logs, spans and errors show URLs without user info and with every
//!   query value masked (`?page=***`), never headers; an upstream body only as an excerpt of at most
//!   [`redact::EXCERPT_CHARS`] characters, with the request's own header and query values and
//!   anything that looks like a secret masked.

mod body;
pub mod budget;
mod clients;
mod decode;
mod error;
mod limits;
mod pages;
pub mod policy;
pub mod redact;
mod retry_after;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use body::{BodyError, Capped, Reading, read_capped, read_prefix};
pub use budget::{RateBudget, Reservation};
pub use clients::HttpClients;
pub use decode::decode_json;
pub use error::{HttpError, Verdict};
pub use limits::Limits;
pub use pages::Pages;
pub use policy::{NonPublicAddress, UpstreamPolicy};
pub use retry_after::parse_retry_after;

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("syncfleet/", env!("CARGO_PKG_VERSION"));
/// How long establishing a connection may take (the request timeout covers the whole exchange).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of an error answer's body read (for its excerpt); the rest is never read.
pub const ERROR_BODY_BYTES: usize = 4096;
/// Waking from a cool-down is spread by up to a tenth of it, at most this, so workers do not all
/// send at the same instant.
const COOL_DOWN_SPREAD_MAX: Duration = Duration::from_millis(100);

/// Counts of one step's calls, copied into the step's metrics.
#[derive(Debug, Default)]
pub struct CallStats {
    /// Tries handed to the network (a try that could not connect counts too).
    pub api_calls: AtomicI64,
    /// Answers 429.
    pub throttled: AtomicI64,
    /// Tries after a first one.
    pub retries: AtomicI64,
    /// Milliseconds slept for the rate budget, cool-downs and backoff.
    pub waited_ms: AtomicI64,
}

impl CallStats {
    fn add(counter: &AtomicI64, n: i64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A step's client of one upstream. Clones share the stats.
#[derive(Clone)]
pub struct HttpClient {
    http: Client,
    policy: Arc<UpstreamPolicy>,
    /// The integration's origin: the only one requests go to (or why there is none).
    origin: Result<url::Origin, String>,
    budget: Option<RateBudget>,
    upstream: Arc<str>,
    limits: Limits,
    gate: Arc<Semaphore>,
    stats: Arc<CallStats>,
    secrets: Option<Arc<crate::secrets::SecretPolicy>>,
}

/// What one try came to.
enum Outcome<T> {
    Done(T),
    Retry(Retry),
}

/// A transient failure: why, and what the upstream asked for.
struct Retry {
    reason: String,
    retry_after: Option<Duration>,
    throttled: bool,
}

/// Method and URL of a request as shown in logs and errors (secrets masked), and the values it
/// carries that texts made from its answer must not show.
struct Target {
    method: String,
    url: String,
    known: Arc<[String]>,
}

/// The policy's refusal of an address, when that is what failed the connection (the resolver's
/// error, somewhere down `e`'s causes).
fn non_public_cause(e: &reqwest::Error) -> Option<NonPublicAddress> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(refused) = c.downcast_ref::<NonPublicAddress>() {
            return Some(refused.clone());
        }
        cause = c.source();
    }
    None
}

impl HttpClient {
    pub fn stats(&self) -> &Arc<CallStats> {
        &self.stats
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The deployment's `[secrets]` policy, under which a connector reads its integration's
    /// credentials (`syncfleet_sdk::secrets`); an error when the process set none
    /// ([`HttpClients::with_secrets`]).
    pub fn secrets(&self) -> Result<&crate::secrets::SecretPolicy, String> {
        self.secrets.as_deref().ok_or_else(|| "this process's HTTP clients have no secrets policy ([secrets])".into())
    }

    /// Counts the pages of one read of a list ([`Pages`]) under `upstream.max_pages`: every paging
    /// loop takes one per read.
    pub fn pages(&self) -> Pages {
        Pages::new(self.policy.max_pages)
    }

    /// Sends with budget, concurrency cap, timeout and retries; `build` makes the request for each try.
    /// Returns the response when 2xx; read its body with [`HttpClient::read_json`] (under the body
    /// cap). `cancel` stops waiting or retrying at once.
    pub async fn send(
        &self,
        build: impl Fn(&Client) -> RequestBuilder,
        cancel: &CancellationToken,
    ) -> Result<Response, HttpError> {
        self.run(&build, |response, _| async move { Ok(response) }, cancel).await
    }

    /// Reads the JSON body of an answer [`HttpClient::send`] returned, at most
    /// `upstream.max_body_bytes` of it ([`HttpError::TooLarge`] beyond).
    pub async fn read_json(&self, response: Response) -> Result<serde_json::Value, HttpError> {
        let url = redact::url(response.url());
        let body = read_capped(response, self.policy.max_body_bytes).await.map_err(|e| match e {
            Capped::TooLarge => HttpError::TooLarge { url: url.clone(), limit: self.policy.max_body_bytes },
            Capped::Read(e) => {
                HttpError::Decode { url: url.clone(), message: format!("reading the answer: {}", error_chain(&e)) }
            }
        })?;
        decode::decode_json(&body)
            .map_err(|e| HttpError::Decode { url, message: format!("not JSON ({e}): {}", redact::excerpt(&body, &[])) })
    }

    /// GETs `url` and parses the body as JSON; a body that does not parse is [`HttpError::Decode`].
    pub async fn get_json(
        &self,
        url: &str,
        headers: &[(String, String)],
        query: &[(String, String)],
        cancel: &CancellationToken,
    ) -> Result<serde_json::Value, HttpError> {
        let mut header_map = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpError::Build(format!("bad header name {name:?}")))?;
            // The value may be a credential: never shown.
            let mut value =
                HeaderValue::from_str(value).map_err(|_| HttpError::Build(format!("bad value of header {name}")))?;
            value.set_sensitive(true);
            header_map.append(name, value);
        }
        let build = |http: &Client| http.get(url).query(query).headers(header_map.clone());
        let read = |response: Response, reading: Reading| async move {
            let body = read_capped(response, reading.limit).await.map_err(BodyError::from)?;
            decode::decode_json(&body)
                .map_err(|e| BodyError::Decode(format!("not JSON ({e}): {}", redact::excerpt(&body, &reading.known))))
        };
        self.run(&build, read, cancel).await
    }

    /// Tries until `finish` (reading the 2xx answer) succeeds, a failure is permanent, the retries run
    /// out or `cancel` fires.
    async fn run<T, F, Fut>(
        &self,
        build: &impl Fn(&Client) -> RequestBuilder,
        finish: F,
        cancel: &CancellationToken,
    ) -> Result<T, HttpError>
    where
        F: Fn(Response, Reading) -> Fut,
        Fut: Future<Output = Result<T, BodyError>>,
    {
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(HttpError::Cancelled),
            result = self.tries(build, &finish) => result,
        }
    }

    async fn tries<T, F, Fut>(&self, build: &impl Fn(&Client) -> RequestBuilder, finish: &F) -> Result<T, HttpError>
    where
        F: Fn(Response, Reading) -> Fut,
        Fut: Future<Output = Result<T, BodyError>>,
    {
        let mut backoff = self.limits.backoff();
        let mut attempts = 0;
        loop {
            let request = build(&self.http)
                .timeout(Duration::from_millis(self.limits.timeout_ms))
                .build()
                .map_err(|e| HttpError::Build(error_chain(&e.without_url())))?;
            let target = Target {
                method: request.method().to_string(),
                url: redact::url(request.url()),
                known: redact::sensitive_values(&request).into(),
            };
            self.check_target(request.url(), &target)?;
            attempts += 1;
            let retry = match self.try_once(request, &target, attempts, finish).await? {
                Outcome::Done(value) => return Ok(value),
                Outcome::Retry(retry) => retry,
            };
            let Some(backoff_delay) = backoff.next() else {
                return Err(HttpError::Exhausted { url: target.url, attempts, last: retry.reason });
            };
            // A hint is at most `upstream.max_retry_after_secs` here: a longer one failed the request.
            let delay = retry.retry_after.unwrap_or(backoff_delay);
            if retry.throttled
                && let (Some(hint), Some(budget)) = (retry.retry_after, &self.budget)
            {
                budget.cool_down(&self.upstream, hint).await?;
            }
            CallStats::add(&self.stats.retries, 1);
            tracing::debug!(
                upstream = %self.upstream,
                method = %target.method,
                url = %target.url,
                attempt = attempts,
                delay_ms = delay.as_millis() as u64,
                reason = %retry.reason,
                "Retrying request."
            );
            self.pause(delay).await;
        }
    }

    /// The policy's checks before sending: the integration's origin, and a literal address in an
    /// allowed network (names are checked by the resolver as the connection is made).
    fn check_target(&self, url: &Url, target: &Target) -> Result<(), HttpError> {
        let origin = self.origin.as_ref().map_err(|m| HttpError::Build(m.clone()))?;
        if url.origin() != *origin {
            let host = url.host_str().unwrap_or("(none)");
            let host = match url.port_or_known_default() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            return Err(HttpError::OffOrigin {
                method: target.method.clone(),
                url: target.url.clone(),
                host,
                origin: origin.ascii_serialization(),
            });
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        match literal {
            Some(ip) => self.policy.check(ip).map_err(HttpError::NonPublic),
            None => Ok(()),
        }
    }

    /// One try: gate, budget, then the request (a client span) and its answer.
    async fn try_once<T, F, Fut>(
        &self,
        request: reqwest::Request,
        target: &Target,
        attempts: u32,
        finish: &F,
    ) -> Result<Outcome<T>, HttpError>
    where
        F: Fn(Response, Reading) -> Fut,
        Fut: Future<Output = Result<T, BodyError>>,
    {
        let _permit = self.gate.acquire().await.expect("the gate is never closed");
        self.wait_for_budget().await?;
        CallStats::add(&self.stats.api_calls, 1);
        crate::metrics::upstream_call(&self.upstream);
        let span = tracing::info_span!(
            target: crate::telemetry::OTEL_TARGET,
            "http",
            otel.name = %target.method,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = %target.method,
            url.full = %target.url,
            http.request.resend_count = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            syncfleet.upstream = %self.upstream,
        );
        if attempts > 1 {
            span.record("http.request.resend_count", attempts - 1);
        }
        let outcome = self.exchange(request, target, attempts, finish, &span).instrument(span.clone()).await;
        if !matches!(outcome, Ok(Outcome::Done(_))) {
            span.record("otel.status_code", "error");
        }
        outcome
    }

    /// The request and its answer, sorted into done / retry / permanent failure.
    async fn exchange<T, F, Fut>(
        &self,
        request: reqwest::Request,
        target: &Target,
        attempts: u32,
        finish: &F,
        span: &tracing::Span,
    ) -> Result<Outcome<T>, HttpError>
    where
        F: Fn(Response, Reading) -> Fut,
        Fut: Future<Output = Result<T, BodyError>>,
    {
        let response = match self.http.execute(request).await {
            Ok(response) => response,
            Err(e) => {
                if let Some(refused) = non_public_cause(&e) {
                    span.record("error.type", "non_public_address");
                    return Err(HttpError::NonPublic(refused));
                }
                let transient = e.is_connect() || e.is_timeout() || e.is_request();
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                span.record("error.type", kind);
                let reason = redact::scrub(&error_chain(&e.without_url()), &target.known);
                return if transient {
                    Ok(Outcome::Retry(Retry { reason, retry_after: None, throttled: false }))
                } else {
                    Err(HttpError::Exhausted { url: target.url.clone(), attempts, last: reason })
                };
            }
        };
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_success() {
            let reading = Reading { limit: self.policy.max_body_bytes, known: target.known.clone() };
            return match finish(response, reading).await {
                Ok(value) => Ok(Outcome::Done(value)),
                Err(BodyError::Read(e)) => Ok(Outcome::Retry(Retry {
                    reason: format!(
                        "reading the body: {}",
                        redact::scrub(&error_chain(&e.without_url()), &target.known)
                    ),
                    retry_after: None,
                    throttled: false,
                })),
                Err(BodyError::TooLarge) => {
                    span.record("error.type", "too_large");
                    Err(HttpError::TooLarge { url: target.url.clone(), limit: self.policy.max_body_bytes })
                }
                Err(BodyError::Decode(message)) => Err(HttpError::Decode { url: target.url.clone(), message }),
            };
        }
        span.record("error.type", status.as_str());
        if status.is_redirection() {
            // Not followed by the redirect policy: to another origin, or one too many.
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| response.url().join(l).map(|u| redact::url(&u)).unwrap_or_else(|_| redact::link(l)))
                .unwrap_or_else(|| "no location".into());
            return Err(HttpError::Redirect {
                method: target.method.clone(),
                url: target.url.clone(),
                status: status.as_u16(),
                location,
            });
        }
        let throttled = status == StatusCode::TOO_MANY_REQUESTS;
        if throttled {
            CallStats::add(&self.stats.throttled, 1);
            crate::metrics::upstream_throttled(&self.upstream);
        }
        let retry_after = if throttled || status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
        } else {
            None
        };
        if let Some(wait) = retry_after
            && wait > self.policy.max_retry_after
        {
            // Neither waited for nor shared as a cool-down: the step comes back after the cap.
            return Err(HttpError::RetryAfterTooLong {
                method: target.method.clone(),
                url: target.url.clone(),
                status: status.as_u16(),
                wait_secs: wait.as_secs(),
                max_secs: self.policy.max_retry_after.as_secs(),
            });
        }
        let body = read_prefix(response, ERROR_BODY_BYTES).await;
        let excerpt = redact::excerpt(&body, &target.known);
        if throttled || status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
            let reason = format!("{status}: {excerpt}");
            return Ok(Outcome::Retry(Retry { reason, retry_after, throttled }));
        }
        Err(HttpError::Status {
            method: target.method.clone(),
            url: target.url.clone(),
            status: status.as_u16(),
            body: excerpt,
        })
    }

    /// Sleeps until the budget allows one request: through any cool-down, then to the reserved slot.
    async fn wait_for_budget(&self) -> Result<(), HttpError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        loop {
            let reservation = match self.limits.rate_per_sec {
                Some(rate) => budget.reserve(&self.upstream, rate, self.limits.burst).await?,
                None => match budget.cooling(&self.upstream).await? {
                    Some(left) => Reservation::CoolingDown(left),
                    None => return Ok(()),
                },
            };
            match reservation {
                Reservation::Slot(wait) => {
                    self.pause(wait).await;
                    return Ok(());
                }
                Reservation::CoolingDown(left) => self.pause(left + spread(left)).await,
            }
        }
    }

    /// Sleeps `d`, counting the time actually slept (also when cancelled midway).
    async fn pause(&self, d: Duration) {
        struct Count<'a>(&'a AtomicI64, Instant);
        impl Drop for Count<'_> {
            fn drop(&mut self) {
                CallStats::add(self.0, self.1.elapsed().as_millis() as i64);
            }
        }
        if d.is_zero() {
            return;
        }
        let _count = Count(&self.stats.waited_ms, Instant::now());
        tokio::time::sleep(d).await;
    }
}

/// A random extra of up to a tenth of `d` (at most [`COOL_DOWN_SPREAD_MAX`]).
fn spread(d: Duration) -> Duration {
    let cap = (d / 10).min(COOL_DOWN_SPREAD_MAX).as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=cap))
}

/// An error and its causes, each once.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncfleet_shared::config::UpstreamConfig;

    /// A server on 127.0.0.1 answering each request (one per connection) with `answer(path)`;
    /// counts the requests it got.
    async fn serve(answer: fn(&str, u16) -> Vec<u8>) -> (u16, Arc<AtomicI64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicI64::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.fetch_add(1, Ordering::Relaxed);
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    socket.write_all(&answer(&path, port)).await.ok();
                    socket.shutdown().await.ok();
                });
            }
        });
        (port, count)
    }

    fn loopback(max_body_bytes: u64) -> HttpClients {
        let config =
            UpstreamConfig { allow_networks: vec!["127.0.0.0/8".into()], max_body_bytes, ..Default::default() };
        HttpClients::new(None, &config)
    }

    fn quick() -> Limits {
        Limits { max_retries: 1, backoff_base_ms: 10, backoff_max_ms: 20, timeout_ms: 5_000, ..Limits::default() }
    }

    fn answers(path: &str, port: u16) -> Vec<u8> {
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}";
        let text = match path {
            "/ok" => ok.to_owned(),
            "/same" => "HTTP/1.1 302 Found\r\nlocation: /ok\r\ncontent-length: 0\r\n\r\n".to_owned(),
            // `localhost` is another origin than `127.0.0.1`, on the same server.
            "/away" => {
                format!("HTTP/1.1 302 Found\r\nlocation: http://localhost:{port}/ok?key=k\r\ncontent-length: 0\r\n\r\n")
            }
            "/declared" => "HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n{}".to_owned(),
            "/big" => format!("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n[{}]", " ".repeat(100_000)),
            "/slow" => "HTTP/1.1 429 Too Many Requests\r\nretry-after: 86400\r\ncontent-length: 0\r\n\r\n".to_owned(),
            _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_owned(),
        };
        text.into_bytes()
    }

    #[tokio::test]
    async fn requests_and_redirects_stay_on_the_integration_origin() {
        let (port, count) = serve(answers).await;
        let base = format!("http://127.0.0.1:{port}");
        let client = loopback(1 << 20).client("t", &format!("{base}/api"), &quick());
        let cancel = CancellationToken::new();
        let ok = client.get_json(&format!("{base}/same"), &[], &[], &cancel).await.unwrap();
        assert_eq!(ok["ok"], true, "a redirect on the origin is followed");
        assert_eq!(count.load(Ordering::Relaxed), 2);

        let e = client.get_json(&format!("http://localhost:{port}/ok?key=k"), &[], &[], &cancel).await.unwrap_err();
        assert!(matches!(e, HttpError::OffOrigin { .. }) && e.is_permanent(), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "refused GET http://localhost:{port}/ok?key=***: host localhost:{port} is not the integration's \
                 origin {base} (requests, paging links and redirects stay on it); nothing was sent"
            )
        );
        assert_eq!(count.load(Ordering::Relaxed), 2, "nothing was sent");

        let e = client.get_json(&format!("{base}/away"), &[], &[], &cancel).await.unwrap_err();
        assert!(matches!(e, HttpError::Redirect { status: 302, .. }) && e.is_permanent(), "{e:?}");
        assert!(
            e.to_string().contains(&format!("redirecting to http://localhost:{port}/ok?key=***: not followed")),
            "{e}"
        );
        assert_eq!(count.load(Ordering::Relaxed), 3, "the redirect was not followed");
    }

    #[tokio::test]
    async fn non_public_addresses_are_refused_before_connecting() {
        let (port, count) = serve(answers).await;
        let clients = HttpClients::new(None, &UpstreamConfig::default());
        let cancel = CancellationToken::new();
        for host in ["127.0.0.1", "localhost"] {
            let base = format!("http://{host}:{port}");
            let e = clients.client("t", &base, &quick()).get_json(&format!("{base}/ok"), &[], &[], &cancel).await;
            let e = e.unwrap_err();
            assert!(matches!(e, HttpError::NonPublic(_)) && e.is_permanent(), "{host}: {e:?}");
            assert!(
                e.to_string().contains("is in a non-public network (loopback); allow it with upstream.allow_networks")
            );
        }
        assert_eq!(count.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn answers_over_the_body_cap_are_not_read() {
        let (port, _) = serve(answers).await;
        let base = format!("http://127.0.0.1:{port}");
        let client = loopback(4096).client("t", &base, &quick());
        let cancel = CancellationToken::new();
        for path in ["/declared", "/big"] {
            let e = client.get_json(&format!("{base}{path}"), &[], &[], &cancel).await.unwrap_err();
            assert!(matches!(e, HttpError::TooLarge { limit: 4096, .. }) && e.is_permanent(), "{path}: {e:?}");
        }
        assert_eq!(client.stats().retries.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_retry_after_over_the_cap_fails_at_once_without_a_cool_down() {
        let (port, count) = serve(answers).await;
        let base = format!("http://127.0.0.1:{port}");
        let client = loopback(4096).client("t", &base, &quick());
        let started = Instant::now();
        let e = client.get_json(&format!("{base}/slow"), &[], &[], &CancellationToken::new()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(matches!(e, HttpError::RetryAfterTooLong { wait_secs: 86400, max_secs: 900, .. }), "{e:?}");
        assert_eq!(e.verdict(), Verdict { permanent: false, after: Some(Duration::from_secs(900)) });
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }
}
