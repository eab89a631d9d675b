//! The partner pack's data quality by default (issue #19) against the sandbox at `small` scale: the
//! enrollment and push steps' precondition, pending memberships written to Northpass and confirmed
//! without cycling, offboarding records that expire once the person is active again, a failed
//! transcript read as an item error, and the look-back window reading a change behind the cursor.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use syncfleet_shared::chain::Mode;
use syncfleet_store::views::RunView;
use syncfleet_tests::partner::{acme_toml, get, impartner_all, northpass_all, s, step};
use syncfleet_tests::{Running, Sandbox, TestEnv};

const DAILY: &str = "partner_daily";
const ENROLLMENTS: &str = "partner_enrollments";

async fn env_with(sandbox: &Sandbox, northpass_extra: &str, settings: &str) -> (TestEnv, Running) {
    let env = TestEnv::new(&acme_toml(sandbox, northpass_extra, settings)).await;
    let worker = env.spawn_worker("w").await;
    (env, worker)
}

/// Runs one step of `chain` on its own and waits for the run to end.
async fn run_step(env: &TestEnv, chain: &str, step: &str, mode: Mode) -> RunView {
    env.run_step(chain, "acme", step, mode).await
}

async fn daily(env: &TestEnv) -> RunView {
    let run = env.run_to_end(DAILY, "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    run
}

/// Person ids in a Northpass group, from its memberships.
async fn members(sandbox: &Sandbox, group: &str) -> BTreeSet<String> {
    northpass_all(sandbox, &format!("/groups/{group}/memberships"))
        .await
        .iter()
        .map(|m| m.pointer("/relationships/person/data/id").and_then(Value::as_str).unwrap().to_owned())
        .collect()
}

/// (group, person) pairs of one kind of Northpass write (`membership_adds`, `membership_removes`).
async fn membership_writes(sandbox: &Sandbox, kind: &str) -> Vec<(String, String)> {
    let writes = sandbox.control(reqwest::Method::GET, "/writes", None).await;
    writes["northpass"][kind].as_array().unwrap().iter().map(|w| (s(w, "group_id"), s(w, "person_id"))).collect()
}

/// A Northpass write as an administrator would make it; panics unless it succeeds.
async fn northpass_send(sandbox: &Sandbox, method: reqwest::Method, path: &str, body: Value) {
    let url = format!("{}{path}", sandbox.handle.northpass_url());
    let resp =
        reqwest::Client::new().request(method, &url).header("X-Api-Key", "np-key").json(&body).send().await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
}

async fn add_to_group(sandbox: &Sandbox, group: &str, person: &str) {
    let body = json!({"data": [{"type": "people", "id": person}]});
    northpass_send(sandbox, reqwest::Method::POST, &format!("/groups/{group}/relationships/people"), body).await;
}

/// An Impartner call with the sandbox's key: the answer's JSON.
async fn impartner_send(sandbox: &Sandbox, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let url = format!("{}{path}", sandbox.handle.impartner_url());
    let mut req = reqwest::Client::new().request(method, &url).header("Authorization", "prm-key prm-key");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success() && body["success"] != false, "{url}: {status} {body}");
    body
}

/// Active membership ids (`{group}:{person}`) with their status.
async fn local_memberships(env: &TestEnv) -> Vec<(String, String)> {
    sqlx::query_as("SELECT external_id, status FROM partner_group_memberships WHERE is_active ORDER BY external_id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

async fn ids(env: &TestEnv, sql: &str, bind: &str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(bind)
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enrollment_and_push_steps_need_partner_users_and_matched_groups() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "", "").await;

    // Nothing synced yet: the enrollment shards fail on the precondition, saying what is missing,
    // before reading anything.
    let run = env.run_to_end(ENROLLMENTS, "acme", Mode::Full, false).await;
    assert_eq!(run.status, "failed", "{run:#?}");
    let e = step(&run, "sync_enrollments");
    assert_eq!(e.status, "failed", "{e:#?}");
    // The first shard to start fails (the others are skipped with it), once, naming what is missing.
    let failed: Vec<(String, i32)> = sqlx::query_as(
        "SELECT error, attempts FROM step_runs
         WHERE run_id = $1::text::uuid AND step = 'sync_enrollments' AND status = 'failed'",
    )
    .bind(&run.id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(!failed.is_empty(), "{run:#?}");
    for (error, attempts) in &failed {
        for named in ["precondition not met", "no partner users", "partner_daily"] {
            assert!(error.contains(named), "{named}: {error}");
        }
        assert!(!error.contains("no matched groups"), "only what is missing first is named: {error}");
        assert_eq!(*attempts, 1, "a missing precondition is not retried");
    }
    assert_eq!(step(&run, "sync_to_impartner").status, "skipped");
    assert_eq!(sandbox.counter("northpass", "GET", "/transcripts/{person_id}", "requests").await, 0);

    // The push on its own fails the same way, and sends nothing to Impartner.
    let push = run_step(&env, ENROLLMENTS, "sync_to_impartner", Mode::Full).await;
    let p = step(&push, "sync_to_impartner");
    assert_eq!(p.status, "failed", "{p:#?}");
    assert!(p.error.as_deref().unwrap_or("").contains("no partner users"), "{p:#?}");
    let writes = sandbox.control(reqwest::Method::GET, "/writes", None).await;
    assert_eq!(writes["impartner"]["patches"].as_array().map_or(0, Vec::len), 0, "{writes:#}");

    // Once the daily chain synced partner users and matched groups, the steps run.
    let run = daily(&env).await;
    assert_eq!(step(&run, "sync_enrollments").status, "succeeded");
    let run = env.run_to_end(ENROLLMENTS, "acme", Mode::Incremental, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");

    // With partner users but no matched group, the step names the groups.
    sqlx::query("UPDATE partner_group_links SET is_active = false").execute(&env.pool).await.unwrap();
    let push = run_step(&env, ENROLLMENTS, "sync_to_impartner", Mode::Full).await;
    let error = step(&push, "sync_to_impartner").error.clone().unwrap_or_default();
    assert!(error.contains("no matched groups") && !error.contains("no partner users"), "{error}");
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_memberships_are_written_to_the_lms_and_confirmed_without_cycling() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "", "analysis = { add_pending = true }").await;
    daily(&env).await;

    // Each domain-matched user was added to the partner's group in Northpass, and is pending here.
    let pending: BTreeSet<(String, String)> = sqlx::query_as(
        "SELECT group_id, person_id FROM partner_group_memberships WHERE is_active AND status = 'pending'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert!(pending.len() >= 5, "domain matching adds users: {pending:?}");
    let adds = membership_writes(&sandbox, "membership_adds").await;
    assert_eq!(adds.iter().cloned().collect::<BTreeSet<_>>(), pending, "Northpass was asked for exactly these");
    assert_eq!(adds.len(), pending.len(), "each once");
    for (group, person) in &pending {
        assert!(members(&sandbox, group).await.contains(person), "{person} in {group}");
    }

    // Two further runs of the membership read and the matching: the first confirms what it
    // reads, neither inserts nor removes a membership, nor asks Northpass again.
    let mut confirmed = vec![];
    for _ in 0..2 {
        let m = run_step(&env, DAILY, "group_members_sync", Mode::Full).await;
        assert_eq!(m.status, "completed", "{m:#?}");
        let m = step(&m, "group_members_sync");
        assert_eq!((m.inserted, m.deactivated), (0, 0), "no membership cycles: {m:#?}");
        confirmed.push(m.updated);
        let a = run_step(&env, DAILY, "group_analysis", Mode::Full).await;
        assert_eq!(a.status, "completed", "{a:#?}");
        let guard = step(&a, "group_analysis").guard.clone().unwrap_or_default();
        assert!(guard.contains("0 pending membership(s) added"), "{guard}");
    }
    assert_eq!(confirmed, [pending.len() as i64, 0], "confirmed once, then nothing changes");
    assert_eq!(membership_writes(&sandbox, "membership_adds").await.len(), pending.len(), "no further adds");
    assert!(membership_writes(&sandbox, "membership_removes").await.is_empty());

    // Rows equal the sandbox: every member of "All Partners" and the linked groups, confirmed.
    let mut groups: Vec<String> =
        sqlx::query_scalar("SELECT external_id FROM partner_group_links WHERE is_active AND partner_id IS NOT NULL")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let all = northpass_all(&sandbox, "/groups").await;
    groups.push(s(all.iter().find(|g| g["attributes"]["name"] == "All Partners").unwrap(), "id"));
    let mut expected = BTreeSet::new();
    for g in &groups {
        expected.extend(members(&sandbox, g).await.into_iter().map(|p| format!("{g}:{p}")));
    }
    let local = local_memberships(&env).await;
    assert!(local.iter().all(|(_, status)| status == "confirmed"), "{local:?}");
    assert_eq!(local.into_iter().map(|(id, _)| id).collect::<BTreeSet<_>>(), expected);
    let listed: i64 = env.value("SELECT count(*) FROM partner_group_analysis WHERE is_active").await;
    assert_eq!(listed, 0, "every matched user is now in the partner's group");
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_deleted_re_added_and_deleted_again_leaves_the_lms_again() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "", "").await;
    daily(&env).await;

    // A contact of an active partner with one linked group, whose LMS person is in that group,
    // and the only contact with that email.
    let (contact, person, group): (String, String, String) = sqlx::query_as(
        "SELECT c.external_id, u.external_id, l.external_id
                 FROM partner_contacts c
                 JOIN partner_partners p ON p.integration_id = c.integration_id AND p.external_id = c.partner_id
                     AND p.is_active
                 JOIN partner_lms_users u ON u.integration_id = c.integration_id AND u.is_active
                     AND lower(u.email) = lower(c.email)
                 JOIN partner_group_links l ON l.integration_id = c.integration_id AND l.partner_id = c.partner_id
                     AND l.is_active
                 JOIN partner_group_memberships m ON m.integration_id = c.integration_id
                     AND m.group_id = l.external_id AND m.person_id = u.external_id AND m.is_active
                 WHERE c.is_active
                   AND (SELECT count(*) FROM partner_contacts c2
                        WHERE c2.integration_id = c.integration_id AND lower(c2.email) = lower(c.email)) = 1
                   AND (SELECT count(*) FROM partner_group_links l2
                        WHERE l2.integration_id = c.integration_id AND l2.partner_id = c.partner_id
                          AND l2.is_active) = 1
                 ORDER BY c.external_id LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let groups = northpass_all(&sandbox, "/groups").await;
    let all = s(groups.iter().find(|g| g["attributes"]["name"] == "All Partners").unwrap(), "id");
    let mut owed: BTreeSet<(String, String)> = [(group.clone(), person.clone())].into();
    if members(&sandbox, &all).await.contains(&person) {
        owed.insert((all.clone(), person.clone()));
    }
    let of_person = |w: Vec<(String, String)>| w.into_iter().filter(|(_, p)| *p == person).collect::<Vec<_>>();
    let contact_id: i64 = contact.parse().unwrap();
    let user = impartner_all(&sandbox, "User").await.into_iter().find(|u| u["id"] == contact_id).unwrap();

    // Deleted: removed from the partner's group and "All Partners", each once.
    impartner_send(&sandbox, reqwest::Method::DELETE, &format!("/User/{contact}"), None).await;
    daily(&env).await;
    let removed = of_person(membership_writes(&sandbox, "membership_removes").await);
    assert_eq!(removed.iter().cloned().collect::<BTreeSet<_>>(), owed);
    assert_eq!(removed.len(), owed.len());
    const RECORDS: &str = "SELECT external_id FROM partner_offboarding_removals WHERE person_id = $1";
    assert_eq!(ids(&env, RECORDS, &person).await.len(), owed.len());

    // Re-added: a new contact with the same email at the same partner, and back in the groups.
    let email = s(&user, "email");
    let created = impartner_send(
        &sandbox,
        reqwest::Method::PUT,
        "/User",
        Some(json!({"Email": email, "UserName": email, "FirstName": "Again", "LastName": "Partner",
                    "AccountId": user["accountId"]})),
    )
    .await;
    let new_contact = created["data"]["id"].to_string();
    for (g, p) in &owed {
        add_to_group(&sandbox, g, p).await;
    }
    let run = daily(&env).await;
    let guard = step(&run, "lms_offboarding").guard.clone().unwrap_or_default();
    assert!(guard.contains(&format!("{} record(s) expired", owed.len())), "{guard}");
    assert!(ids(&env, RECORDS, &person).await.is_empty(), "the records expired");
    assert_eq!(of_person(membership_writes(&sandbox, "membership_removes").await).len(), owed.len());
    for (g, p) in &owed {
        assert!(members(&sandbox, g).await.contains(p), "an active person stays in {g}");
    }

    // Deleted again: removed again.
    impartner_send(&sandbox, reqwest::Method::DELETE, &format!("/User/{new_contact}"), None).await;
    daily(&env).await;
    let removed = of_person(membership_writes(&sandbox, "membership_removes").await);
    assert_eq!(removed.len(), 2 * owed.len(), "{removed:?}");
    assert_eq!(removed[owed.len()..].iter().cloned().collect::<BTreeSet<_>>(), owed);
    for (g, p) in &owed {
        assert!(!members(&sandbox, g).await.contains(p), "removed from {g} the second time");
    }
    assert_eq!(ids(&env, RECORDS, &person).await.len(), owed.len());
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_transcript_read_is_an_item_error_and_the_shard_goes_on() {
    let sandbox = Sandbox::start().await;
    let limits = ", limits = { rate_per_sec = 10.0, max_retries = 1, backoff_base_ms = 20, backoff_max_ms = 50 }";
    let (env, worker) = env_with(&sandbox, limits, "").await;
    daily(&env).await;

    const ROWS: &str = "SELECT external_id FROM partner_enrollments WHERE is_active AND person_id = $1";
    let holders: Vec<(String, i64)> = sqlx::query_as(
        "SELECT person_id, count(*) FROM partner_enrollments WHERE is_active
         GROUP BY person_id ORDER BY count(*) DESC, person_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let person = holders[0].0.clone();
    let shard_of = async |id: &str| -> i32 {
        sqlx::query_scalar(syncfleet_pack_partner::SHARD_OF_SQL).bind(id).bind(4).fetch_one(&env.pool).await.unwrap()
    };
    let shard = shard_of(&person).await;
    // Another partner user of the same shard, whose rows the run must write again.
    let mut other = None;
    for (p, _) in &holders[1..] {
        if shard_of(p).await == shard {
            other = Some(p.clone());
            break;
        }
    }
    let other = other.expect("another user with enrollments in the shard");
    sqlx::query("DELETE FROM partner_enrollments WHERE person_id = $1").bind(&other).execute(&env.pool).await.unwrap();
    let before = ids(&env, ROWS, &person).await;
    assert!(!before.is_empty());
    let read_at = "SELECT transcript_read_at::text FROM partner_lms_users WHERE external_id = $1";
    let read_before: Option<String> = sqlx::query_scalar(read_at).bind(&person).fetch_one(&env.pool).await.unwrap();

    // Northpass fails the person's transcript on every call.
    sandbox.faults("northpass", json!({ "failing_answers": [format!("/transcripts/{person}")] })).await;
    let run = run_step(&env, ENROLLMENTS, "sync_enrollments", Mode::Full).await;
    assert_ne!(run.status, "failed", "{run:#?}");
    let e = step(&run, "sync_enrollments");
    assert_eq!((e.status.as_str(), e.errors), ("succeeded", 1), "{e:#?}");
    let shards: Vec<String> =
        sqlx::query_scalar("SELECT status FROM step_runs WHERE run_id = $1::text::uuid AND step = 'sync_enrollments'")
            .bind(&run.id)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(shards.iter().all(|s| s == "succeeded"), "{shards:?}");

    // One item error naming the user; their rows and read mark untouched.
    let errors: Vec<(String, String)> = sqlx::query_as(
        "SELECT external_id, message FROM item_errors
         WHERE run_id = $1::text::uuid AND step = 'sync_enrollments' AND resolved_at IS NULL",
    )
    .bind(&run.id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, person);
    assert!(errors[0].1.contains(&person) && errors[0].1.contains("500"), "{errors:?}");
    assert_eq!(ids(&env, ROWS, &person).await, before, "the user's enrollments stay active");
    let read_after: Option<String> = sqlx::query_scalar(read_at).bind(&person).fetch_one(&env.pool).await.unwrap();
    assert_eq!(read_after, read_before, "an unread transcript is not marked read");

    // The other user of the shard was written: rows equal their transcript.
    let transcript: BTreeSet<String> = northpass_all(&sandbox, &format!("/transcripts/{other}"))
        .await
        .iter()
        .map(|t| format!("{other}:{}", s(&t["attributes"], "resource_id")))
        .collect();
    assert!(!transcript.is_empty());
    assert_eq!(ids(&env, ROWS, &other).await, transcript);

    // Once Northpass answers again, the user is read and the item error resolved.
    sandbox.faults("northpass", json!({ "failing_answers": [] })).await;
    let run = run_step(&env, ENROLLMENTS, "sync_enrollments", Mode::Full).await;
    assert_eq!((run.status.as_str(), step(&run, "sync_enrollments").errors), ("completed", 0), "{run:#?}");
    assert_ne!(
        sqlx::query_scalar::<_, Option<String>>(read_at).bind(&person).fetch_one(&env.pool).await.unwrap(),
        read_before
    );
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM item_errors WHERE resolved_at IS NULL AND external_id = $1")
            .bind(&person)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(open, 0, "the item error is resolved");
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_behind_the_cursor_is_read_within_the_lookback() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "", "").await;
    let users = |mode| run_step(&env, DAILY, "sync_users", mode);
    assert_eq!(users(Mode::Full).await.status, "completed");
    let cursor: String = env.value("SELECT value FROM cursors WHERE entity = 'users'").await;
    let cursor = chrono::DateTime::parse_from_rfc3339(&cursor).unwrap().timestamp();

    // A person's change lands upstream with a change time 30 s behind the cursor (a late commit).
    let behind = cursor - 30;
    let person = northpass_all(&sandbox, "/people")
        .await
        .into_iter()
        .find(|p| {
            let at = s(&p["attributes"], "updated_at");
            chrono::DateTime::parse_from_rfc3339(&at).is_ok_and(|t| t.timestamp() < behind)
        })
        .map(|p| s(&p, "id"))
        .expect("a person changed before the window");
    let body = json!({"data": {"type": "people", "attributes": {"first_name": "Late"}}});
    northpass_send(&sandbox, reqwest::Method::PATCH, &format!("/people/{person}"), body).await;
    let changed = sandbox.mutate("northpass", "people", json!({"ids": [person], "updated_at": behind})).await;
    assert_eq!(changed["changed"], json!([person]), "{changed}");
    let (_, upstream) =
        get(&format!("{}/people/{person}", sandbox.handle.northpass_url()), &[("X-Api-Key", "np-key")]).await;
    let at = chrono::DateTime::parse_from_rfc3339(&s(&upstream["data"]["attributes"], "updated_at")).unwrap();
    assert_eq!(at.timestamp(), behind, "{upstream}");
    const NAME: &str = "SELECT first_name FROM partner_lms_users WHERE external_id = $1";

    // Without look-back the incremental read asks from the cursor on and misses it.
    let run = users(Mode::Incremental).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    assert_ne!(ids(&env, NAME, &person).await, BTreeSet::from(["Late".to_owned()]), "not read without look-back");

    // With 120 s of look-back it asks from 120 s before the cursor and reads it.
    sqlx::query("UPDATE integrations SET settings = settings || '{\"lookback_secs\": 120}'::jsonb")
        .execute(&env.pool)
        .await
        .unwrap();
    let run = users(Mode::Incremental).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let u = step(&run, "sync_users");
    assert!(u.updated >= 1, "{u:#?}");
    assert_eq!(ids(&env, NAME, &person).await, BTreeSet::from(["Late".to_owned()]), "read within the look-back");
    let source_at: i64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM source_updated_at)::bigint FROM partner_lms_users WHERE external_id = $1",
    )
    .bind(&person)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(source_at, behind);
    worker.stop().await;
    env.finish().await;
}
