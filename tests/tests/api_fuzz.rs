//! Fuzzes the admin API from its own OpenAPI document with schemathesis (from PyPI; `.ci/run`
//! installs it into `target/fuzz-venv`): every generated request, valid or not, with an admin
//! token, must get an answer that is not a 5xx. The number of examples per operation is bounded
//! (`SYNCFLEET_FUZZ_EXAMPLES`, default 25) so the run stays short.

use std::{path::PathBuf, process::Stdio};

use serde_json::json;
use syncfleet_tests::TestEnv;

fn schemathesis() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SCHEMATHESIS").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-venv/bin/schemathesis")),
    ];
    candidates.into_iter().flatten().find(|p| p.exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_generated_request_gets_a_server_error() {
    let Some(bin) = schemathesis() else {
        assert!(std::env::var_os("CI").is_none(), "schemathesis is missing; .ci/run installs it into target/fuzz-venv");
        eprintln!(
            "skipped: schemathesis is not installed (python3 -m venv target/fuzz-venv && target/fuzz-venv/bin/pip install schemathesis)"
        );
        return;
    };
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("fuzz").await;
    let token = env.token("admin").await;
    let base = format!("http://{}", producer.addr.unwrap());
    let examples = std::env::var("SYNCFLEET_FUZZ_EXAMPLES").unwrap_or_else(|_| "25".into());
    let report = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-report");
    let run = || async {
        tokio::process::Command::new(&bin)
            .args(["run", &format!("{base}/api/openapi.json")])
            .args(["--checks", "not_a_server_error"])
            .args(["--max-examples", &examples])
            .args(["--seed", "20261123"])
            .args(["--workers", "2"])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--report", "junit", "--report-dir"])
            .arg(&report)
            .args(["--generation-database", "none"])
            .arg("--no-color")
            // It keeps state in its working directory; keep that out of the source tree.
            .current_dir(report.parent().unwrap())
            .env("SCHEMATHESIS_HOOKS", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .expect("run schemathesis")
    };
    let mut out = run().await;
    // Python 3.11's `ast` module now and then miscounts its recursion depth (CPython gh-106905),
    // which hypothesis meets while describing a strategy: schemathesis then reports a "Runtime
    // Error" of its own, not a failed check of our API. Such a run is made once more.
    let tool_error = |out: &std::process::Output| {
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        !out.status.success() && said.contains("AST constructor recursion depth mismatch") && !said.contains("FAILURES")
    };
    if tool_error(&out) {
        eprintln!(
            "schemathesis failed on its own (CPython gh-106905); running it again:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        out = run().await;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis found a problem:\n{stdout}\n{stderr}");
    // It did test the operations (a run that tested nothing would also exit 0).
    assert!(stdout.contains("passed"), "{stdout}");
    let (_, doc) = syncfleet_tests::Api::new(&producer, None).get("/api/openapi.json").await;
    let operations: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert!(operations >= 20, "{operations}");
    eprintln!("{stdout}");
    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}
