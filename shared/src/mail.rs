//! Mail settings as the configuration holds them (alerts, reports): the relay and addresses,
//! checked at load. Sending is the SDK's (`syncfleet_sdk::mail`).

use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};

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
