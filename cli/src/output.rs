//! What the CLI prints: tables, a run with its steps, queue depth, and progress while a run goes on.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use comfy_table::{Table, presets::UTF8_HORIZONTAL_ONLY};
use syncfleet_shared::ids::RunId;
use syncfleet_store::{queue::QueueDepth, views};

use syncfleet_producer::Ops;

pub(super) fn exit_for(status: &str) -> ExitCode {
    match status {
        "completed" => ExitCode::SUCCESS,
        "partial" => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

pub(super) async fn finish_or_print(ops: &Ops, run_id: RunId, wait: bool, json: bool) -> anyhow::Result<ExitCode> {
    if !wait {
        if json {
            println!("{}", serde_json::json!({ "run_id": run_id.to_string() }));
        } else {
            println!("{run_id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let run = wait_for(ops, run_id, !json, Duration::from_secs(24 * 3600)).await?;
    print_run(&run, json);
    Ok(exit_for(&run.status))
}

/// Polls the run until it ends. With `progress`, shows each step's progress: one bar per step
/// on a terminal, else a line per state change (logs and CI).
pub async fn wait_for(ops: &Ops, run_id: RunId, progress: bool, limit: Duration) -> anyhow::Result<views::RunView> {
    use std::io::IsTerminal;
    let start = std::time::Instant::now();
    let mut display = match (progress, std::io::stderr().is_terminal()) {
        (false, _) => Progress::Quiet,
        (true, true) => Progress::Bars(indicatif::MultiProgress::new(), HashMap::new()),
        (true, false) => Progress::Lines(HashMap::new()),
    };
    loop {
        let run = views::run(&ops.pool, run_id).await?;
        display.show(&run, start.elapsed());
        if matches!(run.status.as_str(), "completed" | "partial" | "failed" | "cancelled") {
            return Ok(run);
        }
        if start.elapsed() > limit {
            anyhow::bail!("run {run_id} still {} after {}s", run.status, limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

enum Progress {
    Quiet,
    Lines(HashMap<String, String>),
    Bars(indicatif::MultiProgress, HashMap<String, indicatif::ProgressBar>),
}

/// A step's state as shown: `running 3/20` for shards, and why a retry is coming.
pub(super) fn step_state(s: &views::StepView, with_counts: bool) -> String {
    let mut line = if s.shards > 1 { format!("{} {}/{}", s.status, s.shards_done, s.shards) } else { s.status.clone() };
    if s.partial {
        line.push_str(" (partial)");
    }
    if let (Some(error), true) = (&s.error, s.status == "ready" || s.status == "failed") {
        line.push_str(&format!("  (attempt {} failed: {error})", s.attempts));
    }
    if s.lost_attempts > 0 {
        line.push_str(&format!("  ({} lost to the infrastructure)", s.lost_attempts));
    }
    if with_counts && s.fetched > 0 {
        line.push_str(&format!("  fetched {}", s.fetched));
    }
    line
}

impl Progress {
    fn show(&mut self, run: &views::RunView, elapsed: Duration) {
        match self {
            Progress::Quiet => {}
            Progress::Lines(seen) => {
                for s in &run.steps {
                    let line = step_state(s, false);
                    if seen.get(&s.step) != Some(&line) {
                        eprintln!("  {:>8.1}s  {:<14} {}", elapsed.as_secs_f64(), s.step, line);
                        seen.insert(s.step.clone(), line);
                    }
                }
            }
            Progress::Bars(multi, bars) => {
                let style = indicatif::ProgressStyle::with_template("  {prefix:<16} [{bar:24}] {pos}/{len}  {msg}")
                    .expect("valid template")
                    .progress_chars("=> ");
                for s in &run.steps {
                    let bar = bars.entry(s.step.clone()).or_insert_with(|| {
                        let b = multi.add(indicatif::ProgressBar::new(s.shards.max(1) as u64));
                        b.set_style(style.clone());
                        b.set_prefix(s.step.clone());
                        b
                    });
                    bar.set_length(s.shards.max(1) as u64);
                    bar.set_position(s.shards_done as u64);
                    bar.set_message(step_state(s, true));
                    let done = matches!(s.status.as_str(), "succeeded" | "failed" | "skipped" | "cancelled");
                    if done && !bar.is_finished() {
                        bar.finish_with_message(step_state(s, true));
                    }
                }
            }
        }
    }
}

pub(super) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_HORIZONTAL_ONLY);
    t.set_header(header.to_vec());
    t
}

pub(super) fn print_run(run: &views::RunView, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(run).expect("serializable"));
        return;
    }
    println!(
        "run {}  chain {}  integration {}  status {}  trigger {}",
        run.id, run.chain, run.integration, run.status, run.trigger
    );
    if let Some(e) = &run.error {
        println!("error: {e}");
    }
    if let Some(hint) = &run.unapplied_deletions {
        println!("{hint}");
    }
    let mut t = table(&[
        "step",
        "status",
        "mode",
        "attempts",
        "duration_ms",
        "fetched",
        "inserted",
        "updated",
        "unchanged",
        "deactivated",
        "errors",
        "api_calls",
        "throttled",
        "guard",
    ]);
    for s in &run.steps {
        let step = if s.shards > 1 { format!("{} ×{}", s.step, s.shards) } else { s.step.clone() };
        t.add_row(vec![
            step,
            if s.partial { format!("{} (partial)", s.status) } else { s.status.clone() },
            s.mode.clone().unwrap_or_default(),
            s.attempts.to_string(),
            s.duration_ms.map(|d| d.to_string()).unwrap_or_default(),
            s.fetched.to_string(),
            s.inserted.to_string(),
            s.updated.to_string(),
            s.unchanged.to_string(),
            s.deactivated.to_string(),
            s.errors.to_string(),
            s.api_calls.to_string(),
            s.throttled.to_string(),
            s.guard.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
}

pub(super) fn print_queues(depths: &[QueueDepth], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(depths).expect("serializable"));
        return;
    }
    let mut t = table(&["queue", "ready", "scheduled", "inflight", "blocked", "dead", "done", "workers", "paused"]);
    for d in depths {
        t.add_row(vec![
            d.queue.clone(),
            d.ready.to_string(),
            d.scheduled.to_string(),
            d.inflight.to_string(),
            d.blocked.to_string(),
            d.dead.to_string(),
            d.done.to_string(),
            d.workers.to_string(),
            if d.paused { "paused".into() } else { String::new() },
        ]);
    }
    println!("{t}");
}
