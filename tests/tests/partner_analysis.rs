//! The partner pack's `group_analysis` (domain matching) against the sandbox at `small` scale: the
//! users it lists equal those computed here from the sandbox's own APIs (the group links are read
//! from PostgreSQL; `partner_pack.rs` checks them), and `analysis.add_pending` adds them as pending
//! memberships of the partner's group.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use syncfleet_shared::chain::Mode;
use syncfleet_store::views::RunView;
use syncfleet_tests::partner::{acme_toml, impartner_all, northpass_all, s};
use syncfleet_tests::{Sandbox, TestEnv};

const PUBLIC: &[&str] = &["gmail.com", "outlook.com", "yahoo.com", "hotmail.com"];

async fn run_step(env: &TestEnv, step: &str, mode: Mode) -> RunView {
    let view = env.run_step("partner_daily", "acme", step, mode).await;
    assert_eq!(view.status, "completed", "{step}: {view:#?}");
    view
}

fn domain(email: &str) -> Option<String> {
    email.split_once('@').map(|(_, d)| d.to_lowercase()).filter(|d| !d.is_empty())
}

/// Person id → (partner id, group id) as the issue defines domain matching, from the sandbox.
async fn expected(sandbox: &Sandbox, env: &TestEnv) -> BTreeMap<String, (String, String)> {
    let partners: BTreeSet<String> = impartner_all(sandbox, "Account")
        .await
        .iter()
        .filter(|a| {
            !a["partner_Tier__cf"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("pending"))
                && !a["account_Status__cf"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("inactive"))
        })
        .map(|a| a["id"].to_string())
        .collect();
    // Domain → the partners whose (kept) contacts use it.
    let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for u in impartner_all(sandbox, "User").await {
        let email = s(&u, "email").to_lowercase();
        let account = u["accountId"].to_string();
        if email.ends_with("@nintex.com") || email.starts_with("test.user") || !partners.contains(&account) {
            continue;
        }
        if let Some(d) = domain(&email).filter(|d| !PUBLIC.contains(&d.as_str()) && d != "nintex.com") {
            owners.entry(d).or_default().insert(account);
        }
    }
    let links: Vec<(String, String)> =
        sqlx::query_as("SELECT external_id, partner_id FROM partner_group_links WHERE is_active")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let mut groups_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (group, partner) in &links {
        groups_of.entry(partner.clone()).or_default().insert(group.clone());
    }
    let mut member_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (group, _) in &links {
        for m in northpass_all(sandbox, &format!("/groups/{group}/memberships")).await {
            let person = m.pointer("/relationships/person/data/id").and_then(Value::as_str).unwrap().to_owned();
            member_of.entry(person).or_default().insert(group.clone());
        }
    }
    let mut out = BTreeMap::new();
    for p in northpass_all(sandbox, "/people").await {
        if !p["attributes"]["deactivated_at"].is_null() {
            continue;
        }
        let Some(d) = domain(&s(&p["attributes"], "email")) else { continue };
        let Some(owner) = owners.get(&d).filter(|o| o.len() == 1).and_then(|o| o.first()) else { continue };
        let Some(groups) = groups_of.get(owner) else { continue };
        let id = s(&p, "id");
        if member_of.get(&id).is_some_and(|m| !m.is_disjoint(groups)) {
            continue;
        }
        out.insert(id, (owner.clone(), groups.first().unwrap().clone()));
    }
    out
}

async fn listed(env: &TestEnv) -> BTreeMap<String, (String, String)> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT external_id, partner_id, group_id FROM partner_group_analysis WHERE is_active")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(person, partner, group)| (person, (partner, group))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn domain_matching_lists_the_partner_domain_users_outside_the_group_and_adds_them_pending() {
    let sandbox = Sandbox::start().await;
    let toml = acme_toml(&sandbox, "", "");
    let env = TestEnv::new(&toml).await;
    let worker = env.spawn_worker("w").await;
    for step in ["impartner_sync", "sync_users", "sync_groups", "group_members_sync"] {
        run_step(&env, step, Mode::Full).await;
    }
    let run = run_step(&env, "group_analysis", Mode::Full).await;
    // The findings join whole tables: they were planned on fresh statistics, the group links' too
    // (derived in `sync_groups`' completion, never by a pull; autovacuum is off on the test machine,
    // so nothing else analyzed them).
    env.wait_analyzed(&["partner_group_links", "partner_group_memberships", "partner_lms_users"]).await;

    let want = expected(&sandbox, &env).await;
    assert!(want.len() >= 5, "the sandbox has partner-domain users outside their partner's group: {want:?}");
    assert_eq!(listed(&env).await, want, "listed users equal the sandbox's");
    let partners = want.values().map(|(p, _)| p).collect::<BTreeSet<_>>().len();
    println!("figures: {} user(s) of {partners} partner(s) listed", want.len());
    let memberships: Vec<String> = sqlx::query_scalar("SELECT DISTINCT membership FROM partner_group_analysis")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(memberships, ["none"], "nothing is added unless asked");
    let pending: i64 = env.value("SELECT count(*) FROM partner_group_memberships WHERE status = 'pending'").await;
    assert_eq!(pending, 0);
    let guard = run.steps.iter().find(|s| s.step == "group_analysis").unwrap().guard.clone().unwrap_or_default();
    assert!(guard.contains(&format!("{} user(s)", want.len())), "{guard}");

    // With `analysis.add_pending`, each listed user gets a pending membership in the partner's group.
    sqlx::query("UPDATE integrations SET settings = settings || '{\"analysis\": {\"add_pending\": true}}'::jsonb")
        .execute(&env.pool)
        .await
        .unwrap();
    run_step(&env, "group_analysis", Mode::Full).await;
    assert_eq!(listed(&env).await, want, "the same users are listed");
    let pending: BTreeSet<String> =
        sqlx::query_scalar("SELECT external_id FROM partner_group_memberships WHERE is_active AND status = 'pending'")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let want_pending: BTreeSet<String> = want.iter().map(|(person, (_, group))| format!("{group}:{person}")).collect();
    assert_eq!(pending, want_pending, "one pending membership per listed user, in the partner's group");
    let memberships: Vec<String> = sqlx::query_scalar("SELECT DISTINCT membership FROM partner_group_analysis")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(memberships, ["pending"]);

    // Running again adds nothing more.
    let again = run_step(&env, "group_analysis", Mode::Full).await;
    let guard = again.steps.iter().find(|s| s.step == "group_analysis").unwrap().guard.clone().unwrap_or_default();
    assert!(guard.contains("0 pending membership(s) added"), "{guard}");

    worker.stop().await;
    env.finish().await;
}
