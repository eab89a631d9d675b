//! The partner pack's operations against the sandbox at `small` scale: LMS offboarding of
//! soft-deleted PRM records, leads, history cleanup, failure alerts and the weekly reports.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use syncfleet_shared::chain::Mode;
use syncfleet_tests::partner::{acme_toml, impartner_all, northpass_all, s, step};
use syncfleet_tests::{Running, Sandbox, TestEnv};

const DAILY: &str = "partner_daily";

async fn env_with(sandbox: &Sandbox, extra_settings: &str, extra_toml: &str) -> (TestEnv, Running) {
    let env = TestEnv::new(&format!("{}\n{extra_toml}", acme_toml(sandbox, "", extra_settings))).await;
    let worker = env.spawn_worker("w").await;
    (env, worker)
}

/// The person ids in a Northpass group, read from its memberships.
async fn members(sandbox: &Sandbox, group: &str) -> BTreeSet<String> {
    northpass_all(sandbox, &format!("/groups/{group}/memberships"))
        .await
        .iter()
        .map(|m| m.pointer("/relationships/person/data/id").and_then(Value::as_str).unwrap().to_owned())
        .collect()
}

async fn impartner_delete(sandbox: &Sandbox, object: &str, id: &str) {
    let resp = reqwest::Client::new()
        .delete(format!("{}/{object}/{id}", sandbox.handle.impartner_url()))
        .header("Authorization", "prm-key prm-key")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "DELETE {object}/{id}: {}", resp.status());
}

/// Northpass writes of one kind from the sandbox's write log, as (group, person) pairs.
async fn membership_removes(sandbox: &Sandbox) -> Vec<(String, String)> {
    let writes = sandbox.control(reqwest::Method::GET, "/writes", None).await;
    writes["northpass"]["membership_removes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (s(w, "group_id"), s(w, "person_id")))
        .collect()
}

async fn group_deletions(sandbox: &Sandbox) -> Vec<String> {
    let writes = sandbox.control(reqwest::Method::GET, "/writes", None).await;
    writes["northpass"]["group_deletions"].as_array().unwrap().iter().map(|w| s(w, "group_id")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soft_deleted_contacts_and_partners_leave_the_lms_once() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "", "").await;
    let run = env.run_to_end(DAILY, "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let off = step(&run, "lms_offboarding");
    assert_eq!((off.status.as_str(), off.fetched, off.updated), ("succeeded", 0, 0), "{off:#?}");
    assert!(membership_removes(&sandbox).await.is_empty() && group_deletions(&sandbox).await.is_empty());

    // The sandbox's own view: groups by name, people by email, contacts by account.
    let groups = northpass_all(&sandbox, "/groups").await;
    let all_partners =
        groups.iter().find(|g| g["attributes"]["name"] == "All Partners").map(|g| s(g, "id")).expect("All Partners");
    let person_by_email: BTreeMap<String, String> = northpass_all(&sandbox, "/people")
        .await
        .iter()
        .map(|p| (s(&p["attributes"], "email").to_lowercase(), s(p, "id")))
        .collect();
    let users = impartner_all(&sandbox, "User").await;
    let person_of = |u: &Value| person_by_email.get(&s(u, "email").to_lowercase()).cloned();
    let links: Vec<(String, String)> =
        sqlx::query_as("SELECT partner_id, external_id FROM partner_group_links WHERE is_active ORDER BY partner_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    // Partners with exactly one linked group.
    let mut linked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (p, g) in links {
        linked.entry(p).or_default().push(g);
    }
    let group_of: BTreeMap<String, String> =
        linked.into_iter().filter(|(_, g)| g.len() == 1).map(|(p, mut g)| (p, g.remove(0))).collect();
    let all_members = members(&sandbox, &all_partners).await;

    // A partner with a linked group and LMS people among its contacts; a contact of another linked
    // partner who is in both its partner's group and "All Partners".
    let contacts_of = |partner: &str| -> Vec<&Value> {
        users
            .iter()
            .filter(|u| {
                let email = s(u, "email").to_lowercase();
                u["accountId"].as_i64() == partner.parse::<i64>().ok()
                    && !email.ends_with("@nintex.com")
                    && !email.starts_with("test.user")
            })
            .collect()
    };
    let mut partner = None;
    let mut contact = None;
    for (p, g) in &group_of {
        let people: BTreeSet<String> = contacts_of(p).into_iter().filter_map(&person_of).collect();
        if partner.is_none() && people.iter().filter(|x| all_members.contains(*x)).count() >= 2 {
            partner = Some((p.clone(), g.clone(), people));
            continue;
        }
        if contact.is_none() {
            let group_members = members(&sandbox, g).await;
            contact = contacts_of(p).into_iter().find_map(|u| {
                let person = person_of(u)?;
                (group_members.contains(&person) && all_members.contains(&person))
                    .then(|| (u["id"].to_string(), person, g.clone()))
            });
        }
    }
    let (partner, partner_group, partner_people) = partner.expect("a partner with LMS people");
    let (contact, contact_person, contact_group) = contact.expect("a contact in its partner's group");
    assert!(!partner_people.contains(&contact_person));

    impartner_delete(&sandbox, "User", &contact).await;
    impartner_delete(&sandbox, "Account", &partner).await;
    let run = env.run_to_end(DAILY, "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");

    // Northpass saw exactly these removals: the contact from its partner's group and "All
    // Partners", the partner's people from "All Partners" (those who were members), its group deleted.
    let mut expected: BTreeSet<(String, String)> =
        [(contact_group.clone(), contact_person.clone()), (all_partners.clone(), contact_person.clone())].into();
    expected
        .extend(partner_people.iter().filter(|p| all_members.contains(*p)).map(|p| (all_partners.clone(), p.clone())));
    let removed = membership_removes(&sandbox).await;
    assert_eq!(removed.len(), expected.len(), "no membership removed twice: {removed:?}");
    assert_eq!(removed.into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(group_deletions(&sandbox).await, vec![partner_group.clone()]);
    let now_in_all = members(&sandbox, &all_partners).await;
    assert!(!now_in_all.contains(&contact_person));
    assert!(partner_people.iter().all(|p| !now_in_all.contains(p)));
    assert!(!members(&sandbox, &contact_group).await.contains(&contact_person));
    let resp = reqwest::Client::new()
        .get(format!("{}/groups/{partner_group}", sandbox.handle.northpass_url()))
        .header("X-Api-Key", "np-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "the deleted partner's group is gone");

    // Every removal recorded, with its reason.
    let rows: BTreeSet<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT kind, group_id, person_id, reason FROM partner_offboarding_removals WHERE removed_at IS NOT NULL",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let mut want: BTreeSet<(String, String, Option<String>, String)> = BTreeSet::new();
    for g in [&contact_group, &all_partners] {
        want.insert(("membership".into(), g.clone(), Some(contact_person.clone()), "contact deleted".into()));
    }
    for p in &partner_people {
        want.insert(("membership".into(), all_partners.clone(), Some(p.clone()), "partner deleted".into()));
    }
    want.insert(("group".into(), partner_group.clone(), None, "partner deleted".into()));
    assert_eq!(rows, want);
    let off = step(&run, "lms_offboarding");
    assert_eq!(off.updated, want.len() as i64, "{off:#?}");

    // Idempotent: another run removes nothing and records nothing new.
    let writes_before = sandbox.control(reqwest::Method::GET, "/writes", None).await["northpass"].clone();
    let run = env.run_to_end(DAILY, "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let off = step(&run, "lms_offboarding");
    assert_eq!((off.fetched, off.updated, off.api_calls), (0, 0, 0), "{off:#?}");
    assert_eq!(sandbox.control(reqwest::Method::GET, "/writes", None).await["northpass"], writes_before);
    let count: i64 = env.value("SELECT count(*) FROM partner_offboarding_removals").await;
    assert_eq!(count, want.len() as i64);
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_purges_history_and_item_errors_past_the_retention() {
    let sandbox = Sandbox::start().await;
    let beta = acme_toml(&sandbox, "", "cleanup = { retention_days = 50 }")
        .replace("[integrations.acme]", "[integrations.beta]");
    let (env, worker) = env_with(&sandbox, "", &beta).await;
    let mut runs = vec![];
    for (integration, days) in [("acme", 40), ("acme", 20), ("acme", 0), ("beta", 40)] {
        let run = env.run_to_end("partner_impartner", integration, Mode::Full, false).await;
        assert_eq!(run.status, "completed", "{run:#?}");
        sqlx::query(
            "UPDATE chain_runs SET created_at = created_at - make_interval(days => $2),
                                   finished_at = finished_at - make_interval(days => $2) WHERE id = $1::uuid",
        )
        .bind(&run.id)
        .bind(days)
        .execute(&env.pool)
        .await
        .unwrap();
        runs.push(run.id);
    }
    // Item errors: on the old run, old on the recent run (resolved), and a fresh one.
    for (run, item, days, resolved) in
        [(&runs[0], "e1", 40, false), (&runs[2], "e2", 35, true), (&runs[2], "e3", 1, false)]
    {
        sqlx::query(
            "INSERT INTO item_errors (run_id, step, integration_id, entity, external_id, message, created_at, resolved_at)
             SELECT $1::uuid, 'impartner_sync', id, 'contacts', $2, 'bad value', now() - make_interval(days => $3),
                    CASE WHEN $4 THEN now() - make_interval(days => $3) END
             FROM integrations WHERE name = 'acme'",
        )
        .bind(run)
        .bind(item)
        .bind(days)
        .bind(resolved)
        .execute(&env.pool)
        .await
        .unwrap();
    }
    let old_steps: i64 = env.value(&format!("SELECT count(*) FROM step_runs WHERE run_id = '{}'", runs[0])).await;
    assert!(old_steps > 0);

    let run = env.run_to_end("partner_cleanup", "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let remaining: BTreeSet<String> =
        sqlx::query_scalar("SELECT id::text FROM chain_runs").fetch_all(&env.pool).await.unwrap().into_iter().collect();
    let want: BTreeSet<String> = [&runs[1], &runs[2], &runs[3], &run.id].into_iter().cloned().collect();
    assert_eq!(remaining, want, "only acme's run past 30 days is gone; beta's is not this integration's");
    let orphans: i64 = env.value(&format!("SELECT count(*) FROM step_runs WHERE run_id = '{}'", runs[0])).await;
    assert_eq!(orphans, 0, "its step runs went with it");
    let errors: Vec<String> = sqlx::query_scalar("SELECT external_id FROM item_errors ORDER BY external_id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(errors, ["e3"]);
    let c = step(&run, "cleanup");
    assert_eq!(c.deactivated, 1 + old_steps + 2, "{c:#?}");
    assert!(c.guard.as_deref().unwrap_or("").contains("1 run(s)"), "{c:#?}");

    let run = env.run_to_end("partner_cleanup", "acme", Mode::Full, false).await;
    assert_eq!(step(&run, "cleanup").deactivated, 0, "nothing left to purge: {run:#?}");

    // beta keeps 50 days: its 40-day-old run stays.
    let run = env.run_to_end("partner_cleanup", "beta", Mode::Full, false).await;
    assert_eq!(step(&run, "cleanup").deactivated, 0, "{run:#?}");
    let kept: i64 = env.value(&format!("SELECT count(*) FROM chain_runs WHERE id = '{}'", runs[3])).await;
    assert_eq!(kept, 1);
    worker.stop().await;
    env.finish().await;
}

async fn leads_in_db(env: &TestEnv) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT external_id, status, partner_id FROM partner_leads WHERE is_active")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(id, st, p)| (id, (st, p))).collect()
}

async fn leads_upstream(sandbox: &Sandbox) -> BTreeMap<String, (Option<String>, Option<String>)> {
    impartner_all(sandbox, "Lead")
        .await
        .iter()
        .map(|l| {
            let partner = l["partnerAccountId"].as_i64().map(|p| p.to_string());
            (l["id"].to_string(), (l["status"].as_str().map(str::to_owned), partner))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leads_sync_full_and_incremental_with_conversions_and_deletions() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "", "").await;
    let run = env.run_to_end("partner_leads", "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let upstream = leads_upstream(&sandbox).await;
    assert_eq!(upstream.len(), 50);
    assert_eq!(leads_in_db(&env).await, upstream, "leads equal the sandbox's");
    let l = step(&run, "sync_leads");
    assert_eq!((l.fetched, l.inserted, l.errors), (50, 50, 0), "{l:#?}");
    let converted_before: i64 = env.value("SELECT count(*) FROM partner_leads WHERE converted_at IS NOT NULL").await;
    let converted_upstream = upstream.values().filter(|(st, _)| st.as_deref() == Some("Converted")).count() as i64;
    assert_eq!(converted_before, converted_upstream);

    // A conversion, a few changes and a deletion, read incrementally.
    let (to_convert, to_delete) = upstream
        .iter()
        .filter(|(_, (st, _))| st.as_deref() != Some("Converted"))
        .map(|(id, _)| id.clone())
        .take(2)
        .fold((None, None), |(a, b), id| if a.is_none() { (Some(id), b) } else { (a, Some(id)) });
    let (to_convert, to_delete) = (to_convert.unwrap(), to_delete.unwrap());
    let resp = reqwest::Client::new()
        .patch(format!("{}/Lead/{to_convert}", sandbox.handle.impartner_url()))
        .header("Authorization", "prm-key prm-key")
        .json(&serde_json::json!({"Status": "Converted"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let changed = sandbox.mutate("impartner", "leads", serde_json::json!({"change_percent": 10})).await;
    let changed: BTreeSet<String> =
        changed["changed"].as_array().unwrap().iter().map(|v| v.to_string()).filter(|id| *id != to_delete).collect();
    impartner_delete(&sandbox, "Lead", &to_delete).await;
    let run = env.run_to_end("partner_leads", "acme", Mode::Incremental, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    assert_eq!(leads_in_db(&env).await, leads_upstream(&sandbox).await, "incremental converges");
    let l = step(&run, "sync_leads");
    assert!(l.fetched < 50, "only changes read: {l:#?}");
    assert_eq!(l.deactivated, 1, "{l:#?}");
    let mut touched = changed.clone();
    touched.insert(to_convert.clone());
    assert_eq!(l.updated, touched.len() as i64, "{l:#?}");
    let (converted_at, deleted_at): (Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as(
            "SELECT (SELECT converted_at FROM partner_leads WHERE external_id = $1),
                    (SELECT deleted_at FROM partner_leads WHERE external_id = $2 AND NOT is_active)",
        )
        .bind(&to_convert)
        .bind(&to_delete)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(converted_at.is_some(), "the conversion is recorded");
    assert!(deleted_at.is_some(), "the deleted lead is soft-deleted");
    assert!(l.guard.as_deref().unwrap_or("").contains("1 newly converted, 1 deleted upstream"), "{l:#?}");

    // Full mode finds a deletion without `_deleted`: the sweep.
    let gone = leads_upstream(&sandbox).await.keys().next().cloned().unwrap();
    impartner_delete(&sandbox, "Lead", &gone).await;
    let run = env.run_to_end("partner_leads", "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let l = step(&run, "sync_leads");
    assert_eq!((l.fetched, l.deactivated, l.inserted), (48, 1, 0), "{l:#?}");
    assert_eq!(leads_in_db(&env).await, leads_upstream(&sandbox).await);
    worker.stop().await;
    env.finish().await;
}
