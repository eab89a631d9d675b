//! What every syncfleet process sets up once in its `main`: logs and traces ([`telemetry`]), the
//! Prometheus recorder and the metric names ([`metrics`]), the one shutdown source
//! ([`shutdown_signal`]), and the HTTP server with its time and connection limits ([`server`]).

pub mod metrics;
pub mod server;
pub mod telemetry;

use tokio_util::sync::CancellationToken;

/// One cancellation token for SIGTERM and ctrl-c.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        ctrl_c.await.ok();
        tracing::info!("Shutdown requested.");
        t.cancel();
    });
    token
}
