//! The `http-json` pack: a JSON API declared entirely in the config file (base URL, auth, paging
//! style, records path, id and updated-at fields, field mapping to a table), synced by the same
//! engine as every other source. See `examples/erp.toml`.
//!
//! Chains:
//! - `http_json_sync`: `pull` syncs every entity of the integration, in name order; each entity's
//!   cursor and sweep commit with the step, in one short transaction opened after the last entity
//!   was read.
//! - `http_json_push`: `push` writes every configured push back to the upstream. A push's SQL is
//!   taken from the config file only (`[integrations.<name>.pushes.<push>] query`), never from the
//!   database or the admin API, and runs read-only.

mod settings;
mod sink;
mod source;

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, future::BoxFuture};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

pub use settings::{Auth, ColumnSpec, EntitySpec, Paging, PushSpec, SecretSource, Settings};
use sink::{JsonSink, push_all};
use source::JsonSource;

pub use syncfleet_sdk::pack::{ItemInput, ItemSyncError};
use syncfleet_sdk::{
    DefaultSchedule, Integration, Pack,
    chain::{ChainDef, Mode, StepDef, StepKind},
    http::HttpClients,
    ids::ChainName,
    pack::ItemSync,
    step::{StepContext, StepError, StepHandler},
    sync::{pull, push::Pusher, table::RowOutcome},
};

pub const PACK: &str = "http-json";
pub const QUEUE: &str = "sync";

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

/// The pack: its chains and their two steps, the settings check, the entities' tables prepared
/// at registration, and single-item sync (webhooks).
pub struct HttpJsonPack;

impl Pack for HttpJsonPack {
    fn name(&self) -> &'static str {
        PACK
    }

    fn chains(&self) -> Vec<ChainDef> {
        chains()
    }

    /// A full `http_json_sync` every night at 03:00 UTC, so deletions upstream are swept at least
    /// daily; a configured or stored full schedule of the chain replaces it (`enabled = false`
    /// switches it off).
    fn default_schedules(&self) -> Vec<DefaultSchedule> {
        vec![DefaultSchedule::new("http_json_sync", "0 3 * * *", Mode::Full)]
    }

    fn handlers(&self) -> Vec<(&'static str, Arc<dyn StepHandler>)> {
        vec![("pull", Arc::new(PullStep)), ("push", Arc::new(PushStep))]
    }

    fn check_settings(&self, settings: &Value) -> Result<(), (String, String)> {
        Settings::parse(settings).map(|_| ())
    }

    /// Push SQL and table creation come from the config file only.
    fn check_api_settings(&self, settings: &Value) -> Result<(), (String, String)> {
        Settings::parse(settings)?.check_api()
    }

    fn prepare<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        integration: &'a str,
        settings: &'a Value,
    ) -> BoxFuture<'a, Result<(), String>> {
        ensure_tables(conn, integration, settings).boxed()
    }

    fn item_sync(&self) -> Option<&dyn ItemSync> {
        Some(self)
    }
}

impl ItemSync for HttpJsonPack {
    fn sync_item<'a>(
        &'a self,
        pool: &'a PgPool,
        http: &'a HttpClients,
        integration: &'a Integration,
        entity: &'a str,
        input: ItemInput,
    ) -> BoxFuture<'a, Result<(String, RowOutcome), ItemSyncError>> {
        sync_item(pool, http, integration, entity, input).boxed()
    }
}

fn settings_of(integration: &Integration) -> Result<Settings, StepError> {
    Settings::parse(&integration.settings).map_err(|e| StepError::settings(integration, e))
}

struct PullStep;

impl StepHandler for PullStep {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.client(&ctx.http);
            let (headers, query) =
                client.secrets().and_then(|policy| settings.request_parts(policy)).map_err(StepError::abort)?;
            let n = settings.entities.len();
            // Every entity is read first (its pages commit as they go); the cursors and sweeps of
            // all of them then commit with the step, in a completion transaction opened only now.
            let mut fetched = Vec::with_capacity(n);
            let mut outcome = Ok(());
            for (name, entity) in &settings.entities {
                let spec = entity.pull_spec(name)?;
                let mut source = JsonSource::new(&settings, entity, &client, &headers, &query, ctx.cancel.clone());
                match pull::fetch(ctx, &spec, &mut source).await {
                    Ok(f) => fetched.push((name, f)),
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            ctx.record_calls(&[&client]);
            outcome?;
            for (name, f) in fetched {
                let r = f.complete(ctx.tx().await?).await?;
                pull::merge(&mut ctx.result, name, r, n);
            }
            Ok(())
        }
        .boxed()
    }
}

/// Single-item sync: maps and upserts one record through the pull path's statement.
pub async fn sync_item(
    pool: &PgPool,
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
            let (headers, query) =
                http.secrets().and_then(|policy| settings.request_parts(policy)).map_err(ItemSyncError::Upstream)?;
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

/// Creates or checks the tables of every entity (start-up of the producer and `syncfleet migrate`),
/// on `conn`: the transaction that registers the integration.
pub async fn ensure_tables(conn: &mut PgConnection, name: &str, settings: &Value) -> Result<(), String> {
    let settings = Settings::parse(settings).map_err(|(k, m)| format!("`integrations.{name}.{k}`: {m}"))?;
    for (entity, spec) in &settings.entities {
        let table = spec.table().map_err(|e| format!("`integrations.{name}.entities.{entity}.table`: {e}"))?;
        table
            .ensure(&mut *conn, spec.create_table)
            .await
            .map_err(|e| format!("`integrations.{name}.entities.{entity}.table`: {e}"))?;
    }
    Ok(())
}

struct PushStep;

/// The SQL of each push of `settings` (in their order), from the config file's
/// `[integrations.<name>.pushes.<push>]`: the stored settings say which pushes run and where they
/// send, never what they read. A push whose query the file does not hold refuses the step.
fn push_queries(ctx: &StepContext, settings: &Settings) -> Result<Vec<String>, StepError> {
    let name = &ctx.integration.name;
    let file = ctx.config_settings.as_ref().and_then(|s| s.get("pushes"));
    settings
        .pushes
        .keys()
        .map(|push| {
            file.and_then(|p| p.get(push))
                .and_then(|p| p.get("query"))
                .and_then(Value::as_str)
                .filter(|q| !q.trim().is_empty())
                .map(str::to_owned)
                .ok_or_else(|| {
                    StepError::abort(format!(
                        "integration `{name}`: push `{push}` has no query in the config file \
                         (`integrations.{name}.pushes.{push}.query`); push queries are accepted from the config file only"
                    ))
                })
        })
        .collect()
}

impl StepHandler for PushStep {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.client(&ctx.http);
            let (headers, query) =
                client.secrets().and_then(|policy| settings.request_parts(policy)).map_err(StepError::abort)?;
            let queries = push_queries(ctx, &settings)?;
            let mut result = std::mem::take(&mut ctx.result);
            let mut outcome = Ok(());
            for ((name, spec), sql) in settings.pushes.iter().zip(&queries) {
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
                    fence: ctx.fence.as_ref(),
                    integration_id: ctx.integration.id,
                    run: ctx.run_id,
                    step: ctx.step.name.as_str(),
                    entity: name,
                    sink: &sink,
                };
                if let Err(e) = push_all(&ctx.pool, ctx.integration.id, name, sql, &pusher, &mut result).await {
                    outcome = Err(e);
                    break;
                }
            }
            ctx.result = result;
            ctx.record_calls(&[&client]);
            outcome
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_valid_and_every_step_has_a_handler() {
        let handlers = HttpJsonPack.handlers();
        for chain in &HttpJsonPack.chains() {
            chain.validate().unwrap();
            assert_eq!(chain.pack, PACK);
            for step in &chain.steps {
                assert!(handlers.iter().any(|(name, _)| *name == step.name.as_str()), "{}", step.name);
            }
        }
        assert!(HttpJsonPack.item_sync().is_some());
    }

    #[test]
    fn push_sql_and_table_creation_come_from_the_config_file_only() {
        let settings = |extra: Value| {
            let mut s = serde_json::json!({
                "base_url": "https://erp.example.com",
                "entities": { "items": { "path": "/items", "paging": { "style": "page" }, "id": "/id",
                                         "table": "items", "columns": {} } },
            });
            s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            s
        };
        let sql = settings(serde_json::json!({ "pushes": { "stock": { "query": "SELECT 1", "path": "/x" } } }));
        assert!(HttpJsonPack.check_settings(&sql).is_ok(), "the config file may");
        assert_eq!(
            HttpJsonPack.check_api_settings(&sql).unwrap_err(),
            ("pushes.stock.query".into(), "push queries are accepted from the config file only".into())
        );
        let declared = settings(serde_json::json!({ "pushes": { "stock": { "path": "/x" } } }));
        assert!(HttpJsonPack.check_api_settings(&declared).is_ok(), "a push without its SQL may come from the API");
        let mut create = settings(serde_json::json!({}));
        create["entities"]["items"]["create_table"] = true.into();
        assert!(HttpJsonPack.check_settings(&create).is_ok());
        assert_eq!(HttpJsonPack.check_api_settings(&create).unwrap_err().0, "entities.items.create_table");
    }

    #[test]
    fn check_settings_names_the_bad_key() {
        let bad = serde_json::json!({"base_url": "ftp://example.com"});
        assert_eq!(HttpJsonPack.check_settings(&bad).unwrap_err().0, "base_url");
    }
}
