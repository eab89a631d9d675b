//! Tracing set up once: JSON lines in production, compact text for people, a test writer in tests.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// `json`: one JSON object per line (production); otherwise compact text on stderr.
pub fn init(json: bool) {
    let filter =
        EnvFilter::try_from_env("SYNCFLEET_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,apalis=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(fmt::layer().json().with_current_span(false).with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(fmt::layer().compact().with_writer(std::io::stderr)).try_init()
    };
    result.ok();
}

/// For tests: output captured by the test harness.
pub fn init_test() {
    let filter = EnvFilter::try_from_env("SYNCFLEET_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::registry().with(filter).with(fmt::layer().with_test_writer()).try_init().ok();
}

/// Compact text with a fixed default filter (overridden by `SYNCFLEET_LOG`).
pub fn init_filter(default: &str) {
    let filter = EnvFilter::try_from_env("SYNCFLEET_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().compact().with_writer(std::io::stderr))
        .try_init()
        .ok();
}
