//! What an `http-json` integration declares in the config (`[integrations.<name>]` minus `pack`
//! and `enabled`), its validation, and the mapping of one answer record to an [`Item`].

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use syncfleet_sdk::secrets::SecretPolicy;
pub use syncfleet_sdk::secrets::SecretSource;
use syncfleet_sdk::{
    http::{HttpClient, HttpClients, Limits},
    step::StepError,
    sync::{
        Item, Record, pointer,
        pull::PullSpec,
        table::{Column, ColumnType, Table, parse_timestamp},
    },
};

/// Header or query name/value pairs.
type Pairs = Vec<(String, String)>;

/// An integration's settings (`[integrations.<name>]` minus `pack` and `enabled`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Prefix of every path, e.g. `https://erp.example.com/api`.
    pub base_url: String,
    #[serde(default)]
    pub auth: Auth,
    /// Integrations with the same upstream key share one rate budget; default: the base URL's host.
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Extra headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub entities: BTreeMap<String, EntitySpec>,
    #[serde(default)]
    pub pushes: BTreeMap<String, PushSpec>,
}

/// How requests authenticate. The secret comes from the file named by `secret_file` (under
/// `secrets.dir`) or the environment variable named by `secret_env` (starting with
/// `secrets.env_prefix`), read where the request is made and never stored in the database, resolved
/// by `syncfleet_sdk::secrets` ([`SecretSource`]). An inline `secret` is refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(tag = "style", rename_all = "lowercase")]
pub enum Auth {
    #[default]
    None,
    Bearer {
        #[serde(flatten)]
        secret: SecretSource,
    },
    Header {
        name: String,
        #[serde(flatten)]
        secret: SecretSource,
    },
    Query {
        param: String,
        #[serde(flatten)]
        secret: SecretSource,
    },
}

/// The secret of an [`Auth`] style, read through `syncfleet_sdk::secrets` under `policy` (errors
/// name `auth.secret_file` or `auth.secret_env`).
fn auth_secret(source: &SecretSource, policy: &SecretPolicy) -> Result<String, String> {
    source.resolve("auth", policy).map(|s| s.expose().to_owned()).map_err(|e| e.to_string())
}

/// One entity read from a list endpoint into a table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitySpec {
    /// List path under `base_url`, e.g. `/items`.
    pub path: String,
    /// Single-record path for fetch-by-id, with `{id}`, e.g. `/items/{id}`.
    #[serde(default)]
    pub item_path: Option<String>,
    pub paging: Paging,
    /// JSON pointer to the records array in a list answer; empty = the answer is the array.
    #[serde(default)]
    pub records: String,
    /// JSON pointer to a record's id.
    pub id: String,
    /// JSON pointer to a record's change time (enables the incremental cursor).
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Query parameter asking for records changed since a time (RFC 3339).
    #[serde(default)]
    pub since_param: Option<String>,
    /// Fixed query parameters of the list request.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    pub table: String,
    /// Create the table with the mapped columns when it does not exist. Accepted from the config
    /// file only (the services run as a role that creates no table; the config file's
    /// registration, as the owner, does).
    #[serde(default)]
    pub create_table: bool,
    /// Column → where its value is in a record and its type.
    pub columns: BTreeMap<String, ColumnSpec>,
    #[serde(default = "default_lookback")]
    pub lookback_secs: u64,
    #[serde(default = "default_margin")]
    pub margin_secs: u64,
    #[serde(default = "default_share")]
    pub max_deactivate_share: f64,
}

fn default_lookback() -> u64 {
    300
}
fn default_margin() -> u64 {
    5
}
fn default_share() -> f64 {
    0.15
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// JSON pointer into the record.
    pub path: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

/// How a list endpoint pages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "style", rename_all = "lowercase", deny_unknown_fields)]
pub enum Paging {
    /// `page` + `limit`; follows the next link at `next` (a JSON pointer) when given, else stops at
    /// the first short page.
    Page {
        #[serde(default = "p_page")]
        page_param: String,
        #[serde(default = "p_limit")]
        limit_param: String,
        #[serde(default = "d_limit")]
        limit: u32,
        #[serde(default)]
        next: Option<String>,
    },
    /// `offset` + `limit`, with the total at `total` (a JSON pointer).
    Offset {
        #[serde(default = "p_offset")]
        offset_param: String,
        #[serde(default = "p_limit")]
        limit_param: String,
        #[serde(default = "d_limit")]
        limit: u32,
        #[serde(default)]
        total: Option<String>,
    },
    /// An opaque token at `next` (a JSON pointer), sent back as `cursor_param`.
    Cursor {
        #[serde(default = "p_cursor")]
        cursor_param: String,
        #[serde(default = "p_limit")]
        limit_param: String,
        #[serde(default = "d_limit")]
        limit: u32,
        next: String,
    },
}

fn p_page() -> String {
    "page".into()
}
fn p_limit() -> String {
    "limit".into()
}
fn p_offset() -> String {
    "offset".into()
}
fn p_cursor() -> String {
    "cursor".into()
}
fn d_limit() -> u32 {
    100
}

/// Values computed in our database, written back to the upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSpec {
    /// SQL returning `external_id text, fields jsonb` for integration `$1`. Accepted from the config
    /// file only, and read from there when the push runs (never from the database, which the admin
    /// API writes): settings from the API may declare a push without it, whose query the config
    /// file then provides. Runs in a `READ ONLY` transaction under [`PUSH_QUERY_TIMEOUT`].
    #[serde(default)]
    pub query: Option<String>,
    /// Bulk path (body: an array of changes) or single path with `{id}`.
    pub path: String,
    #[serde(default = "d_method")]
    pub method: String,
    #[serde(default = "d_batch")]
    pub max_batch: usize,
    /// Name of the id in each change of a bulk body.
    #[serde(default = "d_id_field")]
    pub id_field: String,
    /// Send the id as a JSON number.
    #[serde(default)]
    pub numeric_id: bool,
    /// Bulk answers: pointer to the per-item results, and in each the id, status and message.
    #[serde(default = "d_results")]
    pub results: String,
    #[serde(default = "d_result_id")]
    pub result_id: String,
    #[serde(default = "d_result_status")]
    pub result_status: String,
    #[serde(default = "d_ok")]
    pub ok_status: String,
    #[serde(default = "d_result_message")]
    pub result_message: String,
}

fn d_method() -> String {
    "PATCH".into()
}
fn d_batch() -> usize {
    100
}
fn d_id_field() -> String {
    "id".into()
}
fn d_results() -> String {
    "/results".into()
}
fn d_result_id() -> String {
    "/id".into()
}
fn d_result_status() -> String {
    "/status".into()
}
fn d_ok() -> String {
    "ok".into()
}
fn d_result_message() -> String {
    "/message".into()
}

/// The `statement_timeout` of a push query (`SET LOCAL`, PostgreSQL's syntax): a chunk of a push
/// is a read of our own tables, not a report.
pub const PUSH_QUERY_TIMEOUT: &str = "60s";

impl Settings {
    /// What only the config file may set, refused in settings from the admin API or the CLI: a
    /// push's SQL (`pushes.<name>.query`) and table creation (`entities.<name>.create_table`).
    pub fn check_api(&self) -> Result<(), (String, String)> {
        if let Some((name, _)) = self.pushes.iter().find(|(_, p)| p.query.is_some()) {
            return Err((format!("pushes.{name}.query"), "push queries are accepted from the config file only".into()));
        }
        if let Some((name, _)) = self.entities.iter().find(|(_, e)| e.create_table) {
            return Err((
                format!("entities.{name}.create_table"),
                "tables are created from the config file only".into(),
            ));
        }
        Ok(())
    }

    /// Parses and checks settings; the error names the key (relative to the integration).
    pub fn parse(value: &Value) -> Result<Settings, (String, String)> {
        let settings: Settings = serde_path_to_error::deserialize(value.clone())
            .map_err(|e| (e.path().to_string(), e.inner().to_string()))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
        match url::Url::parse(&self.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return bad("base_url", "must be an absolute http(s) URL"),
        }
        self.limits.validate().map_err(|m| ("limits".to_owned(), m))?;
        match &self.auth {
            Auth::None => {}
            Auth::Bearer { secret } | Auth::Header { secret, .. } | Auth::Query { secret, .. } => {
                secret.check("auth")?;
            }
        }
        let mut tables = BTreeMap::new();
        for (name, e) in &self.entities {
            let key = |k: &str| format!("entities.{name}.{k}");
            if let Some(other) = tables.insert(e.table.as_str(), name) {
                return Err((key("table"), format!("table `{}` is already used by entity `{other}`", e.table)));
            }
            e.table().map_err(|m| (key("table"), m.to_string()))?;
            for (k, p) in [("id", Some(&e.id)), ("updated_at", e.updated_at.as_ref()), ("records", Some(&e.records))] {
                if let Some(p) = p
                    && !(p.is_empty() && k == "records")
                    && !p.starts_with('/')
                {
                    return Err((key(k), "must be a JSON pointer starting with `/`".into()));
                }
            }
            for (c, spec) in &e.columns {
                if !spec.path.starts_with('/') {
                    return Err((key(&format!("columns.{c}.path")), "must be a JSON pointer starting with `/`".into()));
                }
            }
            if e.since_param.is_some() && e.updated_at.is_none() {
                return Err((key("since_param"), "needs updated_at (the cursor comes from it)".into()));
            }
            if !(0.0..=1.0).contains(&e.max_deactivate_share) {
                return Err((key("max_deactivate_share"), "must be between 0 and 1".into()));
            }
            let limit = match &e.paging {
                Paging::Page { limit, .. } | Paging::Offset { limit, .. } | Paging::Cursor { limit, .. } => *limit,
            };
            if limit == 0 {
                return Err((key("paging.limit"), "must be at least 1".into()));
            }
        }
        for (name, p) in &self.pushes {
            if p.max_batch == 0 {
                return Err((format!("pushes.{name}.max_batch"), "must be at least 1".into()));
            }
            if reqwest::Method::from_bytes(p.method.as_bytes()).is_err() {
                return Err((format!("pushes.{name}.method"), "is not an HTTP method".into()));
            }
            if p.query.as_deref().is_some_and(|q| q.trim().is_empty()) {
                return Err((format!("pushes.{name}.query"), "must not be empty".into()));
            }
        }
        Ok(())
    }

    pub(super) fn upstream_key(&self) -> String {
        self.upstream.clone().unwrap_or_else(|| {
            url::Url::parse(&self.base_url)
                .ok()
                .and_then(|u| u.host_str().map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0))))
                .unwrap_or_else(|| self.base_url.clone())
        })
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url.trim_end_matches('/'), path)
    }

    /// Headers and query parameters every request carries (credentials included).
    /// The secret is read under the deployment's `policy` ([`HttpClient::secrets`]).
    pub(super) fn request_parts(&self, policy: &SecretPolicy) -> Result<(Pairs, Pairs), String> {
        let mut headers: Vec<(String, String)> = self.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut query = vec![];
        match &self.auth {
            Auth::None => {}
            Auth::Bearer { secret } => {
                headers.push(("Authorization".into(), format!("Bearer {}", auth_secret(secret, policy)?)))
            }
            Auth::Header { name, secret } => headers.push((name.clone(), auth_secret(secret, policy)?)),
            Auth::Query { param, secret } => query.push((param.clone(), auth_secret(secret, policy)?)),
        }
        Ok((headers, query))
    }

    pub(super) fn client(&self, http: &HttpClients) -> HttpClient {
        http.client(&self.upstream_key(), &self.base_url, &self.limits)
    }
}

impl EntitySpec {
    pub fn table(&self) -> Result<Table, syncfleet_sdk::sync::table::TableError> {
        let columns = self.columns.iter().map(|(name, c)| Column { name: name.clone(), ty: c.ty }).collect();
        Table::new(&self.table, columns)
    }

    pub(super) fn pull_spec(&self, entity: &str) -> Result<PullSpec, StepError> {
        let table = self.table().map_err(|e| StepError::abort(e.to_string()))?;
        Ok(PullSpec {
            lookback: Duration::from_secs(self.lookback_secs),
            margin: Duration::from_secs(self.margin_secs),
            max_deactivate_share: self.max_deactivate_share,
            ..PullSpec::new(entity, table)
        })
    }

    /// Reads one record of a list or single answer.
    pub(super) fn item(&self, mut raw: Value) -> Item {
        let cursor = self
            .updated_at
            .as_ref()
            .and_then(|p| pointer::get(&raw, p))
            .and_then(Value::as_str)
            .and_then(parse_timestamp);
        let id = match pointer::get(&raw, &self.id) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let Some(external_id) = id else {
            return Item::Bad { external_id: None, cursor, message: format!("no readable id at `{}`", self.id) };
        };
        if self.updated_at.is_some() && cursor.is_none() {
            return Item::Bad {
                external_id: Some(external_id),
                cursor,
                message: format!("no readable change time at `{}`", self.updated_at.as_deref().unwrap_or("")),
            };
        }
        let fields: Map<String, Value> =
            self.columns.iter().map(|(name, c)| (name.clone(), pointer::take(&mut raw, &c.path))).collect();
        Item::Record(Record { external_id, cursor, fields, raw })
    }
}
