//! The two database roles and every process's start-up on them.
//!
//! - The **owner role** (`database.owner_url`) owns the database and every table: it creates the
//!   database when missing, runs the migrations, registers the config file's integrations and
//!   prepares their tables (a pack may create tables), and grants the runtime role what it needs.
//!   Only [`migrate_as_owner`] connects as it (`syncfleet migrate`, or a process whose config sets
//!   `owner_url`).
//! - The **runtime role** (`database.url`: producers, workers, the CLI's other commands) is no
//!   superuser, cannot create roles or databases, and has only CONNECT and TEMPORARY on the database,
//!   USAGE on syncfleet's schema, SELECT/INSERT/UPDATE/DELETE on its tables (SELECT only on
//!   `_sqlx_migrations`), USAGE/SELECT on its sequences and EXECUTE on its functions, plus default
//!   privileges so tables the owner creates later are granted too. It creates no table.
//!
//! [`start`] is every service's way in: the owner path first when `owner_url` is set, then the
//! runtime connection, refused when it is a superuser in production or staging, and checked to be
//! migrated.

use std::collections::BTreeMap;

use sqlx::{Connection, Executor, PgConnection, PgPool, postgres::PgConnectOptions};
use syncfleet_shared::config::{Config, DatabaseConfig, Environment, IntegrationSpec};

use crate::{PackCatalog, StoreError};

/// Why a process may not start on its database.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration or the roles are not what this process needs; the message says what to do.
    #[error("{0}")]
    Refused(String),
}

impl From<sqlx::Error> for SetupError {
    fn from(e: sqlx::Error) -> Self {
        SetupError::Store(StoreError::Db(e))
    }
}

/// The advisory lock every owner holds while it grants and registers, so owners starting together
/// never run the same `GRANT` at once (PostgreSQL answers "tuple concurrently updated").
const OWNER_SETUP_LOCK: &str = "syncfleet:owner-setup";

/// What [`migrate_as_owner`] did, for `syncfleet migrate` to print.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OwnerReport {
    pub database: String,
    pub owner_role: String,
    pub database_created: bool,
    /// Migrations this run applied (`0014 runtime role`); empty when the schema was up to date.
    pub applied: Vec<String>,
    /// The role of `database.url` granted the runtime privileges; `None` when it is the owner role.
    pub runtime_role: Option<String>,
    /// Config-file integrations registered and prepared.
    pub integrations: Vec<String>,
    /// What an operator should fix (tables owned by another role, CREATE left to PUBLIC, …).
    pub warnings: Vec<String>,
}

/// The role a connection URL logs in as (its user, else `PGUSER` or the OS user, as libpq does).
pub fn role_of(url: &str) -> Result<String, StoreError> {
    Ok(url.parse::<PgConnectOptions>()?.get_username().to_owned())
}

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a quoted SQL string literal.
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The owner path: connects with `owner_url` (creating the database when missing: the only path
/// that creates one), applies the migrations, grants the runtime role (the user of `database.url`)
/// its privileges, and registers and prepares `integrations`. Idempotent, and safe to run from
/// several processes at once (the migrations and the grants each take an advisory lock).
pub async fn migrate_as_owner(
    config: &DatabaseConfig,
    packs: &dyn PackCatalog,
    integrations: &BTreeMap<String, IntegrationSpec>,
) -> Result<OwnerReport, SetupError> {
    let Some(owner_url) = &config.owner_url else {
        return Err(SetupError::Refused(
            "database.owner_url is not set: migrations run as the owner role (deploy/README.md, database roles)".into(),
        ));
    };
    let owner_options = crate::connect_options(owner_url.expose(), config, crate::owner_statement_timeout_ms(config))?;
    let database_created = crate::create_database_if_missing(&owner_options).await?;
    let pool = crate::pool_with(owner_options.clone(), 2).await?;
    let result = async {
        let before = applied_versions(&pool).await?;
        crate::migrate(&pool).await?;
        let after = applied_versions(&pool).await?;
        let applied = crate::MIGRATOR
            .iter()
            .filter(|m| {
                m.migration_type.is_up_migration() && after.contains(&m.version) && !before.contains(&m.version)
            })
            .map(|m| format!("{:04} {}", m.version, m.description))
            .collect();
        let mut lock = pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))").bind(OWNER_SETUP_LOCK).execute(&mut *lock).await?;
        let granted = async {
            let runtime = role_of(config.url.expose())?;
            let owner = owner_options.get_username().to_owned();
            let mut warnings = Vec::new();
            let runtime_role = if runtime == owner {
                warnings.push(format!(
                    "database.url logs in as the owner role `{owner}`: producers and workers should connect as a \
                     runtime role (deploy/README.md, database roles)"
                ));
                None
            } else {
                grant_runtime(&mut lock, &runtime).await?;
                Some(runtime)
            };
            warnings.extend(ownership_warnings(&mut lock).await?);
            crate::register_integrations(&pool, packs, integrations).await?;
            Ok::<_, SetupError>((owner, runtime_role, warnings))
        }
        .await;
        sqlx::query("SELECT pg_advisory_unlock(hashtext($1))").bind(OWNER_SETUP_LOCK).execute(&mut *lock).await.ok();
        let (owner_role, runtime_role, warnings) = granted?;
        Ok::<_, SetupError>(OwnerReport {
            database: owner_options.get_database().unwrap_or_default().to_owned(),
            owner_role,
            database_created,
            applied,
            runtime_role,
            integrations: integrations.keys().cloned().collect(),
            warnings,
        })
    }
    .await;
    pool.close().await;
    let report = result?;
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        database = %report.database,
        owner = %report.owner_role,
        runtime = ?report.runtime_role,
        applied = report.applied.len(),
        "Database migrated and granted as the owner role."
    );
    Ok(report)
}

async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await?)
}

/// Grants `runtime` what producers and workers need in the current database and schema, and the
/// default privileges for what the connected (owner) role creates later. Idempotent.
pub async fn grant_runtime(conn: &mut PgConnection, runtime: &str) -> Result<(), SetupError> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(runtime)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Err(SetupError::Refused(format!(
            "database.url logs in as role `{runtime}`, which does not exist: create it (deploy/README.md, database roles)"
        )));
    }
    let (database, schema): (String, String) =
        sqlx::query_as("SELECT current_database()::text, current_schema()::text").fetch_one(&mut *conn).await?;
    let (db, schema, rt) = (quote_ident(&database), quote_ident(&schema), quote_ident(runtime));
    let sql = format!(
        "BEGIN;
         REVOKE ALL ON DATABASE {db} FROM PUBLIC;
         GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {rt};
         REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC;
         GRANT USAGE ON SCHEMA {schema} TO {rt};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {rt};
         REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLE {schema}._sqlx_migrations FROM {rt};
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {rt};
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {rt};
         ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {rt};
         ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {rt};
         ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT EXECUTE ON FUNCTIONS TO {rt};
         COMMIT;"
    );
    if let Err(e) = conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql))).await {
        sqlx::query("ROLLBACK").execute(&mut *conn).await.ok();
        return Err(e.into());
    }
    Ok(())
}

/// What keeps the runtime role from its privileges or gives it more: tables of the schema the
/// owner does not own (granted nothing), and CREATE on the schema left to every role (possible
/// before PostgreSQL 15, when the schema belongs to the bootstrap superuser).
async fn ownership_warnings(conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
    let foreign: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_userbyid(c.relowner)::text FROM pg_class c
          WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
            AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
          ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut warnings: Vec<String> = foreign
        .into_iter()
        .map(|(table, owner)| {
            format!(
                "table `{table}` belongs to `{owner}`, not the owner role: the runtime role was granted nothing on it"
            )
        })
        .collect();
    let public_create: bool = sqlx::query_scalar(
        "SELECT has_schema_privilege('public', current_schema(), 'CREATE')
           AND EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                        WHERE n.oid = current_schema()::regnamespace AND a.grantee = 0 AND a.privilege_type = 'CREATE')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if public_create {
        warnings.push(
            "every role may create tables in syncfleet's schema: as its owner, run `REVOKE CREATE ON SCHEMA public FROM \
             PUBLIC`"
                .into(),
        );
    }
    Ok(warnings)
}

/// Every service's start-up (producer, worker) and the CLI's direct connection: the owner path when
/// `database.owner_url` is set (a producer's or worker's config; the CLI clears `owner_url` before
/// calling this, so of its commands only `syncfleet migrate`, through [`migrate_as_owner`], takes the
/// owner path), then the runtime role's pool, refused when that role is a superuser in production or
/// staging (a warning elsewhere), and refused when the schema lacks a migration of this build.
pub async fn start(config: &Config, packs: &dyn PackCatalog) -> Result<PgPool, SetupError> {
    if config.database.owner_url.is_some() {
        migrate_as_owner(&config.database, packs, &config.integrations).await?;
    }
    let pool = crate::connect(&config.database).await.map_err(not_created)?;
    let checked = async {
        check_runtime_role(&pool, config.environment).await?;
        if let Err(missing) = crate::health::migration_state(&pool).await {
            return Err(SetupError::Refused(format!(
                "database not migrated: run `syncfleet migrate` with database.owner_url set ({missing})"
            )));
        }
        if config.database.owner_url.is_none() {
            warn_unregistered(&pool, &config.integrations).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = checked {
        pool.close().await;
        return Err(e);
    }
    Ok(pool)
}

/// A database that does not exist yet is the owner path's to create.
fn not_created(e: StoreError) -> SetupError {
    match &e {
        StoreError::Db(sqlx::Error::Database(d)) if d.code().as_deref() == Some("3D000") => SetupError::Refused(
            format!("database not migrated: run `syncfleet migrate` with database.owner_url set ({})", d.message()),
        ),
        _ => SetupError::Store(e),
    }
}

/// The runtime role's attributes: a superuser is refused in production and staging (the error
/// names `database.url`) and warned about elsewhere; CREATEROLE, CREATEDB and owning syncfleet's
/// tables are warned about.
pub async fn check_runtime_role(pool: &PgPool, environment: Environment) -> Result<(), SetupError> {
    let (role, superuser, createrole, createdb, owned): (String, bool, bool, bool, i64) = sqlx::query_as(
        "SELECT rolname::text, rolsuper, rolcreaterole, rolcreatedb,
                (SELECT count(*) FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace
                    AND c.relkind IN ('r', 'p') AND c.relowner = r.oid)
           FROM pg_roles r WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await?;
    if superuser {
        let message = format!(
            "database.url connects as `{role}`, a superuser: producers and workers connect as a runtime role that is \
             not one (deploy/README.md, database roles)"
        );
        if matches!(environment, Environment::Production | Environment::Staging) {
            let environment = if environment == Environment::Production { "production" } else { "staging" };
            return Err(SetupError::Refused(format!("{message}; refused with environment = \"{environment}\"")));
        }
        tracing::warn!("{message}");
        return Ok(());
    }
    if createrole || createdb {
        tracing::warn!(
            role,
            createrole,
            createdb,
            "database.url connects as a role that may create roles or databases; the runtime role needs neither."
        );
    }
    if owned > 0 {
        tracing::warn!(
            role,
            tables = owned,
            "database.url connects as the owner of syncfleet's tables; connect as a runtime role."
        );
    }
    Ok(())
}

/// Config-file integrations the database does not hold: only the owner path registers them.
async fn warn_unregistered(pool: &PgPool, integrations: &BTreeMap<String, IntegrationSpec>) -> Result<(), StoreError> {
    if integrations.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = integrations.keys().cloned().collect();
    let known: Vec<String> =
        sqlx::query_scalar("SELECT name FROM integrations WHERE name = ANY($1)").bind(&names).fetch_all(pool).await?;
    let missing: Vec<&String> = names.iter().filter(|n| !known.contains(n)).collect();
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "Integrations of the config file are not registered: `syncfleet migrate` (with database.owner_url) registers them."
        );
    }
    Ok(())
}

/// Creates role `name` with `attributes` (`LOGIN NOSUPERUSER …`) unless it exists, on a
/// connection of a role allowed to (a superuser: `syncfleet demo` and the tests' harness on a
/// local server). Safe when several processes create it at once.
pub async fn ensure_role(conn: &mut PgConnection, name: &str, attributes: &str) -> Result<bool, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    if exists {
        return Ok(false);
    }
    let sql = format!("CREATE ROLE {} WITH {attributes}", quote_ident(name));
    match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await {
        Ok(_) => Ok(true),
        // Created by another process since: `duplicate_object`, or a unique violation on
        // `pg_authid` when both passed the existence check together.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42710" | "23505")) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Hands database `database` and the objects of its schema that another role owns to `owner`, on a
/// superuser connection (`syncfleet demo` adopting a database an earlier version created as the
/// superuser). Does nothing when the database does not exist.
pub async fn adopt_database(superuser: &PgConnectOptions, database: &str, owner: &str) -> Result<(), StoreError> {
    let mut conn = PgConnection::connect_with(&superuser.clone().database("postgres")).await?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1")
            .bind(database)
            .fetch_optional(&mut conn)
            .await?;
    conn.close().await.ok();
    let Some(current) = current else { return Ok(()) };
    let mut conn = PgConnection::connect_with(&superuser.clone().database(database)).await?;
    if current != owner {
        let sql = format!("ALTER DATABASE {} OWNER TO {}", quote_ident(database), quote_ident(owner));
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
    }
    let sql = format!(
        "DO $$
         DECLARE r record;
         BEGIN
             FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c
                       WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
                         AND c.relowner <> {owner}::regrole
                         AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                            AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
             LOOP
                 EXECUTE format('ALTER TABLE %s OWNER TO %I', r.rel, {owner_lit});
             END LOOP;
             FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
                       WHERE p.pronamespace = current_schema()::regnamespace AND p.proowner <> {owner}::regrole
             LOOP
                 EXECUTE format('ALTER FUNCTION %s OWNER TO %I', r.fn, {owner_lit});
             END LOOP;
         END $$",
        owner = quote_literal(&quote_ident(owner)),
        owner_lit = quote_literal(owner),
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
    conn.close().await.ok();
    Ok(())
}

/// Whether the role of `options` is a superuser.
pub async fn is_superuser(options: &PgConnectOptions) -> Result<bool, StoreError> {
    let mut conn = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetch_one(&mut conn).await?;
    conn.close().await.ok();
    Ok(superuser)
}

/// `url` logging in as `user` (no password: for a local server with trust authentication).
pub fn with_user(url: &str, user: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{user}@{host}{tail}")
}

/// The roles `syncfleet demo` sets up on a local server where `database.url` is a superuser and no
/// `owner_url` is set: the owner role [`DEMO_OWNER`] (may create databases) and the runtime role
/// [`DEMO_RUNTIME`], created if missing, the database handed to the owner when an earlier run
/// created it as the superuser. Returns `(owner_url, runtime_url)`, or `None` when `url` is not a
/// superuser (the roles are then the deployment's).
pub async fn setup_local_roles(url: &str) -> Result<Option<(String, String)>, StoreError> {
    let superuser: PgConnectOptions = url.parse()?;
    if !is_superuser(&superuser).await? {
        return Ok(None);
    }
    let mut conn = PgConnection::connect_with(&superuser.clone().database("postgres")).await?;
    ensure_role(&mut conn, DEMO_OWNER, "LOGIN NOSUPERUSER CREATEDB NOCREATEROLE").await?;
    ensure_role(&mut conn, DEMO_RUNTIME, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").await?;
    conn.close().await.ok();
    if let Some(database) = superuser.get_database() {
        adopt_database(&superuser, database, DEMO_OWNER).await?;
    }
    Ok(Some((with_user(url, DEMO_OWNER), with_user(url, DEMO_RUNTIME))))
}

/// The owner role `syncfleet demo` creates on a local server.
pub const DEMO_OWNER: &str = "syncfleet_owner";
/// The runtime role `syncfleet demo` creates on a local server.
pub const DEMO_RUNTIME: &str = "syncfleet_runtime";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_user_replaces_or_adds_the_user() {
        assert_eq!(with_user("postgres://postgres@127.0.0.1:5432/db", "rt"), "postgres://rt@127.0.0.1:5432/db");
        assert_eq!(with_user("postgres://a:s%40cret@h/db?sslmode=disable", "rt"), "postgres://rt@h/db?sslmode=disable");
        assert_eq!(with_user("postgresql://localhost", "rt"), "postgresql://rt@localhost");
        assert_eq!(role_of("postgres://rt@h/db").unwrap(), "rt");
    }
}
