//! Outgoing mail: failure alerts (the producer) and weekly reports (the partner pack) go out over
//! plain SMTP to a relay (`lettre`, tokio transport, no TLS of its own: point it at a local relay
//! or a smarthost reachable on a trusted network).
//!
//! ```toml
//! smtp = { host = "127.0.0.1", port = 25, from = "syncfleet@example.com" }
//! ```

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
pub use syncfleet_shared::mail::{SmtpServer, check_addresses};

/// How long one message may take to hand over to the relay.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("bad address `{0}`: {1}")]
    Address(String, String),
    #[error("could not build the message: {0}")]
    Build(String),
    #[error("SMTP {0}:{1}: {2}")]
    Send(String, u16, String),
}

/// Sends one message to every address of `to` through `server` (one envelope). `html` selects the
/// content type.
pub async fn send(
    server: &SmtpServer,
    to: &[String],
    subject: &str,
    body: String,
    html: bool,
) -> Result<(), MailError> {
    let from: Mailbox = server.from.parse().map_err(|e| MailError::Address(server.from.clone(), format!("{e}")))?;
    let mut builder = Message::builder().from(from).subject(subject);
    for a in to {
        builder = builder.to(a.parse().map_err(|e| MailError::Address(a.clone(), format!("{e}")))?);
    }
    let content_type = if html { ContentType::TEXT_HTML } else { ContentType::TEXT_PLAIN };
    let message = builder.header(content_type).body(body).map_err(|e| MailError::Build(e.to_string()))?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&server.host)
        .port(server.port)
        .timeout(Some(SEND_TIMEOUT))
        .build();
    transport.send(message).await.map_err(|e| MailError::Send(server.host.clone(), server.port, e.to_string()))?;
    Ok(())
}
