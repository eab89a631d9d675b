//! Errors of the sandbox library.

use std::io;

/// What can go wrong when starting or configuring the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("unknown scale {0:?}: expected small, seed or large")]
    UnknownScale(String),
    #[error("unknown api {0:?}: expected northpass, impartner, moodle or erp")]
    UnknownApi(String),
    #[error("could not bind the sandbox listener")]
    Bind(#[source] io::Error),
    #[error("the sandbox server failed")]
    Serve(#[source] io::Error),
}
