//! The `http-json` pack: a JSON API declared entirely in the config file (base URL, auth, paging
//! style, records path, id and updated-at fields, field mapping to a table), synced by the same
//! engine as every other source. See `examples/erp.toml`.
//!
//! Chains:
//! - `http_json_sync`: `pull` syncs every entity of the integration, in name order.
//! - `http_json_push`: `push` writes every configured push back to the upstream.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{FutureExt, future::BoxFuture};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::{
    chain::{ChainDef, StepDef, StepKind},
    config::Secret,
    http::{HttpClient, HttpClients, Limits},
    ids::ChainName,
    step::{Integration, Pack, StepContext, StepError, StepHandler},
    sync::{
        Item, Page, Record, Source, SourceError,
        pull::{self, PullSpec},
        push::{Change, Outcomes, Pusher, Sink},
        table::{Column, ColumnType, RowOutcome, Table, parse_timestamp},
    },
};

pub const PACK: &str = "http-json";

/// Header or query name/value pairs.
type Pairs = Vec<(String, String)>;
pub const QUEUE: &str = "sync";

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

/// How requests authenticate. The secret comes from `secret` or, better, the environment variable
/// named by `secret_env` (read where the request is made, never stored in the database).
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SecretSource {
    pub secret_env: Option<String>,
    pub secret: Option<Secret>,
}

impl SecretSource {
    fn resolve(&self) -> Result<String, String> {
        match (&self.secret_env, &self.secret) {
            (Some(var), _) => std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set")),
            (None, Some(s)) => Ok(s.expose().to_owned()),
            (None, None) => Err("set secret_env (or secret)".into()),
        }
    }
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
    /// Create the table with the mapped columns when it does not exist.
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
    /// SQL returning `external_id text, fields jsonb` for integration `$1`.
    pub query: String,
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

impl Settings {
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
                secret.resolve().map_err(|m| ("auth".to_owned(), m))?;
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
        }
        Ok(())
    }

    fn upstream_key(&self) -> String {
        self.upstream.clone().unwrap_or_else(|| {
            url::Url::parse(&self.base_url)
                .ok()
                .and_then(|u| u.host_str().map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0))))
                .unwrap_or_else(|| self.base_url.clone())
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url.trim_end_matches('/'), path)
    }

    /// Headers and query parameters every request carries (credentials included).
    fn request_parts(&self) -> Result<(Pairs, Pairs), String> {
        let mut headers: Vec<(String, String)> = self.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut query = vec![];
        match &self.auth {
            Auth::None => {}
            Auth::Bearer { secret } => headers.push(("Authorization".into(), format!("Bearer {}", secret.resolve()?))),
            Auth::Header { name, secret } => headers.push((name.clone(), secret.resolve()?)),
            Auth::Query { param, secret } => query.push((param.clone(), secret.resolve()?)),
        }
        Ok((headers, query))
    }

    fn client(&self, http: &HttpClients) -> HttpClient {
        http.client(&self.upstream_key(), &self.limits)
    }
}

impl EntitySpec {
    pub fn table(&self) -> Result<Table, crate::sync::table::TableError> {
        let columns = self.columns.iter().map(|(name, c)| Column { name: name.clone(), ty: c.ty }).collect();
        Table::new(&self.table, columns)
    }

    fn pull_spec(&self, entity: &str) -> Result<PullSpec, StepError> {
        let table = self.table().map_err(|e| StepError::abort(e.to_string()))?;
        Ok(PullSpec {
            lookback: Duration::from_secs(self.lookback_secs),
            margin: Duration::from_secs(self.margin_secs),
            max_deactivate_share: self.max_deactivate_share,
            ..PullSpec::new(entity, table)
        })
    }

    /// Reads one record of a list or single answer.
    fn item(&self, mut raw: Value) -> Item {
        let cursor =
            self.updated_at.as_ref().and_then(|p| raw.pointer(p)).and_then(Value::as_str).and_then(parse_timestamp);
        let id = match raw.pointer(&self.id) {
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
        let fields: Map<String, Value> = self
            .columns
            .iter()
            .map(|(name, c)| (name.clone(), raw.pointer_mut(&c.path).map(Value::take).unwrap_or(Value::Null)))
            .collect();
        Item::Record(Record { external_id, cursor, fields, raw })
    }
}

pub fn chains() -> Vec<ChainDef> {
    vec![
        ChainDef {
            name: ChainName::parse("http_json_sync").expect("valid"),
            pack: PACK.into(),
            description: "Pull every entity declared in the integration's config.".into(),
            steps: vec![StepDef::new("pull", StepKind::Pull, QUEUE).retry(3, Duration::from_secs(2))],
        },
        ChainDef {
            name: ChainName::parse("http_json_push").expect("valid"),
            pack: PACK.into(),
            description: "Write every push declared in the integration's config back upstream.".into(),
            steps: vec![StepDef::new("push", StepKind::Push, QUEUE).retry(3, Duration::from_secs(2))],
        },
    ]
}

pub fn pack() -> Pack {
    let mut handlers: std::collections::HashMap<String, Arc<dyn StepHandler>> = Default::default();
    handlers.insert("pull".into(), Arc::new(PullStep));
    handlers.insert("push".into(), Arc::new(PushStep));
    Pack { name: PACK.into(), chains: chains(), handlers }
}

fn settings_of(integration: &Integration) -> Result<Settings, StepError> {
    Settings::parse(&integration.settings).map_err(|(key, m)| {
        StepError::abort(format!(
            "integration `{}`: invalid `integrations.{}.{key}`: {m}",
            integration.name, integration.name
        ))
    })
}

/// Copies the client's call counts into the step's metrics (also when the step fails).
fn record_calls(ctx: &mut StepContext, client: &HttpClient) {
    let stats = client.stats();
    ctx.result.api_calls = stats.api_calls.load(std::sync::atomic::Ordering::Relaxed);
    ctx.result.throttled = stats.throttled.load(std::sync::atomic::Ordering::Relaxed);
}

struct PullStep;

impl StepHandler for PullStep {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.client(&ctx.http);
            let (headers, query) = settings.request_parts().map_err(StepError::abort)?;
            let n = settings.entities.len();
            let mut outcome = Ok(());
            for (name, entity) in &settings.entities {
                let spec = entity.pull_spec(name)?;
                let mut source = JsonSource::new(&settings, entity, &client, &headers, &query, ctx.cancel.clone());
                match pull::pull(ctx, &spec, &mut source).await {
                    Ok(r) => pull::merge(&mut ctx.result, name, r, n),
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            record_calls(ctx, &client);
            outcome
        }
        .boxed()
    }
}

/// Reads one entity's list endpoint page by page.
struct JsonSource<'a> {
    settings: &'a Settings,
    spec: &'a EntitySpec,
    client: &'a HttpClient,
    headers: &'a [(String, String)],
    auth_query: &'a [(String, String)],
    cancel: CancellationToken,
    /// Page number, offset, or the next token / link.
    position: i64,
    next: Option<String>,
    done: bool,
}

impl<'a> JsonSource<'a> {
    fn new(
        settings: &'a Settings,
        spec: &'a EntitySpec,
        client: &'a HttpClient,
        headers: &'a [(String, String)],
        auth_query: &'a [(String, String)],
        cancel: CancellationToken,
    ) -> Self {
        let position = match spec.paging {
            Paging::Page { .. } => 1,
            _ => 0,
        };
        JsonSource { settings, spec, client, headers, auth_query, cancel, position, next: None, done: false }
    }

    async fn fetch(&mut self, since: Option<chrono::DateTime<chrono::Utc>>) -> Result<Option<Page>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let spec = self.spec;
        let mut query: Vec<(String, String)> = self.auth_query.to_vec();
        let url = match (&spec.paging, &self.next) {
            // A next link carries every parameter already.
            (Paging::Page { .. }, Some(link)) => resolve_link(&self.settings.base_url, link),
            (paging, _) => {
                query.extend(spec.query.iter().map(|(k, v)| (k.clone(), v.clone())));
                if let (Some(p), Some(s)) = (&spec.since_param, since) {
                    query.push((p.clone(), s.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
                }
                match paging {
                    Paging::Page { page_param, limit_param, limit, .. } => {
                        query.push((page_param.clone(), self.position.to_string()));
                        query.push((limit_param.clone(), limit.to_string()));
                    }
                    Paging::Offset { offset_param, limit_param, limit, .. } => {
                        query.push((offset_param.clone(), self.position.to_string()));
                        query.push((limit_param.clone(), limit.to_string()));
                    }
                    Paging::Cursor { cursor_param, limit_param, limit, .. } => {
                        if let Some(token) = &self.next {
                            query.push((cursor_param.clone(), token.clone()));
                        }
                        query.push((limit_param.clone(), limit.to_string()));
                    }
                }
                self.settings.url(&spec.path)
            }
        };
        let body = self.client.get_json(&url, self.headers, &query, &self.cancel).await?;
        let records = if spec.records.is_empty() { Some(&body) } else { body.pointer(&spec.records) };
        let Some(records) = records.and_then(Value::as_array) else {
            return Err(SourceError::Shape(format!("{url}: no records array at `{}`", spec.records)));
        };
        let received = records.len() as i64;
        let mut page = Page::default();
        match &spec.paging {
            Paging::Offset { limit, total, .. } => {
                let limit = i64::from(*limit);
                page.total = total.as_ref().and_then(|p| body.pointer(p)).and_then(Value::as_i64);
                let end = self.position + limit;
                match page.total {
                    Some(total) => {
                        if received < limit && self.position + received < total {
                            page.short =
                                Some(format!("page at offset {} returned {received} of {limit} items", self.position));
                        }
                        self.done = end >= total || received == 0;
                    }
                    None => self.done = received < limit,
                }
                self.position = end;
            }
            Paging::Page { limit, next, .. } => {
                let limit = i64::from(*limit);
                match next {
                    Some(p) => {
                        self.next =
                            body.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
                        if self.next.is_some() && received < limit {
                            page.short = Some(format!("page {} returned {received} of {limit} items", self.position));
                        }
                        self.done = self.next.is_none() || received == 0;
                    }
                    None => self.done = received < limit,
                }
                self.position += 1;
            }
            Paging::Cursor { next, .. } => {
                self.next = body.pointer(next).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
                self.done = self.next.is_none() || received == 0;
            }
        }
        let Value::Array(records) = take_records(body, &spec.records) else { unreachable!("checked above") };
        page.items = records.into_iter().map(|r| spec.item(r)).collect();
        Ok(Some(page))
    }
}

fn take_records(mut body: Value, pointer: &str) -> Value {
    if pointer.is_empty() { body } else { body.pointer_mut(pointer).map(Value::take).unwrap_or(Value::Null) }
}

fn resolve_link(base: &str, link: &str) -> String {
    match url::Url::parse(base).and_then(|b| b.join(link)) {
        Ok(u) => u.to_string(),
        Err(_) => link.to_owned(),
    }
}

impl Source for JsonSource<'_> {
    fn next_page(
        &mut self,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        self.fetch(since).boxed()
    }
}

/// A record for single-item sync: given (webhook body) or fetched by id.
pub enum ItemInput {
    Record(Value),
    FetchId(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ItemSyncError {
    #[error("integration `{0}` has no entity `{1}`")]
    UnknownEntity(String, String),
    #[error("entity `{0}` has no item_path, so it cannot be fetched by id")]
    NoItemPath(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Upstream(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Single-item sync: maps and upserts one record through the pull path's statement.
pub async fn sync_item(
    pool: &sqlx::PgPool,
    http: &HttpClients,
    integration: &Integration,
    entity: &str,
    input: ItemInput,
) -> Result<(String, RowOutcome), ItemSyncError> {
    let settings = Settings::parse(&integration.settings)
        .map_err(|(k, m)| ItemSyncError::Invalid(format!("invalid setting `{k}`: {m}")))?;
    let spec = settings
        .entities
        .get(entity)
        .ok_or_else(|| ItemSyncError::UnknownEntity(integration.name.clone(), entity.to_owned()))?;
    let raw = match input {
        ItemInput::Record(v) => v,
        ItemInput::FetchId(id) => {
            let path = spec.item_path.as_ref().ok_or_else(|| ItemSyncError::NoItemPath(entity.to_owned()))?;
            let (headers, query) = settings.request_parts().map_err(ItemSyncError::Upstream)?;
            let url = settings.url(&path.replace("{id}", &url_escape(&id)));
            let client = settings.client(http);
            client
                .get_json(&url, &headers, &query, &CancellationToken::new())
                .await
                .map_err(|e| ItemSyncError::Upstream(e.to_string()))?
        }
    };
    if !raw.is_object() {
        return Err(ItemSyncError::Invalid("the record must be a JSON object".into()));
    }
    let table = spec.table().map_err(|e| ItemSyncError::Invalid(e.to_string()))?;
    pull::sync_one(pool, integration.id, entity, &table, spec.item(raw)).await?.map_err(ItemSyncError::Invalid)
}

fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Creates or checks the tables of every entity (start-up of the producer and `syncfleet migrate`).
pub async fn ensure_tables(pool: &sqlx::PgPool, name: &str, settings: &Value) -> Result<(), String> {
    let settings = Settings::parse(settings).map_err(|(k, m)| format!("`integrations.{name}.{k}`: {m}"))?;
    for (entity, spec) in &settings.entities {
        let table = spec.table().map_err(|e| format!("`integrations.{name}.entities.{entity}.table`: {e}"))?;
        table
            .ensure(pool, spec.create_table)
            .await
            .map_err(|e| format!("`integrations.{name}.entities.{entity}.table`: {e}"))?;
    }
    Ok(())
}

struct PushStep;

impl StepHandler for PushStep {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.client(&ctx.http);
            let (headers, query) = settings.request_parts().map_err(StepError::abort)?;
            let mut result = std::mem::take(&mut ctx.result);
            let mut outcome = Ok(());
            for (name, spec) in &settings.pushes {
                let sink = JsonSink {
                    settings: &settings,
                    spec,
                    client: &client,
                    headers: &headers,
                    query: &query,
                    cancel: ctx.cancel.clone(),
                };
                let pusher = Pusher {
                    pool: &ctx.pool,
                    integration_id: ctx.integration.id,
                    run: ctx.run_id,
                    step: ctx.step.name.as_str(),
                    entity: name,
                    sink: &sink,
                };
                if let Err(e) = push_all(&ctx.pool, ctx.integration.id, spec, &pusher, &mut result).await {
                    outcome = Err(e);
                    break;
                }
            }
            ctx.result = result;
            record_calls(ctx, &client);
            outcome
        }
        .boxed()
    }
}

/// Runs the push query in keyset chunks, so memory stays bounded by the chunk.
async fn push_all(
    pool: &sqlx::PgPool,
    integration_id: i64,
    spec: &PushSpec,
    pusher: &Pusher<'_>,
    result: &mut crate::step::PhaseResult,
) -> Result<(), StepError> {
    const CHUNK: i64 = 1000;
    let sql = format!(
        "SELECT q.external_id::text, q.fields::jsonb FROM ({}) q WHERE q.external_id::text > $2
         ORDER BY q.external_id::text LIMIT $3",
        spec.query
    );
    let mut after = String::new();
    loop {
        let rows: Vec<(String, Value)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(integration_id)
            .bind(&after)
            .bind(CHUNK)
            .fetch_all(pool)
            .await
            .map_err(|e| StepError::abort(format!("push query failed: {e}")))?;
        let Some(last) = rows.last() else { return Ok(()) };
        after = last.0.clone();
        let full = rows.len() as i64 == CHUNK;
        let desired = rows
            .into_iter()
            .map(|(id, fields)| (id, if let Value::Object(m) = fields { m } else { Map::new() }))
            .collect();
        pusher.push_chunk(desired, result).await?;
        if !full {
            return Ok(());
        }
    }
}

struct JsonSink<'a> {
    settings: &'a Settings,
    spec: &'a PushSpec,
    client: &'a HttpClient,
    headers: &'a [(String, String)],
    query: &'a [(String, String)],
    cancel: CancellationToken,
}

impl JsonSink<'_> {
    fn id_value(&self, id: &str) -> Value {
        match id.parse::<i64>() {
            Ok(n) if self.spec.numeric_id => Value::from(n),
            _ => Value::from(id),
        }
    }

    async fn send_all(&self, changes: &[Change]) -> Result<Outcomes, SourceError> {
        let method = reqwest::Method::from_bytes(self.spec.method.as_bytes()).unwrap_or(reqwest::Method::PATCH);
        let request = |url: String, body: Value| {
            let (method, headers, query) = (method.clone(), self.headers, self.query);
            move |c: &reqwest::Client| {
                let mut r = c.request(method.clone(), &url).query(query).json(&body);
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                r
            }
        };
        if !self.spec.path.contains("{id}") {
            let body: Vec<Value> = changes
                .iter()
                .map(|c| {
                    let mut o = c.fields.clone();
                    o.insert(self.spec.id_field.clone(), self.id_value(&c.external_id));
                    Value::Object(o)
                })
                .collect();
            let url = self.settings.url(&self.spec.path);
            let answer = self.client.send(request(url.clone(), Value::Array(body)), &self.cancel).await?;
            let answer: Value =
                answer.json().await.map_err(|e| SourceError::Shape(format!("{url}: answer is not JSON: {e}")))?;
            let results = answer
                .pointer(&self.spec.results)
                .and_then(Value::as_array)
                .ok_or_else(|| SourceError::Shape(format!("{url}: no results array at `{}`", self.spec.results)))?;
            return Ok(results
                .iter()
                .filter_map(|r| {
                    let id = match r.pointer(&self.spec.result_id)? {
                        Value::Number(n) => n.to_string(),
                        Value::String(s) => s.clone(),
                        _ => return None,
                    };
                    let ok = r.pointer(&self.spec.result_status).and_then(Value::as_str) == Some(&self.spec.ok_status);
                    let message =
                        r.pointer(&self.spec.result_message).and_then(Value::as_str).unwrap_or("refused").to_owned();
                    Some((id, if ok { Ok(()) } else { Err(message) }))
                })
                .collect());
        }
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            let url = self.settings.url(&self.spec.path.replace("{id}", &url_escape(&c.external_id)));
            match self.client.send(request(url, Value::Object(c.fields.clone())), &self.cancel).await {
                Ok(_) => out.push((c.external_id.clone(), Ok(()))),
                Err(e) if e.status().is_some_and(|s| (400..500).contains(&s) && s != 429) => {
                    out.push((c.external_id.clone(), Err(e.to_string())));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}

impl Sink for JsonSink<'_> {
    fn max_batch(&self) -> usize {
        if self.spec.path.contains("{id}") { 1 } else { self.spec.max_batch }
    }
    fn send<'a>(&'a self, changes: &'a [Change]) -> BoxFuture<'a, Result<Outcomes, SourceError>> {
        self.send_all(changes).boxed()
    }
}
