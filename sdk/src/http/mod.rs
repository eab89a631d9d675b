//! The HTTP client connectors call upstream APIs with: one [`HttpClients`] per worker process, one
//! [`HttpClient`] per step.
//!
//! Every try of a request goes through, in order:
//! 1. the upstream's concurrency gate (a semaphore per upstream key in this process);
//! 2. the fleet-wide [`RateBudget`] in Redis (shared cool-down first, then a GCRA slot);
//! 3. the request with its own timeout.
//!
//! Connect errors, timeouts, 408, 429 and 5xx are tried again after an exponential backoff with random
//! jitter (`syncfleet_shared::retry::Backoff`), or after the upstream's `Retry-After` on 429/503; a
//! 429's hint becomes the upstream's cool-down for every worker. Other statuses fail at once. Logs and errors carry the method and the URL with secret
//! query values masked, never headers.

pub mod budget;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};
use serde::{Deserialize, Serialize};
use syncfleet_shared::retry::Backoff;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use budget::{RateBudget, Reservation};

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("syncfleet/", env!("CARGO_PKG_VERSION"));
/// How long establishing a connection may take (the request timeout covers the whole exchange).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of a response body kept in [`HttpError::Status`].
const STATUS_BODY_CHARS: usize = 500;
/// Characters of a body that is not JSON kept in [`HttpError::Decode`].
const DECODE_BODY_CHARS: usize = 200;
/// Characters of a retried answer's body kept as the reason (logs, [`HttpError::Exhausted`]).
const RETRY_BODY_CHARS: usize = 200;
/// Waking from a cool-down is spread by up to a tenth of it, at most this, so workers do not all
/// send at the same instant.
const COOL_DOWN_SPREAD_MAX: Duration = Duration::from_millis(100);
/// Query parameters whose value is masked in logs and errors (substring of the name, any case).
const SECRET_PARAMS: &[&str] = &["token", "key", "secret", "password", "passwd", "signature", "auth", "credential"];

/// How hard one integration may use its upstream. Validated when the configuration loads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests per second for the whole fleet against this upstream; `None` = unlimited.
    pub rate_per_sec: Option<f64>,
    /// Requests the fleet may send at once before the rate applies.
    pub burst: u32,
    /// Requests in flight at once from one worker process to this upstream. The first client made
    /// for an upstream key in a process sets the size of its gate.
    pub concurrency: usize,
    /// Per request (one try), connection to the end of the body.
    pub timeout_ms: u64,
    /// Tries after the first.
    pub max_retries: u32,
    /// First backoff pause; it doubles per retry, plus random jitter of up to the same again
    /// (`syncfleet_shared::retry::Backoff`).
    pub backoff_base_ms: u64,
    /// Longest backoff pause (a `Retry-After` from the upstream may be longer).
    pub backoff_max_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate_per_sec: None,
            burst: 1,
            concurrency: 4,
            timeout_ms: 30_000,
            max_retries: 5,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(rate) = self.rate_per_sec
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err("rate_per_sec must be > 0".into());
        }
        if self.burst == 0 {
            return Err("burst must be >= 1".into());
        }
        if self.concurrency == 0 {
            return Err("concurrency must be >= 1".into());
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms must be > 0".into());
        }
        if self.backoff_base_ms == 0 {
            return Err("backoff_base_ms must be > 0".into());
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            return Err("backoff_max_ms must be >= backoff_base_ms".into());
        }
        Ok(())
    }

    /// The pauses before each retry of one request: `max_retries` of them, from [`Backoff`] (the
    /// first between `backoff_base_ms` and twice it, doubling, at most `backoff_max_ms`), each drawn
    /// at random so that clients that failed together do not retry together.
    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        let backoff = Backoff::from_low(
            Duration::from_millis(self.backoff_base_ms),
            Duration::from_millis(self.backoff_max_ms),
            Backoff::HTTP.factor,
        );
        (1..=self.max_retries).map(move |retry| backoff.delay(retry))
    }
}

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

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The upstream refused the request for good (4xx other than 408/429): fix the request or the
    /// credentials, retrying will not help.
    #[error("{method} {url} answered {status}: {body}")]
    Status { method: String, url: String, status: u16, body: String },
    /// Transient failures outlasted the retries: try the step again later.
    #[error("{url}: gave up after {attempts} attempts: {last}")]
    Exhausted { url: String, attempts: u32, last: String },
    /// A 2xx answer whose body is not what was asked for.
    #[error("{url}: {message}")]
    Decode { url: String, message: String },
    /// The request could not be built (bad URL or header value): a connector or configuration bug.
    #[error("invalid request: {0}")]
    Build(String),
    #[error("rate budget: {0}")]
    Budget(#[from] redis::RedisError),
    #[error("cancelled")]
    Cancelled,
}

impl HttpError {
    /// The HTTP status of a refused request.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One per worker process: a shared `reqwest::Client`, the [`RateBudget`], and one concurrency gate
/// per upstream key.
#[derive(Clone)]
pub struct HttpClients {
    http: Client,
    budget: Option<RateBudget>,
    gates: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl HttpClients {
    /// Without a budget there is no fleet-wide rate limit and no shared cool-down.
    pub fn new(budget: Option<RateBudget>) -> Self {
        let http = Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("the HTTP client builds with a fixed configuration");
        HttpClients { http, budget, gates: Arc::default() }
    }

    /// A client for one step: shares the gate and budget of `upstream` (the key several integrations
    /// behind one upstream share, e.g. "erp.example.com"), with fresh [`CallStats`].
    pub fn client(&self, upstream: &str, limits: &Limits) -> HttpClient {
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
            let permits = limits.concurrency.clamp(1, Semaphore::MAX_PERMITS);
            gates.entry(upstream.to_string()).or_insert_with(|| Arc::new(Semaphore::new(permits))).clone()
        };
        HttpClient {
            http: self.http.clone(),
            budget: self.budget.clone(),
            upstream: upstream.into(),
            limits: limits.clone(),
            gate,
            stats: Arc::default(),
        }
    }
}

/// A step's client of one upstream. Clones share the stats.
#[derive(Clone)]
pub struct HttpClient {
    http: Client,
    budget: Option<RateBudget>,
    upstream: Arc<str>,
    limits: Limits,
    gate: Arc<Semaphore>,
    stats: Arc<CallStats>,
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

/// Method and URL of a request as shown in logs and errors (secrets masked).
struct Target {
    method: String,
    url: String,
}

impl HttpClient {
    pub fn stats(&self) -> &Arc<CallStats> {
        &self.stats
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Sends with budget, concurrency cap, timeout and retries; `build` makes the request for each try.
    /// Returns the response when 2xx. `cancel` stops waiting or retrying at once.
    pub async fn send(
        &self,
        build: impl Fn(&Client) -> RequestBuilder,
        cancel: &CancellationToken,
    ) -> Result<Response, HttpError> {
        self.run(&build, |response| async move { Ok(response) }, cancel).await
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
        let read = |response: Response| async move {
            let url = response.url().clone();
            response.bytes().await.map(|body| (url, body))
        };
        let (url, body) = self.run(&build, read, cancel).await?;
        serde_json::from_slice(&body).map_err(|e| HttpError::Decode {
            url: redact(&url),
            message: format!("not JSON ({e}): {}", truncate(&String::from_utf8_lossy(&body), DECODE_BODY_CHARS)),
        })
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
        F: Fn(Response) -> Fut,
        Fut: Future<Output = Result<T, reqwest::Error>>,
    {
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(HttpError::Cancelled),
            result = self.tries(build, &finish) => result,
        }
    }

    async fn tries<T, F, Fut>(&self, build: &impl Fn(&Client) -> RequestBuilder, finish: &F) -> Result<T, HttpError>
    where
        F: Fn(Response) -> Fut,
        Fut: Future<Output = Result<T, reqwest::Error>>,
    {
        let mut backoff = self.limits.backoff();
        let mut attempts = 0;
        loop {
            let request = build(&self.http)
                .timeout(Duration::from_millis(self.limits.timeout_ms))
                .build()
                .map_err(|e| HttpError::Build(error_chain(&e.without_url())))?;
            let target = Target { method: request.method().to_string(), url: redact(request.url()) };
            attempts += 1;
            let retry = match self.try_once(request, &target, attempts, finish).await? {
                Outcome::Done(value) => return Ok(value),
                Outcome::Retry(retry) => retry,
            };
            let Some(backoff_delay) = backoff.next() else {
                return Err(HttpError::Exhausted { url: target.url, attempts, last: retry.reason });
            };
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

    /// One try: gate, budget, then the request (a client span) and its answer.
    async fn try_once<T, F, Fut>(
        &self,
        request: reqwest::Request,
        target: &Target,
        attempts: u32,
        finish: &F,
    ) -> Result<Outcome<T>, HttpError>
    where
        F: Fn(Response) -> Fut,
        Fut: Future<Output = Result<T, reqwest::Error>>,
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
        F: Fn(Response) -> Fut,
        Fut: Future<Output = Result<T, reqwest::Error>>,
    {
        let response = match self.http.execute(request).await {
            Ok(response) => response,
            Err(e) => {
                let transient = e.is_connect() || e.is_timeout() || e.is_request();
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                span.record("error.type", kind);
                let reason = error_chain(&e.without_url());
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
            return Ok(match finish(response).await {
                Ok(value) => Outcome::Done(value),
                Err(e) => Outcome::Retry(Retry {
                    reason: format!("reading the body: {}", error_chain(&e.without_url())),
                    retry_after: None,
                    throttled: false,
                }),
            });
        }
        span.record("error.type", status.as_str());
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
        let body = response.text().await.unwrap_or_default();
        if throttled || status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
            let reason = format!("{status}: {}", truncate(&body, RETRY_BODY_CHARS));
            return Ok(Outcome::Retry(Retry { reason, retry_after, throttled }));
        }
        Err(HttpError::Status {
            method: target.method.clone(),
            url: target.url.clone(),
            status: status.as_u16(),
            body: truncate(&body, STATUS_BODY_CHARS),
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

/// `Retry-After` as a wait from `now`: delta-seconds or an HTTP-date. Zero, past dates and anything
/// unparsable are no hint.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(value.parse().ok()?)
    } else {
        httpdate::parse_http_date(value).ok()?.duration_since(now).ok()?
    };
    (!wait.is_zero()).then_some(wait)
}

/// The URL without credentials: user info dropped, values of secret-looking query parameters masked.
fn redact(url: &Url) -> String {
    let secret = |name: &str| {
        let name = name.to_ascii_lowercase();
        SECRET_PARAMS.iter().any(|s| name.contains(s))
    };
    let mut shown = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        // Only fails for URLs that cannot have credentials, which then have none.
        shown.set_username("").ok();
        shown.set_password(None).ok();
    }
    if url.query_pairs().any(|(name, _)| secret(&name)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if secret(&name) { "***".to_string() } else { value.into_owned() };
                (name.into_owned(), value)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
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

fn truncate(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("0", now), None);
    }

    #[test]
    fn retry_after_http_date() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let wait = parse_retry_after(&date, now).expect("a future date is a hint");
        // HTTP dates have whole seconds.
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30), "{wait:?}");
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), None);
    }

    #[test]
    fn retry_after_garbage_is_no_hint() {
        let now = SystemTime::now();
        for value in ["", "soon", "-1", "1.5", "Wed, 99 Foo 2026 00:00:00 GMT", "99999999999999999999999"] {
            assert_eq!(parse_retry_after(value, now), None, "{value:?}");
        }
    }

    #[test]
    fn limits_defaults_and_validation() {
        let limits: Limits = serde_json::from_str("{}").unwrap();
        assert_eq!(limits, Limits::default());
        assert_eq!((limits.burst, limits.concurrency, limits.timeout_ms), (1, 4, 30_000));
        assert!(limits.validate().is_ok());
        assert!(serde_json::from_str::<Limits>(r#"{"rate": 3}"#).is_err(), "unknown fields are refused");
        let cases = [
            (Limits { rate_per_sec: Some(0.0), ..Limits::default() }, "rate_per_sec"),
            (Limits { rate_per_sec: Some(f64::NAN), ..Limits::default() }, "rate_per_sec"),
            (Limits { burst: 0, ..Limits::default() }, "burst"),
            (Limits { concurrency: 0, ..Limits::default() }, "concurrency"),
            (Limits { timeout_ms: 0, ..Limits::default() }, "timeout_ms"),
            (Limits { backoff_max_ms: 100, ..Limits::default() }, "backoff_max_ms"),
        ];
        for (limits, field) in cases {
            let message = limits.validate().expect_err(field);
            assert!(message.starts_with(field), "{message}");
        }
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let limits = Limits { max_retries: 4, backoff_base_ms: 100, backoff_max_ms: 300, ..Limits::default() };
        let delays: Vec<Duration> = limits.backoff().collect();
        assert_eq!(delays.len(), 4);
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(200), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(300)), "{delays:?}");
    }

    #[test]
    fn urls_in_logs_hide_secrets() {
        let url = Url::parse("https://u:pw@lms.example.com/ws?wstoken=abc&page=2&api_key=k").unwrap();
        assert_eq!(redact(&url), "https://lms.example.com/ws?wstoken=***&page=2&api_key=***");
        let plain = Url::parse("https://erp.example.com/api/items?limit=1&q=a%20b").unwrap();
        assert_eq!(redact(&plain), plain.as_str());
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
