//! Reading an upstream's answer body within a cap: the whole body of a 2xx answer up to
//! `upstream.max_body_bytes`, the first bytes of an error answer for its excerpt; what is past the
//! cap is never read.

use std::sync::Arc;

use reqwest::Response;

/// What reading a 2xx answer needs: the body cap and the request's own values (for excerpts).
pub(super) struct Reading {
    pub(super) limit: u64,
    pub(super) known: Arc<[String]>,
}

/// Why reading a 2xx answer failed.
pub(super) enum BodyError {
    /// The connection failed while reading: tried again.
    Read(reqwest::Error),
    /// Over `upstream.max_body_bytes`: fails the request for good.
    TooLarge,
    /// Not what was asked for: the message (with a redacted excerpt).
    Decode(String),
}

/// Why [`read_capped`] stopped.
pub(super) enum Capped {
    Read(reqwest::Error),
    TooLarge,
}

impl From<Capped> for BodyError {
    fn from(c: Capped) -> Self {
        match c {
            Capped::Read(e) => BodyError::Read(e),
            Capped::TooLarge => BodyError::TooLarge,
        }
    }
}

/// The whole body of `response` if it is at most `limit` bytes. A larger `Content-Length` is
/// refused before reading; a body that grows past `limit` is dropped there (the rest never read).
pub(super) async fn read_capped(mut response: Response, limit: u64) -> Result<Vec<u8>, Capped> {
    let declared = response.content_length();
    if declared.is_some_and(|n| n > limit) {
        return Err(Capped::TooLarge);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    while let Some(chunk) = response.chunk().await.map_err(Capped::Read)? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(Capped::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The first `limit` bytes of `response`'s body (an error answer's, for its excerpt); the rest is
/// never read.
pub(super) async fn read_prefix(mut response: Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
            _ => break,
        }
    }
    body
}
