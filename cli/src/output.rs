//! What the CLI prints: tables, a run with its steps, queue depth, and progress while a run goes on.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use syncfleet_producer::Ops;
use syncfleet_shared::ids::RunId;
use syncfleet_store::{queue::QueueDepth, views};

use crate::{backend::Backend, exit, table};

/// Prints a triggered or resumed run's id, or with `wait` follows it to its end, prints it and
/// exits by its status ([`exit::for_status`]).
pub(crate) async fn finish_or_print(
    backend: &Backend,
    run_id: RunId,
    wait: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !wait {
        if json {
            println!("{}", serde_json::json!({ "run_id": run_id.to_string() }));
        } else {
            println!("{run_id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let run = follow(backend, run_id, !json, Duration::from_secs(24 * 3600)).await?;
    print_run(&run, json);
    Ok(exit::for_status(&run.status))
}

/// Polls the run until it ends. With `progress`, shows each step's progress: one bar per step
/// on a terminal, else a line per state change (logs and CI).
pub async fn wait_for(ops: &Ops, run_id: RunId, progress: bool, limit: Duration) -> anyhow::Result<views::RunView> {
    if progress {
        return poll(true, limit, run_id, || async { Ok(views::run(&ops.pool, run_id).await?) }).await;
    }
    // Nothing to show meanwhile: the run row alone until the run ends, then its steps once. Reading
    // the steps ten times a second costs PostgreSQL an aggregate over every shard each time.
    poll(false, limit, run_id, || async { Ok(views::run_alone(&ops.pool, run_id).await?) }).await?;
    Ok(views::run(&ops.pool, run_id).await?)
}

/// [`wait_for`] through either backend.
pub(crate) async fn follow(
    backend: &Backend,
    run_id: RunId,
    progress: bool,
    limit: Duration,
) -> anyhow::Result<views::RunView> {
    poll(progress, limit, run_id, || backend.run(run_id)).await
}

async fn poll<F, Fut>(progress: bool, limit: Duration, run_id: RunId, mut read: F) -> anyhow::Result<views::RunView>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<views::RunView>>,
{
    use std::io::IsTerminal;
    let start = std::time::Instant::now();
    let mut display = match (progress, std::io::stderr().is_terminal()) {
        (false, _) => Progress::Quiet,
        (true, true) => Progress::Bars(indicatif::MultiProgress::new(), HashMap::new()),
        (true, false) => Progress::Lines(HashMap::new()),
    };
    loop {
        let run = read().await?;
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
pub(crate) fn step_state(s: &views::StepView, with_counts: bool) -> String {
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

/// A run: its line, its error and held-back deletions, and its steps. The steps' notes (the
/// deletion guard's decisions, one line per shard, and the last error) go in the table's last
/// column when that fits the width, else below the table, wrapped; when even the counts do not fit,
/// each step is printed as a short block of lines instead of a table.
pub(crate) fn print_run(run: &views::RunView, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(run).expect("serializable"));
        return;
    }
    let width = table::width();
    let mut line = format!(
        "run {}  chain {}  integration {}  status {}  trigger {}",
        run.id, run.chain, run.integration, run.status, run.trigger
    );
    if let Some(w) = &run.waiting_for {
        line.push_str(&format!("  waiting for {w}"));
    }
    println!("{}", table::wrap(&line, width, 2));
    if let Some(e) = &run.error {
        println!("{}", table::wrap(&format!("error: {e}"), width, 2));
    }
    if let Some(hint) = &run.unapplied_deletions {
        println!("{}", table::wrap(hint, width, 2));
    }
    let fits = |with_notes: bool| {
        let mut t = steps_table(run, with_notes);
        t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        width.is_none_or(|w| table::printed_width(&t) <= usize::from(w))
    };
    if fits(true) {
        println!("{}", steps_table(run, true));
        return;
    }
    if fits(false) {
        println!("{}", steps_table(run, false));
    } else {
        // Too narrow for the counts side by side: a block per step.
        for s in &run.steps {
            let head = format!(
                "{}  {}  {}  attempts {}  {}",
                step_name(s),
                status(s),
                s.mode.as_deref().unwrap_or("–"),
                s.attempts,
                duration(s.duration_ms)
            );
            println!("{}", table::wrap(&head, width, 4));
            println!("  {}", table::wrap(&counts(s).join("  "), width.map(|w| w.saturating_sub(2)), 2));
        }
    }
    for s in &run.steps {
        if let Some(note) = note(s) {
            println!("{}", table::wrap(&format!("{}: {}", step_name(s), note.replace('\n', "\n  ")), width, 4));
        }
    }
}

fn step_name(s: &views::StepView) -> String {
    if s.shards > 1 { format!("{} ×{}", s.step, s.shards) } else { s.step.clone() }
}

fn status(s: &views::StepView) -> String {
    if s.partial { format!("{} (partial)", s.status) } else { s.status.clone() }
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`.
fn duration(ms: Option<i64>) -> String {
    match ms {
        None => "–".into(),
        Some(ms) if ms < 1_000 => format!("{ms}ms"),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) if ms < 3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        Some(ms) => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// The step's counts, named as in `runs show --json`.
fn counts(s: &views::StepView) -> Vec<String> {
    [
        ("fetched", s.fetched),
        ("inserted", s.inserted),
        ("updated", s.updated),
        ("unchanged", s.unchanged),
        ("deactivated", s.deactivated),
        ("errors", s.errors),
        ("api_calls", s.api_calls),
        ("throttled", s.throttled),
    ]
    .iter()
    .map(|(name, n)| format!("{name} {n}"))
    .collect()
}

/// What a step says besides its counts: the guard's decisions (one line per shard of a fanned-out
/// step) and its last error.
fn note(s: &views::StepView) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(g) = s.guard.as_deref().filter(|g| !g.is_empty()) {
        parts.push(g.to_owned());
    }
    if let Some(e) = &s.error {
        parts.push(format!("error (attempt {}): {e}", s.attempts));
    }
    (!parts.is_empty()).then(|| parts.join("\n"))
}

/// The steps with short headers (`runs show --json` has the full names): attempts, duration,
/// fetched, inserted (new), updated, unchanged (same), deactivated (gone), item errors, API calls,
/// throttled answers.
fn steps_table(run: &views::RunView, with_notes: bool) -> comfy_table::Table {
    let mut header = vec![
        "step",
        "status",
        "mode",
        "tries",
        "time",
        "fetched",
        "new",
        "updated",
        "same",
        "gone",
        "errors",
        "calls",
        "throttled",
    ];
    if with_notes {
        header.push("notes");
    }
    let mut t = table::table(&header);
    for s in &run.steps {
        let mut row = vec![
            step_name(s),
            status(s),
            s.mode.clone().unwrap_or_default(),
            s.attempts.to_string(),
            duration(s.duration_ms),
            s.fetched.to_string(),
            s.inserted.to_string(),
            s.updated.to_string(),
            s.unchanged.to_string(),
            s.deactivated.to_string(),
            s.errors.to_string(),
            s.api_calls.to_string(),
            s.throttled.to_string(),
        ];
        if with_notes {
            row.push(note(s).unwrap_or_default());
        }
        t.add_row(row);
    }
    // Counts read right-aligned.
    for i in 3..13 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    t
}

pub(crate) fn print_queues(depths: &[QueueDepth], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(depths).expect("serializable"));
        return;
    }
    // A paused queue says so beside its name, so the counts fit 80 columns.
    let mut t =
        table::table(&["queue", "ready", "runnable", "scheduled", "inflight", "blocked", "dead", "done", "workers"]);
    for d in depths {
        let name = if d.paused { format!("{} (paused)", d.queue) } else { d.queue.clone() };
        t.add_row(vec![
            name,
            d.ready.to_string(),
            d.runnable.to_string(),
            d.scheduled.to_string(),
            d.inflight.to_string(),
            d.blocked.to_string(),
            d.dead.to_string(),
            d.done.to_string(),
            d.workers.to_string(),
        ]);
    }
    table::print(&t);
}
