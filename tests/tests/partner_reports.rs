//! Failure alerts (webhook and mail, sent once by the fleet's producers) and the partner pack's
//! weekly reports (contents against the database, mail, API). Mail goes to a small SMTP capture
//! server started by the test; the webhook to an axum receiver.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use serde_json::{Value, json};
use syncfleet_shared::chain::Mode;
use syncfleet_store as store;
use syncfleet_tests::{Sandbox, TestEnv, partner::acme_toml};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

/// One message the capture server accepted.
#[derive(Debug, Clone)]
struct Mail {
    from: String,
    to: Vec<String>,
    /// The DATA section, dot-unstuffed, with `\n` line ends.
    data: String,
}

/// A minimal SMTP server: answers 220/250/354/221 and keeps every message.
#[derive(Clone, Default)]
struct SmtpCapture {
    mails: Arc<Mutex<Vec<Mail>>>,
    port: u16,
}

impl SmtpCapture {
    async fn start() -> SmtpCapture {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let capture = SmtpCapture { mails: Arc::default(), port: listener.local_addr().unwrap().port() };
        let mails = capture.mails.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let mails = mails.clone();
                tokio::spawn(async move {
                    let _ = session(socket, mails).await;
                });
            }
        });
        capture
    }

    /// The message bodies, quoted-printable decoded (soft breaks joined, `=XX` as bytes).
    fn body(mail: &Mail) -> String {
        let body = mail.data.split_once("\n\n").map_or("", |(_, b)| b);
        if !mail.data.contains("Content-Transfer-Encoding: quoted-printable") {
            return body.to_owned();
        }
        let joined = body.replace("=\n", "");
        let bytes = joined.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'='
                && i + 2 < bytes.len()
                && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
            {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }

    fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

async fn session(socket: tokio::net::TcpStream, mails: Arc<Mutex<Vec<Mail>>>) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 capture ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().trim_matches(['<', '>']).to_owned();
        } else if upper.starts_with("RCPT TO:") {
            to.push(line[8..].trim().trim_matches(['<', '>']).to_owned());
        } else if upper == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
                data.push('\n');
            }
            mails.lock().unwrap().push(Mail { from: from.clone(), to: std::mem::take(&mut to), data });
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        }
        write.write_all(b"250 ok\r\n").await?;
    }
    Ok(())
}

/// An axum endpoint keeping every JSON body posted to it.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let (url, got, _) = failing_webhook_receiver(0).await;
    (url, got)
}

/// An axum endpoint that answers 503 to its first `fail` posts, then keeps every JSON body posted;
/// the counter holds every post received.
async fn failing_webhook_receiver(fail: usize) -> (String, Arc<Mutex<Vec<Value>>>, Arc<AtomicUsize>) {
    type Hook = (Arc<Mutex<Vec<Value>>>, Arc<AtomicUsize>, usize);
    async fn receive(State((got, seen, fail)): State<Hook>, Json(body): Json<Value>) -> axum::http::StatusCode {
        if seen.fetch_add(1, Ordering::SeqCst) < fail {
            return axum::http::StatusCode::SERVICE_UNAVAILABLE;
        }
        got.lock().unwrap().push(body);
        axum::http::StatusCode::OK
    }
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route("/hook", post(receive)).with_state((got.clone(), seen.clone(), fail));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (url, got, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_whose_webhook_fails_is_sent_again_and_its_mail_only_once() {
    let smtp = SmtpCapture::start().await;
    let (hook, posts, seen) = failing_webhook_receiver(2).await;
    let env = TestEnv::new(&format!(
        "[alerts]\nwebhook_url = \"{hook}\"\nto = [\"oncall@example.com\"]\nretry_secs = 1\nmax_attempts = 4\n\
         smtp = {{ host = \"127.0.0.1\", port = {}, from = \"syncfleet@example.com\" }}\n",
        smtp.port
    ))
    .await;
    env.demo_integration("acme", json!({ "step_ms": 5, "fail": { "left": "always", "right": "never" } })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let failed = env.run_to_end("demo_diamond", "acme", Mode::Full, false).await;
    assert_eq!(failed.status, "failed", "{failed:#?}");

    // Two 503s, then accepted: after 1 s and 2 s.
    env.eventually(Duration::from_secs(30), "the alert webhook, third try", || async {
        (!posts.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(seen.load(Ordering::SeqCst), 3, "two failed posts and one accepted");
    assert_eq!(posts.lock().unwrap().len(), 1);
    assert_eq!(posts.lock().unwrap()[0]["step"], "left");
    assert_eq!(smtp.mails().len(), 1, "the mail went through the first time and is not sent again");
    let (attempts, retry_at, pending): (i32, Option<chrono::DateTime<chrono::Utc>>, Option<Vec<String>>) =
        sqlx::query_as(
            "SELECT alert_attempts, alert_retry_at, alert_pending FROM step_runs WHERE alerted_at IS NOT NULL",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!((attempts, retry_at, pending), (3, None, Some(vec!["webhook".to_owned()])));

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_required_failure_is_alerted_once_by_webhook_and_mail_an_optional_one_never() {
    let smtp = SmtpCapture::start().await;
    let (hook, posts) = webhook_receiver().await;
    let env = TestEnv::new(&format!(
        "[alerts]\nwebhook_url = \"{hook}\"\nto = [\"oncall@example.com\", \"lead@example.com\"]\n\
         smtp = {{ host = \"127.0.0.1\", port = {}, from = \"syncfleet@example.com\" }}\n",
        smtp.port
    ))
    .await;
    // `left` (required, 3 attempts) always fails; in `beta` only the optional `report` fails.
    env.demo_integration("acme", json!({ "step_ms": 5, "fail": { "left": "always", "right": "never" } })).await;
    env.demo_integration("beta", json!({ "step_ms": 5, "fail": { "report": "always", "right": "never" } })).await;
    let producers = [env.spawn_producer().await, env.spawn_producer().await];
    let worker = env.spawn_worker("w").await;

    let failed = env.run_to_end("demo_diamond", "acme", Mode::Full, false).await;
    assert_eq!(failed.status, "failed", "{failed:#?}");
    let partial = env.run_to_end("demo_diamond", "beta", Mode::Full, false).await;
    assert_eq!(partial.status, "partial", "{partial:#?}");

    env.eventually(Duration::from_secs(20), "the alert webhook and mail", || async {
        (!posts.lock().unwrap().is_empty() && !smtp.mails().is_empty()).then_some(())
    })
    .await;
    // Both producers keep reconciling: nothing more may arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let posts = posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1, "{posts:#?}");
    let alert = &posts[0];
    assert_eq!(alert["chain"], "demo_diamond");
    assert_eq!(alert["integration"], "acme");
    assert_eq!(alert["run_id"], failed.id.to_string());
    assert_eq!(alert["step"], "left");
    assert_eq!(alert["attempts"], 3);
    assert!(alert["error"].as_str().unwrap().contains("left is configured to fail"), "{alert}");

    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let mail = &mails[0];
    assert_eq!(mail.from, "syncfleet@example.com");
    assert_eq!(mail.to, ["oncall@example.com", "lead@example.com"]);
    assert!(mail.data.contains("Subject: [syncfleet] demo_diamond failed: step left for acme"), "{}", mail.data);
    for needle in [&failed.id.to_string(), "left is configured to fail", "integration: acme"] {
        assert!(mail.data.contains(needle), "{needle} in {}", mail.data);
    }
    let claimed: i64 = env.value("SELECT count(*) FROM step_runs WHERE alerted_at IS NOT NULL").await;
    assert_eq!(claimed, 1);

    worker.stop().await;
    for p in producers {
        p.stop().await;
    }
    env.finish().await;
}

/// HTML escaping as the reports promise it: markup characters as entities, non-ASCII as references.
fn esc(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c if c.is_ascii() => c.to_string(),
            c => format!("&#x{:x};", c as u32),
        })
        .collect()
}

/// Per active partner, computed here from the synced tables: (id, name, tier, manager key,
/// certifications, NPCU, new users). A user counts for their contact's partner, else for the
/// partner of a linked group they are a confirmed member of; a certification is a completed
/// enrollment in a course with NPCU above 0.
const EXPECTED_SQL: &str = "
    WITH person_partner AS (
        SELECT u.external_id AS person_id, u.created_at,
               COALESCE(u.partner_id, min(l.partner_id)) AS partner_id
        FROM partner_lms_users u
        LEFT JOIN partner_group_memberships m ON m.person_id = u.external_id AND m.is_active AND m.status = 'confirmed'
        LEFT JOIN partner_group_links l ON l.external_id = m.group_id AND l.is_active
        WHERE u.is_active
        GROUP BY u.external_id, u.created_at, u.partner_id
    )
    SELECT p.external_id, COALESCE(p.name, ''), COALESCE(p.tier, ''),
           COALESCE(NULLIF(lower(btrim(p.owner_email)), ''), NULLIF(btrim(p.owner_name), ''), '(unassigned)'),
           (SELECT count(*) FROM person_partner pp
              JOIN partner_enrollments e ON e.person_id = pp.person_id AND e.is_active AND e.completed_at IS NOT NULL
              JOIN partner_course_npcu n ON n.external_id = e.course_id AND n.is_active AND n.npcu > 0
             WHERE pp.partner_id = p.external_id),
           (SELECT COALESCE(sum(n.npcu), 0)::bigint FROM person_partner pp
              JOIN partner_enrollments e ON e.person_id = pp.person_id AND e.is_active AND e.completed_at IS NOT NULL
              JOIN partner_course_npcu n ON n.external_id = e.course_id AND n.is_active AND n.npcu > 0
             WHERE pp.partner_id = p.external_id),
           (SELECT count(*) FROM person_partner pp
             WHERE pp.partner_id = p.external_id AND pp.created_at > now() - interval '7 days')
    FROM partner_partners p WHERE p.is_active ORDER BY p.external_id";

type Expected = (String, String, String, String, i64, i64, i64);

async fn html_of(api: &syncfleet_tests::Api, id: &str) -> (u16, String, String) {
    let resp = api
        .http
        .get(format!("{}/api/reports/{id}", api.base))
        .bearer_auth(api.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weekly_reports_match_the_database_are_mailed_and_served() {
    let sandbox = Sandbox::start().await;
    let smtp = SmtpCapture::start().await;
    let reports = format!(
        r#"reports = {{ smtp = {{ host = "127.0.0.1", port = {port}, from = "partners@example.com" }}, executive_recipients = ["vp@example.com", "cro@example.com"] }}"#,
        port = smtp.port
    );
    let toml = acme_toml(&sandbox, "", &reports);
    let env = TestEnv::new(&toml).await;
    let worker = env.spawn_worker("w").await;
    let producer = env.spawn_producer().await;
    let daily = env.run_to_end("partner_daily", "acme", Mode::Full, false).await;
    assert!(matches!(daily.status.as_str(), "completed" | "partial"), "{daily:#?}");

    // The manager with the most partners gets their report at a configured address; one of their
    // partners gets a name that must be escaped.
    let pam: String = env
        .value(
            "SELECT lower(btrim(owner_email)) FROM partner_partners WHERE is_active AND owner_email IS NOT NULL
             GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
        )
        .await;
    let renamed: String = env
        .value(&format!(
            "UPDATE partner_partners SET name = 'Acme <script>x</script> & \"Sons\" M\u{fc}ller'
             WHERE id = (SELECT min(id) FROM partner_partners WHERE is_active AND lower(btrim(owner_email)) = '{pam}')
             RETURNING external_id"
        ))
        .await;
    let mut settings: Value = env.value("SELECT settings FROM integrations WHERE name = 'acme'").await;
    settings["reports"]["pam_recipients"] = json!({ pam.to_uppercase(): ["pam-desk@example.com"] });
    store::upsert_integration(&env.pool, "acme", "partner", &settings).await.unwrap();

    let weekly = env.run_to_end("partner_weekly_reports", "acme", Mode::Full, false).await;
    assert_eq!(weekly.status, "completed", "{weekly:#?}");

    let expected: Vec<Expected> = sqlx::query_as(EXPECTED_SQL).fetch_all(&env.pool).await.unwrap();
    assert!(expected.iter().map(|e| e.4).sum::<i64>() > 0, "the sandbox has certified partner users");
    let managers: std::collections::BTreeSet<&str> = expected.iter().map(|e| e.3.as_str()).collect();
    let stored: Vec<(i64, String, String, Vec<String>, String)> =
        sqlx::query_as("SELECT id, kind, recipient, sent_to, html FROM reports ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let pam_reports: Vec<_> = stored.iter().filter(|r| r.1 == "pam_weekly").collect();
    assert_eq!(pam_reports.len(), managers.len());
    assert_eq!(pam_reports.iter().map(|r| r.2.as_str()).collect::<std::collections::BTreeSet<_>>(), managers);

    // The manager's report: one exact line per partner of theirs, escaped.
    let mine = pam_reports.iter().find(|r| r.2 == pam).expect("the manager's report");
    assert_eq!(mine.3, ["pam-desk@example.com"]);
    let theirs: Vec<&Expected> = expected.iter().filter(|e| e.3 == pam).collect();
    assert_eq!(mine.4.matches("<tr data-partner=").count(), theirs.len());
    for (id, name, tier, _, certs, npcu, new) in &theirs {
        let row = format!(
            "<tr data-partner=\"{}\"><td>{}</td><td>{}</td><td>{certs}</td><td>{npcu}</td><td>{new}</td><td>0</td></tr>",
            esc(id),
            esc(name),
            esc(tier)
        );
        assert!(mine.4.contains(&row), "{row}\nin\n{}", mine.4);
    }
    assert!(theirs.iter().any(|e| e.0 == renamed));
    assert!(mine.4.contains("Acme &lt;script&gt;x&lt;/script&gt; &amp; &quot;Sons&quot; M&#xfc;ller"));
    assert!(!mine.4.contains("<script>") && mine.4.is_ascii());

    // The executive rollup: totals and sync health.
    let exec = stored.iter().find(|r| r.1 == "executive_weekly").expect("the executive report");
    assert_eq!(stored.iter().filter(|r| r.1 == "executive_weekly").count(), 1);
    assert_eq!(exec.3, ["vp@example.com", "cro@example.com"]);
    let total = |f: fn(&Expected) -> i64| expected.iter().map(f).sum::<i64>();
    for (id, label, n) in [
        ("partners", "Active partners", expected.len() as i64),
        ("certifications", "Certifications", total(|e| e.4)),
        ("npcu", "Total NPCU", total(|e| e.5)),
        ("new-users", "New users", total(|e| e.6)),
        ("offboarded-users", "Offboarded users", 0),
    ] {
        let row = format!("<tr id=\"{id}\"><th>{label}</th><td>{n}</td></tr>");
        assert!(exec.4.contains(&row), "{row}\nin\n{}", exec.4);
    }
    let runs: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM chain_runs WHERE id <> $1 GROUP BY status")
            .bind(uuid::Uuid::parse_str(&weekly.id).unwrap())
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(!runs.is_empty());
    for (status, n) in runs {
        let row = format!("<tr data-status=\"{status}\"><td>{status}</td><td>{n}</td></tr>");
        assert!(exec.4.contains(&row), "{row}\nin\n{}", exec.4);
    }
    let open: i64 = env.value("SELECT count(*) FROM item_errors WHERE resolved_at IS NULL").await;
    assert!(exec.4.contains(&format!("<tr id=\"open-item-errors\"><td>Open item errors</td><td>{open}</td></tr>")));

    // Mail: the executive report and the manager's report arrived with their HTML; other managers
    // got theirs at their own address.
    let mails = smtp.mails();
    let exec_mail = mails.iter().find(|m| m.to == ["vp@example.com", "cro@example.com"]).expect("executive mail");
    assert_eq!(exec_mail.from, "partners@example.com");
    assert!(exec_mail.data.contains("Content-Type: text/html"), "{}", exec_mail.data);
    assert_eq!(SmtpCapture::body(exec_mail).trim_end(), exec.4.trim_end());
    let pam_mail = mails.iter().find(|m| m.to == ["pam-desk@example.com"]).expect("the manager's mail");
    assert_eq!(SmtpCapture::body(pam_mail).trim_end(), mine.4.trim_end());
    let other = pam_reports.iter().find(|r| r.2 != pam && r.2.contains('@')).expect("another manager");
    assert_eq!(other.3, std::slice::from_ref(&other.2));
    assert!(mails.iter().any(|m| m.to == [other.2.clone()] && SmtpCapture::body(m).trim_end() == other.4.trim_end()));
    assert_eq!(mails.len(), stored.iter().filter(|r| !r.3.is_empty()).count());

    // The API lists them without HTML and serves each one's HTML.
    let api = env.api(&producer, "viewer").await;
    let (status, list) = api.get("/api/reports?limit=1000").await;
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), stored.len());
    assert!(list.iter().all(|r| r.get("html").is_none() && r["integration"] == "acme"));
    let listed = list.iter().find(|r| r["kind"] == "executive_weekly").unwrap();
    assert_eq!(listed["id"], exec.0);
    assert_eq!(listed["recipient"], "executive");
    let (status, ct, body) = html_of(&api, &exec.0.to_string()).await;
    assert_eq!((status, body.as_str()), (200, exec.4.as_str()));
    assert!(ct.starts_with("text/html"), "{ct}");
    let (status, _, body) = html_of(&api, &mine.0.to_string()).await;
    assert_eq!((status, body.as_str()), (200, mine.4.as_str()));
    assert_eq!(html_of(&api, "987654321").await.0, 404);
    assert_eq!(html_of(&api, "abc").await.0, 400);
    let (status, kinds) = api.get("/api/reports?kind=executive_weekly").await;
    assert_eq!((status, kinds.as_array().unwrap().len()), (200, 1));

    // A retried report step mails nothing twice. The state of a step that mailed and then died
    // before its completion committed: its report rows gone (rolled back), the step failed; resume
    // runs it again in the same run.
    let pam_rows = pam_reports.len() as u64;
    let removed = sqlx::query("DELETE FROM reports WHERE kind = 'pam_weekly'").execute(&env.pool).await.unwrap();
    assert_eq!(removed.rows_affected(), pam_rows);
    sqlx::query(
        "UPDATE step_runs SET status = 'failed', error = 'worker lost after mailing' WHERE step = 'pam_weekly_report'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE chain_runs SET status = 'partial' WHERE id = $1::text::uuid")
        .bind(weekly.id.to_string())
        .execute(&env.pool)
        .await
        .unwrap();
    env.ops.resume(weekly.id.parse().unwrap(), "test").await.unwrap();
    let again = env.wait(weekly.id.parse().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(again.status, "completed", "{again:#?}");
    assert_eq!(smtp.mails().len(), mails.len(), "no report was mailed a second time");
    let restored: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT recipient, sent_to FROM reports WHERE kind = 'pam_weekly' ORDER BY recipient")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let mut before: Vec<(String, Vec<String>)> = pam_reports.iter().map(|r| (r.2.clone(), r.3.clone())).collect();
    before.sort();
    assert_eq!(restored, before, "stored again with the addresses they were mailed to");

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}
