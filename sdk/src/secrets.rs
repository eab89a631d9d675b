//! Secrets: the one resolver of every secret a deployment names, for the packs' settings and the
//! producer's webhook check alike. The database and every listing hold only where a secret lives;
//! it is read where it is used (a worker's request, the webhook's signature check), from that
//! process's environment or files.
//!
//! Where a secret lives ([`SecretRef`]):
//!
//! | written as | reads |
//! |---|---|
//! | `env:NAME` (an integration's `webhook_secret_ref`) | the environment variable `NAME` |
//! | `file:/path` (a mounted Kubernetes secret) | the file, its trailing newline dropped |
//! | `secret_env = "NAME"` (a pack's settings) | the same as `env:NAME` |
//! | `secret = "…"` (a pack's settings, from the config file only) | the value itself |
//!
//! A pack's settings name a secret with the two keys `secret_env` and `secret` (`secret_env` wins
//! when both are set); [`SecretSource`] holds them, or a settings struct keeps the two fields and
//! calls [`resolve_setting`]. Errors name the key at fault ([`SecretError`]) and never carry the
//! secret; the value read is a [`Secret`], which never prints.
//!
//! ```
//! use syncfleet_sdk::secrets::{self, SecretRef, SecretSource};
//!
//! let source = SecretSource { secret_env: None, secret: Some(secrets::Secret::new("k")) };
//! assert_eq!(source.resolve("northpass.secret_env").unwrap().expose(), "k");
//! assert_eq!(SecretRef::parse("env:API_KEY").unwrap(), SecretRef::Env("API_KEY".into()));
//! let e = secrets::resolve_ref("webhook_secret_ref", "file:/nonexistent/key").unwrap_err();
//! assert_eq!(e.key, "webhook_secret_ref");
//! ```

use std::{fmt, path::PathBuf, str::FromStr};

use serde::{Deserialize, Serialize};

pub use syncfleet_shared::secret::{Secret, check_secret_ref};

/// Where a secret lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable: `env:NAME`, or a pack's `secret_env = "NAME"`.
    Env(String),
    /// A file (`file:/path`); its trailing newline is not part of the secret.
    File(PathBuf),
    /// The secret itself, written in the config file (a pack's `secret = "…"`).
    Inline(Secret),
}

impl SecretRef {
    /// Parses a reference: `env:NAME` or `file:/absolute/path` ([`check_secret_ref`]'s syntax).
    pub fn parse(reference: &str) -> Result<SecretRef, String> {
        check_secret_ref(reference)?;
        Ok(match reference.split_once(':') {
            Some(("env", name)) => SecretRef::Env(name.to_owned()),
            Some((_, path)) => SecretRef::File(PathBuf::from(path)),
            None => unreachable!("check_secret_ref accepts only `env:` and `file:`"),
        })
    }

    /// A pack's two keys: `secret_env = "NAME"` (= `env:NAME`), else the inline `secret`; `None`
    /// when neither is set.
    pub fn from_settings(secret_env: Option<&str>, secret: Option<&Secret>) -> Option<SecretRef> {
        match (secret_env, secret) {
            (Some(name), _) => Some(SecretRef::Env(name.to_owned())),
            (None, Some(s)) => Some(SecretRef::Inline(s.clone())),
            (None, None) => None,
        }
    }

    /// Reads the secret. The error says what is missing (never the secret) but not the key; see
    /// [`resolve`] for one that does.
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(value) => Ok(Secret::new(value)),
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(format!("environment variable `{name}` is not valid UTF-8"))
                }
                Err(std::env::VarError::NotPresent) => Err(format!("environment variable `{name}` is not set")),
            },
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|s| Secret::new(s.trim_end_matches(['\r', '\n'])))
                .map_err(|e| format!("cannot read `{}`: {e}", path.display())),
            SecretRef::Inline(secret) => Ok(secret.clone()),
        }
    }
}

impl FromStr for SecretRef {
    type Err = String;

    fn from_str(reference: &str) -> Result<SecretRef, String> {
        SecretRef::parse(reference)
    }
}

/// `env:NAME`, `file:/path`, or `inline secret` (never the value).
impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
            SecretRef::Inline(_) => f.write_str("inline secret"),
        }
    }
}

/// A secret that could not be read, with the settings key that names it (`northpass.secret_env`,
/// `auth`, `webhook_secret_ref`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SecretError {
    pub key: String,
    pub message: String,
}

/// `(key, message)`, the form of a pack's settings errors (`Pack::check_settings`).
impl From<SecretError> for (String, String) {
    fn from(e: SecretError) -> (String, String) {
        (e.key, e.message)
    }
}

/// Reads the secret `r` points at; the error names `key`.
pub fn resolve(key: &str, r: &SecretRef) -> Result<Secret, SecretError> {
    r.read().map_err(|message| SecretError { key: key.to_owned(), message })
}

/// Reads the secret a reference (`env:NAME` or `file:/path`) at `key` points at, e.g. an
/// integration's `webhook_secret_ref`.
pub fn resolve_ref(key: &str, reference: &str) -> Result<Secret, SecretError> {
    let r = SecretRef::parse(reference).map_err(|message| SecretError { key: key.to_owned(), message })?;
    resolve(key, &r)
}

/// Reads the secret a pack's settings name with `secret_env` (wins) or an inline `secret`; the
/// error names `key` (by convention the `secret_env` key, e.g. `moodle.secret_env`), also when
/// neither is set.
pub fn resolve_setting(key: &str, secret_env: Option<&str>, secret: Option<&Secret>) -> Result<Secret, SecretError> {
    match SecretRef::from_settings(secret_env, secret) {
        Some(r) => resolve(key, &r),
        None => Err(SecretError { key: key.to_owned(), message: "set secret_env (or secret)".into() }),
    }
}

/// A pack's two settings keys for one secret: `secret_env = "NAME"` (preferred) or the secret
/// itself as `secret` (config file only: the admin API refuses inline secrets). Flatten it into a
/// settings struct (`#[serde(flatten)]`) that does not deny unknown fields; one that does keeps the
/// two fields itself and calls [`resolve_setting`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSource {
    /// The environment variable holding the secret (read where it is used).
    pub secret_env: Option<String>,
    /// The secret itself (prefer `secret_env`).
    pub secret: Option<Secret>,
}

impl SecretSource {
    /// Where the secret lives; `None` when neither key is set.
    pub fn secret_ref(&self) -> Option<SecretRef> {
        SecretRef::from_settings(self.secret_env.as_deref(), self.secret.as_ref())
    }

    /// Reads the secret; the error names `key`.
    pub fn resolve(&self, key: &str) -> Result<Secret, SecretError> {
        resolve_setting(key, self.secret_env.as_deref(), self.secret.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A variable no test environment sets.
    const UNSET: &str = "SYNCFLEET_TEST_SECRETS_SURELY_UNSET";

    #[test]
    fn references_parse_with_the_shared_syntax() {
        assert_eq!(SecretRef::parse("env:API_KEY"), Ok(SecretRef::Env("API_KEY".into())));
        assert_eq!(SecretRef::parse("file:/run/secrets/key"), Ok(SecretRef::File("/run/secrets/key".into())));
        for bad in ["API_KEY", "env:", "env:1X", "file:relative", "vault:x"] {
            assert!(SecretRef::parse(bad).unwrap_err().contains("expected `env:NAME` or `file:/path`"), "{bad}");
        }
        assert_eq!("env:A".parse::<SecretRef>().unwrap().to_string(), "env:A");
        assert_eq!(SecretRef::Inline(Secret::new("hunter2")).to_string(), "inline secret");
    }

    #[test]
    fn an_environment_variable_is_read_and_its_absence_named() {
        // PATH is set wherever tests run.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(resolve_ref("k", "env:PATH").unwrap().expose(), path);
        assert_eq!(resolve_setting("k", Some("PATH"), None).unwrap().expose(), path);
        let e = resolve_ref("webhook_secret_ref", &format!("env:{UNSET}")).unwrap_err();
        assert_eq!(e.key, "webhook_secret_ref");
        assert_eq!(e.message, format!("environment variable `{UNSET}` is not set"));
        assert_eq!(e.to_string(), format!("webhook_secret_ref: environment variable `{UNSET}` is not set"));
    }

    #[test]
    fn a_file_is_read_without_its_trailing_newline() {
        let file = std::env::temp_dir().join(format!("syncfleet-secret-{}", std::process::id()));
        std::fs::write(&file, "s3cret\r\n").unwrap();
        let read = resolve_ref("k", &format!("file:{}", file.display()));
        std::fs::remove_file(&file).ok();
        assert_eq!(read.unwrap().expose(), "s3cret");
        let e = resolve_ref("k", "file:/nonexistent/syncfleet-secret").unwrap_err();
        assert!(e.message.starts_with("cannot read `/nonexistent/syncfleet-secret`"), "{e}");
    }

    #[test]
    fn settings_prefer_secret_env_then_the_inline_secret() {
        let inline = Secret::new("inline");
        assert_eq!(resolve_setting("a.secret_env", None, Some(&inline)).unwrap().expose(), "inline");
        let e = resolve_setting("a.secret_env", Some(UNSET), Some(&inline)).unwrap_err();
        assert_eq!((e.key.as_str(), e.message.contains(UNSET)), ("a.secret_env", true));
        let e = resolve_setting("a.secret_env", None, None).unwrap_err();
        assert_eq!(<(String, String)>::from(e), ("a.secret_env".into(), "set secret_env (or secret)".into()));
        let source: SecretSource = serde_json::from_value(serde_json::json!({ "secret": "v" })).unwrap();
        assert_eq!(source.secret_ref(), Some(SecretRef::Inline(Secret::new("v"))));
        assert_eq!(source.resolve("auth").unwrap().expose(), "v");
        assert_eq!(SecretSource::default().resolve("auth").unwrap_err().key, "auth");
    }

    #[test]
    fn errors_and_references_never_print_the_secret() {
        let r = SecretRef::Inline(Secret::new("hunter2"));
        assert!(!format!("{r:?} {r}").contains("hunter2"));
        let read = r.read().unwrap();
        assert!(!format!("{read:?}").contains("hunter2"));
    }
}
