//! The partner pack's default schedules (issue #5, "Chains and schedules"): every enabled partner
//! integration gets them, `GET /api/schedules` shows them (source `pack`) with their next run, a
//! configured or stored schedule replaces the default of its chain and mode, and a full-mode default
//! fires a full run.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc, Weekday};
use serde_json::{Value, json};
use syncfleet_producer::scheduler::{Fired, Scheduler};
use syncfleet_tests::TestEnv;

const TOML: &str = r#"
[integrations.acme]
pack = "partner"
northpass = { base_url = "http://127.0.0.1:9/v2", secret_file = "np-key" }
impartner = { base_url = "http://127.0.0.1:9/api/objects/v1", secret_file = "prm-key" }

[schedules.partner_cleanup.acme]
cron = "0 30 5 * * Sun"
"#;

/// (chain, mode) → (cron, source, next run) of acme's schedules.
async fn schedules(api: &syncfleet_tests::Api) -> BTreeMap<(String, String), (String, String, DateTime<Utc>)> {
    let (status, all) = api.get("/api/schedules").await;
    assert_eq!(status, 200, "{all}");
    all.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["integration"] == "acme")
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or_else(|| panic!("{k} in {s}")).to_owned();
            let next: DateTime<Utc> = serde_json::from_value(s["next_at"].clone()).unwrap();
            ((text("chain"), text("mode")), (text("cron"), text("source"), next))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_integrations_get_the_default_schedules_unless_overridden() {
    let env = TestEnv::new(TOML).await;
    let producer = env.spawn_producer().await;
    let admin = env.api(&producer, "admin").await;
    let now = Utc::now();

    let got = schedules(&admin).await;
    let reports = got.contains_key(&("partner_weekly_reports".into(), "incremental".into()));
    let mut want: Vec<(&str, &str, &str, &str)> = vec![
        ("partner_daily", "full", "0 2 * * *", "pack"),
        ("partner_daily", "incremental", "30 5-21/4 * * *", "pack"),
        ("partner_enrollments", "incremental", "0 6,10,14,18,22 * * *", "pack"),
        ("partner_leads", "incremental", "0 8,14,20 * * *", "pack"),
        ("partner_leads", "full", "0 3 * * 0", "pack"),
        ("partner_cleanup", "incremental", "0 30 5 * * Sun", "config"),
    ];
    if reports {
        want.push(("partner_weekly_reports", "incremental", "0 8 * * 1", "pack"));
    }
    let listed: Vec<(String, String, String, String)> =
        got.iter().map(|((c, m), (cron, source, _))| (c.clone(), m.clone(), cron.clone(), source.clone())).collect();
    let mut want: Vec<(String, String, String, String)> =
        want.into_iter().map(|(c, m, cron, s)| (c.to_owned(), m.to_owned(), cron.to_owned(), s.to_owned())).collect();
    want.sort();
    assert_eq!(listed, want, "the pack's defaults, the configured cleanup replacing the default");

    // Next runs: within a day (a week for the weekly ones), at the issue's hours, in UTC.
    let next = |chain: &str, mode: &str| got[&(chain.to_owned(), mode.to_owned())].2;
    let daily = next("partner_daily", "full");
    assert!(daily > now && daily <= now + chrono::Duration::days(1), "{daily}");
    assert_eq!((daily.hour(), daily.minute(), daily.second()), (2, 0, 0));
    let enrollments = next("partner_enrollments", "incremental");
    assert!([6, 10, 14, 18, 22].contains(&enrollments.hour()) && enrollments <= now + chrono::Duration::hours(8));
    let leads = next("partner_leads", "incremental");
    assert!([8, 14, 20].contains(&leads.hour()) && leads <= now + chrono::Duration::hours(12));
    let full = next("partner_leads", "full");
    assert_eq!((full.weekday(), full.hour()), (Weekday::Sun, 3));
    assert!(full > now && full <= now + chrono::Duration::days(7));
    let cleanup = next("partner_cleanup", "incremental");
    assert_eq!((cleanup.weekday(), cleanup.hour(), cleanup.minute()), (Weekday::Sun, 5, 30));

    // A stored schedule replaces the default of its chain and mode; the weekly full one stays.
    let (status, s) =
        admin.put("/api/chains/partner_leads/schedule", json!({ "integration": "acme", "cron": "0 0 9 * * *" })).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!((s["source"].as_str(), s["mode"].as_str()), (Some("stored"), Some("incremental")), "{s}");
    let got = schedules(&admin).await;
    let leads = &got[&("partner_leads".into(), "incremental".into())];
    assert_eq!((leads.0.as_str(), leads.1.as_str(), leads.2.hour()), ("0 0 9 * * *", "stored", 9));
    let full = &got[&("partner_leads".into(), "full".into())];
    assert_eq!((full.0.as_str(), full.1.as_str()), ("0 3 * * 0", "pack"));
    assert_eq!(got.len(), want.len(), "{got:?}");

    // Switched off, the chain has no schedule for acme at all.
    let (status, _) = admin
        .put(
            "/api/chains/partner_leads/schedule",
            json!({ "integration": "acme", "cron": "0 0 9 * * *", "enabled": false }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, all) = admin.get("/api/schedules").await;
    let leads: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["chain"] == "partner_leads" && s["integration"] == "acme")
        .collect();
    assert_eq!(leads.len(), 1, "{leads:?}");
    assert_eq!((leads[0]["enabled"].as_bool(), leads[0]["source"].as_str()), (Some(false), Some("stored")));
    producer.stop().await;

    // The weekly full default fires a full run: Sunday 03:00 passes between two scheduler passes.
    sqlx::query("DELETE FROM schedules").execute(&env.pool).await.unwrap();
    let mut scheduler = Scheduler::new(env.ops.clone());
    let sunday = Utc.with_ymd_and_hms(2026, 11, 29, 2, 59, 59).unwrap();
    assert_eq!(sunday.weekday(), Weekday::Sun);
    assert!(scheduler.tick_once(sunday, false).await.unwrap().is_empty(), "the first pass only remembers ticks");
    let fired = scheduler.tick_once(sunday + chrono::Duration::seconds(2), false).await.unwrap();
    assert!(matches!(fired.as_slice(), [Fired::Created(_)]), "{fired:?}");
    let runs: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT chain, mode, tick_key FROM chain_runs").fetch_all(&env.pool).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0].0.as_str(), runs[0].1.as_str()), ("partner_leads", "full"), "{runs:?}");
    env.finish().await;
}
