//! `syncfleet-worker`: runs step jobs from Redis until SIGTERM or ctrl-c.

use clap::Parser;
use syncfleet_shared::{config::Config, telemetry};

#[derive(Parser)]
#[command(name = "syncfleet-worker", version, about = "syncfleet worker: runs chain steps from Redis")]
struct Args {
    /// TOML config file (defaults, then this file, then SYNCFLEET__… env vars).
    #[arg(long, env = "SYNCFLEET_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "SYNCFLEET_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_json, telemetry::SERVICE_FILTER);
    let config = Config::load(args.config.as_deref())?;
    let shutdown = syncfleet_worker::shutdown_signal();
    syncfleet_worker::run(config, shutdown).await
}
