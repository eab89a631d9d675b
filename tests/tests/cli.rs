//! The `syncfleet` CLI as operators run it: the real binary against real PostgreSQL, Redis and
//! producer. Only `migrate` creates or migrates a database; exit codes are the documented ones;
//! with `SYNCFLEET_API_URL` and `SYNCFLEET_TOKEN` commands go through the admin API, so the token's
//! role decides and the audit trail names it; tables fit the terminal's width.

use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use syncfleet_store::tokens::{self, Role};
use syncfleet_tests::{PG_SERVER, TestEnv, binary, drop_test_database, test_roles};

/// What one CLI process did.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// Runs the CLI with `args` and the environment `vars`, with no API settings unless `vars` gives
/// them.
async fn run_cli(mut command: tokio::process::Command, args: &[&str], vars: &[(&str, &str)]) -> Out {
    command.env_remove("SYNCFLEET_API_URL").env_remove("SYNCFLEET_TOKEN").env_remove("SYNCFLEET_ACTOR");
    command.env_remove("COLUMNS").args(args).envs(vars.iter().copied());
    let out = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the CLI ends within two minutes")
        .expect("the CLI runs (cargo build -p syncfleet-cli first)");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn cli(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Out {
    run_cli(env.cli(), args, vars).await
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_migrate_creates_and_migrates_the_database() {
    test_roles(PG_SERVER).await;
    let id = format!("{:010x}", rand::rng().random::<u64>() & 0xff_ffff_ffff);
    let database = format!("sf_test_cli_{id}");
    let toml = format!(
        "environment = \"test\"\n\
         [database]\nurl = \"postgres://sf_test_runtime@127.0.0.1:5432/{database}\"\n\
         owner_url = \"postgres://sf_test_owner@127.0.0.1:5432/{database}\"\n\
         [redis]\nurl = \"redis://127.0.0.1:6379\"\nnamespace = \"sft-cli-{id}\"\n"
    );
    let path = std::env::temp_dir().join(format!("syncfleet-test-cli-{id}.toml"));
    std::fs::write(&path, &toml).unwrap();
    let config = syncfleet_registry::builtin().config_from_toml(&toml).unwrap();
    let syncfleet = || {
        let mut c = tokio::process::Command::new(binary("syncfleet"));
        c.env("SYNCFLEET_CONFIG", &path).env("SYNCFLEET_LOG", "error");
        c
    };
    let mut server = PgConnection::connect(&format!("{PG_SERVER}/postgres")).await.unwrap();
    let exists = "SELECT count(*) FROM pg_database WHERE datname = $1";

    // A missing database: every command but `migrate` says so and creates nothing, even with
    // `database.owner_url` in the config.
    for args in [&["runs"][..], &["queues"], &["trigger", "demo_diamond", "--integration", "acme"], &["tokens", "list"]]
    {
        let out = run_cli(syncfleet(), args, &[]).await;
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("run `syncfleet migrate`"), "{args:?}: {}", out.stderr);
    }
    let out = run_cli(syncfleet(), &["tokens", "create", "--name", "first", "--role", "admin"], &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let count: i64 = sqlx::query_scalar(exists).bind(&database).fetch_one(&mut server).await.unwrap();
    assert_eq!(count, 0, "no command but migrate created the database");

    // An empty database: refused as not migrated, and left without a table.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database} OWNER sf_test_owner")))
        .execute(&mut server)
        .await
        .unwrap();
    let out = run_cli(syncfleet(), &["runs"], &[]).await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("not migrated") && out.stderr.contains("syncfleet migrate"), "{}", out.stderr);
    let mut db = PgConnection::connect(&format!("{PG_SERVER}/{database}")).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(tables, 0, "the database stays unmigrated");
    db.close().await.ok();

    // `migrate` does it; then the other commands work.
    let out = run_cli(syncfleet(), &["migrate", "--json"], &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.json()["applied"].as_array().unwrap().is_empty());
    let out = run_cli(syncfleet(), &["runs", "--json"], &[]).await;
    assert_eq!((out.code, out.json()), (Some(0), json!([])), "{}", out.stderr);

    server.close().await.ok();
    drop_test_database(&config.database).await;
    std::fs::remove_file(&path).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exit_codes_are_the_documented_ones() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    env.demo_integration("broken", json!({ "step_ms": 0, "fail": { "left": "always" } })).await;
    env.demo_integration("slow", json!({ "step_ms": 0, "slow": { "start": 8000 } })).await;
    let worker = env.spawn_worker("w").await;
    let producer = env.spawn_producer().await;

    // 0: the waited-for run completed.
    let out = cli(&env, &["trigger", "demo_diamond", "--integration", "acme", "--wait", "--json"], &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let completed = out.json();
    assert_eq!(completed["status"], "completed");

    // 1: the waited-for run failed.
    let out = cli(&env, &["trigger", "demo_diamond", "--integration", "broken", "--wait", "--json"], &[]).await;
    assert_eq!((out.code, out.json()["status"].clone()), (Some(1), json!("failed")), "{}", out.stderr);

    // 2: usage.
    let out = cli(&env, &["trigger", "demo_diamond"], &[]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--integration"), "{}", out.stderr);

    // 3: a run that ended partial.
    sqlx::query("UPDATE chain_runs SET status = 'partial' WHERE id = $1::text::uuid")
        .bind(completed["id"].as_str().unwrap())
        .execute(&env.pool)
        .await
        .unwrap();
    let out = cli(&env, &["runs", "show", completed["id"].as_str().unwrap(), "--watch", "--json"], &[]).await;
    assert_eq!(out.code, Some(3), "{}", out.stderr);

    // 4: refused, a run of the chain is active.
    let out = cli(&env, &["trigger", "demo_diamond", "--integration", "slow", "--json"], &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let active = out.json()["run_id"].as_str().unwrap().to_owned();
    let out = cli(&env, &["trigger", "demo_diamond", "--integration", "slow"], &[]).await;
    assert_eq!(out.code, Some(4), "{}", out.stderr);
    assert!(out.stderr.contains("already active") && out.stderr.contains(&active), "{}", out.stderr);
    let out = cli(&env, &["cancel", &active, "--json"], &[]).await;
    assert_eq!((out.code, out.json()), (Some(0), json!({ "run_id": active, "status": "cancelled" })));

    // 5: PostgreSQL, Redis or the API unreachable, each named.
    let redis = format!("redis://127.0.0.1:{}", closed_port());
    let out = cli(&env, &["queues"], &[("SYNCFLEET__REDIS__URL", &redis)]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    assert!(out.stderr.contains("Redis (redis.url) could not be reached"), "{}", out.stderr);
    let postgres = format!("postgres://sf_test_runtime@127.0.0.1:{}/postgres", closed_port());
    let out = cli(&env, &["runs"], &[("SYNCFLEET__DATABASE__URL", &postgres)]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    assert!(out.stderr.contains("PostgreSQL (database.url) could not be reached"), "{}", out.stderr);
    let out = cli(&env, &["healthcheck"], &[("SYNCFLEET__REDIS__URL", &redis)]).await;
    assert_eq!(out.code, Some(5), "{}", out.stdout);
    let api = format!("http://127.0.0.1:{}", closed_port());
    let out = cli(&env, &["runs"], &[("SYNCFLEET_API_URL", &api), ("SYNCFLEET_TOKEN", "sf_x_y")]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    assert!(out.stderr.contains("could not be reached"), "{}", out.stderr);

    // 6: the API refuses the token.
    let url = format!("http://{}", producer.addr.unwrap());
    let out = cli(&env, &["runs"], &[("SYNCFLEET_API_URL", &url), ("SYNCFLEET_TOKEN", "sf_nokey_nosecret")]).await;
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    assert!(out.stderr.contains("invalid or revoked token"), "{}", out.stderr);
    let out = cli(&env, &["runs"], &[("SYNCFLEET_API_URL", &url)]).await;
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    assert!(out.stderr.contains("SYNCFLEET_TOKEN is not"), "{}", out.stderr);

    // The help lists them.
    let out = cli(&env, &["--help"], &[]).await;
    for line in ["3  a waited-for run ended partial", "4  refused", "5  unreachable", "6  not allowed"] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }

    producer.stop().await;
    worker.stop().await;
    env.finish().await;
}

/// A token of `role` named `name`.
async fn token(env: &TestEnv, name: &str, role: Role) -> String {
    tokens::create(&env.pool, name, role, "test").await.expect("token").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_api_mode_the_token_decides_and_is_audited() {
    let env = TestEnv::with_top_level("min_interval_secs = 60", "").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    env.demo_integration("slow", json!({ "step_ms": 0, "slow": { "start": 8000 } })).await;
    let worker = env.spawn_worker("w").await;
    let producer = env.spawn_producer().await;
    let url = format!("http://{}", producer.addr.unwrap());
    let viewer = token(&env, "dashboards", Role::Viewer).await;
    let operator = token(&env, "oncall", Role::Operator).await;
    let admin = token(&env, "platform", Role::Admin).await;
    let as_viewer = [("SYNCFLEET_API_URL", url.as_str()), ("SYNCFLEET_TOKEN", viewer.as_str())];
    let as_operator = [("SYNCFLEET_API_URL", url.as_str()), ("SYNCFLEET_TOKEN", operator.as_str())];
    let as_admin = [("SYNCFLEET_API_URL", url.as_str()), ("SYNCFLEET_TOKEN", admin.as_str())];

    // A viewer may read but not change anything.
    let out = cli(&env, &["trigger", "demo_diamond", "--integration", "acme"], &as_viewer).await;
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    assert!(out.stderr.contains("token `dashboards` has role viewer; this needs operator"), "{}", out.stderr);

    // An operator triggers and waits, through the API.
    let out = cli(&env, &["trigger", "demo_diamond", "--integration", "acme", "--wait", "--json"], &as_operator).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let run = out.json();
    assert_eq!((run["status"].as_str(), run["triggered_by"].as_str()), (Some("completed"), Some("token:oncall")));
    let id = run["id"].as_str().unwrap();

    // The viewer reads what the direct mode reads.
    let direct = cli(&env, &["runs", "show", id, "--json"], &[]).await.json();
    let shown = cli(&env, &["runs", "show", id, "--json"], &as_viewer).await;
    assert_eq!((shown.code, shown.json()), (Some(0), direct), "{}", shown.stderr);
    for args in [
        &["runs", "--json"][..],
        &["queues", "--json"],
        &["workers", "--json"],
        &["integrations", "--json"],
        &["schedule", "get", "--json"],
        &["status", "demo_diamond", "--integration", "acme", "--json"],
    ] {
        let api = cli(&env, args, &as_viewer).await;
        let direct = cli(&env, args, &[]).await;
        assert_eq!(api.code, Some(0), "{args:?}: {}", api.stderr);
        let (api, direct) = (api.json(), direct.json());
        if args[0] == "queues" || args[0] == "workers" {
            assert_eq!(api.as_array().map(Vec::len), direct.as_array().map(Vec::len), "{args:?}");
        } else {
            assert_eq!(api, direct, "{args:?}");
        }
    }
    let out = cli(&env, &["runs", "--json"], &as_viewer).await.json();
    assert_eq!(out[0]["id"], id);

    // The viewer may not cancel; the operator may, and pauses and resumes a queue.
    let out = cli(&env, &["trigger", "demo_diamond", "--integration", "slow", "--json"], &as_operator).await;
    let slow = out.json()["run_id"].as_str().unwrap().to_owned();
    let out = cli(&env, &["cancel", &slow], &as_viewer).await;
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    assert!(out.stderr.contains("has role viewer"), "{}", out.stderr);
    let out = cli(&env, &["cancel", &slow, "--json"], &as_operator).await;
    assert_eq!((out.code, out.json()["status"].as_str()), (Some(0), Some("cancelled")), "{}", out.stderr);
    let out = cli(&env, &["queue", "pause", "demo", "--json"], &as_operator).await;
    assert_eq!(out.json(), json!({ "queue": "demo", "paused": true, "changed": true }), "{}", out.stderr);
    let out = cli(&env, &["queue", "resume", "demo", "--json"], &as_operator).await;
    assert_eq!(out.json(), json!({ "queue": "demo", "paused": false, "changed": true }), "{}", out.stderr);

    // Schedules need the admin role.
    let set = ["schedule", "set", "demo_diamond", "--integration", "acme", "--interval-secs", "3600", "--json"];
    let out = cli(&env, &set, &as_operator).await;
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    let out = cli(&env, &set, &as_admin).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let stored = out.json();
    assert_eq!((stored["interval_secs"].as_i64(), stored["updated_by"].as_str()), (Some(3600), Some("token:platform")));

    // In direct mode, SYNCFLEET_ACTOR names who acted.
    let out = cli(&env, &["queue", "pause", "demo"], &[("SYNCFLEET_ACTOR", "alice@example.com")]).await;
    assert_eq!((out.code, out.stdout.trim()), (Some(0), "queue demo paused"), "{}", out.stderr);

    let audit: Vec<(String, String, String)> =
        sqlx::query_as("SELECT actor, action, target FROM audit_log ORDER BY id").fetch_all(&env.pool).await.unwrap();
    let audit: Vec<(&str, &str)> = audit.iter().map(|(actor, action, _)| (actor.as_str(), action.as_str())).collect();
    assert_eq!(
        audit,
        [
            ("token:oncall", "run.trigger"),
            ("token:oncall", "run.trigger"),
            ("token:oncall", "run.cancel"),
            ("token:oncall", "queue.pause"),
            ("token:oncall", "queue.resume"),
            ("token:platform", "schedule.set"),
            ("alice@example.com", "queue.pause"),
        ]
    );

    producer.stop().await;
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_command_speaks_json_completions_exist_and_demo_refuses_production() {
    let env = TestEnv::with_top_level("min_interval_secs = 60", "").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;

    let out = cli(&env, &["tokens", "create", "--name", "ci", "--role", "viewer", "--json"], &[]).await;
    assert_eq!((out.code, out.json()["name"].as_str()), (Some(0), Some("ci")), "{}", out.stderr);
    let out = cli(&env, &["tokens", "revoke", "ci", "--json"], &[]).await;
    let revoked = out.json();
    assert_eq!(revoked["name"], "ci");
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let out = cli(&env, &["queue", "pause", "demo", "--json"], &[]).await;
    assert_eq!(out.json(), json!({ "queue": "demo", "paused": true, "changed": true }));
    let args = ["schedule", "set", "demo_diamond", "--integration", "acme", "--cron", "0 2 * * *", "--json"];
    let out = cli(&env, &args, &[("SYNCFLEET_ACTOR", "deploy-bot")]).await;
    let stored = out.json();
    assert_eq!((stored["cron"].as_str(), stored["updated_by"].as_str()), (Some("0 2 * * *"), Some("deploy-bot")));

    for shell in ["bash", "zsh", "fish"] {
        let out = cli(&env, &["completions", shell], &[]).await;
        assert_eq!(out.code, Some(0), "{shell}: {}", out.stderr);
        assert!(out.stdout.contains("syncfleet") && out.stdout.contains("trigger"), "{shell}");
    }
    let out = cli(&env, &["completions", "tcsh"], &[]).await;
    assert_eq!(out.code, Some(2));

    let out = cli(&env, &["demo", "--chain", "demo_ping"], &[("SYNCFLEET__ENVIRONMENT", "production")]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("refuses to run with environment = \"production\""), "{}", out.stderr);
    let runs: i64 = env.value("SELECT count(*) FROM chain_runs").await;
    assert_eq!(runs, 0, "the demo ran nothing");

    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_fit_80_and_120_columns_and_every_shard_note_is_shown() {
    let env = TestEnv::with_top_level("min_interval_secs = 60", "").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let worker = env.spawn_worker("w").await;
    let out = cli(&env, &["trigger", "demo_fanout", "--integration", "acme", "--wait", "--json"], &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let id = out.json()["id"].as_str().unwrap().to_owned();
    // Each shard of `fan` notes a long guard decision of its own, as a scoped sweep does.
    sqlx::query(
        "UPDATE step_runs SET guard = 'enrollments: 31 of 32 course(s) swept, 0 deactivated; blocked: course '
                || (1000 + shard) || ': fetch returned nothing while 17 rows are active (shard-note-' || shard || ')'
          WHERE run_id = $1::text::uuid AND step = 'fan'",
    )
    .bind(&id)
    .execute(&env.pool)
    .await
    .unwrap();
    let args = ["schedule", "set", "demo_fanout", "--integration", "acme", "--cron", "15 2 * * 1-5", "--tz"];
    let tail = ["America/Argentina/Buenos_Aires", "--step-mode", "fan=full"];
    let out = cli(&env, &[&args[..], &tail[..]].concat(), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    let json = cli(&env, &["runs", "show", &id, "--json"], &[]).await.json();
    let fan = json["steps"].as_array().unwrap().iter().find(|s| s["step"] == "fan").unwrap().clone();
    let guard = fan["guard"].as_str().unwrap();
    assert_eq!(guard.lines().count(), 8, "one line per shard: {guard}");
    assert!(guard.lines().enumerate().all(|(i, l)| l.starts_with(&format!("shard {i}: "))), "{guard}");

    for width in [80usize, 120] {
        let columns = width.to_string();
        for args in [&["runs", "show", &id][..], &["queues"], &["workers"], &["schedule", "get"], &["runs"]] {
            let out = cli(&env, args, &[("COLUMNS", &columns)]).await;
            assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
            let widest = out.stdout.lines().map(|l| l.chars().count()).max().unwrap_or(0);
            assert!(widest <= width, "{args:?} at {width} columns prints {widest}:\n{}", out.stdout);
        }
        let shown = cli(&env, &["runs", "show", &id], &[("COLUMNS", &columns)]).await.stdout;
        let words = shown.split_whitespace().collect::<Vec<_>>().join(" ");
        for shard in 0..8 {
            assert!(words.contains(&format!("(shard-note-{shard})")), "shard {shard}'s note at {width}:\n{shown}");
        }
        assert!(words.contains("fan ×8"), "{shown}");
        if width == 120 {
            let header = |l: &&str| l.contains("step") && l.contains("fetched") && l.contains("throttled");
            assert!(shown.lines().any(|l| header(&l)), "the steps stay one table at 120 columns:\n{shown}");
        }
        let queues = cli(&env, &["queues"], &[("COLUMNS", &columns)]).await.stdout;
        assert!(queues.lines().any(|l| l.contains("runnable") && l.contains("workers")), "a table:\n{queues}");
    }
    // Without a width (a pipe), the table is left whole.
    let out = cli(&env, &["runs", "show", &id], &[]).await;
    assert!(out.stdout.lines().any(|l| l.contains("notes")), "{}", out.stdout);

    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthcheck_url_asks_only_the_process() {
    let env = TestEnv::new("").await;
    let producer = env.spawn_producer().await;
    let base = format!("http://{}", producer.addr.unwrap());
    // A probe needs no database or Redis config: a config file that does not exist is never read.
    let no_config = [("SYNCFLEET_CONFIG", "/nonexistent/syncfleet.toml")];
    let probe = |args: Vec<String>| async move {
        let args = args.iter().map(String::as_str).collect::<Vec<_>>();
        run_cli(tokio::process::Command::new(binary("syncfleet")), &args, &no_config).await
    };

    let ready = format!("{base}/readyz");
    let out = probe(vec!["healthcheck".into(), "--url".into(), ready.clone()]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("200"), "{}", out.stdout);
    let out = probe(vec!["healthcheck".into(), "--url".into(), ready.clone(), "--json".into()]).await;
    assert_eq!((out.code, out.json()["ok"].as_bool(), out.json()["status"].as_u64()), (Some(0), Some(true), Some(200)));

    // An answer other than 2xx: exit 1, naming the URL and the status.
    let missing = format!("{base}/no-such-page");
    let out = probe(vec!["healthcheck".into(), "--url".into(), missing.clone()]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&missing) && out.stderr.contains("404"), "{}", out.stderr);

    // Nothing listening: exit 5, naming the URL.
    let closed = format!("http://127.0.0.1:{}/readyz", closed_port());
    let out = probe(vec!["healthcheck".into(), "--url".into(), closed.clone()]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("{closed} did not answer")), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    // A bad URL is named as the flag's.
    let out = probe(vec!["healthcheck".into(), "--url".into(), "127.0.0.1:8080/readyz".into()]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("--url `127.0.0.1:8080/readyz`"), "{}", out.stderr);

    // Without --url the config is needed, and its absence is said.
    let out = probe(vec!["healthcheck".into()]).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("/nonexistent/syncfleet.toml"), "{}", out.stderr);

    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn output_into_a_closed_pipe_ends_quietly() {
    use std::process::Stdio;
    for shell in ["bash", "zsh", "fish"] {
        let args = ["completions", shell];
        // As `syncfleet completions bash | head -0`: the reader is gone before the CLI writes.
        let mut child = tokio::process::Command::new(binary("syncfleet"))
            .args(args)
            .env("SYNCFLEET_CONFIG", "/nonexistent/syncfleet.toml")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the CLI runs (cargo build -p syncfleet-cli first)");
        drop(child.stdout.take());
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("the CLI ends once its reader is gone")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert!(out.status.code().is_none_or(|c| c == 0), "{args:?}: {:?} {stderr}", out.status);
    }
}
