//! The `http-json` pack: a JSON API declared entirely in the config file (base URL, auth, paging
//! style, records path, id and updated-at fields, field mapping to a table), synced by the same
//! engine as every other source. See `examples/erp.toml`.
//!
//! Chains:
//! - `http_json_sync`: `pull` syncs every entity of the integration, in name order.
//! - `http_json_push`: `push` writes every configured push back to the upstream.

mod settings;
mod sink;
mod source;

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, future::BoxFuture};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use settings::{Auth, ColumnSpec, EntitySpec, Paging, PushSpec, SecretSource, Settings};
use sink::{JsonSink, push_all};
use source::JsonSource;

pub use syncfleet_sdk::pack::{ItemInput, ItemSyncError};
use syncfleet_sdk::{
    Integration, Pack,
    chain::{ChainDef, StepDef, StepKind},
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

    fn handlers(&self) -> Vec<(&'static str, Arc<dyn StepHandler>)> {
        vec![("pull", Arc::new(PullStep)), ("push", Arc::new(PushStep))]
    }

    fn check_settings(&self, settings: &Value) -> Result<(), (String, String)> {
        Settings::parse(settings).map(|_| ())
    }

    fn prepare<'a>(
        &'a self,
        pool: &'a PgPool,
        integration: &'a str,
        settings: &'a Value,
    ) -> BoxFuture<'a, Result<(), String>> {
        ensure_tables(pool, integration, settings).boxed()
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
            ctx.record_calls(&[&client]);
            outcome
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
pub async fn ensure_tables(pool: &PgPool, name: &str, settings: &Value) -> Result<(), String> {
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
                    fence: ctx.fence.as_ref(),
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
    fn check_settings_names_the_bad_key() {
        let bad = serde_json::json!({"base_url": "ftp://example.com"});
        assert_eq!(HttpJsonPack.check_settings(&bad).unwrap_err().0, "base_url");
    }
}
