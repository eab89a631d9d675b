//! What a `partner` integration declares in the config: the two upstreams (base URL, credential
//! through `secret_file` or `secret_env`, limits), the partner and contact filters, and the group matching rules.
//!
//! ```toml
//! [integrations.acme]
//! pack = "partner"
//! northpass = { base_url = "https://api.northpass.com/v2", secret_file = "northpass-key" }
//! impartner = { base_url = "https://prod.impartner.live/api/objects/v1", secret_env = "SYNCFLEET_SECRET_IMPARTNER_KEY", tenant_id = "1" }
//! [integrations.acme.filters]
//! exclude_partner_tiers = ["Pending"]
//! ```

use serde::{Deserialize, Serialize};

use syncfleet_sdk::{
    http::{HttpClient, HttpClients, Limits},
    secrets::{self, Secret, SecretError, SecretPolicy},
};

/// Northpass documents 10 requests per second.
pub const NORTHPASS_RATE_PER_SEC: f64 = 10.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub northpass: Upstream,
    pub impartner: ImpartnerUpstream,
    #[serde(default)]
    pub filters: Filters,
    #[serde(default)]
    pub groups: GroupMatching,
    /// The sweep is refused when it would deactivate more than this share of a table's active rows.
    #[serde(default = "default_share")]
    pub max_deactivate_share: f64,
    /// Incremental reads ask for changes since `cursor - lookback_secs`.
    #[serde(default = "default_lookback")]
    pub lookback_secs: u64,
    /// How long `cleanup` keeps run history and item errors.
    #[serde(default)]
    pub cleanup: super::cleanup::CleanupSettings,
    /// What `group_analysis` does with the users it lists.
    #[serde(default)]
    pub analysis: super::analysis::AnalysisSettings,
    /// Where the weekly reports are mailed.
    #[serde(default)]
    pub reports: super::reports::ReportSettings,
}

fn default_share() -> f64 {
    0.15
}
fn default_lookback() -> u64 {
    300
}

/// One upstream API: where, with which key, how hard.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// e.g. `https://api.northpass.com/v2`.
    pub base_url: String,
    /// Environment variable holding the API key (its name starts with `secrets.env_prefix`; read
    /// where requests are made).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the API key, under `secrets.dir`.
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Integrations with the same key share one rate budget; default `northpass` / `impartner`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Default for Northpass: 10 requests per second. Given limits replace the defaults entirely.
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default = "default_page")]
    pub page_size: u32,
}

/// Impartner: an [`Upstream`] plus the optional tenant header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpartnerUpstream {
    pub base_url: String,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<String>,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default = "default_page")]
    pub page_size: u32,
    /// `X-PRM-TenantId`, when the key is not bound to one tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

fn default_page() -> u32 {
    100
}

/// Which Impartner records count as partners and contacts. Records that do not pass are not synced
/// (and a row of one that stopped passing is deactivated).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filters {
    /// Partner tiers to leave out (compared case-insensitively).
    pub exclude_partner_tiers: Vec<String>,
    /// Account statuses to leave out (compared case-insensitively).
    pub exclude_partner_statuses: Vec<String>,
    /// Contact email domains to leave out (the vendor's own staff).
    pub internal_domains: Vec<String>,
    /// Leave out test accounts: an email local part of `test` or starting with `test` and a
    /// separator or digit (`test.user7@…`, `test+1@…`), or the name "Test User".
    pub exclude_test_accounts: bool,
}

impl Default for Filters {
    fn default() -> Self {
        Filters {
            exclude_partner_tiers: vec!["Pending".into()],
            exclude_partner_statuses: vec!["Inactive".into()],
            internal_domains: vec!["nintex.com".into()],
            exclude_test_accounts: true,
        }
    }
}

/// How LMS groups are matched to partners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupMatching {
    /// Prefix some partner groups carry (`ptr_Acme Corp`).
    pub prefix: String,
    /// The group every partner user belongs to; never matched to a partner.
    pub all_partners_group: String,
    /// Legal-form suffixes ignored by the fuzzy match (compared without punctuation, any case).
    pub legal_suffixes: Vec<String>,
}

impl Default for GroupMatching {
    fn default() -> Self {
        GroupMatching {
            prefix: "ptr_".into(),
            all_partners_group: "All Partners".into(),
            legal_suffixes: [
                "inc",
                "incorporated",
                "llc",
                "ltd",
                "limited",
                "gmbh",
                "corp",
                "corporation",
                "co",
                "plc",
                "ag",
                "sa",
                "bv",
                "pty",
                "pty ltd",
                "srl",
                "sarl",
                "oy",
                "ab",
                "as",
                "nv",
                "kk",
                "llp",
                "lp",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}

impl Upstream {
    /// The Northpass API key, read through `syncfleet_sdk::secrets` under `policy`.
    fn key(&self, policy: &SecretPolicy) -> Result<Secret, SecretError> {
        secrets::resolve_setting("northpass", self.secret_env.as_deref(), self.secret_file.as_deref(), policy)
    }
}

impl ImpartnerUpstream {
    /// The Impartner API key, read through `syncfleet_sdk::secrets` under `policy`.
    fn key(&self, policy: &SecretPolicy) -> Result<Secret, SecretError> {
        secrets::resolve_setting("impartner", self.secret_env.as_deref(), self.secret_file.as_deref(), policy)
    }
}

fn check_url(url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err("must be an absolute http(s) URL".into()),
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
        check_url(&self.northpass.base_url).map_err(at("northpass.base_url"))?;
        check_url(&self.impartner.base_url).map_err(at("impartner.base_url"))?;
        let (n, i) = (&self.northpass, &self.impartner);
        secrets::check_setting("northpass", n.secret_env.as_deref(), n.secret_file.as_deref())?;
        secrets::check_setting("impartner", i.secret_env.as_deref(), i.secret_file.as_deref())?;
        if let Some(l) = &self.northpass.limits {
            l.validate().map_err(at("northpass.limits"))?;
        }
        if let Some(l) = &self.impartner.limits {
            l.validate().map_err(at("impartner.limits"))?;
        }
        if !(1..=100).contains(&self.northpass.page_size) {
            return Err(at("northpass.page_size")("must be between 1 and 100 (the Northpass maximum)".into()));
        }
        if !(1..=1000).contains(&self.impartner.page_size) {
            return Err(at("impartner.page_size")("must be between 1 and 1000".into()));
        }
        if let Some(t) = &self.impartner.tenant_id
            && t.trim().parse::<i64>().is_err()
        {
            return Err(at("impartner.tenant_id")("must be an integer".into()));
        }
        for (i, d) in self.filters.internal_domains.iter().enumerate() {
            if d.trim().is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
                return Err(at(&format!("filters.internal_domains[{i}]"))(
                    "must be a domain such as `example.com`".into(),
                ));
            }
        }
        if self.groups.prefix.trim().is_empty() {
            return Err(at("groups.prefix")("must not be empty".into()));
        }
        self.reports.check()?;
        if !(0.0..=1.0).contains(&self.max_deactivate_share) {
            return Err(at("max_deactivate_share")("must be between 0 and 1".into()));
        }
        Ok(())
    }

    /// The Northpass client of one step (rate budget key `northpass` unless configured).
    pub fn northpass_client(&self, http: &HttpClients) -> HttpClient {
        let n = &self.northpass;
        let limits = n
            .limits
            .clone()
            .unwrap_or_else(|| Limits { rate_per_sec: Some(NORTHPASS_RATE_PER_SEC), ..Limits::default() });
        http.client(n.upstream.as_deref().unwrap_or("northpass"), &n.base_url, &limits)
    }

    pub fn impartner_client(&self, http: &HttpClients) -> HttpClient {
        let i = &self.impartner;
        http.client(i.upstream.as_deref().unwrap_or("impartner"), &i.base_url, &i.limits.clone().unwrap_or_default())
    }

    /// The Northpass API key, read under the deployment's `policy` ([`HttpClient::secrets`]).
    pub fn northpass_key(&self, policy: &SecretPolicy) -> Result<String, String> {
        self.northpass.key(policy).map(|k| k.expose().to_owned()).map_err(|e| e.to_string())
    }

    /// The Impartner API key, read under the deployment's `policy` ([`HttpClient::secrets`]).
    pub fn impartner_key(&self, policy: &SecretPolicy) -> Result<String, String> {
        self.impartner.key(policy).map(|k| k.expose().to_owned()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Settings;

    fn base() -> serde_json::Value {
        json!({
            "northpass": {"base_url": "http://np.example/v2", "secret_file": "np-key"},
            "impartner": {"base_url": "http://prm.example/api/objects/v1", "secret_env": "SYNCFLEET_SECRET_PRM"},
        })
    }

    #[test]
    fn defaults_follow_the_issue() {
        let s = Settings::parse(&base()).unwrap();
        assert_eq!(s.filters.exclude_partner_tiers, ["Pending"]);
        assert_eq!(s.filters.exclude_partner_statuses, ["Inactive"]);
        assert!(s.filters.exclude_test_accounts);
        assert_eq!(s.groups.prefix, "ptr_");
    }

    #[test]
    fn errors_name_the_key() {
        let mut v = base();
        v["northpass"]["base_url"] = json!("ftp://x");
        assert_eq!(Settings::parse(&v).unwrap_err().0, "northpass.base_url");
        let mut v = base();
        v["impartner"]["secret_env"] = serde_json::Value::Null;
        assert_eq!(Settings::parse(&v).unwrap_err().0, "impartner");
        let mut v = base();
        v["impartner"]["secret_file"] = json!("prm-key");
        let e = Settings::parse(&v).unwrap_err();
        assert_eq!(e.0, "impartner");
        assert!(e.1.contains("not both"), "{e:?}");
        let mut v = base();
        v["northpass"]["secret"] = json!("inline");
        assert_eq!(Settings::parse(&v).unwrap_err().0, "northpass.secret");
        let mut v = base();
        v["filters"] = json!({"internal_domains": ["ok.com", "@bad"]});
        assert_eq!(Settings::parse(&v).unwrap_err().0, "filters.internal_domains[1]");
        let mut v = base();
        v["northpass"]["page_size"] = json!(500);
        assert_eq!(Settings::parse(&v).unwrap_err().0, "northpass.page_size");
        let mut v = base();
        v["filters"] = json!({"exclude_partner_tier": []});
        assert!(Settings::parse(&v).unwrap_err().0.starts_with("filters"));
    }
}
