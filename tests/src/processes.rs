//! Producer and worker processes that log JSON, for the tests that read what real processes print
//! and serve (traces, `/metrics`): spawned until a given log line, stopped with SIGTERM.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::{TestEnv, binary, signal};

/// Spawns `cmd` (JSON logs on a pipe), waits for its log line `message` and returns the child and
/// that line's `addr` field. Later lines go on to this test's stderr.
pub async fn spawn_until(mut cmd: Command, message: &str) -> (Child, String) {
    let mut child = cmd.spawn().expect("spawn (build the binaries first: cargo build --workspace --bins)");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("{line}");
            let Ok(entry) = serde_json::from_str::<Value>(&line) else { continue };
            if entry["fields"]["message"] == message {
                return entry["fields"]["addr"].as_str().expect("the line has the address").to_owned();
            }
        }
        panic!("the process exited before logging {message:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {message:?} within 60 s"));
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
        }
    });
    (child, addr)
}

/// SIGTERM, then wait: the process drains and flushes its spans before it exits.
pub async fn stop(mut child: Child) {
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "clean exit after SIGTERM: {status:?}");
}

/// A `syncfleet-worker` process logging JSON (its listening address included).
pub fn worker_process(env: &TestEnv, name: &str) -> Command {
    let mut c = env.worker_process(name);
    c.env("SYNCFLEET_LOG", "warn,syncfleet_worker=info").env("SYNCFLEET_LOG_JSON", "true").stderr(Stdio::piped());
    c
}

/// A `syncfleet-producer` process with this test's config, logging JSON.
pub fn producer_process(env: &TestEnv) -> Command {
    let mut c = Command::new(binary("syncfleet-producer"));
    c.env("SYNCFLEET_CONFIG", &env.config_path)
        .env("SYNCFLEET_LOG", "warn,syncfleet_producer=info")
        .env("SYNCFLEET_LOG_JSON", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}
