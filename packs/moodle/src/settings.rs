//! What a `moodle` integration declares in the config: the site's web service endpoint and token,
//! how many programs and courses are read at once, and how Moodle roles map to ours.
//!
//! ```toml
//! [integrations.uni]
//! pack = "moodle"
//! moodle = { base_url = "https://lms.example.edu/webservice/rest/server.php", secret_file = "moodle-token" }
//! concurrency = 3          # else [packs.moodle] sync_concurrency (MOODLE_SYNC_CONCURRENCY), else 3; 1-20
//! [integrations.uni.roles]
//! student = "STUDENT"
//! editingteacher = "INSTRUCTOR"
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use syncfleet_sdk::{
    http::{HttpClient, HttpClients, Limits},
    secrets::{self, Secret, SecretError, SecretPolicy},
};

/// Programs (courses step) and courses (enrollments step) read at once when nothing says otherwise.
pub const DEFAULT_CONCURRENCY: u32 = 3;
pub const MAX_CONCURRENCY: u32 = 20;
/// Roles only a person grants; a sync never grants or revokes them.
pub const PROTECTED_ROLES: [&str; 2] = ["SUPER_ADMIN", "ADMIN"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub moodle: Upstream,
    /// Programs (and courses) read at once; default the deployment's `[packs.moodle]
    /// sync_concurrency` (`MOODLE_SYNC_CONCURRENCY`), else 3.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// The category sweep, and each program's and course's scoped sweep (above a few rows), is refused
    /// when it would deactivate more than this share.
    #[serde(default = "default_share")]
    pub max_deactivate_share: f64,
    /// Moodle role shortname → our role, for `role_derivation`.
    #[serde(default = "default_roles")]
    pub roles: BTreeMap<String, String>,
}

fn default_share() -> f64 {
    0.15
}

fn default_roles() -> BTreeMap<String, String> {
    [
        ("student", "STUDENT"),
        ("teacher", "INSTRUCTOR"),
        ("editingteacher", "INSTRUCTOR"),
        ("manager", "PROGRAM_MANAGER"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The site: where, with which token, how hard.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `https://<site>/webservice/rest/server.php`.
    pub base_url: String,
    /// Environment variable holding the `wstoken` (its name starts with `secrets.env_prefix`).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the `wstoken`, under `secrets.dir`.
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Integrations with the same key share one rate budget; default `moodle`.
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub limits: Option<Limits>,
    /// `limitnumber` of `core_enrol_get_enrolled_users` pages.
    #[serde(default = "default_page")]
    pub page_size: u32,
}

fn default_page() -> u32 {
    500
}

impl Upstream {
    /// The token, read through `syncfleet_sdk::secrets` under `policy`; the error names
    /// `moodle.secret_env` or `moodle.secret_file`.
    fn token(&self, policy: &SecretPolicy) -> Result<Secret, SecretError> {
        secrets::resolve_setting("moodle", self.secret_env.as_deref(), self.secret_file.as_deref(), policy)
    }
}

/// A concurrency value (the integration's or the deployment's), checked against 1-20.
pub fn check_concurrency(value: u32) -> Result<u32, String> {
    if (1..=MAX_CONCURRENCY).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be between 1 and {MAX_CONCURRENCY}, not {value}"))
    }
}

impl Settings {
    /// Parses and checks settings; the error names the key (relative to the integration).
    pub fn parse(value: &serde_json::Value) -> Result<Settings, (String, String)> {
        let settings: Settings = serde_path_to_error::deserialize(value.clone())
            .map_err(|e| (e.path().to_string(), e.inner().to_string()))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), (String, String)> {
        fn at(k: &str) -> impl Fn(String) -> (String, String) + '_ {
            move |m| (k.to_owned(), m)
        }
        match url::Url::parse(&self.moodle.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(at("moodle.base_url")("must be an absolute http(s) URL".into())),
        }
        secrets::check_setting("moodle", self.moodle.secret_env.as_deref(), self.moodle.secret_file.as_deref())?;
        if let Some(l) = &self.moodle.limits {
            l.validate().map_err(at("moodle.limits"))?;
        }
        if !(1..=5000).contains(&self.moodle.page_size) {
            return Err(at("moodle.page_size")("must be between 1 and 5000".into()));
        }
        if let Some(c) = self.concurrency {
            check_concurrency(c).map_err(at("concurrency"))?;
        }
        if !(0.0..=1.0).contains(&self.max_deactivate_share) {
            return Err(at("max_deactivate_share")("must be between 0 and 1".into()));
        }
        for (shortname, role) in &self.roles {
            if role.trim().is_empty() || PROTECTED_ROLES.contains(&role.as_str()) {
                return Err(at(&format!("roles.{shortname}"))(format!(
                    "must name a role other than {} (those are granted by hand only)",
                    PROTECTED_ROLES.join(" and ")
                )));
            }
        }
        Ok(())
    }

    /// Programs (courses step) and courses (enrollments step) read at once: the integration's
    /// `concurrency`, else `deployment` (the `[packs.moodle] sync_concurrency` key, which
    /// `MOODLE_SYNC_CONCURRENCY` sets, read once at start-up), else 3; 1-20.
    pub fn concurrency(&self, deployment: Option<u32>) -> Result<u32, String> {
        match (self.concurrency, deployment) {
            (Some(c), _) => check_concurrency(c),
            (None, Some(c)) => check_concurrency(c).map_err(|m| format!("[packs.moodle] sync_concurrency {m}")),
            (None, None) => Ok(DEFAULT_CONCURRENCY),
        }
    }

    /// The `wstoken`, read under the deployment's `policy` ([`HttpClient::secrets`]).
    pub fn token(&self, policy: &SecretPolicy) -> Result<String, String> {
        self.moodle.token(policy).map(|t| t.expose().to_owned()).map_err(|e| e.to_string())
    }

    /// The client of one step (rate budget key `moodle` unless configured). The concurrency gate
    /// allows at least `concurrency`, the step's ([`Settings::concurrency`]).
    pub fn client(&self, http: &HttpClients, concurrency: u32) -> HttpClient {
        let m = &self.moodle;
        let limits =
            m.limits.clone().unwrap_or_else(|| Limits { concurrency: concurrency as usize * 2, ..Limits::default() });
        http.client(m.upstream.as_deref().unwrap_or("moodle"), &m.base_url, &limits)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn base() -> serde_json::Value {
        json!({"moodle": {"base_url": "http://lms.example/webservice/rest/server.php", "secret_file": "t"}})
    }

    #[test]
    fn defaults_and_checks_name_the_key() {
        let s = Settings::parse(&base()).unwrap();
        assert_eq!(s.roles["student"], "STUDENT");
        assert_eq!(s.moodle.page_size, 500);
        let mut v = base();
        v["concurrency"] = json!(21);
        assert_eq!(Settings::parse(&v).unwrap_err().0, "concurrency");
        v["concurrency"] = json!(0);
        assert_eq!(Settings::parse(&v).unwrap_err().0, "concurrency");
        v["concurrency"] = json!(20);
        assert_eq!(Settings::parse(&v).unwrap().concurrency(None), Ok(20));
        let mut v = base();
        v["moodle"]["base_url"] = json!("lms.example");
        assert_eq!(Settings::parse(&v).unwrap_err().0, "moodle.base_url");
        let mut v = base();
        v["roles"] = json!({"manager": "ADMIN"});
        assert_eq!(Settings::parse(&v).unwrap_err().0, "roles.manager");
        let mut v = base();
        v["moodle"]["secret_file"] = serde_json::Value::Null;
        assert_eq!(Settings::parse(&v).unwrap_err().0, "moodle");
        let mut v = base();
        v["moodle"]["secret"] = json!("inline");
        assert_eq!(Settings::parse(&v).unwrap_err().0, "moodle.secret");
    }

    #[test]
    fn concurrency_is_the_integrations_then_the_deployments_then_three() {
        let s = Settings::parse(&base()).unwrap();
        assert_eq!(s.concurrency(None), Ok(DEFAULT_CONCURRENCY));
        assert_eq!(s.concurrency(Some(7)), Ok(7));
        assert!(s.concurrency(Some(21)).unwrap_err().contains("sync_concurrency"));
        let mut v = base();
        v["concurrency"] = json!(5);
        assert_eq!(Settings::parse(&v).unwrap().concurrency(Some(7)), Ok(5));
    }
}
