//! The `Retry-After` header (RFC 9110, 10.2.3): delta-seconds or an HTTP-date.

use std::time::{Duration, SystemTime};

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
}
