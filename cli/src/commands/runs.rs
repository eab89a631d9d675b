//! `trigger`, `runs`, `runs show`, `resume`, `cancel`, `status`.

use std::{process::ExitCode, time::Duration};

use syncfleet_shared::ids::RunId;
use syncfleet_store::views::RunFilter;

use super::print_json;
use crate::{
    backend::{Backend, TriggerRequest},
    exit,
    output::{finish_or_print, follow, print_run},
    table,
};

pub(crate) async fn trigger(
    backend: &Backend,
    request: TriggerRequest,
    wait: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let run_id = backend.trigger(request).await?;
    finish_or_print(backend, run_id, wait, json).await
}

pub(crate) async fn show(backend: &Backend, run_id: &str, json: bool, watch: bool) -> anyhow::Result<ExitCode> {
    let id: RunId = run_id.parse()?;
    if watch {
        let run = follow(backend, id, true, Duration::from_secs(24 * 3600)).await?;
        print_run(&run, json);
        return Ok(exit::for_status(&run.status));
    }
    print_run(&backend.run(id).await?, json);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn list(backend: &Backend, filter: &RunFilter, json: bool) -> anyhow::Result<ExitCode> {
    let runs = backend.runs(filter).await?;
    if json {
        print_json(&runs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table::table(&["id", "chain", "integration", "status", "trigger", "created_at", "finished_at"]);
    for r in runs {
        t.add_row(vec![
            r.id,
            r.chain,
            r.integration,
            r.status,
            r.trigger,
            r.created_at.format("%F %T").to_string(),
            r.finished_at.map(|t| t.format("%F %T").to_string()).unwrap_or_default(),
        ]);
    }
    table::print(&t);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn resume(backend: &Backend, run_id: &str, wait: bool, json: bool) -> anyhow::Result<ExitCode> {
    let id: RunId = run_id.parse()?;
    backend.resume(id).await?;
    finish_or_print(backend, id, wait, json).await
}

pub(crate) async fn cancel(backend: &Backend, run_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let id: RunId = run_id.parse()?;
    backend.cancel(id).await?;
    if json {
        print_json(&serde_json::json!({ "run_id": id.to_string(), "status": "cancelled" }))?;
    } else {
        println!("run {id} cancelled");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn status(backend: &Backend, chain: &str, integration: &str, json: bool) -> anyhow::Result<ExitCode> {
    let s = backend.chain_status(chain, integration).await?;
    if json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut line = format!("{} for {}: {}", s.chain, s.integration, s.status);
    if let Some(run) = &s.run_id {
        line.push_str(&format!(", run {run}"));
    }
    if !s.steps.is_empty() {
        line.push_str(&format!(", running {}", s.steps.join(", ")));
    }
    if let Some(w) = &s.waiting_for {
        line.push_str(&format!(", waiting for run {w}"));
    }
    if let Some(last) = &s.last_run {
        line.push_str(&format!("; last run {} {}", last.run_id, last.status));
    }
    println!("{}", table::wrap(&line, table::width(), 2));
    Ok(ExitCode::SUCCESS)
}
