//! Tracing set up once: JSON lines in production, compact text for people, a test writer in tests.
//! `SYNCFLEET_LOG` (an `EnvFilter` directive) overrides the default level everywhere.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Default filter of the services.
pub const SERVICE_FILTER: &str = "info,sqlx=warn,apalis=warn";

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("SYNCFLEET_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logs to stderr: one JSON object per line when `json` (production), else compact text.
pub fn init(json: bool, default_filter: &str) {
    let registry = tracing_subscriber::registry().with(filter(default_filter));
    let result = if json {
        registry.with(fmt::layer().json().with_current_span(false).with_writer(std::io::stderr)).try_init()
    } else {
        registry
            .with(fmt::layer().compact().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr))
            .try_init()
    };
    result.ok();
}

/// For tests: output captured by the test harness.
pub fn init_test() {
    tracing_subscriber::registry().with(filter("warn")).with(fmt::layer().with_test_writer()).try_init().ok();
}
