//! The `syncfleet` CLI. Table output by default, `--json` for scripts. The JSON shapes of
//! `runs show --json` ([`views::RunView`]) and `queues --json` ([`QueueDepth`]) are a contract.

use std::{collections::HashMap, process::ExitCode, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_HORIZONTAL_ONLY};
use syncfleet_shared::{
    chain::Mode,
    config::Config,
    ids::RunId,
    packs::demo,
    queue::QueueDepth,
    registries,
    store::{self, StoreError, runs::TriggerKind, views},
    telemetry,
};
use syncfleet_worker::{Engine, worker_name};
use tokio_util::sync::CancellationToken;

use crate::ops::{Ops, Trigger};

#[derive(Parser)]
#[command(name = "syncfleet", version, about = "Operate a syncfleet deployment")]
struct Cli {
    /// TOML config file (defaults, then this file, then SYNCFLEET__… env vars).
    #[arg(long, global = true, env = "SYNCFLEET_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Show the producer's and workers' logs (info level) on stderr.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the main job end to end on the sandbox: start the sandbox upstreams, a producer and
    /// workers in this process, sync the sandbox ERP into PostgreSQL (full, then incremental after
    /// a 1 % change upstream), and show the runs. `--chain demo_diamond` (or another demo chain)
    /// runs the engine's demo chain instead.
    Demo {
        #[arg(long)]
        json: bool,
        /// Worker engines to start in this process.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// `erp` (the sandbox ERP sync), `partner` (the partner program sync, `partner_daily`, of the
        /// sandbox's Northpass and Impartner) or a demo chain: demo_diamond, demo_fanout,
        /// demo_contention.
        #[arg(long, default_value = "erp")]
        chain: String,
        /// Sandbox data scale for `erp` and `partner`: small, seed or large.
        #[arg(long, default_value = "seed")]
        scale: String,
    },
    /// Apply database migrations (creating the database if missing).
    Migrate,
    /// Check PostgreSQL and Redis answer; exit 0 if both do.
    Healthcheck {
        #[arg(long)]
        json: bool,
    },
    /// Start a run of CHAIN for an integration.
    Trigger {
        chain: String,
        #[arg(long)]
        integration: String,
        #[arg(long, value_parser = ["full", "incremental"], default_value = "incremental")]
        mode: String,
        /// Sweep even when the deletion guard would block it.
        #[arg(long)]
        force_sweep: bool,
        /// Run only this step of the chain (its prerequisites are not run).
        #[arg(long)]
        step: Option<String>,
        /// Wait for the run to end; exit 0 completed, 3 partial, 1 failed or cancelled.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// List runs, newest first; `runs show RUN_ID` for one.
    Runs {
        #[command(subcommand)]
        show: Option<RunsCommand>,
        #[arg(long)]
        chain: Option<String>,
        #[arg(long)]
        integration: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Re-run the failed and skipped steps of a failed or partial run.
    Resume {
        run_id: String,
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop scheduling further steps of an active run.
    Cancel { run_id: String },
    /// Depth of every queue by state, read from Redis (and paused / blocked from PostgreSQL).
    Queues {
        #[arg(long)]
        json: bool,
        /// Redraw every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Pause or resume a queue (a paused queue gets nothing new dispatched to it).
    Queue {
        #[command(subcommand)]
        action: QueueCommand,
    },
    /// Read or set the schedule of a chain for an integration.
    Schedule {
        #[command(subcommand)]
        action: ScheduleCommand,
    },
    /// List the integrations (secrets only as references).
    Integrations {
        #[arg(long)]
        json: bool,
    },
    /// Worker processes alive, with the steps they run now.
    Workers {
        #[arg(long)]
        json: bool,
    },
    /// Create, list or revoke API tokens.
    Tokens {
        #[command(subcommand)]
        action: TokensCommand,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Dispatch nothing new to QUEUE until it is resumed.
    Pause { queue: String },
    /// Resume dispatching to QUEUE.
    Resume { queue: String },
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Every schedule with its next run, or one chain's.
    Get {
        chain: Option<String>,
        #[arg(long)]
        integration: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Store a schedule (overrides the config): `--interval-secs N`, `--cron EXPR` or `--disable`.
    Set {
        chain: String,
        #[arg(long)]
        integration: String,
        #[arg(long, conflicts_with_all = ["cron", "disable"])]
        interval_secs: Option<u64>,
        #[arg(long, conflicts_with = "disable")]
        cron: Option<String>,
        #[arg(long)]
        disable: bool,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a token; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke the token named NAME.
    Revoke { name: String },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// One run with its steps and phase metrics.
    Show {
        run_id: String,
        #[arg(long)]
        json: bool,
        /// Follow the run live until it ends.
        #[arg(long)]
        watch: bool,
    },
}

/// Exit code 1: an error; 3: a waited-for run ended `partial`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Quiet by default: the CLI's own output is the interface; `-v` shows the services' logs.
    telemetry::init(false, if cli.verbose { telemetry::SERVICE_FILTER } else { "error" });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Migrate => {
            let pool = store::connect(&config.database).await?;
            store::migrate(&pool).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { json } => healthcheck(&config, json).await,
        Command::Demo { json, workers, chain, scale } => demo(config, json, workers, &chain, &scale).await,
        Command::Trigger { chain, integration, mode, force_sweep, step, wait, json } => {
            let ops = crate::connect(&config).await?;
            let mode = Mode::parse(&mode).unwrap_or_default();
            let detail = serde_json::json!({
                "chain": chain, "integration": integration, "mode": mode.as_str(), "step": step, "force_sweep": force_sweep,
            });
            let run_id = ops
                .trigger(Trigger {
                    chain,
                    integration,
                    mode,
                    kind: TriggerKind::Manual,
                    triggered_by: actor(),
                    tick_key: None,
                    force_sweep,
                    step,
                })
                .await?;
            ops.audit(&actor(), "run.trigger", &run_id.to_string(), detail).await;
            finish_or_print(&ops, run_id, wait, json).await
        }
        Command::Runs { show: Some(RunsCommand::Show { run_id, json, watch }), .. } => {
            let ops = crate::connect(&config).await?;
            let id: RunId = run_id.parse()?;
            if watch {
                let run = wait_for(&ops, id, true, Duration::from_secs(24 * 3600)).await?;
                print_run(&run, json);
                return Ok(exit_for(&run.status));
            }
            let run = views::run(&ops.pool, id).await?;
            print_run(&run, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { show: None, chain, integration, status, limit, json } => {
            let ops = crate::connect(&config).await?;
            let f = views::RunFilter { chain, integration, status, limit: Some(limit), offset: None };
            let runs = views::runs(&ops.pool, &f).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                let mut t = table(&["id", "chain", "integration", "status", "trigger", "created_at", "finished_at"]);
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
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { run_id, wait, json } => {
            let ops = crate::connect(&config).await?;
            let id: RunId = run_id.parse()?;
            ops.resume(id).await?;
            ops.audit(&actor(), "run.resume", &run_id, serde_json::json!({})).await;
            finish_or_print(&ops, id, wait, json).await
        }
        Command::Cancel { run_id } => {
            let ops = crate::connect(&config).await?;
            ops.cancel(run_id.parse()?).await?;
            ops.audit(&actor(), "run.cancel", &run_id, serde_json::json!({})).await;
            println!("run {run_id} cancelled");
            Ok(ExitCode::SUCCESS)
        }
        Command::Queues { json, watch } => {
            let ops = crate::connect(&config).await?;
            loop {
                let depths = ops.queue_depths().await?;
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
        Command::Queue { action } => {
            let ops = crate::connect(&config).await?;
            let (queue, changed, state) = match action {
                QueueCommand::Pause { queue } => {
                    let c = ops.pause_queue(&queue, &actor()).await?;
                    (queue, c, "paused")
                }
                QueueCommand::Resume { queue } => {
                    let c = ops.resume_queue(&queue, &actor()).await?;
                    (queue, c, "resumed")
                }
            };
            println!("queue {queue} {state}{}", if changed { "" } else { " (it was already)" });
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule { action } => schedule(&config, action).await,
        Command::Integrations { json } => {
            let ops = crate::connect(&config).await?;
            let list = store::integrations::list(&ops.pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let mut t = table(&["name", "pack", "enabled", "webhook secret", "updated_at"]);
                for i in list {
                    t.add_row(vec![
                        i.name,
                        i.pack,
                        i.enabled.to_string(),
                        i.webhook_secret_ref.unwrap_or_default(),
                        i.updated_at.format("%F %T").to_string(),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Workers { json } => {
            let ops = crate::connect(&config).await?;
            let workers = ops.workers().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&workers)?);
            } else {
                let mut t = table(&["worker", "queues", "last_seen", "running"]);
                for w in workers {
                    let running: Vec<String> = w
                        .current
                        .iter()
                        .map(|c| format!("{}/{}:{} ({})", c.chain, c.step, c.shard, c.run_id))
                        .collect();
                    t.add_row(vec![
                        w.name,
                        w.queues.join(","),
                        w.last_seen.format("%F %T").to_string(),
                        if running.is_empty() { "idle".into() } else { running.join("\n") },
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokens { action } => tokens(&config, action).await,
    }
}

async fn schedule(config: &Config, action: ScheduleCommand) -> anyhow::Result<ExitCode> {
    let ops = crate::connect(config).await?;
    match action {
        ScheduleCommand::Get { chain, integration, json } => {
            let all: Vec<_> = ops
                .schedules()
                .await?
                .into_iter()
                .filter(|s| chain.as_ref().is_none_or(|c| *c == s.chain))
                .filter(|s| integration.as_ref().is_none_or(|i| *i == s.integration))
                .collect();
            if let (Some(c), true) = (&chain, all.is_empty()) {
                if ops.chains.get(c).is_none() {
                    return Err(StoreError::UnknownChain(c.clone()).into());
                }
                anyhow::bail!(
                    "chain `{c}` has no schedule{}",
                    integration.map(|i| format!(" for `{i}`")).unwrap_or_default()
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                let mut t = table(&["chain", "integration", "every", "source", "enabled", "next run", "set by"]);
                for s in all {
                    let every = match (s.interval_secs, &s.cron) {
                        (Some(i), _) => format!("{i}s"),
                        (None, Some(c)) => format!("cron {c}"),
                        _ => "–".into(),
                    };
                    t.add_row(vec![
                        s.chain,
                        s.integration,
                        every,
                        s.source,
                        s.enabled.to_string(),
                        s.next_at.map(|t| t.format("%F %T UTC").to_string()).unwrap_or_default(),
                        s.updated_by.unwrap_or_default(),
                    ]);
                }
                println!("{t}");
            }
        }
        ScheduleCommand::Set { chain, integration, interval_secs, cron, disable } => {
            if interval_secs.is_none() && cron.is_none() && !disable {
                anyhow::bail!("give --interval-secs, --cron or --disable");
            }
            let spec = syncfleet_shared::config::ScheduleSpec { interval_secs, cron };
            ops.set_schedule(&chain, &integration, &spec, !disable, &actor()).await?;
            let s = ops.schedules().await?.into_iter().find(|s| s.chain == chain && s.integration == integration);
            match s.and_then(|s| s.next_at) {
                Some(next) => {
                    println!("schedule of {chain} for {integration} stored; next run {}", next.format("%F %T UTC"))
                }
                None => println!("schedule of {chain} for {integration} disabled"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn tokens(config: &Config, action: TokensCommand) -> anyhow::Result<ExitCode> {
    use syncfleet_shared::store::tokens;
    let pool = store::connect(&config.database).await?;
    store::migrate(&pool).await?;
    let audit = |action: &'static str, target: String, detail: serde_json::Value| {
        let pool = pool.clone();
        async move { store::audit::record(&pool, &actor(), action, &target, detail).await }
    };
    match action {
        TokensCommand::Create { name, role, json } => {
            let role: tokens::Role = role.parse().map_err(anyhow::Error::msg)?;
            let (info, token) = tokens::create(&pool, &name, role, &actor()).await?;
            audit("token.create", name, serde_json::json!({ "role": role })).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "name": info.name, "role": info.role, "key": info.key, "token": token })
                );
            } else {
                println!("{token}");
                eprintln!("token `{}` ({}) created; it is shown only now.", info.name, info.role);
            }
        }
        TokensCommand::Revoke { name } => {
            tokens::revoke(&pool, &name).await?;
            audit("token.revoke", name.clone(), serde_json::json!({})).await?;
            println!("token {name} revoked");
        }
        TokensCommand::List { json } => {
            let list = tokens::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let mut t = table(&["name", "role", "key", "created_by", "created_at", "last_used_at", "revoked_at"]);
                let ts = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.format("%F %T").to_string()).unwrap_or_default()
                };
                for k in list {
                    t.add_row(vec![
                        k.name,
                        k.role.to_string(),
                        k.key,
                        k.created_by,
                        k.created_at.format("%F %T").to_string(),
                        ts(k.last_used_at),
                        ts(k.revoked_at),
                    ]);
                }
                println!("{t}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The error and its causes on one line, leaving out a cause whose text the previous one already
/// contains (wrapped errors often repeat their source in their own message).
fn describe(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|prev| prev.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The audit actor of CLI commands: `cli:<user>`.
fn actor() -> String {
    let user = ["USER", "LOGNAME", "USERNAME"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    format!("cli:{}", user.unwrap_or_else(|| "unknown".into()))
}

async fn healthcheck(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let pg = async {
        let pool = store::connect(&config.database).await?;
        sqlx::query("SELECT 1").execute(&pool).await?;
        anyhow::Ok(())
    }
    .await;
    let redis = async {
        let q =
            syncfleet_shared::queue::QueueClient::connect(config.redis.url.expose(), &config.redis.namespace).await?;
        q.ping().await?;
        anyhow::Ok(())
    }
    .await;
    let status = |r: &anyhow::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {e:#}"),
    };
    if json {
        println!("{}", serde_json::json!({ "postgres": status(&pg), "redis": status(&redis) }));
    } else {
        println!("postgres: {}\nredis:    {}", status(&pg), status(&redis));
    }
    Ok(if pg.is_ok() && redis.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn exit_for(status: &str) -> ExitCode {
    match status {
        "completed" => ExitCode::SUCCESS,
        "partial" => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

async fn finish_or_print(ops: &Ops, run_id: RunId, wait: bool, json: bool) -> anyhow::Result<ExitCode> {
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
fn step_state(s: &views::StepView, with_counts: bool) -> String {
    let mut line = if s.shards > 1 { format!("{} {}/{}", s.status, s.shards_done, s.shards) } else { s.status.clone() };
    if let (Some(error), true) = (&s.error, s.status == "ready" || s.status == "failed") {
        line.push_str(&format!("  (attempt {} failed: {error})", s.attempts));
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

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_HORIZONTAL_ONLY);
    t.set_header(header.to_vec());
    t
}

fn print_run(run: &views::RunView, json: bool) {
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
    let mut t = table(&[
        "step",
        "status",
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
            s.status.clone(),
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

fn print_queues(depths: &[QueueDepth], json: bool) {
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

/// `syncfleet demo`: everything in one process against the configured PostgreSQL and Redis.
async fn demo(config: Config, json: bool, workers: usize, chain: &str, scale: &str) -> anyhow::Result<ExitCode> {
    let erp = chain == "erp";
    let partner = chain == "partner";
    let mut config = config;
    let sandbox = if erp || partner {
        let scale: syncfleet_sandbox::Scale = scale.parse()?;
        // The partner demo lifts the sandbox's Northpass limit (10 requests per second, as upstream)
        // so a seed-scale run takes a minute rather than half an hour; the bench measures the run
        // at the real limit.
        let northpass_rate_per_sec =
            if partner { None } else { syncfleet_sandbox::SandboxConfig::default().northpass_rate_per_sec };
        let sb = syncfleet_sandbox::spawn(syncfleet_sandbox::SandboxConfig {
            scale,
            northpass_rate_per_sec,
            ..Default::default()
        })
        .await?;
        let toml = if erp {
            syncfleet_sandbox::erp_integration_toml("demo-erp", &sb.erp_url(), "erp_items", 1000, "")
        } else {
            // The fleet's budget for the local sandbox is raised from Northpass's 10 requests per
            // second to match.
            syncfleet_sandbox::partner_integration_toml(
                "demo-partner",
                &sb.northpass_url(),
                &sb.impartner_url(),
                ", limits = { rate_per_sec = 400.0, burst = 50, concurrency = 16 }",
            )
        };
        let parsed = Config::from_toml(&toml).expect("the demo integration is valid");
        config.integrations.extend(parsed.integrations);
        Some(sb)
    } else {
        None
    };
    let ops = crate::connect(&config).await?;
    if sandbox.is_none() {
        if ops.chains.get(chain).map(|c| c.pack.as_str()) != Some(demo::PACK) {
            anyhow::bail!("`{chain}` is neither `erp` nor a demo chain (demo_diamond, demo_fanout, demo_contention)");
        }
        store::upsert_integration(&ops.pool, "demo", demo::PACK, &serde_json::json!({ "step_ms": 300 })).await?;
    }
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let producer = tokio::spawn(crate::run_with(listener, ops.clone(), shutdown.clone()));
    let (chains, handlers) = registries(&config)?;
    let mut engines = Vec::new();
    for i in 1..=workers.max(1) {
        let name = worker_name(Some(&format!("demo-worker-{i}")));
        let engine = Arc::new(Engine::new(
            config.clone(),
            ops.pool.clone(),
            ops.queues.clone(),
            chains.clone(),
            handlers.clone(),
            name,
        ));
        engines.push(tokio::spawn(syncfleet_worker::run_engine(engine, chains.queues(), shutdown.clone())));
    }
    let say = |line: String| {
        if !json {
            eprintln!("{line}");
        }
    };
    say(format!("producer on http://{addr}, {} workers", workers.max(1)));
    let result = async {
        let Some(sb) = &sandbox else {
            say(format!("triggering {chain} for integration `demo`"));
            return Ok(vec![demo_run(&ops, chain, "demo", Mode::Full, !json).await?]);
        };
        if partner {
            return demo_partner(&ops, sb, json).await;
        }
        let items = sb.info().pointer("/counts/erp/items").and_then(|v| v.as_i64()).unwrap_or_default();
        say(format!(
            "sandbox ERP at {} with {items} items; full sync of `demo-erp` into table erp_items",
            sb.erp_url()
        ));
        let full = demo_run(&ops, "http_json_sync", "demo-erp", Mode::Full, !json).await?;
        let changed = sb.mutate_json(serde_json::json!({ "api": "erp", "resource": "items", "change_percent": 1 }))?;
        let n = changed["changed"].as_array().map_or(0, Vec::len);
        say(format!("\nthe sandbox changed {n} items (1 %); incremental sync"));
        let incremental = demo_run(&ops, "http_json_sync", "demo-erp", Mode::Incremental, !json).await?;
        Ok::<_, anyhow::Error>(vec![full, incremental])
    }
    .await;
    shutdown.cancel();
    producer.await.ok();
    for e in engines {
        e.await.ok();
    }
    let runs = result?;
    if json {
        // One JSON document: the runs in the order they ran.
        println!("{}", serde_json::to_string_pretty(&runs).expect("serializable"));
    } else {
        for run in &runs {
            println!();
            print_run(run, false);
        }
    }
    let last = runs.last().expect("at least one run");
    if partner {
        let calls = |r: &views::RunView| r.steps.iter().map(|s| s.api_calls).sum::<i64>();
        let (full, incremental) = (calls(&runs[0]), calls(&runs[1]));
        say(format!(
            "\nAPI calls: full {full}, incremental {incremental} ({:.1} % of full); the incremental run saved {} calls.",
            100.0 * incremental as f64 / full.max(1) as f64,
            full - incremental
        ));
    }
    say(if partner {
        format!(
            "\nThe partner data is in the `partner_*` tables of the configured database. Look again with \
             `syncfleet runs show {}`.",
            runs.last().map(|r| r.id.as_str()).unwrap_or_default()
        )
    } else if erp {
        format!(
            "\nThe items are in table `erp_items` of the configured database. Look again with \
             `syncfleet runs` or `syncfleet runs show {}`.",
            last.id
        )
    } else {
        format!(
            "\nEach step wrote one row to `demo_effects`. Look again with `syncfleet runs show {}` or \
             `syncfleet queues`; run the pieces with `syncfleet-producer` and `syncfleet-worker`.",
            last.id
        )
    });
    let worst = runs.iter().map(|r| exit_for(&r.status)).find(|c| *c != ExitCode::SUCCESS);
    Ok(worst.unwrap_or(ExitCode::SUCCESS))
}

/// The partner program sync: `partner_daily` in full, then 1 % of people and enrollments change in
/// the sandbox's Northpass, then an incremental run.
async fn demo_partner(
    ops: &Ops,
    sb: &syncfleet_sandbox::SandboxHandle,
    json: bool,
) -> anyhow::Result<Vec<views::RunView>> {
    let say = |line: String| {
        if !json {
            eprintln!("{line}");
        }
    };
    let count = |p: &str| sb.info().pointer(p).and_then(|v| v.as_i64()).unwrap_or_default();
    say(format!(
        "sandbox Northpass at {} ({} people, {} groups, {} courses) and Impartner at {} ({} accounts, {} contacts); \
         full partner_daily of `demo-partner`",
        sb.northpass_url(),
        count("/counts/northpass/people"),
        count("/counts/northpass/groups"),
        count("/counts/northpass/courses"),
        sb.impartner_url(),
        count("/counts/impartner/accounts"),
        count("/counts/impartner/users"),
    ));
    let full = demo_run(ops, "partner_daily", "demo-partner", Mode::Full, !json).await?;
    let mut changed = 0;
    for resource in ["people", "enrollments"] {
        let out =
            sb.mutate_json(serde_json::json!({ "api": "northpass", "resource": resource, "change_percent": 1 }))?;
        changed += out["changed"].as_array().map_or(0, Vec::len);
    }
    say(format!("\nthe sandbox changed {changed} people and enrollments (1 % of each); incremental partner_daily"));
    let incremental = demo_run(ops, "partner_daily", "demo-partner", Mode::Incremental, !json).await?;
    Ok(vec![full, incremental])
}

/// Triggers one run (cancelling one an interrupted demo left active) and waits for it.
async fn demo_run(
    ops: &Ops,
    chain: &str,
    integration: &str,
    mode: Mode,
    progress: bool,
) -> anyhow::Result<views::RunView> {
    let trigger = Trigger {
        chain: chain.into(),
        integration: integration.into(),
        mode,
        kind: TriggerKind::Manual,
        triggered_by: "demo".into(),
        tick_key: None,
        force_sweep: false,
        step: None,
    };
    let run_id = match ops.trigger(trigger.clone()).await {
        Err(StoreError::ActiveRun { run_id, .. }) => {
            if progress {
                eprintln!("cancelling the earlier demo run {run_id} that is still active");
            }
            ops.cancel(run_id.parse()?).await?;
            ops.trigger(trigger).await?
        }
        other => other?,
    };
    wait_for(ops, run_id, progress, Duration::from_secs(300)).await
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[derive(Debug, thiserror::Error)]
    #[error("invalid configuration: {0}")]
    struct Wrapper(#[source] std::io::Error);

    #[test]
    fn repeated_causes_are_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(Wrapper(io)).context("loading");
        assert_eq!(describe(&e), "loading: invalid configuration: Connection refused");
    }
}
