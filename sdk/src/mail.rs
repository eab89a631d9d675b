//! Outgoing mail: failure alerts (the producer) and weekly reports (the partner pack), over SMTP
//! (`lettre`, tokio transport, rustls).
//!
//! `tls = "none"` (the default) hands mail in the clear to a local relay or a smarthost on a
//! trusted network; `"starttls"` (port 587) and `"tls"` (port 465) verify the server's certificate
//! against the system's roots, or `ca_file`'s, and may log in (`username`, the password named by
//! `secret_env` or `secret_file` under `[secrets]`, AUTH PLAIN or LOGIN).
//!
//! ```toml
//! smtp = { host = "127.0.0.1", port = 25, from = "syncfleet@example.com" }
//! smtp = { host = "smtp.example.com", tls = "starttls", username = "syncfleet", secret_env = "SYNCFLEET_SECRET_SMTP", from = "syncfleet@example.com" }
//! ```

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
};
pub use syncfleet_shared::mail::{SmtpServer, SmtpTls, check_addresses};

use crate::secrets::{self, SecretPolicy};

/// How long one message may take to hand over to the server.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("bad address `{0}`: {1}")]
    Address(String, String),
    #[error("could not build the message: {0}")]
    Build(String),
    /// The SMTP settings at `key` cannot be used (the password's reference, the CA file).
    #[error("SMTP setting `{key}`: {message}")]
    Setting { key: String, message: String },
    #[error("SMTP {0}:{1}: {2}")]
    Send(String, u16, String),
}

fn setting(key: &str, message: impl Into<String>) -> MailError {
    MailError::Setting { key: key.to_owned(), message: message.into() }
}

/// Sends one message to every address of `to` through `server` (one envelope). `html` selects the
/// content type. `secrets` is the deployment's `[secrets]` policy, under which the password is
/// read (needed only when the server has a `username`).
pub async fn send(
    server: &SmtpServer,
    secrets: Option<&SecretPolicy>,
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
    let transport = transport(server, secrets)?;
    // lettre's errors hold the server's answer, never the credentials.
    transport.send(message).await.map_err(|e| MailError::Send(server.host.clone(), server.port(), e.to_string()))?;
    Ok(())
}

/// The transport `server` describes: its TLS, its CA, its credentials.
fn transport(
    server: &SmtpServer,
    secrets: Option<&SecretPolicy>,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&server.host)
        .port(server.port())
        .timeout(Some(SEND_TIMEOUT));
    if server.tls != SmtpTls::None {
        let mut params = TlsParameters::builder(server.host.clone());
        if let Some(path) = &server.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| setting("smtp.ca_file", format!("cannot read {}: {}", path.display(), e.kind())))?;
            let ca = Certificate::from_pem(&pem)
                .map_err(|e| setting("smtp.ca_file", format!("{} holds no PEM certificate: {e}", path.display())))?;
            params = params.add_root_certificate(ca);
        }
        let params = params.build_rustls().map_err(|e| setting("smtp.tls", e.to_string()))?;
        builder = builder.tls(match server.tls {
            SmtpTls::Starttls => Tls::Required(params),
            _ => Tls::Wrapper(params),
        });
    }
    if let Some(user) = &server.username {
        let key = if server.secret_env.is_some() { "smtp.secret_env" } else { "smtp.secret_file" };
        let policy = secrets.ok_or_else(|| setting(key, "this process has no secrets policy ([secrets])"))?;
        let password =
            secrets::resolve_setting("smtp", server.secret_env.as_deref(), server.secret_file.as_deref(), policy)
                .map_err(|e| MailError::Setting { key: e.key, message: e.message })?;
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(builder.build())
}
