//! Mail settings as the configuration holds them (alerts, reports): the server, its TLS, the
//! credentials' reference and the sender address, checked at load. Sending is the SDK's
//! (`syncfleet_sdk::mail`).

use std::path::PathBuf;

use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP (a local relay or a smarthost on a trusted network); AUTH is refused.
    #[default]
    None,
    /// Plain connect, then `STARTTLS`, required (the session fails when the server does not offer
    /// it); default port 587.
    Starttls,
    /// TLS from the first byte (SMTPS, "implicit TLS"); default port 465.
    Tls,
}

/// The server mail is handed to, and the sender address.
///
/// ```toml
/// smtp = { host = "smtp.example.com", tls = "starttls", username = "syncfleet", secret_env = "SYNCFLEET_SECRET_SMTP", from = "syncfleet@example.com" }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SmtpServer {
    pub host: String,
    /// Default: 25 (`tls = "none"`), 587 (`"starttls"`), 465 (`"tls"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The `From` address.
    pub from: String,
    #[serde(default)]
    pub tls: SmtpTls,
    /// AUTH (PLAIN or LOGIN, as the server offers) with this user name and the password that
    /// `secret_env` or `secret_file` names (`[secrets]`); needs TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The environment variable holding the password (its name starts with `secrets.env_prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// The file holding the password, under `secrets.dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// PEM file of the CA(s) the server's certificate is verified against, instead of the system's
    /// roots (a private server). There is no switch to skip verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Checks an address list; the error names the index at fault (`to[1]`).
pub fn check_addresses(key: &str, addresses: &[String]) -> Result<(), (String, String)> {
    for (i, a) in addresses.iter().enumerate() {
        a.parse::<Mailbox>().map_err(|e| (format!("{key}[{i}]"), format!("not an email address: {e}")))?;
    }
    Ok(())
}

impl SmtpServer {
    /// A plain SMTP server (no TLS, no AUTH) on `host:port`.
    pub fn plain(host: impl Into<String>, port: u16, from: impl Into<String>) -> SmtpServer {
        SmtpServer {
            host: host.into(),
            port: Some(port),
            from: from.into(),
            tls: SmtpTls::None,
            username: None,
            secret_env: None,
            secret_file: None,
            ca_file: None,
        }
    }

    /// The port, or the default of the TLS mode.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }

    /// Checks the server; the error names the key relative to this table (`host`, `from`). The
    /// password's reference is checked against the `[secrets]` policy by the caller
    /// (`secret::check_settings_secrets` for a pack's settings, the alerts for `[alerts]`).
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.host.trim().is_empty() || self.host.contains(char::is_whitespace) {
            return Err(("host".into(), "must be a host name or address".into()));
        }
        if self.port == Some(0) {
            return Err(("port".into(), "must be between 1 and 65535".into()));
        }
        self.from.parse::<Mailbox>().map_err(|e| ("from".into(), format!("not an email address: {e}")))?;
        let password = match (&self.secret_env, &self.secret_file) {
            (Some(_), Some(_)) => return Err(("secret_env".into(), "set one of secret_env and secret_file".into())),
            (None, None) => false,
            _ => true,
        };
        match &self.username {
            Some(user) if user.trim().is_empty() => {
                return Err(("username".into(), "must not be empty".into()));
            }
            Some(_) if !password => {
                return Err(("username".into(), "name the password with secret_env or secret_file".into()));
            }
            Some(_) if self.tls == SmtpTls::None => {
                return Err((
                    "tls".into(),
                    "AUTH would send the password in the clear: set tls = \"starttls\" or \"tls\"".into(),
                ));
            }
            None if password => {
                return Err(("username".into(), "set it to log in with the password named here".into()));
            }
            _ => {}
        }
        if self.ca_file.is_some() && self.tls == SmtpTls::None {
            return Err(("ca_file".into(), "applies to TLS only: set tls = \"starttls\" or \"tls\"".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_key() {
        let ok = SmtpServer::plain("127.0.0.1", 25, "sf@example.com");
        ok.check().unwrap();
        assert_eq!(SmtpServer { from: "nobody".into(), ..ok.clone() }.check().unwrap_err().0, "from");
        assert_eq!(SmtpServer { host: " ".into(), ..ok.clone() }.check().unwrap_err().0, "host");
        let e = check_addresses("to", &["a@example.com".into(), "bad".into()]).unwrap_err();
        assert_eq!(e.0, "to[1]");
        let auth = SmtpServer {
            username: Some("sf".into()),
            secret_env: Some("SYNCFLEET_SECRET_SMTP".into()),
            tls: SmtpTls::Starttls,
            port: None,
            ..ok.clone()
        };
        auth.check().unwrap();
        assert_eq!(auth.port(), 587);
        assert_eq!(SmtpServer { tls: SmtpTls::Tls, ..auth.clone() }.port(), 465);
        let clear = SmtpServer { tls: SmtpTls::None, ..auth.clone() }.check().unwrap_err();
        assert_eq!(clear.0, "tls");
        assert!(clear.1.contains("in the clear"), "{}", clear.1);
        assert_eq!(SmtpServer { secret_env: None, ..auth.clone() }.check().unwrap_err().0, "username");
        assert_eq!(SmtpServer { username: None, ..auth }.check().unwrap_err().0, "username");
        assert_eq!(SmtpServer { ca_file: Some("/ca.pem".into()), ..ok }.check().unwrap_err().0, "ca_file");
    }

    #[test]
    fn tls_modes_read_as_written() {
        let s: SmtpServer =
            serde_json::from_str(r#"{"host":"h","from":"a@example.com","tls":"starttls","port":2587}"#).unwrap();
        assert_eq!((s.tls, s.port()), (SmtpTls::Starttls, 2587));
        let bad = serde_json::from_str::<SmtpServer>(r#"{"host":"h","from":"a@example.com","tls":"yes"}"#);
        assert!(bad.unwrap_err().to_string().contains("unknown variant"));
    }
}
