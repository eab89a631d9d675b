//! Exit codes (listed in `syncfleet --help` and the README) and which errors map to which.

use std::process::ExitCode;

use syncfleet_store::{StoreError, queue::QueueError, roles::SetupError};

/// Success; with `--wait`, the run completed.
pub const OK: u8 = 0;
/// An error, a waited-for run that failed or was cancelled, or a `healthcheck --url` answer
/// other than 2xx.
pub const FAILED: u8 = 1;
/// Usage: an unknown command or bad flags (clap's own code).
#[allow(dead_code, reason = "clap exits with it itself; named for the tests")]
pub const USAGE: u8 = 2;
/// A waited-for run ended `partial`.
pub const PARTIAL: u8 = 3;
/// A trigger refused because a run of the chain, or of its exclusion group, is active.
pub const REFUSED: u8 = 4;
/// PostgreSQL, Redis, the API or a `healthcheck --url` could not be reached.
pub const UNREACHABLE: u8 = 5;
/// The API refused the token: missing, invalid, revoked, or a role too low.
pub const NOT_ALLOWED: u8 = 6;

/// An error the CLI itself raises with a known exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Another run is active (exit 4).
    #[error("{0}")]
    Refused(String),
    /// A service could not be reached (exit 5).
    #[error("{0}")]
    Unreachable(String),
    /// The API refused the token (exit 6).
    #[error("{0}")]
    NotAllowed(String),
}

/// The exit code of a waited-for run's final status.
pub fn for_status(status: &str) -> ExitCode {
    ExitCode::from(match status {
        "completed" => OK,
        "partial" => PARTIAL,
        _ => FAILED,
    })
}

/// The exit code of an error: its own when the CLI raised it, 4 for a refused trigger, 5 when a
/// connection failed anywhere in its causes, else 1.
pub fn for_error(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return match e {
                CliError::Refused(_) => REFUSED,
                CliError::Unreachable(_) => UNREACHABLE,
                CliError::NotAllowed(_) => NOT_ALLOWED,
            };
        }
        let store = cause.downcast_ref::<StoreError>().or_else(|| match cause.downcast_ref::<SetupError>() {
            Some(SetupError::Store(e)) => Some(e),
            _ => None,
        });
        match store {
            Some(StoreError::ActiveRun { .. } | StoreError::Excluded { .. }) => return REFUSED,
            Some(StoreError::Db(e)) if unreachable_db(e) => return UNREACHABLE,
            _ => {}
        }
        if let Some(QueueError::Redis(e)) = cause.downcast_ref::<QueueError>()
            && (e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped())
        {
            return UNREACHABLE;
        }
        if cause.downcast_ref::<sqlx::Error>().is_some_and(unreachable_db)
            || cause.downcast_ref::<reqwest::Error>().is_some_and(|e| e.is_connect() || e.is_timeout())
            || cause.downcast_ref::<std::io::Error>().is_some_and(unreachable_io)
        {
            return UNREACHABLE;
        }
    }
    FAILED
}

fn unreachable_db(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => unreachable_io(io) || io.kind() == std::io::ErrorKind::Other,
        sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// An I/O error of a connection (refused, reset, timed out, no route, name not resolved), not of
/// a file.
fn unreachable_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | TimedOut
            | BrokenPipe
            | HostUnreachable
            | NetworkUnreachable
            | AddrNotAvailable
            | UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_exit_codes() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let wrapped = anyhow::Error::new(StoreError::Db(sqlx::Error::Io(refused))).context("connecting");
        assert_eq!(for_error(&wrapped), UNREACHABLE);
        let active = StoreError::ActiveRun { chain: "c".into(), integration: "i".into(), run_id: "r".into() };
        assert_eq!(for_error(&anyhow::Error::new(active)), REFUSED);
        assert_eq!(for_error(&anyhow::Error::new(CliError::NotAllowed("no".into()))), NOT_ALLOWED);
        assert_eq!(for_error(&anyhow::anyhow!("chain `x` has no schedule")), FAILED);
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "config.toml");
        assert_eq!(for_error(&anyhow::Error::new(missing)), FAILED, "a missing file is no connection error");
    }
}
