//! Benchmark harness: prints figures measured side by side in one run.
//! Results and the commands that produced them are recorded in `bench/RESULTS.md`.

mod queue;
mod sandbox;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (figures, json) = match cli.command {
        Command::Queue { json } => (queue::run().await?, json),
        Command::Sandbox { json } => (sandbox::run().await?, json),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        for (key, value) in figures.as_object().into_iter().flatten() {
            println!("{key:<36} {value}");
        }
    }
    Ok(())
}
