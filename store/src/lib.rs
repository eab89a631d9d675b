//! The control plane's persistence: every SQL statement on the control-plane tables (runs and
//! steps, views, tokens, audit, integrations, schedules, queue pauses, alert claims, stored
//! reports) and every Redis key we use (queues, leases, depth), plus bounded dispatch and
//! readiness. The producer and the CLI run no SQL of their own: they call these functions.
//! PostgreSQL is the source of truth; tables are defined (and documented) in `migrations/`. The
//! store reads no secret: it keeps references (`env:NAME`, `file:/path`), which the SDK's
//! `secrets` module resolves where they are used.
//!
//! **Invariant:** the store knows no pack. What it needs of the packs when an integration changes
//! (checking its settings, preparing its tables) it asks through [`PackCatalog`], which the SDK's
//! registry implements.

pub mod alerts;
pub mod audit;
pub mod dispatch;
pub mod health;
pub mod integrations;
pub mod queue;
pub mod queues;
pub mod reports;
pub mod runs;
pub mod schedules;
pub mod tokens;
pub mod views;

pub(crate) use syncfleet_runtime::telemetry;
pub(crate) use syncfleet_shared::{chain, config, ids, job};

use std::str::FromStr;

use sqlx::{
    ConnectOptions, Connection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use futures::future::BoxFuture;

use crate::config::DatabaseConfig;

/// The integration a run syncs, as the `integrations` row holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Integration {
    pub id: i64,
    pub name: String,
    pub pack: String,
    pub enabled: bool,
    pub settings: serde_json::Value,
}

impl Integration {
    pub fn name(&self) -> syncfleet_shared::ids::IntegrationName {
        syncfleet_shared::ids::IntegrationName::parse(&self.name)
            .expect("integration names are checked by the database")
    }
}

/// What the store asks of the packs when an integration is created, changed or registered from
/// the config file. Implemented by `syncfleet_sdk::Registry`.
pub trait PackCatalog: Send + Sync {
    /// Checks `settings` for `pack`; the error is `(key relative to the integration, message)`,
    /// with key `pack` for an unknown pack.
    fn check_settings(&self, pack: &str, settings: &serde_json::Value) -> Result<(), (String, String)>;
    /// Prepares what the integration needs in the database (its tables).
    fn prepare<'a>(
        &'a self,
        pool: &'a PgPool,
        name: &'a str,
        pack: &'a str,
        settings: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<(), String>>;
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unknown integration `{0}`")]
    UnknownIntegration(String),
    #[error("integration setup: {0}")]
    Integration(String),
    #[error("integration `{0}` is disabled")]
    IntegrationDisabled(String),
    #[error("unknown chain `{0}`")]
    UnknownChain(String),
    #[error(
        "chain `{chain}` belongs to pack `{chain_pack}` but integration `{integration}` is a `{integration_pack}` integration"
    )]
    PackMismatch { chain: String, chain_pack: String, integration: String, integration_pack: String },
    #[error("a run of `{chain}` for `{integration}` is already active: {run_id}")]
    ActiveRun { chain: String, integration: String, run_id: String },
    #[error("tick `{0}` already has a run")]
    DuplicateTick(String),
    /// Bad input; the message starts with the field at fault (`name: …`).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("run {0} not found")]
    RunNotFound(String),
    #[error("run {run_id} is {status}; {action} needs {needs}")]
    WrongState { run_id: String, status: String, action: &'static str, needs: &'static str },
}

/// Connects, creating the database first if it does not exist.
pub async fn connect(config: &DatabaseConfig) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(config.url.expose())?.log_statements(tracing::log::LevelFilter::Trace);
    create_database_if_missing(&options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await?;
    Ok(pool)
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), StoreError> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut conn = sqlx::PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}"))).execute(&mut conn).await {
            Ok(_) => tracing::info!(database = %name, "Created database."),
            // Another process created it at the same moment: `duplicate_database`, or a unique
            // violation on `pg_database` when both passed the existence check together.
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await.ok();
    Ok(())
}

/// Drops the configured database (closing other sessions on it); for tests and benchmarks.
pub async fn drop_database(config: &DatabaseConfig) -> Result<(), StoreError> {
    let options = PgConnectOptions::from_str(config.url.expose())?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut conn = sqlx::PgConnection::connect_with(&options.database("postgres")).await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")))
        .execute(&mut conn)
        .await?;
    conn.close().await.ok();
    Ok(())
}

/// Applies pending migrations (safe to run from several processes at once: sqlx takes a lock).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

pub async fn integration_by_name(pool: &PgPool, name: &str) -> Result<Integration, StoreError> {
    sqlx::query_as::<_, Integration>("SELECT id, name, pack, enabled, settings FROM integrations WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::UnknownIntegration(name.to_owned()))
}

/// Creates the integration or updates its pack and settings (enabled).
pub async fn upsert_integration(
    pool: &PgPool,
    name: &str,
    pack: &str,
    settings: &serde_json::Value,
) -> Result<Integration, StoreError> {
    put_integration(pool, name, pack, settings, true, None).await?;
    integration_by_name(pool, name).await
}

/// Creates or updates one integration; a row that already holds these values is not rewritten.
/// `webhook_secret_ref` replaces the stored reference when given.
async fn put_integration(
    pool: &PgPool,
    name: &str,
    pack: &str,
    settings: &serde_json::Value,
    enabled: bool,
    webhook_secret_ref: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO integrations (name, pack, settings, enabled, webhook_secret_ref) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET pack = EXCLUDED.pack, settings = EXCLUDED.settings,
             enabled = EXCLUDED.enabled,
             webhook_secret_ref = coalesce(EXCLUDED.webhook_secret_ref, integrations.webhook_secret_ref),
             updated_at = now()
         WHERE (integrations.pack, integrations.settings, integrations.enabled, integrations.webhook_secret_ref)
             IS DISTINCT FROM (EXCLUDED.pack, EXCLUDED.settings, EXCLUDED.enabled,
                               coalesce(EXCLUDED.webhook_secret_ref, integrations.webhook_secret_ref))",
    )
    .bind(name)
    .bind(pack)
    .bind(settings)
    .bind(enabled)
    .bind(webhook_secret_ref)
    .execute(pool)
    .await?;
    Ok(())
}

/// Registers the integrations of the config file: creates or updates each (pack, settings,
/// enabled) and prepares its tables. Integrations not in the file are left alone.
pub async fn register_integrations(
    pool: &PgPool,
    packs: &dyn PackCatalog,
    integrations: &std::collections::BTreeMap<String, crate::config::IntegrationSpec>,
) -> Result<(), StoreError> {
    for (name, spec) in integrations {
        let settings = serde_json::Value::Object(spec.settings.clone());
        put_integration(pool, name, &spec.pack, &settings, spec.enabled, spec.webhook_secret_ref.as_deref()).await?;
        packs.prepare(pool, name, &spec.pack, &settings).await.map_err(StoreError::Integration)?;
    }
    Ok(())
}
