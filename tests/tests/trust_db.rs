//! Least privilege in the database (issue #18, findings 1 and 10), on the real PostgreSQL: the
//! producer and the workers connect as a runtime role that is no superuser and can neither read
//! `pg_authid`, create roles, databases or tables, nor change the migrations' record; every
//! connection carries the configured statement, lock and idle-in-transaction time limits; a sync
//! still runs end to end as that role; a superuser runtime URL is refused in production.

use std::time::Duration;

use syncfleet_shared::{
    chain::Mode,
    config::{Config, Environment, Secret},
};
use syncfleet_tests::{OWNER_ROLE, RUNTIME_ROLE, Sandbox, TestEnv, binary, erp_integration_toml};

/// The SQLSTATE of a failed statement (`None` when it succeeded or failed without one).
async fn sqlstate(pool: &sqlx::PgPool, sql: &str) -> Option<String> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(pool).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runtime_role_can_neither_escalate_nor_change_the_schema() {
    let env = TestEnv::new("").await;
    let pool = &env.pool; // the producer's pool, as the workers' is
    let (user, superuser, createrole, createdb): (String, bool, bool, bool) = sqlx::query_as(
        "SELECT rolname::text, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((user.as_str(), superuser, createrole, createdb), (RUNTIME_ROLE, false, false, false));

    // 42501 insufficient_privilege, each time.
    let denied = [
        "SELECT rolname, rolpassword FROM pg_authid",
        "CREATE ROLE sf_trust_intruder LOGIN SUPERUSER",
        "CREATE DATABASE sf_trust_intruder",
        "CREATE TABLE public.sf_trust_intruder (id INT)",
        "CREATE TABLE sf_trust_intruder (id INT)",
        "CREATE SCHEMA sf_trust_intruder",
        "CREATE FUNCTION sf_trust_intruder() RETURNS INT LANGUAGE sql AS 'SELECT 1'",
        "ALTER TABLE step_runs ADD COLUMN sf_trust_intruder INT",
        "DROP TABLE api_tokens",
        "TRUNCATE audit_log",
        "DELETE FROM _sqlx_migrations",
        "UPDATE _sqlx_migrations SET success = false",
        "COPY api_tokens TO PROGRAM 'true'",
        "SELECT pg_read_file('/etc/passwd')",
        "ALTER ROLE CURRENT_USER SUPERUSER",
    ];
    for sql in denied {
        assert_eq!(sqlstate(pool, sql).await.as_deref(), Some("42501"), "{sql}");
    }
    // What it needs it has: the control plane's rows and the migrations' record to read.
    assert_eq!(sqlstate(pool, "SELECT count(*) FROM api_tokens").await, None);
    assert_eq!(sqlstate(pool, "SELECT count(*) FROM _sqlx_migrations").await, None);

    // The owner role owns the database and every table; the runtime role owns nothing.
    let (db_owner, foreign): (String, i64) = sqlx::query_as(
        "SELECT pg_get_userbyid(datdba)::text,
                (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace
                    AND relkind IN ('r', 'p', 'S') AND relowner <> datdba)
           FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((db_owner.as_str(), foreign), (OWNER_ROLE, 0));

    // Time limits: the defaults of `[database]` on every connection.
    for (setting, want) in
        [("statement_timeout", "5min"), ("lock_timeout", "30s"), ("idle_in_transaction_session_timeout", "5min")]
    {
        let shown: String = env.value(&format!("SHOW {setting}")).await;
        assert_eq!(shown, want, "{setting}");
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_connection_runs_under_the_configured_time_limits() {
    let env = TestEnv::new("").await;
    // The producer's own connection path with small limits.
    let mut config = env.config.clone();
    config.database.statement_timeout_ms = 1_200;
    config.database.lock_timeout_ms = 500;
    config.database.idle_in_transaction_ms = 1_500;
    let ops = syncfleet_producer::connect(&config, env.registry.clone()).await.expect("producer connects");
    let pool = &ops.pool;
    for (setting, want) in
        [("statement_timeout", "1200ms"), ("lock_timeout", "500ms"), ("idle_in_transaction_session_timeout", "1500ms")]
    {
        let shown: String =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}"))).fetch_one(pool).await.unwrap();
        assert_eq!(shown, want, "{setting}");
    }

    // A statement longer than statement_timeout is cancelled: 57014 query_canceled.
    let started = std::time::Instant::now();
    assert_eq!(sqlstate(pool, "SELECT pg_sleep(5)").await.as_deref(), Some("57014"));
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());

    // A lock held longer than lock_timeout: 55P03 lock_not_available.
    env.demo_integration("locked", serde_json::json!({})).await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM integrations WHERE name = 'locked' FOR UPDATE").execute(&mut *holder).await.unwrap();
    let waited = sqlstate(pool, "UPDATE integrations SET enabled = false WHERE name = 'locked'").await;
    assert_eq!(waited.as_deref(), Some("55P03"));
    holder.rollback().await.unwrap();

    // A session idle in a transaction longer than idle_in_transaction_session_timeout is ended.
    let mut idle = pool.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *idle).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let gone: i64 = env.value(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")).await;
    assert_eq!(gone, 0, "the idle transaction's session was ended by the server");
    match sqlx::query("SELECT 1").execute(&mut *idle).await {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("25P03"), "{e}"),
        Err(_) => {} // the socket closed first
        Ok(_) => panic!("a statement ran in a transaction the server should have ended"),
    }
    drop(idle);
    ops.pool.close().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_runs_end_to_end_as_the_runtime_role() {
    let sandbox = Sandbox::start_with(
        syncfleet_sandbox::SandboxConfig { erp_items: Some(1_200), ..Default::default() }.unlimited(),
    )
    .await;
    // `create_table = true`: the owner path (here the harness, in a deployment `syncfleet migrate`)
    // created the table; the runtime role writes it.
    let toml = erp_integration_toml("erp", &sandbox.handle.erp_url(), "trust_items", 500, "");
    let env = TestEnv::new(&toml).await;
    let owner: String = env.value("SELECT tableowner::text FROM pg_tables WHERE tablename = 'trust_items'").await;
    assert_eq!(owner, OWNER_ROLE);
    let worker = env.spawn_worker_process(&format!("trust-db-{}", env.id));
    let producer = env.spawn_producer().await;
    let run = env.run_to_end("http_json_sync", "erp", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let rows: i64 = env.value("SELECT count(*) FROM trust_items WHERE is_active").await;
    assert_eq!(rows, 1_200);
    // Who wrote: the worker process, as the runtime role.
    let writers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity
          WHERE datname = current_database() AND backend_type = 'client backend'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(writers.iter().all(|u| u == RUNTIME_ROLE), "{writers:?}");
    // 1,200 rows written: the pull refreshed the table's statistics through `syncfleet_analyze`,
    // though the runtime role does not own the table.
    let analyzed: bool =
        env.value("SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'trust_items'").await;
    assert!(analyzed, "the pull analyzed the table it wrote");
    // Tables the owner creates later are granted too (default privileges).
    let owner_pool = env.owner_pool().await;
    sqlx::raw_sql("CREATE TABLE trust_later (id BIGSERIAL PRIMARY KEY, note TEXT)").execute(&owner_pool).await.unwrap();
    let id: i64 = env.value("INSERT INTO trust_later (note) VALUES ('granted') RETURNING id").await;
    assert_eq!(id, 1);
    owner_pool.close().await;
    producer.stop().await;
    drop(worker);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_superuser_runtime_url_is_refused_in_production_and_staging() {
    let env = TestEnv::new("").await;
    let superuser = syncfleet_store::roles::with_user(env.config.database.url.expose(), "postgres");
    let config_as = |environment: Environment| {
        let mut c: Config = env.config.clone();
        c.environment = environment;
        c.database.url = Secret::new(superuser.clone());
        c
    };
    for environment in [Environment::Production, Environment::Staging] {
        let error = match syncfleet_producer::connect(&config_as(environment), env.registry.clone()).await {
            Ok(_) => panic!("a producer connecting as a superuser started in {environment:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains("database.url") && error.contains("superuser"), "{error}");
    }
    // Elsewhere it starts, with a warning.
    let ops = syncfleet_producer::connect(&config_as(Environment::Development), env.registry.clone())
        .await
        .expect("a development producer starts");
    ops.pool.close().await;

    // The producer binary says so and exits.
    let out = tokio::process::Command::new(binary("syncfleet-producer"))
        .env("SYNCFLEET_CONFIG", &env.config_path)
        .env("SYNCFLEET__ENVIRONMENT", "production")
        .env("SYNCFLEET__DATABASE__URL", &superuser)
        .env("SYNCFLEET__PRODUCER__LISTEN", "127.0.0.1:0")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.expect("exits at once").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("database.url"), "{stderr}");
    env.finish().await;
}

/// `syncfleet migrate` is the owner path: it creates the database, migrates, grants the runtime
/// role and says so; a runtime command then works, and one before it refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn syncfleet_migrate_sets_up_the_database_for_the_runtime_role() {
    syncfleet_tests::test_roles(syncfleet_tests::PG_SERVER).await;
    let name = format!("sf_test_migrate_{:08x}", rand::random::<u32>());
    let url = |role: &str| format!("postgres://{role}@127.0.0.1:5432/{name}");
    let runtime_toml = format!("[database]\nurl = \"{}\"\n", url(RUNTIME_ROLE));
    let dir = std::env::temp_dir();
    let runtime_path = dir.join(format!("{name}-runtime.toml"));
    let owner_path = dir.join(format!("{name}-owner.toml"));
    std::fs::write(&runtime_path, &runtime_toml).unwrap();
    std::fs::write(&owner_path, format!("{runtime_toml}owner_url = \"{}\"\n", url(OWNER_ROLE))).unwrap();
    let cli = |path: &std::path::Path, args: &[&str]| {
        let mut c = tokio::process::Command::new(binary("syncfleet"));
        c.env("SYNCFLEET_CONFIG", path).env("SYNCFLEET_LOG", "error").args(args);
        c
    };

    let before = cli(&runtime_path, &["integrations"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&before.stderr);
    assert!(!before.status.success() && stderr.contains("database not migrated: run `syncfleet migrate`"), "{stderr}");

    let out = cli(&owner_path, &["migrate"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("database {name} (created), owner role {OWNER_ROLE}")), "{stdout}");
    assert!(stdout.contains("migrations applied: 0001") && stdout.contains(RUNTIME_ROLE), "{stdout}");
    let again = cli(&owner_path, &["migrate"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success() && stdout.contains("migrations: up to date"), "{stdout}");

    let after = cli(&runtime_path, &["integrations"]).output().await.unwrap();
    assert!(after.status.success(), "{}", String::from_utf8_lossy(&after.stderr));

    let database = syncfleet_shared::config::DatabaseConfig {
        url: Secret::new(url(RUNTIME_ROLE)),
        ..syncfleet_shared::config::Config::default().database
    };
    syncfleet_tests::drop_test_database(&database).await;
    std::fs::remove_file(runtime_path).ok();
    std::fs::remove_file(owner_path).ok();
}
