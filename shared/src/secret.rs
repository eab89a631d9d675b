//! Secret references: where a secret lives, never the secret itself. A deployment keeps its secrets
//! in environment variables whose names start with a prefix it chooses (`[secrets] env_prefix`,
//! default `SYNCFLEET_SECRET_`) and in files under a directory it mounts (`[secrets] dir`, default
//! `/run/secrets/syncfleet`); a reference may point nowhere else.
//!
//! | written as | names |
//! |---|---|
//! | `env:NAME` (an integration's `webhook_secret_ref`) / `secret_env = "NAME"` (a pack's settings) | the environment variable `NAME`, which starts with `env_prefix` |
//! | `file:NAME` / `secret_file = "NAME"` | the file `NAME` under `dir`: a plain name or a relative path without `.` or `..` (an absolute path only when it lies under `dir`) |
//!
//! A secret written into the settings themselves (`secret = "…"`) is refused everywhere. This
//! module checks references and the settings naming them without reading anything (no I/O); the
//! SDK's `secrets` module reads them, under the same [`SecretPolicy`], where they are used.

use std::{
    fmt,
    path::{Component, Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// The most a secret file may hold (a key, a token, a certificate): larger is refused unread.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;
/// The shortest HMAC key accepted (webhook signatures): 256 bits.
pub const MIN_HMAC_KEY_BYTES: usize = 32;
/// What a masked value reads as in a listing.
pub const REDACTED: &str = "<redacted>";

/// Where the deployment lets secret references point, built from `[secrets]`
/// (`SecretsConfig::policy`) and passed to every check and every read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPolicy {
    /// Every environment variable a reference names starts with this.
    pub env_prefix: String,
    /// File references are read under this directory only; `None` refuses them.
    pub dir: Option<PathBuf>,
}

/// A parsed reference: the variable's name, or the file's path relative to the policy's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `env:NAME`, or a pack's `secret_env = "NAME"`.
    Env(String),
    /// `file:NAME`, or a pack's `secret_file = "NAME"`: the path below [`SecretPolicy::dir`].
    File(PathBuf),
}

/// `env:NAME` or `file:NAME` (never the value: a reference holds none).
impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl SecretPolicy {
    /// What a key naming a secret should say instead of holding one.
    pub fn advice(&self) -> String {
        let file = match &self.dir {
            Some(dir) => {
                format!("put it in a file under {} and name it with `secret_file = \"NAME\"`, or ", dir.display())
            }
            None => String::new(),
        };
        format!(
            "{file}put it in an environment variable starting with {} and name it with `secret_env = \"NAME\"`",
            self.env_prefix
        )
    }

    /// Checks an environment variable's name: the syntax of one, and the prefix.
    pub fn env(&self, name: &str) -> Result<SecretRef, String> {
        let syntax = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !syntax {
            return Err(format!("`{name}` is not an environment variable name (A-Z, a-z, 0-9 and `_`)"));
        }
        if !name.starts_with(&self.env_prefix) || name.len() == self.env_prefix.len() {
            return Err(format!(
                "environment variable `{name}` is not a secret of this deployment: its name must start with {} (secrets.env_prefix)",
                self.env_prefix
            ));
        }
        Ok(SecretRef::Env(name.to_owned()))
    }

    /// Checks a file's name: a plain name or a relative path of plain names under the secrets
    /// directory, or an absolute path that lies under it. Lexical only: the reader canonicalizes
    /// the path again and checks it still lies under the directory and is a regular file.
    pub fn file(&self, name: &str) -> Result<SecretRef, String> {
        let Some(dir) = &self.dir else {
            return Err("file references are off in this deployment (secrets.dir is not set)".into());
        };
        if name.is_empty() || name.contains('\0') || name.chars().any(char::is_control) {
            return Err(format!("`{}` is not a file name", name.escape_debug()));
        }
        let path = Path::new(name);
        let relative = if path.is_absolute() {
            path.strip_prefix(dir)
                .map_err(|_| format!("`{name}` is not under the secrets directory {} (secrets.dir)", dir.display()))?
        } else {
            path
        };
        let plain = relative.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain || relative.as_os_str().is_empty() || name.ends_with('/') {
            return Err(format!(
                "`{name}` must name a file under the secrets directory {} (a name, or a relative path without `.` or `..`)",
                dir.display()
            ));
        }
        Ok(SecretRef::File(relative.to_owned()))
    }

    /// Parses and checks a reference: `env:NAME` or `file:NAME`.
    pub fn parse(&self, reference: &str) -> Result<SecretRef, String> {
        match reference.split_once(':') {
            Some(("env", name)) => self.env(name),
            Some(("file", name)) => self.file(name),
            _ => Err(format!("expected `env:NAME` or `file:NAME`, got `{}`", reference.escape_debug())),
        }
    }
}

/// Checks a reference (`env:NAME` or `file:NAME`) against the deployment's policy, without reading
/// it; the error says what is wrong (never a secret: a reference holds none).
pub fn check_secret_ref(reference: &str, policy: &SecretPolicy) -> Result<(), String> {
    policy.parse(reference).map(|_| ())
}

/// Checks every secret a pack's settings name, wherever it sits: each `secret_env` and
/// `secret_file` against the policy, and no `secret` holding a value (an inline secret). The error
/// is `(key relative to the integration, message)`, as a pack's settings errors are.
pub fn check_settings_secrets(settings: &Value, policy: &SecretPolicy) -> Result<(), (String, String)> {
    fn walk(value: &Value, path: &str, policy: &SecretPolicy) -> Result<(), (String, String)> {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    match (k.as_str(), v) {
                        ("secret", Value::String(_) | Value::Number(_)) => {
                            return Err((here, format!("inline secrets are refused; {}", policy.advice())));
                        }
                        ("secret_env", Value::String(name)) => policy.env(name).map(|_| ()).map_err(|m| (here, m))?,
                        ("secret_file", Value::String(name)) => policy.file(name).map(|_| ()).map_err(|m| (here, m))?,
                        ("secret_env" | "secret_file", Value::Null) => {}
                        ("secret_env" | "secret_file", _) => return Err((here, "expected a string".into())),
                        _ => walk(v, &here, policy)?,
                    }
                }
                Ok(())
            }
            Value::Array(items) => {
                items.iter().enumerate().try_for_each(|(i, v)| walk(v, &format!("{path}[{i}]"), policy))
            }
            _ => Ok(()),
        }
    }
    walk(settings, "", policy)
}

/// Settings as a listing shows them: every static header value and query value masked, every URL
/// without its user info and with its query values masked, and any leftover `secret` masked.
/// Applied to the keys `headers` and `query` (objects of values, or lists of `[name, value]`) and
/// to every string under a key containing `url`, at any depth.
pub fn redact_settings(settings: &mut Value) {
    fn mask_values(value: &mut Value) {
        match value {
            Value::Object(map) => map.values_mut().for_each(|v| *v = Value::String(REDACTED.into())),
            Value::Array(items) => items.iter_mut().for_each(|pair| match pair {
                Value::Array(kv) if kv.len() == 2 => kv[1] = Value::String(REDACTED.into()),
                Value::Object(_) => mask_values(pair),
                other => *other = Value::String(REDACTED.into()),
            }),
            Value::Null => {}
            other => *other = Value::String(REDACTED.into()),
        }
    }
    fn walk(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    let key = k.to_ascii_lowercase();
                    if key == "headers" || key == "query" || (key == "secret" && !v.is_null()) {
                        if key == "secret" {
                            *v = Value::String(REDACTED.into());
                        } else {
                            mask_values(v);
                        }
                    } else if key.contains("url")
                        && let Value::String(s) = v
                    {
                        *s = redact_url(s);
                    } else {
                        walk(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(settings);
}

/// Puts back into `stored` (settings as [`redact_settings`] left them in the database) the values
/// it masked, taken from `declared` (the same integration's settings in the config file): the
/// `headers` and `query` values, and each `*url*` string whose masked form is the stored one.
/// Everything else keeps the stored value, so a change made in the database after registration
/// (through the admin API) still counts.
pub fn restore_redacted(stored: &mut Value, declared: &Value) {
    match (stored, declared) {
        (Value::Array(stored), Value::Array(declared)) => {
            for (s, d) in stored.iter_mut().zip(declared) {
                restore_redacted(s, d);
            }
        }
        (Value::Object(stored), Value::Object(declared)) => {
            for (k, v) in stored.iter_mut() {
                let Some(d) = declared.get(k) else { continue };
                let key = k.to_ascii_lowercase();
                if key == "headers" || key == "query" {
                    // Put back only what masking the declared value gives: a changed key set
                    // in the database stays the database's.
                    let mut wrapped = serde_json::json!({ key.as_str(): d.clone() });
                    redact_settings(&mut wrapped);
                    if wrapped.get(&key) == Some(v) {
                        *v = d.clone();
                    }
                } else if key.contains("url")
                    && let (Value::String(s), Value::String(ds)) = (&*v, d)
                {
                    if *s == redact_url(ds) {
                        *v = Value::String(ds.clone());
                    }
                } else {
                    restore_redacted(v, d);
                }
            }
        }
        _ => {}
    }
}

/// A URL without its user info and with every query value masked (`?a=<redacted>`); text that is
/// not an absolute URL loses everything after a `?`.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) if url.has_host() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            if url.query().is_some() {
                let names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
                url.set_query(None);
                if !names.is_empty() {
                    let mut q = url.query_pairs_mut();
                    for n in &names {
                        q.append_pair(n, REDACTED);
                    }
                }
            }
            url.set_fragment(None);
            url.to_string()
        }
        _ => match text.split_once('?') {
            Some((head, _)) => format!("{head}?{REDACTED}"),
            None => text.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn restoring_puts_back_only_what_masking_removed() {
        let declared = json!({
            "base_url": "https://u:pw@erp.example.com/api?k=v",
            "headers": { "X-Api-Key": "hk" },
            "entities": { "items": { "query": { "limit": "5" }, "table": "items" } },
            "domain": "a.example"
        });
        let mut stored = declared.clone();
        super::redact_settings(&mut stored);
        assert!(!stored.to_string().contains("hk") && !stored.to_string().contains("pw"), "{stored}");
        // An admin changes a plain setting in the database after registration.
        stored["domain"] = json!("b.example");
        super::restore_redacted(&mut stored, &declared);
        let mut expected = declared.clone();
        expected["domain"] = json!("b.example");
        assert_eq!(stored, expected);
    }

    use super::*;

    fn policy() -> SecretPolicy {
        SecretPolicy { env_prefix: "SYNCFLEET_SECRET_".into(), dir: Some("/run/secrets/syncfleet".into()) }
    }

    #[test]
    fn references_follow_the_policy() {
        let p = policy();
        assert_eq!(p.parse("env:SYNCFLEET_SECRET_ERP"), Ok(SecretRef::Env("SYNCFLEET_SECRET_ERP".into())));
        assert_eq!(p.parse("file:erp-token"), Ok(SecretRef::File("erp-token".into())));
        assert_eq!(p.parse("file:erp/token"), Ok(SecretRef::File("erp/token".into())));
        assert_eq!(p.parse("file:/run/secrets/syncfleet/erp/token"), Ok(SecretRef::File("erp/token".into())));
        for (bad, says) in [
            ("env:SYNCFLEET__DATABASE__URL", "must start with SYNCFLEET_SECRET_"),
            ("env:SYNCFLEET_SECRET_", "must start with SYNCFLEET_SECRET_"),
            ("env:PATH", "must start with"),
            ("env:1X", "not an environment variable name"),
            ("file:/dev/zero", "is not under the secrets directory"),
            ("file:/dev/null", "is not under the secrets directory"),
            ("file:/run/secrets/syncfleet", "must name a file"),
            ("file:/run/secrets/syncfleet/../x", "must name a file"),
            ("file:../etc/passwd", "must name a file"),
            ("file:a/../../x", "must name a file"),
            ("file:./a", "must name a file"),
            ("file:", "is not a file name"),
            ("file:a\u{0}", "is not a file name"),
            ("vault:x", "expected `env:NAME` or `file:NAME`"),
            ("hunter2", "expected `env:NAME` or `file:NAME`"),
        ] {
            let e = check_secret_ref(bad, &p).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let off = SecretPolicy { dir: None, ..policy() };
        assert!(check_secret_ref("file:x", &off).unwrap_err().contains("secrets.dir is not set"));
        assert_eq!(SecretRef::File("a".into()).to_string(), "file:a");
    }

    #[test]
    fn settings_name_secrets_only_by_reference() {
        let p = policy();
        let ok = json!({ "northpass": { "secret_file": "np-key" }, "auth": { "secret_env": "SYNCFLEET_SECRET_A" } });
        assert_eq!(check_settings_secrets(&ok, &p), Ok(()));
        let inline = json!({ "auth": { "style": "bearer", "secret": "t" } });
        let (k, m) = check_settings_secrets(&inline, &p).unwrap_err();
        assert_eq!(k, "auth.secret");
        assert!(m.contains("inline secrets are refused") && m.contains("secret_file") && !m.contains("\"t\""), "{m}");
        let env = json!({ "moodle": { "secret_env": "SYNCFLEET__DATABASE__URL" } });
        assert_eq!(check_settings_secrets(&env, &p).unwrap_err().0, "moodle.secret_env");
        let file = json!({ "list": [{ "secret_file": "/dev/zero" }] });
        assert_eq!(check_settings_secrets(&file, &p).unwrap_err().0, "list[0].secret_file");
        // A column or table named `secret` is no secret.
        assert_eq!(check_settings_secrets(&json!({ "columns": { "secret": { "path": "/s" } } }), &p), Ok(()));
    }

    #[test]
    fn listings_mask_headers_queries_and_url_credentials() {
        let mut v = json!({
            "base_url": "https://user:pa55@erp.example/api?sig=abc&x=1#frag",
            "headers": { "X-Static": "hdr-value" },
            "entities": { "items": { "query": { "access": "q-value" }, "path": "/items" } },
            "auth": { "style": "bearer", "secret_file": "erp-token", "secret": "old-inline" },
            "pairs": { "headers": [["X-A", "a-value"]] },
            "moodle": { "base_url": "not a url?token=t0k" }
        });
        redact_settings(&mut v);
        let text = v.to_string();
        for secret in ["user", "pa55", "abc", "hdr-value", "q-value", "old-inline", "a-value", "t0k", "frag"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(v["base_url"], "https://erp.example/api?sig=%3Credacted%3E&x=%3Credacted%3E");
        assert_eq!(v["headers"]["X-Static"], REDACTED);
        assert_eq!(v["entities"]["items"]["path"], "/items");
        assert_eq!(v["auth"]["secret_file"], "erp-token");
        assert_eq!(v["pairs"]["headers"][0][0], "X-A");
        assert_eq!(redact_url("https://erp.example/api"), "https://erp.example/api");
    }

    #[test]
    fn secrets_do_not_print() {
        assert!(!format!("{:?}", Secret::new("hunter2")).contains("hunter2"));
    }
}
