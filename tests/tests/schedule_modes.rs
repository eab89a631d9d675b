//! Schedules that carry their mode (issue #19, items 1 and 2): a schedule is (chain, integration,
//! mode, step modes) with an interval or a crontab expression read in an IANA time zone; several per
//! (chain, integration); stored, configured and pack default schedules are listed with their
//! source; each fires with its own mode; and the partner pack's nightly full run finds a deletion
//! in Northpass with no manual trigger.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Timelike, Utc, Weekday};
use serde_json::{Value, json};
use syncfleet_producer::scheduler::{Fired, Scheduler};
use syncfleet_shared::{chain::Mode, ids::RunId};
use syncfleet_tests::{Sandbox, TestEnv, partner::acme_toml};

const PARTNER: &str = r#"
[integrations.acme]
pack = "partner"
northpass = { base_url = "http://127.0.0.1:9/v2", secret_file = "np-key" }
impartner = { base_url = "http://127.0.0.1:9/api/objects/v1", secret_file = "prm-key" }

[[schedules.partner_cleanup.acme]]
cron = "30 5 * * 0"

[[schedules.partner_cleanup.acme]]
mode = "full"
cron = "0 6 1 * *"
tz = "America/New_York"
"#;

/// The last Sunday of `month` in `year`.
fn last_sunday(year: i32, month: u32) -> NaiveDate {
    let mut d = NaiveDate::from_ymd_opt(year, month + 1, 1).unwrap().pred_opt().unwrap();
    while d.weekday() != Weekday::Sun {
        d = d.pred_opt().unwrap();
    }
    d
}

/// Berlin's offset from UTC at `t`, by the EU rule (summer time from the last Sunday of March to
/// the last Sunday of October, changing at 01:00 UTC): written out here, not asked of a zone table.
fn berlin_offset_hours(t: DateTime<Utc>) -> i64 {
    let y = t.year();
    let start = Utc.from_utc_datetime(&last_sunday(y, 3).and_hms_opt(1, 0, 0).unwrap());
    let end = Utc.from_utc_datetime(&last_sunday(y, 10).and_hms_opt(1, 0, 0).unwrap());
    if t >= start && t < end { 2 } else { 1 }
}

/// The next 02:00 in Berlin strictly after `now`, in UTC.
fn next_two_am_berlin(now: DateTime<Utc>) -> DateTime<Utc> {
    let mut day = now.date_naive() - chrono::Duration::days(1);
    loop {
        // 02:00 local is 01:00 UTC in winter and 00:00 UTC in summer (no change happens at 02:00
        // local on a changeover day: the EU changes at 01:00 UTC, 02:00 / 03:00 local).
        let guess = Utc.from_utc_datetime(&day.and_hms_opt(2, 0, 0).unwrap());
        let at = guess - chrono::Duration::hours(berlin_offset_hours(guess - chrono::Duration::hours(1)));
        if at > now {
            return at;
        }
        day = day.succ_opt().unwrap();
    }
}

fn find<'a>(all: &'a Value, chain: &str, mode: &str) -> &'a Value {
    all.as_array()
        .unwrap()
        .iter()
        .find(|s| s["chain"] == chain && s["integration"] == "acme" && s["mode"] == mode)
        .unwrap_or_else(|| panic!("{chain} {mode} in {all:#}"))
}

async fn cli_json(env: &TestEnv, args: &[&str]) -> Value {
    let out = env.cli().args(args).output().await.unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_set_with_a_mode_and_a_time_zone_shows_its_next_run_beside_config_and_pack_schedules() {
    let env = TestEnv::new(PARTNER).await;

    // Before anything is stored: the pack's defaults (the nightly full run among them) and the two
    // configured cleanup schedules, each with its source, mode, cron and zone.
    let all = cli_json(&env, &["schedule", "get", "--json"]).await;
    let nightly = find(&all, "partner_daily", "full");
    assert_eq!(
        (nightly["source"].as_str(), nightly["cron"].as_str(), nightly["tz"].as_str()),
        (Some("pack"), Some("0 2 * * *"), Some("UTC")),
        "{nightly:#}"
    );
    assert_eq!(nightly["step_modes"], json!({ "sync_enrollments": "incremental", "sync_to_impartner": "incremental" }));
    let next: DateTime<Utc> = serde_json::from_value(nightly["next_at"].clone()).unwrap();
    assert_eq!((next.hour(), next.minute()), (2, 0));
    let day = find(&all, "partner_daily", "incremental");
    assert_eq!((day["source"].as_str(), day["cron"].as_str()), (Some("pack"), Some("30 5-21/4 * * *")));
    let weekly = find(&all, "partner_cleanup", "incremental");
    assert_eq!((weekly["source"].as_str(), weekly["tz"].as_str()), (Some("config"), Some("UTC")));
    let next: DateTime<Utc> = serde_json::from_value(weekly["next_at"].clone()).unwrap();
    assert_eq!((next.weekday(), next.hour(), next.minute()), (Weekday::Sun, 5, 30), "0 is Sunday");
    let monthly = find(&all, "partner_cleanup", "full");
    assert_eq!((monthly["source"].as_str(), monthly["tz"].as_str()), (Some("config"), Some("America/New_York")));
    let local: DateTime<chrono::FixedOffset> =
        DateTime::parse_from_rfc3339(monthly["next_run"].as_str().unwrap()).unwrap();
    assert_eq!((local.day(), local.hour()), (1, 6), "06:00 on the 1st, New York time: {monthly:#}");
    assert!([-4 * 3600, -5 * 3600].contains(&local.offset().local_minus_utc()), "{local}");

    // Stored through the CLI: full, 02:00 in Berlin, replacing the pack's nightly default.
    let before = Utc::now();
    let out = env
        .cli()
        .args(["schedule", "set", "partner_daily", "--integration", "acme", "--mode", "full"])
        .args(["--cron", "0 2 * * *", "--tz", "Europe/Berlin", "--step-mode", "sync_to_impartner=incremental"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("full schedule of partner_daily for acme stored; next run"), "{stdout}");
    let after = Utc::now();

    let all = cli_json(&env, &["schedule", "get", "--json"]).await;
    let stored = find(&all, "partner_daily", "full");
    assert_eq!(
        (stored["source"].as_str(), stored["cron"].as_str(), stored["tz"].as_str()),
        (Some("stored"), Some("0 2 * * *"), Some("Europe/Berlin")),
        "{stored:#}"
    );
    assert_eq!(stored["step_modes"], json!({ "sync_to_impartner": "incremental" }));
    let next: DateTime<Utc> = serde_json::from_value(stored["next_at"].clone()).unwrap();
    let expected = next_two_am_berlin(after);
    assert!(next == expected || next == next_two_am_berlin(before), "{next} != {expected}");
    let local = DateTime::parse_from_rfc3339(stored["next_run"].as_str().unwrap()).unwrap();
    assert_eq!((local.hour(), local.minute()), (2, 0), "{local}");
    assert_eq!(local.offset().local_minus_utc() as i64, berlin_offset_hours(next) * 3600, "{local}");
    assert!(stored["updated_by"].as_str().is_some_and(|by| by.starts_with("cli:")), "{stored:#}");
    // The incremental default of the same chain stays, from the pack; each mode is one schedule.
    assert_eq!(find(&all, "partner_daily", "incremental")["source"], "pack");
    let daily = all.as_array().unwrap().iter().filter(|s| s["chain"] == "partner_daily").count();
    assert_eq!(daily, 2, "{all:#}");

    // The text listing shows mode, zone and the local next run too.
    let out = env.cli().args(["schedule", "get", "partner_daily"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Europe/Berlin") && text.contains("full") && text.contains("T02:00:00+0"), "{text}");

    // Refused: an unknown zone, a step the chain does not have, an hour that does not exist.
    for (args, message) in [
        (vec!["--cron", "0 2 * * *", "--tz", "Mars/Olympus"], "unknown time zone"),
        (vec!["--cron", "0 2 * * *", "--step-mode", "nope=full"], "has no step `nope`"),
        (vec!["--cron", "0 25 * * *", "--tz", "UTC"], "bad cron"),
    ] {
        let out = env
            .cli()
            .args(["schedule", "set", "partner_daily", "--integration", "acme", "--mode", "full"])
            .args(&args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message), "{args:?}: {stderr}");
    }

    // Switched off for one mode: only that mode's schedule goes; without a mode, every one.
    let out = env
        .cli()
        .args(["schedule", "set", "partner_daily", "--integration", "acme", "--mode", "incremental", "--disable"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all = cli_json(&env, &["schedule", "get", "partner_daily", "--json"]).await;
    assert_eq!(find(&all, "partner_daily", "full")["enabled"], true);
    assert_eq!(find(&all, "partner_daily", "incremental")["enabled"], false);

    // Rows stored before the modes came are incremental (the migration's default).
    let default: String = sqlx::query_scalar(
        "SELECT column_default FROM information_schema.columns WHERE table_name = 'schedules' AND column_name = 'mode'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(default.contains("'incremental'"), "{default}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedules_of_one_chain_fire_each_in_its_own_mode() {
    let toml = r#"
[[schedules.demo_diamond.acme]]
interval_secs = 3600

[[schedules.demo_diamond.acme]]
mode = "full"
cron = "0 2 * * *"
tz = "Europe/Berlin"
step_modes = { right = "incremental" }
"#;
    let env = TestEnv::new(toml).await;
    env.demo_integration("acme", json!({ "step_ms": 0, "fail": { "right": "never" } })).await;
    let mut scheduler = Scheduler::new(env.ops.clone());
    let t = |h: u32, m: u32, s: u32| Utc.with_ymd_and_hms(2026, 12, 8, h, m, s).unwrap();
    let created = |f: &[Fired]| -> Vec<RunId> {
        f.iter()
            .filter_map(|f| match f {
                Fired::Created(id) => Some(RunId(uuid::Uuid::parse_str(id).unwrap())),
                _ => None,
            })
            .collect()
    };

    assert!(scheduler.tick_once(t(0, 59, 0) - chrono::Duration::hours(1), false).await.unwrap().is_empty());
    // 00:00 UTC: the hour's incremental tick.
    let fired = scheduler.tick_once(t(0, 0, 1), false).await.unwrap();
    let first = created(&fired);
    assert_eq!(first.len(), 1, "{fired:?}");
    // 01:00 UTC = 02:00 in Berlin (winter): the full tick and the hour's tick together. The first run
    // is still active (no worker yet): the incremental tick is skipped, the full one waits.
    let fired = scheduler.tick_once(t(1, 0, 1), false).await.unwrap();
    assert_eq!(fired, [Fired::PreviousActive], "the incremental tick skipped; the full tick waits");
    let worker = env.spawn_worker("w").await;
    let view = env.wait(first[0], Duration::from_secs(30)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    // The next pass, still within the 01:00 tick: the full run starts.
    let fired = scheduler.tick_once(t(1, 0, 30), false).await.unwrap();
    let second = created(&fired);
    assert_eq!(second.len(), 1, "{fired:?}");
    let view = env.wait(second[0], Duration::from_secs(30)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    // Once fired, the tick does not fire again.
    assert!(scheduler.tick_once(t(1, 0, 40), false).await.unwrap().is_empty());
    worker.stop().await;

    let runs: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT mode, tick_key, trigger_kind FROM chain_runs WHERE chain = 'demo_diamond' ORDER BY created_at",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let at = |h: u32| t(h, 0, 0).timestamp();
    assert_eq!(
        runs,
        [
            ("incremental".to_owned(), format!("demo_diamond:acme:{}", at(0)), "schedule".to_owned()),
            ("full".to_owned(), format!("demo_diamond:acme:{}:full", at(1)), "schedule".to_owned()),
        ]
    );
    // The full run's steps read in full, but the one the schedule names.
    let steps: Vec<(String, String)> = sqlx::query_as(
        "SELECT step, mode FROM step_runs WHERE run_id = $1 AND step IN ('start', 'left', 'right') ORDER BY step",
    )
    .bind(second[0].0)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let want = [("left", "full"), ("right", "incremental"), ("start", "full")];
    assert_eq!(steps, want.map(|(s, m)| (s.to_owned(), m.to_owned())));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_producer_fires_two_per_second_schedules_each_in_its_mode() {
    let toml = r#"
[[schedules.demo_diamond.acme]]
cron = "*/2 * * * * *"

[[schedules.demo_diamond.acme]]
mode = "full"
cron = "1-59/2 * * * * *"
"#;
    let env = TestEnv::new(toml).await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let modes: Vec<(String, String)> = env
        .eventually(Duration::from_secs(30), "runs of both modes", || async {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT mode, tick_key FROM chain_runs WHERE trigger_kind = 'schedule'")
                    .fetch_all(&env.pool)
                    .await
                    .unwrap();
            let both = ["full", "incremental"].iter().all(|m| rows.iter().any(|r| r.0 == *m));
            both.then_some(rows)
        })
        .await;
    producer.stop().await;
    worker.stop().await;
    for (mode, key) in &modes {
        let tick: i64 = key.split(':').nth(2).unwrap().parse().unwrap();
        match mode.as_str() {
            "full" => assert!(key.ends_with(":full") && tick % 2 == 1, "{key}"),
            _ => assert!(tick % 2 == 0 && !key.ends_with(":full"), "{key}"),
        }
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_deleted_in_northpass_is_inactive_after_the_default_nightly_run() {
    let sandbox = Sandbox::start().await;
    let env = TestEnv::new(&acme_toml(&sandbox, "", "")).await;
    let worker = env.spawn_worker("w").await;
    // The first load (a new integration's initial sync).
    let first = env.run_to_end("partner_daily", "acme", Mode::Full, false).await;
    assert_eq!(first.status, "completed", "{first:#?}");
    let deleted = sandbox.mutate("northpass", "people", json!({ "delete": 1 })).await;
    let gone = deleted["deleted"][0].as_str().expect("a deleted person").to_owned();
    let active: bool = sqlx::query_scalar("SELECT is_active FROM partner_lms_users WHERE external_id = $1")
        .bind(&gone)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(active, "the person was synced before the deletion");

    // The pack's default schedules, driven through one day: the day's incremental runs leave the
    // person active (no sweep); 02:00 UTC fires the nightly full run, with no manual trigger.
    let mut scheduler = Scheduler::new(env.ops.clone());
    let day = |h: u32, m: u32, s: u32| Utc.with_ymd_and_hms(2026, 12, 8, h, m, s).unwrap();
    assert!(scheduler.tick_once(day(21, 29, 0) - chrono::Duration::days(1), false).await.unwrap().is_empty());
    let fired = scheduler.tick_once(day(21, 30, 1) - chrono::Duration::days(1), false).await.unwrap();
    let [Fired::Created(id)] = fired.as_slice() else { panic!("{fired:?}") };
    let view = env.wait(RunId(uuid::Uuid::parse_str(id).unwrap()), Duration::from_secs(120)).await;
    assert_eq!((view.status.as_str(), view.mode.as_str()), ("completed", "incremental"), "{view:#?}");
    let active: bool = sqlx::query_scalar("SELECT is_active FROM partner_lms_users WHERE external_id = $1")
        .bind(&gone)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(active, "an incremental read does not see a deletion");

    let mut scheduler = Scheduler::new(env.ops.clone());
    assert!(scheduler.tick_once(day(1, 59, 59), false).await.unwrap().is_empty());
    let fired = scheduler.tick_once(day(2, 0, 1), false).await.unwrap();
    let [Fired::Created(id)] = fired.as_slice() else { panic!("{fired:?}") };
    let run = RunId(uuid::Uuid::parse_str(id).unwrap());
    let view = env.wait(run, Duration::from_secs(120)).await;
    assert_eq!((view.status.as_str(), view.mode.as_str()), ("completed", "full"), "{view:#?}");
    let (kind, tick_key): (String, String) =
        sqlx::query_as("SELECT trigger_kind, tick_key FROM chain_runs WHERE id = $1")
            .bind(run.0)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (kind.as_str(), tick_key),
        ("schedule", format!("partner_daily:acme:{}:full", day(2, 0, 0).timestamp()))
    );
    let (active, deactivated): (bool, i64) = sqlx::query_as(
        "SELECT u.is_active, (SELECT deactivated FROM step_runs WHERE run_id = $2 AND step = 'sync_users')
           FROM partner_lms_users u WHERE u.external_id = $1",
    )
    .bind(&gone)
    .bind(run.0)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(!active, "the nightly full run swept the deleted person");
    assert_eq!(deactivated, 1);
    // Every person Northpass still serves is active; none other.
    let upstream = syncfleet_tests::partner::northpass_all(&sandbox, "/people").await;
    let local: i64 = sqlx::query_scalar("SELECT count(*) FROM partner_lms_users WHERE is_active")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(local, upstream.len() as i64);
    worker.stop().await;
    env.finish().await;
}

/// Migration `0016` on rows stored before it: the table is put back in its old shape (the columns
/// and key of `0001`), old rows are stored, and the migration runs again. An enabled row becomes an
/// incremental schedule in UTC; a row switched off keeps switching off every schedule of its chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_stored_before_the_modes_migrate_as_incremental() {
    let env = TestEnv::new(PARTNER).await;
    let owner = env.owner_pool().await;
    for sql in [
        "ALTER TABLE schedules DROP CONSTRAINT schedules_all_only_off",
        "ALTER TABLE schedules DROP CONSTRAINT schedules_pkey",
        "ALTER TABLE schedules DROP COLUMN mode, DROP COLUMN step_modes, DROP COLUMN tz",
        "ALTER TABLE schedules ADD PRIMARY KEY (chain, integration_id)",
        "DELETE FROM _sqlx_migrations WHERE version = 16",
        "INSERT INTO schedules (chain, integration_id, cron, enabled, updated_by)
         SELECT 'partner_leads', id, '0 0 9 * * *', true, 'old' FROM integrations WHERE name = 'acme'",
        "INSERT INTO schedules (chain, integration_id, interval_secs, enabled, updated_by)
         SELECT 'partner_cleanup', id, 3600, false, 'old' FROM integrations WHERE name = 'acme'",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&owner).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    syncfleet_store::migrate(&owner).await.unwrap();

    let rows: Vec<(String, String, String, bool)> =
        sqlx::query_as("SELECT chain, mode, tz, enabled FROM schedules ORDER BY chain")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let want = [("partner_cleanup", "all", "UTC", false), ("partner_leads", "incremental", "UTC", true)];
    assert_eq!(rows, want.map(|(c, m, t, e)| (c.to_owned(), m.to_owned(), t.to_owned(), e)));

    let all = cli_json(&env, &["schedule", "get", "--json"]).await;
    let leads = find(&all, "partner_leads", "incremental");
    assert_eq!((leads["source"].as_str(), leads["cron"].as_str()), (Some("stored"), Some("0 0 9 * * *")));
    let next: DateTime<Utc> = serde_json::from_value(leads["next_at"].clone()).unwrap();
    assert_eq!((next.hour(), next.minute(), next.second()), (9, 0, 0), "six fields: seconds first");
    assert_eq!(find(&all, "partner_leads", "full")["source"], "pack", "the weekly full default stays");
    let cleanup: Vec<&Value> = all.as_array().unwrap().iter().filter(|s| s["chain"] == "partner_cleanup").collect();
    assert_eq!(cleanup.len(), 1, "switched off, as before: {cleanup:#?}");
    assert_eq!((cleanup[0]["enabled"].as_bool(), cleanup[0]["mode"].as_str()), (Some(false), Some("all")));
    env.finish().await;
}
