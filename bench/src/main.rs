//! Benchmark harness: prints figures measured side by side in one run.
//! Results and the commands that produced them are recorded in `bench/RESULTS.md`.

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
    match cli.command {
        Command::Sandbox { json } => {
            let figures = sandbox::run().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&figures)?);
            } else {
                for (key, value) in figures.as_object().into_iter().flatten() {
                    println!("{key:<32} {value}");
                }
            }
        }
    }
    Ok(())
}
