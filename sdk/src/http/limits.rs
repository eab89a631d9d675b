//! [`Limits`]: how hard one integration may use its upstream (rate, burst, concurrency, timeout,
//! retries and their backoff).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use syncfleet_shared::retry::Backoff;

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
    pub(super) fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        let backoff = Backoff::from_low(
            Duration::from_millis(self.backoff_base_ms),
            Duration::from_millis(self.backoff_max_ms),
            Backoff::HTTP.factor,
        );
        (1..=self.max_retries).map(move |retry| backoff.delay(retry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
