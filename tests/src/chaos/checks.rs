//! The checks every chaos test ends with (see the module above): the step and write logs, the
//! fleet report read from them, and the comparison of the database with the sandbox.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use syncfleet_shared::ids::RunId;
use syncfleet_store::{self as store, views::RunView};

use crate::{Sandbox, TestEnv};

/// Installs the step log on `step_runs` and the write log on each of `tables` (tables with an
/// `integration_id`), in the test's own database. Run before any worker starts.
pub async fn install_logs(pool: &PgPool, tables: &[&str]) {
    sqlx::raw_sql(STEP_LOG).execute(pool).await.expect("install the step log");
    for table in tables {
        let sql = format!(
            "CREATE TRIGGER chaos_write_log AFTER INSERT OR UPDATE ON {table}
             FOR EACH ROW EXECUTE FUNCTION chaos_log_write('{table}');"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(pool).await.expect("install the write log");
    }
}

/// Every status change of a step row, and every row written to a watched table, with the time of
/// the statement (`clock_timestamp()`); a rolled-back change leaves no line.
pub const STEP_LOG: &str = r#"
CREATE TABLE chaos_step_log (
    seq BIGSERIAL PRIMARY KEY,
    step_run_id BIGINT NOT NULL,
    run_id UUID NOT NULL,
    entity_key TEXT NOT NULL,
    job_id TEXT,
    worker TEXT,
    attempts INT NOT NULL,
    old_status TEXT NOT NULL,
    new_status TEXT NOT NULL,
    error TEXT,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION chaos_log_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO chaos_step_log (step_run_id, run_id, entity_key, job_id, worker, attempts, old_status, new_status, error)
        VALUES (NEW.id, NEW.run_id, NEW.entity_key, NEW.job_id, COALESCE(NEW.worker, OLD.worker), NEW.attempts,
                OLD.status, NEW.status, NEW.error);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER chaos_step_log AFTER UPDATE OF status ON step_runs
    FOR EACH ROW EXECUTE FUNCTION chaos_log_step();
CREATE TABLE chaos_write_log (
    seq BIGSERIAL PRIMARY KEY,
    tbl TEXT NOT NULL,
    integration_id BIGINT NOT NULL,
    external_id TEXT NOT NULL,
    app TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION chaos_log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_write_log (tbl, integration_id, external_id, app)
    VALUES (TG_ARGV[0], NEW.integration_id, NEW.external_id, current_setting('application_name'));
    RETURN NULL;
END $$;
"#;

/// Running intervals: one per attempt, from the claim to the next status change of the row.
const ATTEMPTS: &str = "
    WITH l AS (
        SELECT seq, step_run_id, run_id, entity_key, worker, new_status, at,
               lead(at) OVER (PARTITION BY step_run_id ORDER BY seq) AS ended
          FROM chaos_step_log)
    SELECT seq, step_run_id, run_id, entity_key, worker, at AS began, COALESCE(ended, 'infinity') AS ended
      FROM l WHERE new_status = 'running'";

/// What the fleet checks found; each list must be empty.
#[derive(Debug, Default)]
pub struct FleetReport {
    /// Pairs of attempts on one entity whose running intervals overlap.
    pub overlaps: Vec<String>,
    /// Step rows that reached `succeeded` more than once.
    pub double_completions: Vec<String>,
    /// Step rows whose attempt count differs from their running intervals.
    pub unaccounted_attempts: Vec<String>,
    /// Writes that fell outside every running attempt of their writer on that integration's step.
    pub stray_writes: Vec<String>,
    /// Counts, for the record: attempts, attempts that ended without success, writes checked.
    pub attempts: i64,
    pub lost_attempts: i64,
    pub writes: i64,
}

impl FleetReport {
    /// Panics with the findings unless every list is empty.
    pub fn assert_clean(&self) {
        assert!(
            self.overlaps.is_empty()
                && self.double_completions.is_empty()
                && self.unaccounted_attempts.is_empty()
                && self.stray_writes.is_empty(),
            "fleet invariants broken: {self:#?}"
        );
    }
}

/// Reads the step and write logs; see [`FleetReport`]. `write_step` is the step that writes the
/// watched tables (e.g. `pull`).
pub async fn fleet_report(pool: &PgPool, write_step: &str) -> FleetReport {
    let overlaps = texts(
        pool,
        &format!(
            "WITH a AS ({ATTEMPTS})
             SELECT format('%s: %s %s .. %s overlaps %s %s .. %s', a.entity_key, a.worker, a.began, a.ended,
                           b.worker, b.began, b.ended)
               FROM a JOIN a b ON a.entity_key = b.entity_key AND a.seq < b.seq
                              AND a.began < b.ended AND b.began < a.ended
              LIMIT 20"
        ),
        "",
    )
    .await;
    let mut r = FleetReport { overlaps, ..FleetReport::default() };
    let doubles: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT step_run_id, count(*) FROM chaos_step_log WHERE new_status = 'succeeded'
          GROUP BY step_run_id HAVING count(*) > 1 LIMIT 20",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    r.double_completions = doubles.into_iter().map(|d| format!("step run {} succeeded {} times", d.0, d.1)).collect();
    let unaccounted: Vec<(i64, i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT s.id, s.attempts, count(a.seq) FROM step_runs s LEFT JOIN ({ATTEMPTS}) a ON a.step_run_id = s.id
          GROUP BY s.id, s.attempts HAVING s.attempts <> count(a.seq) LIMIT 20"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    r.unaccounted_attempts =
        unaccounted.into_iter().map(|u| format!("step run {}: {} attempts, {} claims", u.0, u.1, u.2)).collect();
    // A write by worker process `app` (its connections' application_name, the prefix of its
    // worker name) must fall inside one of its attempts of the writing step for that integration.
    r.stray_writes = texts(
        pool,
        &format!(
            "WITH a AS ({ATTEMPTS})
             SELECT format('%s of integration %s by %s at %s; its attempts: %s', w.tbl, w.integration_id, w.app, w.at,
                    (SELECT string_agg(format('%s %s .. %s', a.worker, a.began, a.ended), '; ' ORDER BY a.seq)
                       FROM a JOIN step_runs s ON s.id = a.step_run_id JOIN chain_runs r ON r.id = s.run_id
                      WHERE s.step = $1 AND r.integration_id = w.integration_id))
               FROM chaos_write_log w
              WHERE NOT EXISTS (
                    SELECT 1 FROM a JOIN step_runs s ON s.id = a.step_run_id JOIN chain_runs r ON r.id = s.run_id
                     WHERE s.step = $1 AND r.integration_id = w.integration_id
                       AND a.worker LIKE w.app || '-%' AND w.at >= a.began AND w.at <= a.ended)
              ORDER BY w.seq LIMIT 20"
        ),
        write_step,
    )
    .await;
    let (attempts, lost): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE old_status = 'running'),
                count(*) FILTER (WHERE old_status = 'running' AND new_status <> 'succeeded')
           FROM chaos_step_log",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (r.attempts, r.lost_attempts) = (attempts, lost);
    r.writes = sqlx::query_scalar("SELECT count(*) FROM chaos_write_log").fetch_one(pool).await.unwrap();
    r
}

/// One text column of `sql` (which may use `$1`, bound to `arg`).
async fn texts(pool: &PgPool, sql: &str, arg: &str) -> Vec<String> {
    let q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()));
    let q = if sql.contains("$1") { q.bind(arg) } else { q };
    q.fetch_all(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Attempts the reconciler took from a worker that stopped sending heartbeats (killed, or cut off).
pub async fn reaped_attempts(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM chaos_step_log WHERE old_status = 'running' AND error LIKE 'worker % lost: %'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The running steps (entity key, task id) and, for each, who holds its entity lease in Redis now.
pub async fn running_leases(env: &TestEnv, running: &[(String, String)]) -> Vec<(String, String, Option<String>)> {
    let mut conn = env.ops.queues.connection();
    let mut out = vec![];
    for (entity, job) in running {
        let key = format!("{}:lease:{entity}", env.config.redis.namespace);
        let holder: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
        out.push((entity.clone(), job.clone(), holder));
    }
    out
}

/// Waits until none of `runs` is active, then returns their views.
pub async fn wait_runs(env: &TestEnv, runs: &[RunId], limit: Duration) -> Vec<RunView> {
    let ids: Vec<uuid::Uuid> = runs.iter().map(|r| r.0).collect();
    let start = Instant::now();
    loop {
        let active: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM chain_runs WHERE id = ANY($1) AND status IN ('queued', 'running')",
        )
        .bind(&ids)
        .fetch_one(&env.pool)
        .await;
        if active.as_ref().is_ok_and(|n| *n == 0) {
            break;
        }
        assert!(start.elapsed() < limit, "runs still active after {limit:?}: {active:?} of {}", ids.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut views = vec![];
    for r in runs {
        views.push(store::views::run(&env.pool, *r).await.expect("run view"));
    }
    views
}

/// Every run completed, each step of it succeeded.
pub fn assert_all_completed(views: &[RunView]) {
    for v in views {
        assert_eq!(v.status, "completed", "{v:#?}");
        assert!(v.steps.iter().all(|s| s.status == "succeeded"), "{v:#?}");
    }
}

/// Every fault of the sandbox's ERP API off.
pub async fn clear_erp_faults(sandbox: &Sandbox) {
    let off = json!({ "latency_ms": 0, "rate_per_sec": null, "error_5xx_share": 0.0, "timeout_share": 0.0,
                      "truncate_page": false, "empty_list": false, "malformed_share": 0.0, "malformed_ids": [] });
    sandbox.faults("erp", off).await;
}

/// What the sandbox's ERP API serves now, one line per item (`id|sku|name|quantity|warehouse|updated
/// epoch`) in id order. Reads with the faults off.
pub async fn sandbox_items(sandbox: &Sandbox) -> Vec<(i64, String)> {
    clear_erp_faults(sandbox).await;
    let http = reqwest::Client::new();
    let mut out = vec![];
    loop {
        let url = format!("{}/items?offset={}&limit=1000", sandbox.handle.erp_url(), out.len());
        let body: Value = http.get(url).bearer_auth("erp-token").send().await.unwrap().json().await.unwrap();
        let items = body["items"].as_array().expect("items");
        for i in items {
            let updated = chrono::DateTime::parse_from_rfc3339(i["updated_at"].as_str().unwrap()).unwrap().timestamp();
            let id = i["id"].as_i64().unwrap();
            let line = format!(
                "{id}|{}|{}|{}|{}|{updated}",
                i["sku"].as_str().unwrap(),
                i["name"].as_str().unwrap(),
                i["quantity"].as_i64().unwrap(),
                i["warehouse"].as_str().unwrap()
            );
            out.push((id, line));
        }
        if items.is_empty() || out.len() as i64 >= body["total"].as_i64().unwrap() {
            return out;
        }
    }
}

/// The same lines from the active rows of `table` for `integration`.
const TABLE_LINES: &str = "
    SELECT external_id::bigint AS id,
           external_id || '|' || sku || '|' || name || '|' || quantity || '|' || warehouse || '|'
               || extract(epoch FROM source_updated_at)::bigint AS line
      FROM {table} WHERE integration_id = (SELECT id FROM integrations WHERE name = $1) AND is_active";

/// Asserts that the active rows of `table` for each integration equal what the sandbox serves:
/// the same count and the same md5 over the synced columns (PostgreSQL's `md5` on both sides'
/// lines), and that no row of an item the sandbox still serves is inactive.
pub async fn assert_matches_sandbox(env: &TestEnv, sandbox: &Sandbox, table: &str, integrations: &[String]) {
    let upstream = sandbox_items(sandbox).await;
    let text: String = upstream.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n");
    let (want_md5,): (String,) = sqlx::query_as("SELECT md5($1)").bind(&text).fetch_one(&env.pool).await.unwrap();
    let ids: Vec<String> = upstream.iter().map(|(id, _)| id.to_string()).collect();
    let lines = TABLE_LINES.replace("{table}", table);
    for name in integrations {
        let sql = format!("SELECT count(*), COALESCE(md5(string_agg(line, E'\\n' ORDER BY id)), '') FROM ({lines}) t");
        let (count, md5): (i64, String) =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(name).fetch_one(&env.pool).await.unwrap();
        let wrongly_inactive: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE integration_id = (SELECT id FROM integrations WHERE name = $1)
               AND NOT is_active AND external_id = ANY($2)"
        )))
        .bind(name)
        .bind(&ids)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(wrongly_inactive, 0, "{name}: rows of items the upstream still serves are inactive");
        if (count, &md5) != (upstream.len() as i64, &want_md5) {
            let ours: Vec<(i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(lines.clone())).bind(name).fetch_all(&env.pool).await.unwrap();
            let ours: std::collections::BTreeMap<i64, String> = ours.into_iter().collect();
            let theirs: std::collections::BTreeMap<i64, String> = upstream.iter().cloned().collect();
            let differing: Vec<_> = theirs
                .iter()
                .filter(|(id, l)| ours.get(id) != Some(l))
                .map(|(id, l)| (id, l, ours.get(id)))
                .chain(ours.iter().filter(|(id, _)| !theirs.contains_key(id)).map(|(id, l)| (id, l, None)))
                .take(10)
                .collect();
            panic!(
                "{name}: {count} active rows (md5 {md5}) but the sandbox serves {} (md5 {want_md5}); first differences \
                 (id, sandbox or ours, ours): {differing:?}",
                upstream.len()
            );
        }
    }
}
