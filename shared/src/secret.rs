//! Secret references: where a secret lives, never the secret itself. `env:NAME` names an
//! environment variable, `file:/path` a file (a mounted Kubernetes secret). Packs and the producer
//! resolve them where they are used; the database and every listing hold only the reference.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A value that never prints (connection strings may carry passwords).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Checks the syntax of a reference: `env:NAME` (letters, digits, `_`, not starting with a digit)
/// or `file:/absolute/path`.
pub fn check_secret_ref(r: &str) -> Result<(), String> {
    let ok = match r.split_once(':') {
        Some(("env", name)) => {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        Some(("file", path)) => path.starts_with('/') && path.len() > 1,
        _ => false,
    };
    if ok { Ok(()) } else { Err(format!("expected `env:NAME` or `file:/path`, got `{r}`")) }
}
