//! Failure alerts (webhook and mail, sent once by the fleet's producers) and the partner pack's
//! weekly reports (contents against the database, mail, API). Mail goes to a small SMTP capture
//! server started by the test; the webhook to an axum receiver.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use serde_json::{Value, json};
use syncfleet_shared::chain::Mode;
use syncfleet_tests::TestEnv;
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
    async fn receive(State(got): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Value>) -> &'static str {
        got.lock().unwrap().push(body);
        "ok"
    }
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = Router::new().route("/hook", post(receive)).with_state(got.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (url, got)
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
