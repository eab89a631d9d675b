//! Benchmark harness: every scenario measures its figures over several runs and prints one
//! [`report::Scenario`] (medians, spread, ratios, goals). Results and the commands that produced
//! them are recorded in `bench/RESULTS.md`.

mod cpu;
mod partner;
mod queue;
mod report;
mod round;
mod sandbox;
mod scale;
mod upsert;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bench", about = "syncfleet benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print each scenario as one JSON object (else a table).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
struct Runs {
    /// Runs of the scenario; figures are medians over them.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Queue layer (no-op jobs) and whole-engine throughput and start latency.
    Queue {
        #[command(flatten)]
        runs: Runs,
        /// Only the engine's throughput or only the start latency (each with the PostgreSQL floor).
        #[arg(long, value_enum, default_value_t = queue::Part::All)]
        part: queue::Part,
    },
    /// Pages and records per second served by the sandbox upstreams.
    Sandbox {
        /// Runs of the scenario; figures are medians over them.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// ERP items synced by the pull engine (one worker process) against a row-by-row loop and COPY.
    Upsert {
        #[command(flatten)]
        runs: Runs,
        /// ERP items the engine and COPY write (the row-by-row loop writes at most 10,000).
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Reach PostgreSQL through its Unix socket in this directory (e.g. /var/run/postgresql)
        /// instead of TCP 127.0.0.1:5432.
        #[arg(long, value_name = "DIR")]
        pg_socket: Option<std::path::PathBuf>,
    },
    /// `partner_daily` at seed scale (wall time) and at Northpass's 10 requests/s (against the floor).
    #[command(name = "partner-daily")]
    PartnerDaily(Runs),
    /// `partner_daily` incremental after a 1 % change: API calls and time against the full run.
    Incremental(Runs),
    /// Worker peak RSS over a full `partner_daily` at seed and at large scale.
    Memory {
        /// Runs of the scenario (a large run takes minutes).
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// 50 Moodle integrations and one large institution on 1, 2 and 4 worker processes.
    Scale {
        /// Cycles of 1, 2, 4 workers of each part.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Only the fleet or only the institution.
        #[arg(long, value_enum, default_value_t = scale::Part::All)]
        part: scale::Part,
    },
    /// Every scenario in turn with its default runs, one JSON object each.
    All,
}

/// The commands `command` stands for: itself, or for `all` every scenario with its default runs.
fn expand(command: Command) -> Vec<Command> {
    match command {
        Command::All => vec![
            Command::Queue { runs: Runs { runs: 3 }, part: queue::Part::All },
            Command::Sandbox { runs: 1 },
            Command::Upsert { runs: Runs { runs: 3 }, rows: 100_000, pg_socket: None },
            Command::PartnerDaily(Runs { runs: 3 }),
            Command::Incremental(Runs { runs: 3 }),
            Command::Memory { runs: 1 },
            Command::Scale { runs: 3, part: scale::Part::All },
        ],
        one => vec![one],
    }
}

async fn scenario(command: Command) -> anyhow::Result<report::Scenario> {
    match command {
        Command::Queue { runs, part } => queue::run(part, runs.runs).await,
        Command::Sandbox { runs } => sandbox::run(runs).await,
        Command::Upsert { runs, rows, pg_socket } => {
            let pg = pg_socket.map_or(upsert::PgServer::Tcp, upsert::PgServer::Socket);
            upsert::run(runs.runs, rows, pg).await
        }
        Command::PartnerDaily(r) => partner::partner_daily(r.runs).await,
        Command::Incremental(r) => partner::incremental(r.runs).await,
        Command::Memory { runs } => partner::memory(runs).await,
        Command::Scale { runs, part } => scale::run(part, runs).await,
        Command::All => anyhow::bail!("`all` is expanded into its scenarios first"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let commands = expand(cli.command);
    let several = commands.len() > 1;
    // Each scenario prints as soon as it is measured: one JSON line each when there are several.
    for command in commands {
        let s = scenario(command).await?;
        match (cli.json, several) {
            (true, true) => println!("{}", serde_json::to_string(&s.to_json())?),
            (true, false) => println!("{}", serde_json::to_string_pretty(&s.to_json())?),
            (false, _) => s.print(),
        }
    }
    Ok(())
}
