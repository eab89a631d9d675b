//! Secrets: the one resolver of every secret a deployment names, for the packs' settings and the
//! producer's webhook check alike. The database and every listing hold only where a secret lives;
//! it is read where it is used (a worker's request, the webhook's signature check), from that
//! process's environment or files, and only where the deployment's [`SecretPolicy`] (`[secrets]`)
//! lets a reference point.
//!
//! | written as | reads |
//! |---|---|
//! | `env:NAME`, or `secret_env = "NAME"` in a pack's settings | the environment variable `NAME`, which must start with `secrets.env_prefix` (default `SYNCFLEET_SECRET_`) |
//! | `file:NAME`, or `secret_file = "NAME"` | the file `NAME` under `secrets.dir` (default `/run/secrets/syncfleet`): a regular file of at most 64 KiB, its trailing newline dropped |
//!
//! An inline `secret = "…"` is refused everywhere (the config file and the admin API), naming the
//! key. A pack's settings name a secret with `secret_env` or `secret_file` (one of them);
//! [`SecretSource`] holds the two, or a settings struct keeps the two fields and calls
//! [`resolve_setting`]. The policy comes with the process's HTTP clients
//! ([`HttpClients::with_secrets`](crate::http::HttpClients::with_secrets),
//! [`HttpClient::secrets`](crate::http::HttpClient::secrets)), and the producer passes its own.
//! Errors name the key at fault ([`SecretError`]) and never carry the secret; the value read is a
//! [`Secret`], which never prints. An empty secret is an error.
//!
//! ```
//! use syncfleet_sdk::secrets::{self, SecretPolicy, SecretSource};
//!
//! let policy = SecretPolicy { env_prefix: "SYNCFLEET_SECRET_".into(), dir: Some("/run/secrets/syncfleet".into()) };
//! let source = SecretSource { secret_env: Some("DATABASE_URL".into()), secret_file: None };
//! let e = source.resolve("auth", &policy).unwrap_err();
//! assert_eq!(e.key, "auth.secret_env");
//! let e = secrets::resolve_ref("webhook_secret_ref", "file:/dev/zero", &policy).unwrap_err();
//! assert!(e.message.contains("not under the secrets directory"));
//! ```

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use syncfleet_shared::secret::{
    MAX_SECRET_BYTES, MIN_HMAC_KEY_BYTES, Secret, SecretPolicy, SecretRef, check_secret_ref, check_settings_secrets,
};

/// A secret that could not be read, with the settings key that names it (`northpass.secret_file`,
/// `auth.secret_env`, `webhook_secret_ref`).
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

fn error(key: &str, message: impl Into<String>) -> SecretError {
    SecretError { key: key.to_owned(), message: message.into() }
}

/// Reads the secret `r` points at under `policy` (checked again here: a reference from the
/// database is read only where the policy allows). The error says what is missing (never the
/// secret).
pub fn read(r: &SecretRef, policy: &SecretPolicy) -> Result<Secret, String> {
    let value = match r {
        SecretRef::Env(name) => {
            policy.env(name)?;
            match std::env::var(name) {
                Ok(value) => value,
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("environment variable `{name}` is not valid UTF-8"));
                }
                Err(std::env::VarError::NotPresent) => return Err(format!("environment variable `{name}` is not set")),
            }
        }
        SecretRef::File(relative) => {
            let SecretRef::File(relative) = policy.file(&relative.to_string_lossy())? else {
                unreachable!("a file name checks to a file reference")
            };
            let dir = policy.dir.as_deref().expect("a file reference checks only with a directory");
            read_file(dir, &relative)?
        }
    };
    let value = value.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(format!("{r} is empty"));
    }
    Ok(Secret::new(value))
}

/// Reads `relative` under `dir`: canonicalized (symbolic links resolved, as a mounted Kubernetes
/// secret has them) and still under the canonical `dir`, a regular file (not a device, a FIFO or a
/// directory), at most [`MAX_SECRET_BYTES`], UTF-8.
fn read_file(dir: &Path, relative: &Path) -> Result<String, String> {
    let shown = relative.display();
    let root = dir.canonicalize().map_err(|e| format!("secrets directory {}: {}", dir.display(), e.kind()))?;
    let path: PathBuf =
        dir.join(relative).canonicalize().map_err(|e| format!("cannot read secret file `{shown}`: {}", e.kind()))?;
    if !path.starts_with(&root) {
        return Err(format!("secret file `{shown}` leads outside the secrets directory {}", dir.display()));
    }
    // Checked before opening: opening a FIFO would wait for a writer.
    let meta = std::fs::metadata(&path).map_err(|e| format!("cannot read secret file `{shown}`: {}", e.kind()))?;
    if !meta.is_file() {
        return Err(format!("secret file `{shown}` is not a regular file"));
    }
    let file = std::fs::File::open(&path).map_err(|e| format!("cannot read secret file `{shown}`: {}", e.kind()))?;
    let opened = file.metadata().map_err(|e| format!("cannot read secret file `{shown}`: {}", e.kind()))?;
    if !opened.is_file() {
        return Err(format!("secret file `{shown}` is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read secret file `{shown}`: {}", e.kind()))?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!("secret file `{shown}` is larger than {} KiB", MAX_SECRET_BYTES / 1024));
    }
    String::from_utf8(bytes).map_err(|_| format!("secret file `{shown}` is not UTF-8 text"))
}

/// Reads the secret `r` points at; the error names `key`.
pub fn resolve(key: &str, r: &SecretRef, policy: &SecretPolicy) -> Result<Secret, SecretError> {
    read(r, policy).map_err(|m| error(key, m))
}

/// Reads the secret a reference (`env:NAME` or `file:NAME`) at `key` points at, e.g. an
/// integration's `webhook_secret_ref`.
pub fn resolve_ref(key: &str, reference: &str, policy: &SecretPolicy) -> Result<Secret, SecretError> {
    let r = policy.parse(reference).map_err(|m| error(key, m))?;
    resolve(key, &r, policy)
}

/// Reads an HMAC key (a webhook's `webhook_secret_ref`): at least [`MIN_HMAC_KEY_BYTES`] bytes, so
/// an empty or short file never makes a key anyone could guess.
pub fn resolve_hmac_key(key: &str, reference: &str, policy: &SecretPolicy) -> Result<Secret, SecretError> {
    let secret = resolve_ref(key, reference, policy)?;
    if secret.expose().len() < MIN_HMAC_KEY_BYTES {
        return Err(error(key, format!("an HMAC key must be at least {MIN_HMAC_KEY_BYTES} bytes")));
    }
    Ok(secret)
}

/// Where the secret a pack's settings name lives: `secret_env` or `secret_file` at `at` (the path of
/// the table holding them, e.g. `northpass`; empty at the top), checked under `policy`. The
/// error names the key: `{at}.secret_env`, `{at}.secret_file`, or `{at}` when neither or both are set.
pub fn setting_ref(
    at: &str,
    secret_env: Option<&str>,
    secret_file: Option<&str>,
    policy: &SecretPolicy,
) -> Result<SecretRef, SecretError> {
    let key = |k: &str| if at.is_empty() { k.to_owned() } else { format!("{at}.{k}") };
    match (secret_env, secret_file) {
        (Some(name), None) => policy.env(name).map_err(|m| error(&key("secret_env"), m)),
        (None, Some(name)) => policy.file(name).map_err(|m| error(&key("secret_file"), m)),
        (Some(_), Some(_)) => Err(error(at, "set one of secret_env and secret_file, not both")),
        (None, None) => Err(error(at, format!("name the secret: {}", policy.advice()))),
    }
}

/// Checks that a pack's settings name exactly one secret, without a policy (the deployment's is
/// checked with every integration's settings, `check_settings_secrets`); the error names the key.
pub fn check_setting(at: &str, secret_env: Option<&str>, secret_file: Option<&str>) -> Result<(), SecretError> {
    match (secret_env, secret_file) {
        (Some(_), None) | (None, Some(_)) => Ok(()),
        (Some(_), Some(_)) => Err(error(at, "set one of secret_env and secret_file, not both")),
        (None, None) => Err(error(at, "name the secret with secret_file (a file under secrets.dir) or secret_env")),
    }
}

/// Reads the secret a pack's settings name with `secret_env` or `secret_file` at `at`; the error
/// names the key ([`setting_ref`]).
pub fn resolve_setting(
    at: &str,
    secret_env: Option<&str>,
    secret_file: Option<&str>,
    policy: &SecretPolicy,
) -> Result<Secret, SecretError> {
    let r = setting_ref(at, secret_env, secret_file, policy)?;
    let key = match &r {
        SecretRef::Env(_) => "secret_env",
        SecretRef::File(_) => "secret_file",
    };
    resolve(&if at.is_empty() { key.to_owned() } else { format!("{at}.{key}") }, &r, policy)
}

/// A pack's two settings keys for one secret: `secret_env = "NAME"` or `secret_file = "NAME"` (one
/// of them). Flatten it into a settings struct (`#[serde(flatten)]`) that does not deny unknown
/// fields; one that does keeps the two fields itself and calls [`resolve_setting`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSource {
    /// The environment variable holding the secret (its name starts with `secrets.env_prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// The file holding the secret, under `secrets.dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
}

impl SecretSource {
    /// Checks that exactly one is set (the policy is checked with the deployment's settings).
    pub fn check(&self, at: &str) -> Result<(), SecretError> {
        check_setting(at, self.secret_env.as_deref(), self.secret_file.as_deref())
    }

    /// Reads the secret; the error names the key under `at`.
    pub fn resolve(&self, at: &str, policy: &SecretPolicy) -> Result<Secret, SecretError> {
        resolve_setting(at, self.secret_env.as_deref(), self.secret_file.as_deref(), policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh secrets directory with `files` in it.
    fn dir(files: &[(&str, &[u8])]) -> (PathBuf, SecretPolicy) {
        let dir =
            std::env::temp_dir().join(format!("syncfleet-secrets-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let policy = SecretPolicy { env_prefix: "SYNCFLEET_SECRET_".into(), dir: Some(dir.clone()) };
        (dir, policy)
    }

    #[test]
    fn a_file_under_the_directory_is_read_without_its_trailing_newline() {
        let (d, p) = dir(&[("key", b"s3cret\r\n"), ("sub/key", b"nested"), ("empty", b""), ("nl", b"\n")]);
        assert_eq!(resolve_ref("k", "file:key", &p).unwrap().expose(), "s3cret");
        assert_eq!(resolve_ref("k", "file:sub/key", &p).unwrap().expose(), "nested");
        let absolute = format!("file:{}", d.join("key").display());
        assert_eq!(resolve_ref("k", &absolute, &p).unwrap().expose(), "s3cret");
        assert!(resolve_ref("k", "file:empty", &p).unwrap_err().message.contains("is empty"));
        assert!(resolve_ref("k", "file:nl", &p).unwrap_err().message.contains("is empty"));
        let e = resolve_ref("k", "file:missing", &p).unwrap_err();
        assert!(e.message.starts_with("cannot read secret file `missing`"), "{e}");
        assert!(resolve_ref("k", "file:sub", &p).unwrap_err().message.contains("not a regular file"));
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn files_outside_the_directory_devices_and_large_files_are_refused() {
        let big = vec![b'x'; MAX_SECRET_BYTES as usize + 1];
        let (d, p) = dir(&[("big", &big)]);
        assert!(resolve_ref("k", "file:big", &p).unwrap_err().message.contains("larger than 64 KiB"));
        for outside in ["file:/dev/zero", "file:/dev/null", "file:/etc/passwd", "file:../x"] {
            assert!(resolve_ref("k", outside, &p).is_err(), "{outside}");
        }
        // A link that leads out of the directory is refused once resolved.
        std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
        assert!(resolve_ref("k", "file:zero", &p).unwrap_err().message.contains("leads outside"));
        // A FIFO is never opened (opening one would wait for a writer).
        let fifo = d.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        if made {
            assert!(resolve_ref("k", "file:fifo", &p).unwrap_err().message.contains("not a regular file"));
        }
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn environment_variables_need_the_prefix() {
        let (d, p) = dir(&[]);
        // PATH is set wherever tests run, and is no secret of the deployment.
        let e = resolve_ref("webhook_secret_ref", "env:PATH", &p).unwrap_err();
        assert_eq!(e.key, "webhook_secret_ref");
        assert!(e.message.contains("must start with SYNCFLEET_SECRET_"), "{e}");
        let e = resolve_ref("k", "env:SYNCFLEET_SECRET_SURELY_UNSET_IN_TESTS", &p).unwrap_err();
        assert_eq!(e.message, "environment variable `SYNCFLEET_SECRET_SURELY_UNSET_IN_TESTS` is not set");
        let prefix_path = SecretPolicy { env_prefix: "PAT".into(), ..p.clone() };
        assert_eq!(resolve_ref("k", "env:PATH", &prefix_path).unwrap().expose(), std::env::var("PATH").unwrap());
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn settings_name_one_secret_and_errors_name_the_key() {
        let (d, p) = dir(&[("np-key", b"np")]);
        let source = SecretSource { secret_env: None, secret_file: Some("np-key".into()) };
        assert_eq!(source.resolve("northpass", &p).unwrap().expose(), "np");
        assert_eq!(source.check("northpass"), Ok(()));
        let e = resolve_setting("northpass", Some("SYNCFLEET__DATABASE__URL"), None, &p).unwrap_err();
        assert_eq!(e.key, "northpass.secret_env");
        let e = resolve_setting("auth", None, Some("/dev/zero"), &p).unwrap_err();
        assert_eq!(e.key, "auth.secret_file");
        assert_eq!(resolve_setting("auth", None, None, &p).unwrap_err().key, "auth");
        assert_eq!(SecretSource::default().check("auth").unwrap_err().key, "auth");
        let both = SecretSource { secret_env: Some("SYNCFLEET_SECRET_X".into()), secret_file: Some("x".into()) };
        assert!(both.check("auth").unwrap_err().message.contains("not both"));
        let short = resolve_hmac_key("webhook_secret_ref", "file:np-key", &p).unwrap_err();
        assert!(short.message.contains("at least 32 bytes") && !short.message.contains("np\""), "{short}");
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn errors_and_references_never_print_the_secret() {
        let (d, p) = dir(&[("k", b"hunter2-hunter2")]);
        let read = resolve_ref("k", "file:k", &p).unwrap();
        assert!(!format!("{read:?}").contains("hunter2"));
        assert!(!resolve_hmac_key("k", "file:k", &p).unwrap_err().to_string().contains("hunter2"));
        std::fs::remove_dir_all(d).ok();
    }
}
