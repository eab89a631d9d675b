//! The sections about talking to the world outside: `[hooks]` (signed run records), `[secrets]`
//! (where secrets may come from), `[upstream]` (what outbound requests may reach and read) and
//! `[alerts]` (mail and webhook channels), each with its own checks.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, invalid};

/// `[hooks]`: a signed `POST` of the run record when a run starts (`run.started`) and ends
/// (`run.ended`), delivered by the producer's reconciler, never holding up the run. An
/// integration's own `hooks_url` / `hooks_secret_ref` replace the fleet-wide hook for its runs.
///
/// Signed as our incoming webhooks are (`X-Syncfleet-Timestamp`, `X-Syncfleet-Signature: v2=…`)
/// with the secret named by `secret_env` or `secret_file` (`[secrets]`). A delivery that fails is
/// tried again after `retry_secs` to twice it (random jitter), doubling (one `retry::Backoff`),
/// up to `max_attempts` deliveries (defaults 5 s and 8).
///
/// ```toml
/// [hooks]
/// url = "https://hooks.example.com/syncfleet"
/// secret_file = "hooks-key"
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// May carry its own secret (in its path or query): never logged with its query or user info.
    pub url: Option<Secret>,
    /// The environment variable holding the HMAC key (its name starts with `secrets.env_prefix`).
    pub secret_env: Option<String>,
    /// The file holding the HMAC key, under `secrets.dir`.
    pub secret_file: Option<String>,
    pub retry_secs: Option<u64>,
    pub max_attempts: Option<u32>,
    /// Per delivery, connection to the answer (default 10 s).
    pub timeout_secs: Option<u64>,
}

impl HooksConfig {
    /// Delay before the second delivery of a hook that failed.
    pub fn retry_delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.retry_secs.unwrap_or(5))
    }

    /// Deliveries of one hook, the first included.
    pub fn attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(8)
    }

    /// How long one delivery may take.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs.unwrap_or(10))
    }

    pub(super) fn validate(&self, policy: &crate::secret::SecretPolicy) -> Result<(), ConfigError> {
        for (key, v) in [("hooks.retry_secs", self.retry_secs), ("hooks.timeout_secs", self.timeout_secs)] {
            if v == Some(0) {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.max_attempts == Some(0) {
            return Err(invalid("hooks.max_attempts", "must be at least 1"));
        }
        if let Some(url) = &self.url {
            check_hook_url("hooks.url", url)?;
        }
        match (&self.secret_env, &self.secret_file) {
            (Some(_), Some(_)) => return Err(invalid("hooks", "set one of secret_env and secret_file, not both")),
            (None, None) if self.url.is_some() => {
                return Err(invalid("hooks", "name the HMAC key of hooks.url with secret_env or secret_file"));
            }
            (Some(name), None) => {
                policy.env(name).map_err(|m| invalid("hooks.secret_env", m))?;
            }
            (None, Some(name)) => {
                policy.file(name).map_err(|m| invalid("hooks.secret_file", m))?;
            }
            (None, None) => {}
        }
        Ok(())
    }
}

/// A hook URL: absolute http(s).
pub(super) fn check_hook_url(key: &str, url: &Secret) -> Result<(), ConfigError> {
    if !url::Url::parse(url.expose()).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some()) {
        return Err(invalid(key, "must be an absolute http(s) URL"));
    }
    Ok(())
}

/// `[secrets]`: a secret is only ever a reference (`env:NAME`, `file:NAME`), and a reference may
/// only point where the deployment allows: environment variables starting with `env_prefix`, and
/// regular files under `dir`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// Every environment variable a secret reference names must start with this.
    pub env_prefix: String,
    /// File references are read from this directory only; unset = file references are refused.
    pub dir: Option<std::path::PathBuf>,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig { env_prefix: "SYNCFLEET_SECRET_".into(), dir: Some("/run/secrets/syncfleet".into()) }
    }
}

impl SecretsConfig {
    /// The policy every secret reference is checked and read under.
    pub fn policy(&self) -> crate::secret::SecretPolicy {
        crate::secret::SecretPolicy { env_prefix: self.env_prefix.clone(), dir: self.dir.clone() }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let prefix_ok = self.env_prefix.len() >= 4
            && !self.env_prefix.starts_with(|c: char| c.is_ascii_digit())
            && self.env_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !prefix_ok {
            return Err(invalid(
                "secrets.env_prefix",
                "must be at least 4 of A-Z, a-z, 0-9 and `_`, not starting with a digit",
            ));
        }
        if let Some(dir) = &self.dir
            && !dir.is_absolute()
        {
            return Err(invalid("secrets.dir", "must be an absolute path"));
        }
        Ok(())
    }
}

/// `[upstream]`: the policy every pack's HTTP client applies to every upstream request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Networks (CIDR, e.g. `10.20.0.0/16`, `127.0.0.1/32`) an upstream may be in although they are
    /// loopback, link-local, private or otherwise not public. Empty = only public addresses.
    pub allow_networks: Vec<String>,
    /// Largest answer body read, in bytes; a larger one fails the request.
    pub max_body_bytes: u64,
    /// Most pages one read of one entity may follow; more fails the step.
    pub max_pages: u64,
    /// Longest `Retry-After` obeyed, in seconds; a longer hint is not obeyed: the request fails at
    /// once, the step is retried after this long, and no fleet-wide cool-down is set (the other
    /// integrations on the upstream key go on).
    pub max_retry_after_secs: u64,
}

impl UpstreamConfig {
    /// The allowed networks, parsed.
    pub fn networks(&self) -> Vec<ipnet::IpNet> {
        self.allow_networks.iter().filter_map(|n| parse_network(n).ok()).collect()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (i, n) in self.allow_networks.iter().enumerate() {
            parse_network(n).map_err(|m| invalid(&format!("upstream.allow_networks[{i}]"), m))?;
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("upstream.max_body_bytes", "must be at least 1024"));
        }
        if self.max_pages == 0 {
            return Err(invalid("upstream.max_pages", "must be at least 1"));
        }
        if self.max_retry_after_secs == 0 || self.max_retry_after_secs > 86_400 {
            return Err(invalid("upstream.max_retry_after_secs", "must be between 1 and 86400"));
        }
        Ok(())
    }
}

/// A CIDR (`10.0.0.0/8`) or a single address (`127.0.0.1` = `/32`).
fn parse_network(n: &str) -> Result<ipnet::IpNet, String> {
    n.parse::<ipnet::IpNet>()
        .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{n}` is not a network (CIDR such as 10.0.0.0/8) or an address"))
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            allow_networks: Vec::new(),
            max_body_bytes: 32 * 1024 * 1024,
            max_pages: 100_000,
            max_retry_after_secs: 900,
        }
    }
}

/// Alerts on a required step's failure (sent by the producer's reconciler, once per failure):
/// a JSON `POST` to `webhook_url` and/or a mail to `to` through `smtp`.
///
/// A channel that fails is tried again after `retry_secs` to twice it (random jitter), doubling each
/// time (`retry::Backoff::ALERT_CHANNEL`), up to `max_attempts` deliveries in all (defaults 30 s and 5); the channel that succeeded is not sent again.
///
/// ```toml
/// [alerts]
/// webhook_url = "https://hooks.example.com/syncfleet"
/// to = ["oncall@example.com"]
/// smtp = { host = "127.0.0.1", port = 25, from = "syncfleet@example.com" }
/// ```
///
/// A mail provider takes mail over TLS with AUTH
/// (`smtp = { host = "smtp.example.com", tls = "starttls", username = "syncfleet", secret_env = "SYNCFLEET_SECRET_SMTP", from = "…" }`,
/// [`crate::mail::SmtpServer`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Often carries its own secret (in its path): never printed.
    pub webhook_url: Option<Secret>,
    pub smtp: Option<crate::mail::SmtpServer>,
    pub to: Vec<String>,
    pub retry_secs: Option<u64>,
    pub max_attempts: Option<u32>,
}

impl AlertsConfig {
    /// Delay before the second delivery attempt of a failed channel.
    pub fn retry_delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.retry_secs.unwrap_or(30))
    }

    /// Delivery attempts of one alert, the first included.
    pub fn attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(5)
    }
}

impl AlertsConfig {
    pub(super) fn validate(&self, policy: &crate::secret::SecretPolicy) -> Result<(), ConfigError> {
        if self.retry_secs == Some(0) {
            return Err(invalid("alerts.retry_secs", "must be at least 1"));
        }
        if self.max_attempts == Some(0) {
            return Err(invalid("alerts.max_attempts", "must be at least 1"));
        }
        if let Some(url) = &self.webhook_url
            && !url::Url::parse(url.expose()).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return Err(invalid("alerts.webhook_url", "must be an absolute http(s) URL"));
        }
        crate::mail::check_addresses("alerts.to", &self.to).map_err(|(k, m)| invalid(&k, m))?;
        match &self.smtp {
            Some(smtp) => {
                smtp.check().map_err(|(k, m)| invalid(&format!("alerts.smtp.{k}"), m))?;
                if let Some(name) = &smtp.secret_env {
                    policy.env(name).map_err(|m| invalid("alerts.smtp.secret_env", m))?;
                }
                if let Some(name) = &smtp.secret_file {
                    policy.file(name).map_err(|m| invalid("alerts.smtp.secret_file", m))?;
                }
                if self.to.is_empty() {
                    return Err(invalid("alerts.to", "list at least one address when alerts.smtp is set"));
                }
            }
            None if !self.to.is_empty() => return Err(invalid("alerts.smtp", "set it to mail alerts to alerts.to")),
            None => {}
        }
        Ok(())
    }
}
