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
use serde::{Deserialize, Serialize};

/// How long one message may take to hand over to the relay.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay mail is handed to, and the sender address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SmtpServer {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// The `From` address.
    pub from: String,
}

fn default_port() -> u16 {
    25
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("bad address `{0}`: {1}")]
    Address(String, String),
    #[error("could not build the message: {0}")]
    Build(String),
    #[error("SMTP {0}:{1}: {2}")]
    Send(String, u16, String),
}

/// Checks an address list; the error names the index at fault (`to[1]`).
pub fn check_addresses(key: &str, addresses: &[String]) -> Result<(), (String, String)> {
    for (i, a) in addresses.iter().enumerate() {
        a.parse::<Mailbox>().map_err(|e| (format!("{key}[{i}]"), format!("not an email address: {e}")))?;
    }
    Ok(())
}

impl SmtpServer {
    /// Checks the server; the error names the key relative to this table (`host`, `from`).
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.host.trim().is_empty() || self.host.contains(char::is_whitespace) {
            return Err(("host".into(), "must be a host name or address".into()));
        }
        if self.port == 0 {
            return Err(("port".into(), "must be between 1 and 65535".into()));
        }
        self.from.parse::<Mailbox>().map_err(|e| ("from".into(), format!("not an email address: {e}")))?;
        Ok(())
    }

    /// Sends one message to every address of `to` (one envelope). `html` selects the content type.
    pub async fn send(&self, to: &[String], subject: &str, body: String, html: bool) -> Result<(), MailError> {
        let from: Mailbox = self.from.parse().map_err(|e| MailError::Address(self.from.clone(), format!("{e}")))?;
        let mut builder = Message::builder().from(from).subject(subject);
        for a in to {
            builder = builder.to(a.parse().map_err(|e| MailError::Address(a.clone(), format!("{e}")))?);
        }
        let content_type = if html { ContentType::TEXT_HTML } else { ContentType::TEXT_PLAIN };
        let message = builder.header(content_type).body(body).map_err(|e| MailError::Build(e.to_string()))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .timeout(Some(SEND_TIMEOUT))
            .build();
        transport.send(message).await.map_err(|e| MailError::Send(self.host.clone(), self.port, e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_key() {
        let ok = SmtpServer { host: "127.0.0.1".into(), port: 25, from: "sf@example.com".into() };
        ok.check().unwrap();
        assert_eq!(SmtpServer { from: "nobody".into(), ..ok.clone() }.check().unwrap_err().0, "from");
        assert_eq!(SmtpServer { host: " ".into(), ..ok }.check().unwrap_err().0, "host");
        let e = check_addresses("to", &["a@example.com".into(), "bad".into()]).unwrap_err();
        assert_eq!(e.0, "to[1]");
    }
}
