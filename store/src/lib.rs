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
pub mod exclusion;
pub mod health;
pub mod hooks;
pub mod integrations;
pub mod queue;
pub mod queues;
pub mod repair;
pub mod reports;
pub mod roles;
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

/// Where an integration's settings come from. The config file is the deployment's own (its
/// author also holds the database credentials); the admin API takes settings from any admin
/// token, so a pack may refuse there what only the file may set (SQL, table creation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `[integrations.<name>]` of the config file.
    ConfigFile,
    /// The admin API or the CLI.
    Api,
}

/// What the store asks of the packs when an integration is created, changed or registered from
/// the config file. Implemented by `syncfleet_sdk::Registry`.
pub trait PackCatalog: Send + Sync {
    /// Checks `settings` for `pack`, as they come from `origin`; the error is `(key relative to
    /// the integration, message)`, with key `pack` for an unknown pack.
    fn check_settings(&self, pack: &str, settings: &serde_json::Value, origin: Origin) -> Result<(), (String, String)>;
    /// Checks a secret reference (`env:NAME`, `file:NAME`, e.g. a `webhook_secret_ref`) against the
    /// deployment's `[secrets]` policy, without reading it.
    fn check_secret_ref(&self, reference: &str) -> Result<(), String>;
    /// Prepares what the integration needs in the database (its tables), on `conn`: the
    /// transaction that writes the integration's row, so a failure leaves neither behind.
    fn prepare<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
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
    /// The chain must not run while another chain of its exclusion group is active for the
    /// integration (`Pack::exclusive_chains`); a trigger that asks to queue waits instead.
    #[error(
        "`{chain}` must not run while `{running_chain}` is {running_status} for `{integration}`: run {running_run} (trigger with queue to start it after that run ends)"
    )]
    Excluded { chain: String, integration: String, running_chain: String, running_run: String, running_status: String },
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
    /// A run was committed, but PostgreSQL did not confirm it reached the disk (the connection
    /// failed while waiting): it may or may not exist after a crash of the server.
    #[error("run {run_id} was created but PostgreSQL did not confirm it is on disk: {source}")]
    Unconfirmed { run_id: String, source: sqlx::Error },
}

/// The runtime role's pool (`database.url`), every connection under the configured time limits.
/// Creates nothing: a database that does not exist is an error (the owner path,
/// [`roles::migrate_as_owner`], creates it). Services start through [`roles::start`].
pub async fn connect(config: &DatabaseConfig) -> Result<PgPool, StoreError> {
    let options = connect_options(config.url.expose(), config, config.statement_timeout_ms)?;
    pool_with(options, config.max_connections).await
}

/// The shortest `statement_timeout` of the owner's connection: migrations may rewrite big tables.
pub const OWNER_MIN_STATEMENT_TIMEOUT_MS: u64 = 3_600_000;

/// The owner connection's `statement_timeout`: the configured one, but at least
/// [`OWNER_MIN_STATEMENT_TIMEOUT_MS`] (0, no limit, stays 0).
pub fn owner_statement_timeout_ms(config: &DatabaseConfig) -> u64 {
    match config.statement_timeout_ms {
        0 => 0,
        ms => ms.max(OWNER_MIN_STATEMENT_TIMEOUT_MS),
    }
}

/// The options of a connection to `url` with the configured time limits: `statement_timeout`
/// (given), `lock_timeout` and `idle_in_transaction_session_timeout`, set at connection start so
/// they hold for every statement of every pool.
pub fn connect_options(
    url: &str,
    config: &DatabaseConfig,
    statement_timeout_ms: u64,
) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(url)?
        .options([
            ("statement_timeout", statement_timeout_ms),
            ("lock_timeout", config.lock_timeout_ms),
            ("idle_in_transaction_session_timeout", config.idle_in_transaction_ms),
        ])
        .log_statements(tracing::log::LevelFilter::Trace))
}

/// A pooled connection idle for longer than this is pinged before it is handed out. One in use a
/// moment ago is not: sqlx's default, a ping at every acquire, costs a round trip more for every
/// statement run on the pool (and the ping does not prove the next statement will work anyway: a
/// statement's error is handled where it runs).
pub const PING_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) async fn pool_with(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, StoreError> {
    Ok(pool_options()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

/// Pool options that ping a connection before handing it out only after [`PING_IDLE_AFTER`] idle.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new().test_before_acquire(false).before_acquire(|conn, meta| {
        Box::pin(async move {
            if meta.idle_for >= PING_IDLE_AFTER {
                sqlx::Connection::ping(conn).await?;
            }
            Ok(true)
        })
    })
}

/// Creates the database of `options` when it does not exist, as the role of `options` (the owner
/// path only). Returns whether it created it.
pub(crate) async fn create_database_if_missing(options: &PgConnectOptions) -> Result<bool, StoreError> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(false);
    };
    match sqlx::PgConnection::connect_with(options).await {
        Ok(conn) => {
            conn.close().await.ok();
            return Ok(false);
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(e.into()),
    }
    let mut conn = sqlx::PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let quoted = roles::quote_ident(&name);
    let created = match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}"))).execute(&mut conn).await {
        Ok(_) => {
            tracing::info!(database = %name, "Created database.");
            true
        }
        // Another process created it at the same moment: `duplicate_database`, or a unique
        // violation on `pg_database` when both passed the existence check together.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => false,
        Err(e) => return Err(e.into()),
    };
    conn.close().await.ok();
    Ok(created)
}

/// Drops the configured database (closing other sessions on it), as the owner role when
/// `owner_url` is set, else as the role of `url`; for tests and benchmarks.
pub async fn drop_database(config: &DatabaseConfig) -> Result<(), StoreError> {
    let url = config.owner_url.as_ref().unwrap_or(&config.url);
    let options = PgConnectOptions::from_str(url.expose())?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut conn = sqlx::PgConnection::connect_with(&options.database("postgres")).await?;
    let quoted = roles::quote_ident(&name);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")))
        .execute(&mut conn)
        .await?;
    conn.close().await.ok();
    Ok(())
}

/// Applies pending migrations (safe to run from several processes at once: sqlx takes a lock), on
/// a pool of the owner role ([`roles::migrate_as_owner`] is the whole owner path).
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

/// Creates the integration or updates its pack and settings (a new row is enabled; an existing
/// row keeps its `enabled`).
pub async fn upsert_integration(
    pool: &PgPool,
    name: &str,
    pack: &str,
    settings: &serde_json::Value,
) -> Result<Integration, StoreError> {
    put_integration(pool, name, pack, settings, true, None).await?;
    integration_by_name(pool, name).await
}

/// Creates or updates one integration from the config file; a row that already holds these values
/// is not rewritten. `enabled` applies only to a new row: once the row exists, `enabled` belongs
/// to the admin API and the CLI (`disable`, `PUT … {"enabled": …}`), so a producer start or a CLI
/// command never re-enables what an admin disabled. `webhook_secret_ref` replaces the stored
/// reference when given.
async fn put_integration(
    conn: impl sqlx::PgExecutor<'_>,
    name: &str,
    pack: &str,
    settings: &serde_json::Value,
    enabled: bool,
    webhook_secret_ref: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO integrations (name, pack, settings, enabled, webhook_secret_ref) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET pack = EXCLUDED.pack, settings = EXCLUDED.settings,
             webhook_secret_ref = coalesce(EXCLUDED.webhook_secret_ref, integrations.webhook_secret_ref),
             updated_at = now()
         WHERE (integrations.pack, integrations.settings, integrations.webhook_secret_ref)
             IS DISTINCT FROM (EXCLUDED.pack, EXCLUDED.settings,
                               coalesce(EXCLUDED.webhook_secret_ref, integrations.webhook_secret_ref))",
    )
    .bind(name)
    .bind(pack)
    .bind(settings)
    .bind(enabled)
    .bind(webhook_secret_ref)
    .execute(conn)
    .await?;
    Ok(())
}

/// Registers the integrations of the config file: creates or updates each (pack, settings; enabled
/// only when new, see [`put_integration`]) and prepares its tables, each integration in one
/// transaction, so a failed preparation leaves its row as it was. Integrations not in the file
/// are left alone.
pub async fn register_integrations(
    pool: &PgPool,
    packs: &dyn PackCatalog,
    integrations: &std::collections::BTreeMap<String, crate::config::IntegrationSpec>,
) -> Result<(), StoreError> {
    for (name, spec) in integrations {
        let settings = serde_json::Value::Object(spec.settings.clone());
        // The database keeps the file's settings without static header and query values or URL
        // user info: the services read those from the file (`Registry::with_declared_settings`).
        let mut stored = settings.clone();
        syncfleet_shared::secret::redact_settings(&mut stored);
        let mut tx = pool.begin().await?;
        put_integration(&mut *tx, name, &spec.pack, &stored, spec.enabled, spec.webhook_secret_ref.as_deref()).await?;
        packs.prepare(&mut tx, name, &spec.pack, &settings).await.map_err(StoreError::Integration)?;
        tx.commit().await?;
    }
    Ok(())
}
