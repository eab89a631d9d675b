//! The partner pack's LMS learning steps against the sandbox at `small` scale: `group_members_sync`
//! (pending memberships confirmed or removed), `sync_enrollments` (partner users only, fanned out in
//! shards) and `sync_to_impartner` (counts pushed with the push engine, read back from the sandbox's
//! write log). Expectations are computed from the sandbox's own APIs, independently of the pack.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use syncfleet_shared::chain::Mode;
use syncfleet_store::views::RunView;
use syncfleet_tests::partner::{acme_toml, get, impartner_all, northpass_all, s, step};
use syncfleet_tests::{Running, Sandbox, TestEnv};

const DAILY: &str = "partner_daily";
const ENROLLMENTS: &str = "partner_enrollments";
const CERTS: &str = "Nintex_CE_Certifications__cf";
const NPCU: &str = "Total_NPCU__cf";

async fn env_for(sandbox: &Sandbox) -> (TestEnv, Running) {
    let toml = acme_toml(sandbox, "", "");
    let env = TestEnv::new(&toml).await;
    let worker = env.spawn_worker("w").await;
    (env, worker)
}

/// Runs one step of `chain` on its own and waits for the run to end.
async fn run_step(env: &TestEnv, chain: &str, step: &str, mode: Mode) -> RunView {
    env.run_step(chain, "acme", step, mode).await
}

/// The sandbox's world as the issue defines it, computed from its APIs (and the group links whose
/// correctness `partner_pack.rs` checks).
struct World {
    /// Person id → the partner they count for (contact's partner, else the smallest linked group's).
    partner_of: BTreeMap<String, String>,
    /// Person id → transcript items.
    transcripts: BTreeMap<String, Vec<Value>>,
    /// Course id → NPCU (courses whose properties answer).
    npcu: BTreeMap<String, i64>,
    /// Accounts the push may write: valid tier, active.
    valid_accounts: BTreeSet<String>,
    /// Group id → member person ids, for "All Partners" and every linked group.
    members: BTreeMap<String, BTreeSet<String>>,
}

impl World {
    async fn read(sandbox: &Sandbox, env: &TestEnv) -> World {
        let accounts = impartner_all(sandbox, "Account").await;
        let partner = |a: &Value| {
            !a["partner_Tier__cf"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("pending"))
                && !a["account_Status__cf"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("inactive"))
        };
        let partners: BTreeSet<String> = accounts.iter().filter(|a| partner(a)).map(|a| a["id"].to_string()).collect();
        let valid_accounts = accounts
            .iter()
            .filter(|a| partner(a))
            .filter(|a| a["partner_Tier__cf"].as_str().is_some_and(|t| !t.trim().is_empty()))
            .filter(|a| a["isActive"].as_bool() != Some(false))
            .map(|a| a["id"].to_string())
            .collect();
        let contacts: BTreeMap<String, String> = impartner_all(sandbox, "User")
            .await
            .iter()
            .filter(|u| {
                let e = s(u, "email").to_lowercase();
                !e.ends_with("@nintex.com") && !e.starts_with("test.user")
            })
            .map(|u| (s(u, "email").to_lowercase(), u["accountId"].to_string()))
            .collect();
        let links: Vec<(String, String)> =
            sqlx::query_as("SELECT external_id, partner_id FROM partner_group_links WHERE is_active")
                .fetch_all(&env.pool)
                .await
                .unwrap();
        let groups = northpass_all(sandbox, "/groups").await;
        let all_partners = groups.iter().find(|g| g["attributes"]["name"] == "All Partners").map(|g| s(g, "id"));
        let mut members = BTreeMap::new();
        let mut group_partners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (group, _) in links.iter().map(|(g, p)| (g.clone(), Some(p))).chain(all_partners.map(|g| (g, None))) {
            let people: BTreeSet<String> = northpass_all(sandbox, &format!("/groups/{group}/memberships"))
                .await
                .iter()
                .map(|m| m.pointer("/relationships/person/data/id").and_then(Value::as_str).unwrap().to_owned())
                .collect();
            if let Some((_, p)) = links.iter().find(|(g, _)| *g == group) {
                for person in &people {
                    group_partners.entry(person.clone()).or_default().insert(p.clone());
                }
            }
            members.insert(group, people);
        }
        let mut partner_of = BTreeMap::new();
        let mut transcripts = BTreeMap::new();
        for p in northpass_all(sandbox, "/people").await {
            let id = s(&p, "id");
            let by_contact =
                contacts.get(&s(&p["attributes"], "email").to_lowercase()).filter(|a| partners.contains(*a)).cloned();
            if let Some(partner) = by_contact.or_else(|| group_partners.get(&id).and_then(|g| g.first().cloned())) {
                partner_of.insert(id.clone(), partner);
            }
            transcripts.insert(id.clone(), northpass_all(sandbox, &format!("/transcripts/{id}")).await);
        }
        let mut npcu = BTreeMap::new();
        for c in northpass_all(sandbox, "/courses").await {
            let id = s(&c, "id");
            let (status, body) =
                get(&format!("{}/properties/courses/{id}", sandbox.handle.northpass_url()), &[("X-Api-Key", "np-key")])
                    .await;
            if status == 200 {
                let n = body.pointer("/data/attributes/properties/npcu").and_then(Value::as_str);
                npcu.insert(id, n.and_then(|n| n.parse().ok()).unwrap_or(0));
            }
        }
        World { partner_of, transcripts, npcu, valid_accounts, members }
    }

    /// Enrollment rows as `partner_enrollments` should hold them: partner users' transcript items.
    fn enrollments(&self) -> BTreeMap<String, Vec<Option<String>>> {
        self.partner_of
            .keys()
            .flat_map(|person| {
                self.transcripts[person].iter().map(move |t| {
                    let a = &t["attributes"];
                    let text = |k: &str| a[k].as_str().map(str::to_owned);
                    (
                        format!("{person}:{}", s(a, "resource_id")),
                        vec![
                            text("name"),
                            text("progress_status"),
                            text("enrolled_at"),
                            text("completed_at"),
                            Some(a["attempt_number"].to_string()),
                        ],
                    )
                })
            })
            .collect()
    }

    /// What Impartner should hold per valid account: certifications and total NPCU.
    fn counts(&self) -> BTreeMap<String, (i64, i64)> {
        let mut out: BTreeMap<String, (i64, i64)> = self.valid_accounts.iter().map(|a| (a.clone(), (0, 0))).collect();
        for (person, partner) in &self.partner_of {
            let Some(c) = out.get_mut(partner) else { continue };
            for t in &self.transcripts[person] {
                let a = &t["attributes"];
                let n = self.npcu.get(&s(a, "resource_id")).copied().unwrap_or(0);
                if a["completed_at"].is_string() && n > 0 {
                    c.0 += 1;
                    c.1 += n;
                }
            }
        }
        out
    }
}

async fn enrollment_rows(env: &TestEnv) -> BTreeMap<String, Vec<Option<String>>> {
    let ts = |c: &str| format!("to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')");
    let sql = format!(
        "SELECT external_id, ARRAY[course_name, progress_status, {}, {}, attempt_number::text]
         FROM partner_enrollments WHERE is_active",
        ts("enrolled_at"),
        ts("completed_at")
    );
    let rows: Vec<(String, Vec<Option<String>>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&env.pool).await.unwrap();
    rows.into_iter().collect()
}

/// The Impartner account fields patched since the last writes reset.
async fn patched(sandbox: &Sandbox) -> BTreeMap<String, (i64, i64)> {
    let writes = sandbox.control(reqwest::Method::GET, "/writes", None).await;
    let Some(accounts) = writes.pointer("/impartner/patched_fields/Account").and_then(Value::as_object) else {
        return BTreeMap::new();
    };
    accounts
        .iter()
        .map(|(id, f)| (id.clone(), (f[CERTS].as_i64().unwrap_or(-1), f[NPCU].as_i64().unwrap_or(-1))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_confirmed_and_partner_users_enrollments_equal_the_sandbox_in_shards() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_for(&sandbox).await;
    // Pending memberships in "All Partners": one the LMS has, one it does not.
    let groups = northpass_all(&sandbox, "/groups").await;
    let all = s(groups.iter().find(|g| g["attributes"]["name"] == "All Partners").unwrap(), "id");
    let members: BTreeSet<String> = northpass_all(&sandbox, &format!("/groups/{all}/memberships"))
        .await
        .iter()
        .map(|m| m.pointer("/relationships/person/data/id").and_then(Value::as_str).unwrap().to_owned())
        .collect();
    let people = northpass_all(&sandbox, "/people").await;
    let outsider = people.iter().map(|p| s(p, "id")).find(|id| !members.contains(id)).unwrap();
    let insider = members.iter().next().unwrap().clone();
    for person in [&insider, &outsider] {
        sqlx::query(
            "INSERT INTO partner_group_memberships (integration_id, external_id, group_id, person_id, status)
             SELECT id, $1 || ':' || $2, $1, $2, 'pending' FROM integrations WHERE name = 'acme'",
        )
        .bind(&all)
        .bind(person)
        .execute(&env.pool)
        .await
        .unwrap();
    }

    let run = env.run_to_end(DAILY, "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let transcript_calls = sandbox.counter("northpass", "GET", "/transcripts/{person_id}", "requests").await;
    let world = World::read(&sandbox, &env).await;

    // Memberships: every member of the groups read, confirmed; the unknown pending one removed.
    let expected: BTreeSet<String> =
        world.members.iter().flat_map(|(g, people)| people.iter().map(move |p| format!("{g}:{p}"))).collect();
    let local: Vec<(String, String)> =
        sqlx::query_as("SELECT external_id, status FROM partner_group_memberships WHERE is_active")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(local.iter().all(|(_, status)| status == "confirmed"), "{local:?}");
    assert_eq!(local.into_iter().map(|(id, _)| id).collect::<BTreeSet<_>>(), expected, "memberships equal the LMS's");
    let removed: bool = sqlx::query_scalar(
        "SELECT NOT is_active AND deleted_at IS NOT NULL FROM partner_group_memberships WHERE external_id = $1",
    )
    .bind(format!("{all}:{outsider}"))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(removed, "a pending membership the LMS does not have is removed");
    let m = step(&run, "group_members_sync");
    assert!(m.guard.as_deref().unwrap_or("").contains("pending: 2 membership(s), 1 confirmed, 1 removed"), "{m:#?}");

    // Enrollments: partner users' transcripts, row by row; nobody else's.
    let expected = world.enrollments();
    let local = enrollment_rows(&env).await;
    assert_eq!(local, expected, "enrollments equal the partner users' transcripts");
    let outsiders_with_transcripts =
        world.transcripts.iter().filter(|(p, t)| !world.partner_of.contains_key(*p) && !t.is_empty()).count();
    assert!(outsiders_with_transcripts > 10, "non-partner users have enrollments upstream");
    let stored_persons: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT person_id FROM partner_enrollments").fetch_all(&env.pool).await.unwrap();
    assert!(stored_persons.iter().all(|p| world.partner_of.contains_key(p)), "no non-partner user has a row");

    // Shards: all four succeeded, one transcript call per partner user between them.
    let shards: Vec<(i32, String, i64)> = sqlx::query_as(
        "SELECT shard, status, api_calls FROM step_runs
         WHERE run_id = $1::text::uuid AND step = 'sync_enrollments' ORDER BY shard",
    )
    .bind(run.id.to_string())
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(shards.len(), 4, "{shards:?}");
    assert!(shards.iter().all(|(_, status, calls)| status == "succeeded" && *calls > 0), "{shards:?}");
    let e = step(&run, "sync_enrollments");
    assert_eq!((e.shards, e.shards_done, e.status.as_str()), (4, 4, "succeeded"), "{e:#?} {shards:?}");
    // Each shard read its own users only (the shard of a person id is PostgreSQL's): what each
    // shard inserted is exactly the rows of its users, and every shard has some.
    let mut rows_of_shard = [0i64; 4];
    let rows_per_person: Vec<(String, i64)> =
        sqlx::query_as("SELECT person_id, count(*) FROM partner_enrollments GROUP BY person_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for (person, rows) in rows_per_person {
        let shard: i32 = sqlx::query_scalar(syncfleet_pack_partner::SHARD_OF_SQL)
            .bind(&person)
            .bind(4)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        rows_of_shard[shard as usize] += rows;
    }
    let inserted: Vec<i64> = sqlx::query_scalar(
        "SELECT inserted FROM step_runs WHERE run_id = $1::text::uuid AND step = 'sync_enrollments' ORDER BY shard",
    )
    .bind(run.id.to_string())
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let per_shard: Vec<(i64, i64)> = inserted.into_iter().zip(rows_of_shard).collect();
    assert!(per_shard.iter().all(|(inserted, rows)| inserted == rows && *rows > 0), "{per_shard:?}");
    let partner_users = world.partner_of.len() as i64;
    assert_eq!(e.api_calls, partner_users, "one transcript call per partner user: {e:#?}");
    assert_eq!(transcript_calls, partner_users, "the sandbox saw the same calls");
    assert_eq!(e.inserted, expected.len() as i64, "{e:#?}");
    println!(
        "figures: {partner_users} partner users of {} people, {} enrollments stored, transcript calls {}, shards {shards:?}",
        people.len(),
        expected.len(),
        e.api_calls
    );

    // Incremental. A profile edit (5 % of people) reads no transcript; progress on 5 % of the
    // enrollments (the person's activity) reads exactly the partner users whose transcript changed.
    // One member leaves "All Partners": only that group's memberships are read again.
    sandbox.mutate("northpass", "people", json!({"change_percent": 5})).await;
    sandbox.mutate("northpass", "enrollments", json!({"change_percent": 5})).await;
    let leaver = insider.clone();
    let resp = reqwest::Client::new()
        .delete(format!("{}/groups/{all}/relationships/people", sandbox.handle.northpass_url()))
        .header("X-Api-Key", "np-key")
        .json(&json!({"data": [{"type": "people", "id": leaver}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    sandbox.reset_counters().await;
    let daily = env.run_to_end(DAILY, "acme", Mode::Incremental, false).await;
    assert_eq!(daily.status, "completed", "{daily:#?}");
    let now = World::read(&sandbox, &env).await;
    assert_eq!(now.partner_of, world.partner_of, "nothing here changes who is a partner user");
    let progressed = now.partner_of.keys().filter(|p| now.transcripts[*p] != world.transcripts[*p]).count() as i64;
    assert!(progressed > 0, "some partner users progressed");
    let e = step(&daily, "sync_enrollments");
    assert_eq!(e.mode.as_deref(), Some("incremental"));
    assert_eq!(e.api_calls, progressed, "incremental reads the partner users who progressed, no one else: {e:#?}");
    assert_eq!(enrollment_rows(&env).await, now.enrollments(), "enrollments equal the transcripts again");

    let m = step(&daily, "group_members_sync");
    assert!(m.guard.as_deref().unwrap_or("").contains("1 group(s) read (changed"), "{m:#?}");
    let full_reads = step(&run, "group_members_sync").api_calls;
    assert_eq!(m.deactivated, 1, "the leaver removed: {m:#?}");
    assert!(m.api_calls * 5 < full_reads, "one group's pages, not every group's ({full_reads} in full): {m:#?}");
    let expected: BTreeSet<String> =
        now.members.iter().flat_map(|(g, people)| people.iter().map(move |p| format!("{g}:{p}"))).collect();
    let local: BTreeSet<String> =
        sqlx::query_scalar("SELECT external_id FROM partner_group_memberships WHERE is_active")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert!(!expected.contains(&format!("{all}:{leaver}")));
    assert_eq!(local, expected, "memberships equal the LMS's after the incremental read");
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_pushed_to_valid_partners_then_only_changes() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_for(&sandbox).await;
    let run = env.run_to_end(DAILY, "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let world = World::read(&sandbox, &env).await;

    // Full: every valid partner's counts, in bulk PATCHes of 50; nothing to Pending, blank or inactive.
    let expected = world.counts();
    let pushed = patched(&sandbox).await;
    assert_eq!(pushed, expected, "the write log holds each valid partner's counts");
    assert!(expected.values().filter(|c| c.0 > 0).count() > 3, "some partners have certifications: {expected:?}");
    let blank_or_pending = impartner_all(&sandbox, "Account")
        .await
        .iter()
        .filter(|a| a["partner_Tier__cf"].as_str().is_none_or(|t| t.trim().is_empty() || t == "Pending"))
        .count();
    assert!(blank_or_pending > 0 && !pushed.is_empty());
    let bulk = sandbox.counter("impartner", "PATCH", "/{object}", "requests").await;
    assert_eq!(bulk, expected.len().div_ceil(50) as i64, "bulk PATCHes of 50");
    let p = step(&run, "sync_to_impartner");
    assert_eq!((p.status.as_str(), p.updated, p.errors), ("succeeded", expected.len() as i64, 0), "{p:#?}");

    // A second incremental push sends nothing.
    sandbox.control(reqwest::Method::POST, "/writes/reset", None).await;
    let again = run_step(&env, ENROLLMENTS, "sync_to_impartner", Mode::Incremental).await;
    assert_eq!(again.status, "completed", "{again:#?}");
    assert!(patched(&sandbox).await.is_empty(), "nothing changed, nothing pushed");
    assert_eq!(sandbox.counter("impartner", "PATCH", "/{object}", "requests").await, bulk);
    let p = step(&again, "sync_to_impartner");
    assert_eq!((p.updated, p.unchanged, p.api_calls), (0, expected.len() as i64, 0), "{p:#?}");

    // An enrollment of a partner user completes in an NPCU course: only that partner is pushed.
    let item_of: BTreeMap<String, (String, String, bool)> = world
        .transcripts
        .iter()
        .flat_map(|(person, items)| {
            items.iter().map(move |t| {
                let a = &t["attributes"];
                (s(t, "id"), (person.clone(), s(a, "resource_id"), a["completed_at"].is_string()))
            })
        })
        .collect();
    let counts_for = |(person, course, done): &(String, String, bool)| {
        !done
            && world.partner_of.get(person).is_some_and(|p| world.valid_accounts.contains(p))
            && world.npcu.get(course).is_some_and(|n| *n > 0)
    };
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 40, "no enrollment that changes a partner's counts was picked");
        let m = sandbox.mutate("northpass", "enrollments", json!({"change_percent": 1})).await;
        let hit =
            m["changed"].as_array().unwrap().iter().any(|id| item_of.get(id.as_str().unwrap()).is_some_and(counts_for));
        if hit {
            break;
        }
    }
    let now = World::read(&sandbox, &env).await.counts();
    let changed: BTreeMap<String, (i64, i64)> =
        now.iter().filter(|(id, c)| expected.get(*id) != Some(c)).map(|(id, c)| (id.clone(), *c)).collect();
    assert!(!changed.is_empty());
    let e = run_step(&env, ENROLLMENTS, "sync_enrollments", Mode::Full).await;
    assert_eq!(e.status, "completed", "{e:#?}");
    let p = run_step(&env, ENROLLMENTS, "sync_to_impartner", Mode::Incremental).await;
    assert_eq!(p.status, "completed", "{p:#?}");
    assert_eq!(patched(&sandbox).await, changed, "only the partners whose counts changed are pushed");
    assert_eq!(step(&p, "sync_to_impartner").updated, changed.len() as i64);
    println!("figures: {} valid partners pushed in {bulk} PATCH(es); then {} changed", expected.len(), changed.len());
    worker.stop().await;
    env.finish().await;
}
