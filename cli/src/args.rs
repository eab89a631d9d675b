//! The command line: every command, its flags, and the help text (exit codes, environment).

use clap::{Parser, Subcommand};
use syncfleet_shared::chain::Mode;

/// What `syncfleet --help` ends with: how the CLI connects and what its exit codes mean.
const AFTER_HELP: &str = "\
Connection:
  With SYNCFLEET_API_URL and SYNCFLEET_TOKEN set, commands go through the producer's admin API, so the
  token's role decides what may be done and the audit trail names the token. Without them (or with
  --direct), commands connect to PostgreSQL and Redis as the config file says and record
  SYNCFLEET_ACTOR (default cli:$USER) in the audit trail. `migrate`, `tokens create`, `healthcheck`
  and `demo` always connect directly. Only `migrate` creates or migrates the database.

Exit codes:
  0  success (a waited-for run completed)
  1  error, or a waited-for run failed or was cancelled, or `healthcheck --url` got a non-2xx answer
  2  usage: unknown command or bad flags
  3  a waited-for run ended partial (some work or a sweep was held back)
  4  refused: a run of the chain, or of its exclusion group, is already active (`--queue` waits)
  5  unreachable: PostgreSQL, Redis, the API or the `healthcheck --url` could not be reached
  6  not allowed: the API token is missing, invalid or revoked, or its role is too low";

#[derive(Parser)]
#[command(name = "syncfleet", version, about = "Operate a syncfleet deployment", after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// TOML config file (defaults, then this file, then SYNCFLEET__… env vars).
    #[arg(long, global = true, env = "SYNCFLEET_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Show the producer's and workers' logs (info level) on stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// The producer's base URL (`https://syncfleet.example.com`): commands go through its admin API.
    #[arg(long, global = true, env = "SYNCFLEET_API_URL")]
    pub api_url: Option<String>,
    /// The API token (`sf_…`); read from the environment only, so it never shows in a process list.
    #[arg(skip = std::env::var("SYNCFLEET_TOKEN").ok().filter(|t| !t.trim().is_empty()))]
    pub token: Option<String>,
    /// Connect to PostgreSQL and Redis directly even when SYNCFLEET_API_URL is set.
    #[arg(long, global = true)]
    pub direct: bool,
    /// Who direct-mode changes are recorded as in the audit trail (default `cli:$USER`).
    #[arg(long, global = true, env = "SYNCFLEET_ACTOR")]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    #[cfg(feature = "demo")]
    /// Run the main job end to end on the sandbox: start the sandbox upstreams, a producer and
    /// workers in this process, run the partner program sync into PostgreSQL (full, then
    /// incremental after a 1 % change upstream), and show the runs. `--chain moodle` runs the
    /// Moodle institutional sync, `--chain erp` the ERP sync, `--chain demo_diamond` (or another
    /// demo chain) the engine's demo chain. Refused with `environment = "production"`.
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
    /// the config file's integrations and prepare their tables. The only command that creates or
    /// migrates the database.
    Migrate {
        #[arg(long)]
        json: bool,
    },
    /// Check PostgreSQL and Redis answer; exit 0 if both do, 5 if one does not. With `--url`, ask
    /// only the process behind URL (`http://127.0.0.1:8080/readyz` for the producer,
    /// `http://127.0.0.1:9464/readyz` for a worker), without reading the database or Redis config:
    /// exit 0 on a 2xx answer, 1 on another answer, 5 when nothing answers.
    Healthcheck {
        /// The readiness URL of a producer or worker to probe instead of PostgreSQL and Redis.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
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
        /// the run queued (it starts when the other ends) instead of refusing (exit 4).
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
    Cancel {
        run_id: String,
        #[arg(long)]
        json: bool,
    },
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
    /// Create, list or revoke API tokens (`tokens create` always connects directly: it makes the
    /// first token).
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
    /// Print the shell completion script: `syncfleet completions bash > /etc/bash_completion.d/syncfleet`,
    /// `syncfleet completions zsh > "${fpath[1]}/_syncfleet"`,
    /// `syncfleet completions fish > ~/.config/fish/completions/syncfleet.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
pub(crate) enum SweepCommand {
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
pub(crate) enum CursorCommand {
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
pub(crate) enum QueueCommand {
    /// Dispatch nothing new to QUEUE until it is resumed.
    Pause {
        queue: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume dispatching to QUEUE.
    Resume {
        queue: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum ScheduleCommand {
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
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokensCommand {
    /// Create a token; its secret is printed once. Always connects directly (the first token is
    /// made before the API can be used).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke the token named NAME.
    Revoke {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum RunsCommand {
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

/// `STEP=MODE` of `trigger --step-mode`.
fn parse_step_mode(s: &str) -> Result<(String, Mode), String> {
    let (step, mode) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected STEP=MODE"))?;
    let mode = Mode::parse(mode).ok_or_else(|| format!("`{s}`: the mode must be full or incremental"))?;
    Ok((step.to_owned(), mode))
}
