//! Benchmark harness: prints figures measured side by side in one run.
//! Results and the commands that produced them are recorded in `bench/RESULTS.md`.

mod partner;
mod queue;
mod report;
mod sandbox;
mod upsert;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bench", about = "syncfleet benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Queue layer (no-op jobs) and whole-engine throughput and start latency.
    Queue {
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Pages and records per second served by the sandbox upstreams.
    Sandbox {
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// ERP items synced by the pull engine (one worker process) against a row-by-row loop and COPY.
    Upsert {
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
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
    PartnerDaily {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// `partner_daily` incremental after a 1 % change: API calls and time against the full run.
    Incremental {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Worker peak RSS over a full `partner_daily` at seed and at large scale.
    Memory {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// Every scenario in turn, one JSON object each (`queue`, `sandbox` and `upsert` give their
    /// figures as one run's).
    All {
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::All { json } = cli.command {
        let single = |name: &str, figures: serde_json::Value| serde_json::json!({"scenario": name, "runs": 1, "figures": figures});
        let all = [
            single("queue", queue::run().await?),
            single("sandbox", sandbox::run().await?),
            single("upsert", upsert::run(100_000, upsert::PgServer::Tcp).await?),
            partner::partner_daily(3).await?.to_json(),
            partner::incremental(3).await?.to_json(),
            partner::memory(1).await?.to_json(),
        ];
        for scenario in all {
            if json {
                println!("{}", serde_json::to_string(&scenario)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&scenario)?);
            }
        }
        return Ok(());
    }
    let scenario = match &cli.command {
        Command::PartnerDaily { runs, .. } => Some(partner::partner_daily(*runs).await?),
        Command::Incremental { runs, .. } => Some(partner::incremental(*runs).await?),
        Command::Memory { runs, .. } => Some(partner::memory(*runs).await?),
        _ => None,
    };
    if let Some(s) = scenario {
        if matches!(
            cli.command,
            Command::PartnerDaily { json: true, .. }
                | Command::Incremental { json: true, .. }
                | Command::Memory { json: true, .. }
        ) {
            println!("{}", serde_json::to_string_pretty(&s.to_json())?);
        } else {
            s.print();
        }
        return Ok(());
    }
    let (figures, json) = match cli.command {
        Command::PartnerDaily { .. } | Command::Incremental { .. } | Command::Memory { .. } | Command::All { .. } => {
            unreachable!("handled above")
        }
        Command::Queue { json } => (queue::run().await?, json),
        Command::Sandbox { json } => (sandbox::run().await?, json),
        Command::Upsert { json, rows, pg_socket } => {
            let pg = pg_socket.map_or(upsert::PgServer::Tcp, upsert::PgServer::Socket);
            (upsert::run(rows, pg).await?, json)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        for (key, value) in figures.as_object().into_iter().flatten() {
            match value.as_str() {
                Some(text) => println!("{key:<36} {text}"),
                None => println!("{key:<36} {value}"),
            }
        }
    }
    Ok(())
}
