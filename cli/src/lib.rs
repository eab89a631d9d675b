//! The `syncfleet` CLI. Table output by default, `--json` for scripts. The JSON shapes of
//! `runs show --json` ([`views::RunView`]) and `queues --json` ([`QueueDepth`]) are a contract.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use syncfleet_producer::ops::Trigger;
use syncfleet_runtime::telemetry;
use syncfleet_sdk::Registry;
use syncfleet_shared::{chain::Mode, config::Config, ids::RunId};
use syncfleet_store::{self as store, StoreError, runs::TriggerKind, views};

#[cfg(feature = "demo")]
mod demo;
mod output;

pub use output::wait_for;
use output::{exit_for, finish_or_print, print_queues, print_run, table};

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
    #[cfg(feature = "demo")]
    /// Run the main job end to end on the sandbox: start the sandbox upstreams, a producer and
    /// workers in this process, run the partner program sync into PostgreSQL (full, then
    /// incremental after a 1 % change upstream), and show the runs. `--chain moodle` runs the
    /// Moodle institutional sync, `--chain erp` the ERP sync, `--chain demo_diamond` (or another
    /// demo chain) the engine's demo chain.
    Demo {
        #[arg(long)]
        json: bool,
        /// Worker engines to start in this process.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// `partner` (the partner program sync, `partner_daily`, of the sandbox's Northpass and
        /// Impartner), `moodle` (the institutional sync, `moodle_institutional`, of the sandbox's
        /// Moodle), `erp` (the sandbox ERP sync) or a demo chain: demo_diamond, demo_fanout,
        /// demo_contention.
        #[arg(long, default_value = "partner")]
        chain: String,
        /// Sandbox data scale for `partner`, `moodle` and `erp`: small, seed or large.
        #[arg(long, default_value = "seed")]
        scale: String,
    },
    /// As the owner role (`database.owner_url`): create the database if missing, apply the
    /// migrations, grant the runtime role (the user of `database.url`) its privileges, and register
    /// the config file's integrations and prepare their tables.
    Migrate {
        #[arg(long)]
        json: bool,
    },
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
        /// A step's own mode, replacing the chain's pinned mode and --mode for it
        /// (`--step-mode impartner_sync=incremental`; repeatable).
        #[arg(long = "step-mode", value_name = "STEP=MODE", value_parser = parse_step_mode)]
        step_mode: Vec<(String, Mode)>,
        /// While another chain of this chain's exclusion group runs for the integration, create
        /// the run queued (it starts when the other ends) instead of refusing.
        #[arg(long)]
        queue: bool,
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
    /// What CHAIN is doing for an integration: idle, active (run id, steps running) or queued
    /// (run id, and the run it waits behind).
    Status {
        chain: String,
        #[arg(long)]
        integration: String,
        #[arg(long)]
        json: bool,
    },
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
    /// Data repair: what a full run's sweep would deactivate now (`sweep preview`).
    Sweep {
        #[command(subcommand)]
        action: SweepCommand,
    },
    /// Data repair: move an entity's incremental cursor (`cursor reset`).
    Cursor {
        #[command(subcommand)]
        action: CursorCommand,
    },
}

#[derive(Subcommand)]
enum SweepCommand {
    /// The rows a full run of CHAIN would deactivate now for an integration (those the last full
    /// read did not see, nor any run since; no upstream is read) and the deletion guard's decision,
    /// before anyone uses `--force-sweep`. Recorded in the audit trail.
    Preview {
        chain: String,
        #[arg(long)]
        integration: String,
        /// Only this entity (its table), or a synced table by name.
        #[arg(long)]
        entity: Option<String>,
        /// Ids listed per table.
        #[arg(long, default_value_t = syncfleet_producer::api::repair::DEFAULT_LIMIT)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CursorCommand {
    /// Make the next incremental run of INTEGRATION's ENTITY read changes from --since (RFC 3339,
    /// minus the entity's lookback); without --since, read everything. Recorded in the audit trail.
    Reset {
        integration: String,
        entity: String,
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        json: bool,
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
    /// Store a schedule of one mode (overrides the config and the pack's default of that mode):
    /// `--interval-secs N`, `--cron EXPR [--tz ZONE]` or `--disable`.
    Set {
        chain: String,
        #[arg(long)]
        integration: String,
        /// The mode of the runs it fires (one schedule per mode); with `--disable` and no mode,
        /// every schedule of the chain for the integration is switched off.
        #[arg(long, value_parser = ["full", "incremental"])]
        mode: Option<String>,
        #[arg(long, conflicts_with_all = ["cron", "disable"])]
        interval_secs: Option<u64>,
        /// Crontab expression: `0 2 * * *` (5 fields, 0 or 7 is Sunday), or 6 with seconds first.
        #[arg(long, conflicts_with = "disable")]
        cron: Option<String>,
        /// IANA time zone the cron expression is read in (default UTC).
        #[arg(long, requires = "cron")]
        tz: Option<String>,
        /// A step's own mode in the runs it fires (`--step-mode sync_enrollments=incremental`;
        /// repeatable).
        #[arg(long = "step-mode", value_name = "STEP=MODE", value_parser = parse_step_mode)]
        step_mode: Vec<(String, Mode)>,
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

/// Exit code 1: an error; 3: a waited-for run ended `partial`; 4: a trigger refused because another
/// chain of its exclusion group runs.
/// Connects to PostgreSQL and Redis as the producer does (the config file's integrations
/// registered with `registry`'s packs).
async fn connect(config: &Config, registry: &Registry) -> anyhow::Result<syncfleet_producer::Ops> {
    syncfleet_producer::connect(config, registry.clone()).await
}

/// The CLI over the packs of `registry` (the binary passes `syncfleet_registry::builtin()`).
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    // Quiet by default: the CLI's own output is the interface; `-v` shows the services' logs.
    telemetry::init(false, if cli.verbose { telemetry::SERVICE_FILTER } else { "error" });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli, &registry)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli, registry: &Registry) -> anyhow::Result<ExitCode> {
    let config = registry.load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Migrate { json } => migrate(&config, registry, json).await,
        Command::Healthcheck { json } => healthcheck(&config, json).await,
        #[cfg(feature = "demo")]
        Command::Demo { json, workers, chain, scale } => {
            demo::demo(config, registry, json, workers, &chain, &scale).await
        }
        Command::Trigger { chain, integration, mode, force_sweep, step, step_mode, queue, wait, json } => {
            let ops = connect(&config, registry).await?;
            let mode = Mode::parse(&mode).unwrap_or_default();
            let trigger = Trigger {
                chain,
                integration,
                mode,
                kind: TriggerKind::Manual,
                triggered_by: actor(),
                tick_key: None,
                force_sweep,
                step,
                step_modes: step_mode.into_iter().collect(),
            };
            let run_id = match ops.trigger_or_queue(trigger, queue).await {
                Ok(run_id) => run_id,
                // Exit 4: another chain of the exclusion group runs (`--queue` waits for it).
                Err(e @ StoreError::Excluded { .. }) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(4));
                }
                Err(e) => return Err(e.into()),
            };
            finish_or_print(&ops, run_id, wait, json).await
        }
        Command::Runs { show: Some(RunsCommand::Show { run_id, json, watch }), .. } => {
            let ops = connect(&config, registry).await?;
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
            let ops = connect(&config, registry).await?;
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
            let ops = connect(&config, registry).await?;
            let id: RunId = run_id.parse()?;
            ops.resume(id, &actor()).await?;
            finish_or_print(&ops, id, wait, json).await
        }
        Command::Cancel { run_id } => {
            let ops = connect(&config, registry).await?;
            ops.cancel(run_id.parse()?, &actor()).await?;
            println!("run {run_id} cancelled");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { chain, integration, json } => {
            let ops = connect(&config, registry).await?;
            if ops.chains.get(&chain).is_none() {
                anyhow::bail!("unknown chain `{chain}`");
            }
            let s = views::chain_status(&ops.pool, &chain, &integration).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
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
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Queues { json, watch } => {
            let ops = connect(&config, registry).await?;
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
            let ops = connect(&config, registry).await?;
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
        Command::Schedule { action } => schedule(&config, registry, action).await,
        Command::Integrations { json } => {
            let ops = connect(&config, registry).await?;
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
            let ops = connect(&config, registry).await?;
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
        Command::Tokens { action } => tokens(&config, registry, action).await,
        Command::Sweep { action } => sweep(&config, registry, action).await,
        Command::Cursor { action } => cursor(&config, registry, action).await,
    }
}

async fn sweep(config: &Config, registry: &Registry, action: SweepCommand) -> anyhow::Result<ExitCode> {
    let SweepCommand::Preview { chain, integration, entity, limit, json } = action;
    if !(1..=100_000).contains(&limit) {
        anyhow::bail!("--limit must be between 1 and 100000");
    }
    let ops = connect(config, registry).await?;
    let p = ops.sweep_preview(&chain, &integration, entity.as_deref(), limit, &actor()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(read) = &p.last_full_read {
        println!(
            "last full read: run {} ({}), guard: {}",
            read["run_id"].as_str().unwrap_or("?"),
            read["status"].as_str().unwrap_or("?"),
            read["guard"].as_str().unwrap_or("–")
        );
    }
    for t in &p.tables {
        let decision = match &t.reason {
            Some(reason) => format!("{} ({reason})", t.decision),
            None => t.decision.clone(),
        };
        println!(
            "{}: {} of {} active rows would be deactivated; guard: {decision}",
            t.table, t.would_deactivate, t.active
        );
        if !t.external_ids.is_empty() {
            let more = t.would_deactivate - t.external_ids.len() as i64;
            let tail = if more > 0 { format!(" … and {more} more") } else { String::new() };
            println!("  {}{tail}", t.external_ids.join(" "));
        }
    }
    println!("{}", p.note);
    Ok(ExitCode::SUCCESS)
}

async fn cursor(config: &Config, registry: &Registry, action: CursorCommand) -> anyhow::Result<ExitCode> {
    let CursorCommand::Reset { integration, entity, since, json } = action;
    let ops = connect(config, registry).await?;
    let r = ops.reset_cursor(&integration, &entity, since, &actor()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        match &r.value {
            Some(v) => println!("cursor of {integration}/{entity}: {} → {v}", r.previous),
            None => {
                println!("cursor of {integration}/{entity} removed (was {}): the next run reads everything", r.previous)
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn schedule(config: &Config, registry: &Registry, action: ScheduleCommand) -> anyhow::Result<ExitCode> {
    let ops = connect(config, registry).await?;
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
                let mut t =
                    table(&["chain", "integration", "mode", "every", "tz", "source", "enabled", "next run", "set by"]);
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
                println!("{t}");
            }
        }
        ScheduleCommand::Set { chain, integration, mode, interval_secs, cron, tz, step_mode, disable } => {
            if interval_secs.is_none() && cron.is_none() && !disable {
                anyhow::bail!("give --interval-secs, --cron or --disable");
            }
            let mode = mode.as_deref().and_then(Mode::parse);
            let spec = syncfleet_shared::config::ScheduleSpec {
                interval_secs,
                cron,
                mode,
                tz,
                step_modes: step_mode.into_iter().collect(),
                enabled: Some(!disable),
            };
            ops.set_schedule(&chain, &integration, &spec, &actor()).await?;
            let shown = match mode {
                Some(m) => m.as_str(),
                None if disable => syncfleet_store::schedules::ALL_MODES,
                None => Mode::Incremental.as_str(),
            };
            let s = ops
                .schedules()
                .await?
                .into_iter()
                .find(|s| s.chain == chain && s.integration == integration && s.mode == shown);
            match s.and_then(|s| s.next_run.map(|n| (s.mode, n))) {
                Some((mode, next)) => println!("{mode} schedule of {chain} for {integration} stored; next run {next}"),
                None => println!("schedule of {chain} for {integration} disabled"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `syncfleet migrate`: the owner path, and what it did.
async fn migrate(config: &Config, registry: &Registry, json: bool) -> anyhow::Result<ExitCode> {
    let registry = registry.clone().with_secrets(config.secrets.policy());
    let report = store::roles::migrate_as_owner(&config.database, &registry, &config.integrations).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let created = if report.database_created { "created" } else { "exists" };
    println!("database {} ({created}), owner role {}", report.database, report.owner_role);
    if report.applied.is_empty() {
        println!("migrations: up to date");
    } else {
        println!("migrations applied: {}", report.applied.join(", "));
    }
    match &report.runtime_role {
        Some(role) => println!("runtime role {role} granted (database.url)"),
        None => println!("runtime role: database.url logs in as the owner role; nothing granted"),
    }
    if !report.integrations.is_empty() {
        println!("integrations registered: {}", report.integrations.join(", "));
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn tokens(config: &Config, registry: &Registry, action: TokensCommand) -> anyhow::Result<ExitCode> {
    use syncfleet_store::tokens;
    let pool = store::roles::start(config, registry).await?;
    // Each change commits with its audit row.
    let audited = || store::audit::Audited::begin(&pool);
    match action {
        TokensCommand::Create { name, role, json } => {
            let role: tokens::Role = role.parse().map_err(anyhow::Error::msg)?;
            let mut tx = audited().await?;
            let (info, token) = tokens::create(tx.conn(), &name, role, &actor()).await?;
            tx.commit(&actor(), "token.create", &name, serde_json::json!({ "role": role })).await?;
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
            let mut tx = audited().await?;
            tokens::revoke(tx.conn(), &name).await?;
            tx.commit(&actor(), "token.revoke", &name, serde_json::json!({})).await?;
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
        store::health::ping(&pool).await?;
        anyhow::Ok(())
    }
    .await;
    let redis = async {
        let q =
            syncfleet_store::queue::QueueClient::connect(config.redis.url.expose(), &config.redis.namespace).await?;
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

/// `STEP=MODE` of `trigger --step-mode`.
fn parse_step_mode(s: &str) -> Result<(String, Mode), String> {
    let (step, mode) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected STEP=MODE"))?;
    let mode = Mode::parse(mode).ok_or_else(|| format!("`{s}`: the mode must be full or incremental"))?;
    Ok((step.to_owned(), mode))
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
