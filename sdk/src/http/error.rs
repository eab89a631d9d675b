//! What a failed request means: [`HttpError`] (every text redacted) and the [`Verdict`] it gives
//! its step (fail for good, or try again, after the upstream's wait when it gave one).

use std::time::Duration;

use super::{NonPublicAddress, policy};

/// Why a request failed. Every text shows URLs redacted and upstream bodies only as short, masked
/// excerpts ([`super::redact`]). [`HttpError::is_permanent`] tells whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The upstream refused the request for good (4xx other than 408/429): fix the request or the
    /// credentials, retrying will not help. `body` is a redacted excerpt.
    #[error("{method} {url} answered {status}: {body}")]
    Status { method: String, url: String, status: u16, body: String },
    /// A request to another origin than the integration's (a paging link, a URL a pack built):
    /// refused before sending, nothing left.
    #[error(
        "refused {method} {url}: host {host} is not the integration's origin {origin} (requests, paging \
         links and redirects stay on it); nothing was sent"
    )]
    OffOrigin { method: String, url: String, host: String, origin: String },
    /// The upstream's address is in a non-public network that `upstream.allow_networks` does not allow.
    #[error("{0}")]
    NonPublic(NonPublicAddress),
    /// A redirect to another origin, or one too many: not followed.
    #[error(
        "{method} {url} answered {status} redirecting to {location}: not followed (redirects are followed \
         only on the integration's origin, at most {max})",
        max = policy::MAX_REDIRECTS
    )]
    Redirect { method: String, url: String, status: u16, location: String },
    /// The answer is larger than `upstream.max_body_bytes`: not read further.
    #[error("{url}: the answer is larger than {limit} bytes (upstream.max_body_bytes); not read")]
    TooLarge { url: String, limit: u64 },
    /// A paging loop ended the read ([`super::Pages`]): a repeated cursor or too many pages.
    #[error("{0}")]
    Paging(String),
    /// The upstream asked to wait longer than `upstream.max_retry_after_secs`: not waited for (and no
    /// cool-down set); try the step again after the cap.
    #[error(
        "{method} {url} answered {status} asking to wait {wait_secs} s, more than \
         upstream.max_retry_after_secs ({max_secs} s): not waited for, the step is retried later"
    )]
    RetryAfterTooLong { method: String, url: String, status: u16, wait_secs: u64, max_secs: u64 },
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

    /// Trying again will not help: a 4xx refusal (not 408/429), a request the policy refuses
    /// (another origin, a non-public address, a redirect away), an answer too large, a looping or
    /// endless list, a request that cannot be built.
    pub fn is_permanent(&self) -> bool {
        match self {
            HttpError::Status { status, .. } => (400..500).contains(status) && !matches!(status, 408 | 429),
            HttpError::OffOrigin { .. }
            | HttpError::NonPublic(_)
            | HttpError::Redirect { .. }
            | HttpError::TooLarge { .. }
            | HttpError::Paging(_)
            | HttpError::Build(_) => true,
            HttpError::RetryAfterTooLong { .. }
            | HttpError::Exhausted { .. }
            | HttpError::Decode { .. }
            | HttpError::Budget(_)
            | HttpError::Cancelled => false,
        }
    }

    /// How long the step should wait before trying again, when the upstream said (a `Retry-After`
    /// above the cap: the cap).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::RetryAfterTooLong { max_secs, .. } => Some(Duration::from_secs(*max_secs)),
            _ => None,
        }
    }

    /// What this failure means for the step ([`Verdict::step_error`]).
    pub fn verdict(&self) -> Verdict {
        Verdict { permanent: self.is_permanent(), after: self.retry_after() }
    }
}

/// What a failed request means for its step: fail for good, or try again (after the upstream's wait
/// when it gave one). `Verdict::step_error` makes the step's error of it, and `StepError: From<HttpError>`
/// goes by it (both in `sync::pull`, which may name the step's types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub permanent: bool,
    pub after: Option<Duration>,
}
