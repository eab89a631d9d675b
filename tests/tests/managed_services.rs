//! Managed services: a chain over `rediss://` (a private `redis-server` with TLS and a throwaway CA,
//! its URL read from a mounted file), and alert and report mail over STARTTLS with AUTH (aiosmtpd
//! from PyPI in target/smtp-venv, `scripts/test.sh` installs it).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use syncfleet_sdk::{mail, secrets::SecretPolicy};
use syncfleet_shared::{chain::Mode, config::RedisConfig, ids::RunId, secret::Secret};
use syncfleet_store::queue::QueueClient;
use syncfleet_tests::{Sandbox, TestEnv, binary, partner::acme_toml, signal};

/// A throwaway CA and a server certificate it signed for `127.0.0.1` and `localhost`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    fn generate(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("syncfleet-pki-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=syncfleet test CA"]);
        openssl(&ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
        openssl(&csr);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        Pki { dir }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private `redis-server` answering TLS only (`--port 0`), clients not asked for certificates.
struct TlsRedis {
    port: u16,
    child: std::process::Child,
}

impl TlsRedis {
    fn start(pki: &Pki) -> TlsRedis {
        let port = free_port();
        let path = |p: PathBuf| p.display().to_string();
        let mut child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &path(pki.cert()), "--tls-key-file", &path(pki.key())])
            .args(["--tls-ca-cert-file", &path(pki.ca()), "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-server on PATH");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).ok();
                panic!("redis-server exited ({status}); is it built with TLS? {err}");
            }
            assert!(start.elapsed() < Duration::from_secs(10), "the TLS redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { port, child }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

async fn stop(mut child: tokio::process::Child) {
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "clean exit after SIGTERM: {status:?}");
}

/// A producer and a worker process reach Redis over TLS only (`rediss://`, the URL read from a
/// file as a mounted secret, the server's certificate verified against `redis.ca_file`), and the
/// demo chain runs through it. Without the CA the certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_runs_over_rediss_with_a_private_ca() {
    let pki = Pki::generate("redis");
    let redis = TlsRedis::start(&pki);

    // Verification is on: the system's roots do not know the throwaway CA.
    let refused = QueueClient::connect(&redis.url(), "sft-refused").await.err().expect("an unknown CA is refused");
    assert!(refused.to_string().to_lowercase().contains("certificate"), "{refused}");
    let config = RedisConfig {
        url: Secret::new(redis.url()),
        url_file: None,
        ca_file: Some(pki.ca()),
        namespace: "sft-probe".into(),
    };
    QueueClient::connect_to(&config).await.expect("connect with the CA").ping().await.expect("PING over TLS");
    let missing = RedisConfig { ca_file: Some(pki.dir.join("no-such-ca.pem")), ..config };
    let err = QueueClient::connect_to(&missing).await.err().expect("a missing CA file fails").to_string();
    assert!(err.contains("redis.ca_file") && err.contains("no-such-ca.pem"), "{err}");

    // The database is prepared by the harness (its own Redis connection is the shared plain one,
    // which this test never pushes to); the processes get `rediss://` from a file.
    let env = TestEnv::new("[schedules.demo_diamond.acme]\ninterval_secs = 3600\n").await;
    env.demo_integration("acme", json!({ "step_ms": 10 })).await;
    let url_file = pki.dir.join("redis-url");
    std::fs::write(&url_file, format!("{}\n", redis.url())).unwrap();
    let over_tls = |cmd: &mut tokio::process::Command| {
        cmd.env("SYNCFLEET__REDIS__URL_FILE", &url_file).env("SYNCFLEET__REDIS__CA_FILE", pki.ca());
    };
    let mut worker = env.worker_process(&format!("tls-w-{}", env.id));
    over_tls(&mut worker);
    let worker = worker.spawn().expect("spawn syncfleet-worker");
    let mut producer = tokio::process::Command::new(binary("syncfleet-producer"));
    producer
        .env("SYNCFLEET_CONFIG", &env.config_path)
        .env("SYNCFLEET_LOG", "warn")
        .env("SYNCFLEET__PRODUCER__STARTUP_TRIGGER", "true")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    over_tls(&mut producer);
    let producer = producer.spawn().expect("spawn syncfleet-producer");

    let run: uuid::Uuid = env
        .eventually(Duration::from_secs(30), "the producer's start-up run", || async {
            sqlx::query_scalar("SELECT id FROM chain_runs WHERE chain = 'demo_diamond'")
                .fetch_optional(&env.pool)
                .await
                .unwrap()
        })
        .await;
    let view = env.wait(RunId(run), Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let done: std::collections::BTreeSet<&str> =
        view.steps.iter().filter(|s| s.status == "succeeded").map(|s| s.step.as_str()).collect();
    assert_eq!(done.len(), 5, "every step of the diamond succeeded: {view:#?}");

    // The jobs went through the TLS server: its keys carry the test's namespace.
    let client = redis::Client::build_with_tls(
        redis.url(),
        redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(pki.ca()).unwrap()) },
    )
    .unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("sft-{}:*", env.id)).query_async(&mut conn).await.unwrap();
    assert!(!keys.is_empty(), "no key of the namespace in the TLS redis");

    stop(worker).await;
    stop(producer).await;
    env.finish().await;
}

/// aiosmtpd with a STARTTLS-only listener requiring AUTH (PLAIN or LOGIN) as `user`/`password`,
/// writing each message it accepts as a JSON line to `messages.jsonl` and each AUTH try to
/// `auth.jsonl`.
const SMTP_SERVER: &str = r#"
import asyncio, json, ssl, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, out, user, password = sys.argv[1:7]

def record(name, value):
    with open(f"{out}/{name}.jsonl", "a") as f:
        f.write(json.dumps(value) + "\n")

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user
          and auth_data.password.decode() == password)
    record("auth", {"mechanism": mechanism, "ok": ok, "tls": session.ssl is not None})
    return AuthResult(success=True, auth_data=user) if ok else AuthResult(success=False, handled=False)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        record("messages", {
            "from": envelope.mail_from, "to": envelope.rcpt_tos, "tls": session.ssl is not None,
            "user": session.auth_data, "data": envelope.content.decode("utf8", "replace"),
        })
        return "250 OK"

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(Handler(), hostname="127.0.0.1", port=int(port), tls_context=context,
                        require_starttls=True, auth_required=True, auth_require_tls=True,
                        authenticator=authenticator, ready_timeout=10)
controller.start()
print("ready", flush=True)
asyncio.get_event_loop().run_until_complete(asyncio.sleep(3600))
"#;

struct SmtpServer {
    port: u16,
    out: PathBuf,
    child: std::process::Child,
}

impl SmtpServer {
    fn start(pki: &Pki, user: &str, password: &str) -> Option<SmtpServer> {
        let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/smtp-venv/bin/python");
        if !python.exists() {
            assert!(std::env::var_os("CI").is_none(), "aiosmtpd is missing; scripts/test.sh installs it");
            eprintln!("skipped: {} is missing (scripts/test.sh installs aiosmtpd)", python.display());
            return None;
        }
        let out = pki.dir.join("smtp");
        std::fs::create_dir_all(&out).unwrap();
        let script = pki.dir.join("smtp_server.py");
        std::fs::write(&script, SMTP_SERVER).unwrap();
        let port = free_port();
        let mut child = std::process::Command::new(python)
            .arg(&script)
            .arg(port.to_string())
            .args([pki.cert(), pki.key(), out.clone()])
            .args([user, password])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start aiosmtpd");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
        Some(SmtpServer { port, out, child })
    }

    fn lines(&self, name: &str) -> Vec<Value> {
        std::fs::read_to_string(self.out.join(format!("{name}.jsonl")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

const PASSWORD: &str = "pw-7f3a9c-not-in-logs";

/// The `smtp` table of a server requiring STARTTLS and AUTH, the password in `secret_file`.
fn smtp_toml(server: &SmtpServer, ca: &Path, from: &str) -> String {
    format!(
        r#"{{ host = "127.0.0.1", port = {}, tls = "starttls", username = "syncfleet", secret_file = "smtp-password", ca_file = "{}", from = "{from}" }}"#,
        server.port,
        ca.display()
    )
}

/// A required step's alert (the producer) and the partner pack's executive report (a worker)
/// reach an SMTP server that takes mail only after STARTTLS and AUTH; the server saw both over
/// TLS, logged in as the configured user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alert_and_report_mail_go_over_starttls_with_auth() {
    let pki = Pki::generate("smtp");
    let Some(server) = SmtpServer::start(&pki, "syncfleet", PASSWORD) else { return };
    let sandbox = Sandbox::start().await;
    let reports = format!(
        "reports = {{ smtp = {}, executive_recipients = [\"vp@example.com\"] }}",
        smtp_toml(&server, &pki.ca(), "partners@example.com")
    );
    let toml = format!(
        "{}\n[alerts]\nto = [\"oncall@example.com\"]\nsmtp = {}\n",
        acme_toml(&sandbox, "", &reports),
        smtp_toml(&server, &pki.ca(), "syncfleet@example.com")
    );
    let env = TestEnv::new(&toml).await;
    let secrets_dir = env.config.secrets.dir.clone().expect("the harness sets a secrets dir");
    std::fs::write(secrets_dir.join("smtp-password"), format!("{PASSWORD}\n")).unwrap();
    env.demo_integration("beta", json!({ "step_ms": 5, "fail": { "left": "always", "right": "never" } })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;

    let failed = env.run_to_end("demo_diamond", "beta", Mode::Full, false).await;
    assert_eq!(failed.status, "failed", "{failed:#?}");
    let weekly = env.run_step("partner_weekly_reports", "acme", "executive_weekly_report", Mode::Full).await;
    assert_eq!(weekly.status, "completed", "{weekly:#?}");

    let messages = env
        .eventually(Duration::from_secs(20), "the alert and the report mail", || async {
            let m = server.lines("messages");
            (m.len() >= 2).then_some(m)
        })
        .await;
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let alert = messages.iter().find(|m| m["from"] == "syncfleet@example.com").expect("the alert mail");
    assert_eq!(alert["to"], json!(["oncall@example.com"]));
    assert!(alert["data"].as_str().unwrap().contains(&failed.id.to_string()), "{alert}");
    let report = messages.iter().find(|m| m["from"] == "partners@example.com").expect("the report mail");
    assert_eq!(report["to"], json!(["vp@example.com"]));
    assert!(report["data"].as_str().unwrap().contains("Partner program report"), "{report}");
    for m in &messages {
        assert_eq!((m["tls"].as_bool(), m["user"].as_str()), (Some(true), Some("syncfleet")), "{m}");
    }
    let auth = server.lines("auth");
    assert!(auth.iter().all(|a| a["ok"] == true && a["tls"] == true), "{auth:#?}");
    let sent: Vec<String> = env.value("SELECT coalesce(array_agg(kind), '{}') FROM report_deliveries").await;
    assert_eq!(sent, ["executive_weekly"]);

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

/// Wrong credentials fail with the server's refusal and the user, never the password; a server
/// certificate of an unknown CA is refused; a missing password names its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_unknown_certificates_fail_clearly() {
    let pki = Pki::generate("smtp-bad");
    let Some(server) = SmtpServer::start(&pki, "syncfleet", PASSWORD) else { return };
    let secrets = pki.dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("wrong"), "not-the-password-42\n").unwrap();
    let policy = SecretPolicy { env_prefix: "SYNCFLEET_SECRET_".into(), dir: Some(secrets.clone()) };
    let smtp = mail::SmtpServer {
        tls: mail::SmtpTls::Starttls,
        username: Some("syncfleet".into()),
        secret_file: Some("wrong".into()),
        ca_file: Some(pki.ca()),
        ..mail::SmtpServer::plain("127.0.0.1", server.port, "syncfleet@example.com")
    };
    let to = ["oncall@example.com".to_owned()];
    let send = |smtp: mail::SmtpServer| {
        let policy = policy.clone();
        let to = to.clone();
        async move { mail::send(&smtp, Some(&policy), &to, "subject", "body".into(), false).await }
    };

    let err = send(smtp.clone()).await.expect_err("wrong credentials are refused").to_string();
    assert!(err.contains(&format!("127.0.0.1:{}", server.port)) && err.contains("535"), "{err}");
    assert!(!err.contains("not-the-password-42") && !err.contains(PASSWORD), "{err}");
    let auth = server.lines("auth");
    assert!(!auth.is_empty() && auth.iter().all(|a| a["ok"] == false && a["tls"] == true), "{auth:#?}");

    let err = send(mail::SmtpServer { ca_file: None, ..smtp.clone() }).await.expect_err("unknown CA").to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    let err = send(mail::SmtpServer { secret_file: Some("absent".into()), ..smtp.clone() })
        .await
        .expect_err("no password file")
        .to_string();
    assert!(err.contains("smtp.secret_file") && err.contains("absent"), "{err}");

    std::fs::write(secrets.join("right"), format!("{PASSWORD}\n")).unwrap();
    send(mail::SmtpServer { secret_file: Some("right".into()), ..smtp }).await.expect("the right password works");
    assert_eq!(server.lines("messages").len(), 1);
    assert!(server.lines("messages").iter().all(|m| m["tls"] == true));
}

/// A URL file that cannot be read stops a worker at start-up naming the key; the URL a file holds
/// never reaches the log, even when connecting with it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_files_fail_naming_the_key_and_never_show_the_url() {
    let env = TestEnv::new("").await;
    let dir = std::env::temp_dir().join(format!("syncfleet-url-file-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |var: &'static str, path: PathBuf| {
        let mut c = env.worker_process(&format!("url-file-{}", env.id));
        c.env(var, path).env("SYNCFLEET_LOG", "info").stderr(Stdio::piped());
        async move {
            let out = tokio::time::timeout(Duration::from_secs(60), c.output()).await.expect("exits").unwrap();
            (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };

    let (ok, stderr) = run("SYNCFLEET__DATABASE__URL_FILE", dir.join("missing")).await;
    assert!(!ok && stderr.contains("database.url_file") && stderr.contains("missing"), "{stderr}");

    let secret = "s3cret-in-a-file";
    std::fs::write(dir.join("db-url"), format!("postgres://syncfleet_runtime:{secret}@127.0.0.1:1/nowhere\n")).unwrap();
    let (ok, stderr) = run("SYNCFLEET__DATABASE__URL_FILE", dir.join("db-url")).await;
    assert!(!ok, "nothing listens on port 1: {stderr}");
    assert!(!stderr.contains(secret), "{stderr}");

    std::fs::write(dir.join("redis-url"), format!("redis://:{secret}@127.0.0.1:1\n")).unwrap();
    let (ok, stderr) = run("SYNCFLEET__REDIS__URL_FILE", dir.join("redis-url")).await;
    assert!(!ok, "nothing listens on port 1: {stderr}");
    assert!(!stderr.contains(secret), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
    env.finish().await;
}
