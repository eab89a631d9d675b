//! `queues`, `queue pause|resume`, `workers`, `schedule get|set`, `integrations`.

use std::{process::ExitCode, time::Duration};

use syncfleet_shared::{chain::Mode, config::ScheduleSpec};
use syncfleet_store::StoreError;

use super::print_json;
use crate::{
    args::{QueueCommand, ScheduleCommand},
    backend::Backend,
    output::print_queues,
    table,
};

pub(crate) async fn queues(backend: &Backend, json: bool, watch: bool) -> anyhow::Result<ExitCode> {
    loop {
        let depths = backend.queue_depths().await?;
        if watch && !json {
            // Clear the screen and redraw in place.
            println!("\x1b[2J\x1b[H{}  (every 1 s; ctrl-c to stop)", chrono::Utc::now().format("%F %T UTC"));
        }
        print_queues(&depths, json);
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

pub(crate) async fn queue(backend: &Backend, action: QueueCommand) -> anyhow::Result<ExitCode> {
    let (queue, paused, json) = match action {
        QueueCommand::Pause { queue, json } => (queue, true, json),
        QueueCommand::Resume { queue, json } => (queue, false, json),
    };
    let changed = backend.set_paused(&queue, paused).await?;
    if json {
        print_json(&serde_json::json!({ "queue": queue, "paused": paused, "changed": changed }))?;
    } else {
        let state = if paused { "paused" } else { "resumed" };
        println!("queue {queue} {state}{}", if changed { "" } else { " (it was already)" });
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn workers(backend: &Backend, json: bool) -> anyhow::Result<ExitCode> {
    let workers = backend.workers().await?;
    if json {
        print_json(&workers)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table::table(&["worker", "queues", "last_seen", "running"]);
    for w in workers {
        let running: Vec<String> =
            w.current.iter().map(|c| format!("{}/{}:{} ({})", c.chain, c.step, c.shard, c.run_id)).collect();
        t.add_row(vec![
            w.name,
            w.queues.join(", "),
            w.last_seen.format("%F %T").to_string(),
            if running.is_empty() { "idle".into() } else { running.join("\n") },
        ]);
    }
    table::print(&t);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn integrations(backend: &Backend, json: bool) -> anyhow::Result<ExitCode> {
    let list = backend.integrations().await?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table::table(&["name", "pack", "enabled", "webhook secret", "updated_at"]);
    for i in list {
        t.add_row(vec![
            i.name,
            i.pack,
            i.enabled.to_string(),
            i.webhook_secret_ref.unwrap_or_default(),
            i.updated_at.format("%F %T").to_string(),
        ]);
    }
    table::print(&t);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn schedule(backend: &Backend, action: ScheduleCommand) -> anyhow::Result<ExitCode> {
    match action {
        ScheduleCommand::Get { chain, integration, json } => {
            let all: Vec<_> = backend
                .schedules()
                .await?
                .into_iter()
                .filter(|s| chain.as_ref().is_none_or(|c| *c == s.chain))
                .filter(|s| integration.as_ref().is_none_or(|i| *i == s.integration))
                .collect();
            if let (Some(c), true) = (&chain, all.is_empty()) {
                if !backend.has_chain(c).await? {
                    return Err(StoreError::UnknownChain(c.clone()).into());
                }
                anyhow::bail!(
                    "chain `{c}` has no schedule{}",
                    integration.map(|i| format!(" for `{i}`")).unwrap_or_default()
                );
            }
            if json {
                print_json(&all)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = table::table(&[
                "chain",
                "integration",
                "mode",
                "every",
                "tz",
                "source",
                "enabled",
                "next run",
                "set by",
            ]);
            for s in all {
                let every = match (s.interval_secs, &s.cron) {
                    (Some(i), _) => format!("{i}s"),
                    (None, Some(c)) => format!("cron {c}"),
                    _ => "–".into(),
                };
                let mode = if s.step_modes.is_empty() {
                    s.mode
                } else {
                    let steps: Vec<String> = s.step_modes.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{} ({})", s.mode, steps.join(", "))
                };
                t.add_row(vec![
                    s.chain,
                    s.integration,
                    mode,
                    every,
                    s.tz,
                    s.source,
                    s.enabled.to_string(),
                    s.next_run.unwrap_or_default(),
                    s.updated_by.unwrap_or_default(),
                ]);
            }
            table::print(&t);
        }
        ScheduleCommand::Set { chain, integration, mode, interval_secs, cron, tz, step_mode, disable, json } => {
            if interval_secs.is_none() && cron.is_none() && !disable {
                anyhow::bail!("give --interval-secs, --cron or --disable");
            }
            let spec = ScheduleSpec {
                interval_secs,
                cron,
                mode: mode.as_deref().and_then(Mode::parse),
                tz,
                step_modes: step_mode.into_iter().collect(),
                enabled: Some(!disable),
            };
            let stored = backend.set_schedule(&chain, &integration, &spec).await?;
            if json {
                print_json(&stored)?;
                return Ok(ExitCode::SUCCESS);
            }
            match stored.and_then(|s| s.next_run.map(|n| (s.mode, n))) {
                Some((mode, next)) => println!("{mode} schedule of {chain} for {integration} stored; next run {next}"),
                None => println!("schedule of {chain} for {integration} disabled"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
