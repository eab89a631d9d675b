//! `syncfleet-worker`: runs step jobs from Redis until SIGTERM or ctrl-c.

use clap::Parser;
use syncfleet_runtime::telemetry;

#[derive(Parser)]
#[command(name = "syncfleet-worker", version, about = "syncfleet worker: runs chain steps from Redis")]
struct Args {
    /// TOML config file (defaults, then this file, then SYNCFLEET__… env vars).
    #[arg(long, env = "SYNCFLEET_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Log as JSON lines (the default in production when stderr is not a terminal).
    #[arg(long, env = "SYNCFLEET_LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The one place that names the packs this binary runs.
    let registry = syncfleet_registry::builtin();
    let config = registry.load_config(args.config.as_deref())?;
    // The runtime is sized by the config (`worker.threads`), so it is built once the config is read.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker.threads > 0 {
        runtime.worker_threads(config.worker.threads);
    }
    runtime.enable_all().build()?.block_on(async move {
        let json = args.log_json || telemetry::json_by_default(config.environment);
        let _telemetry = telemetry::init_service("syncfleet-worker", json);
        let shutdown = syncfleet_worker::shutdown_signal();
        syncfleet_worker::run(config, &registry, shutdown).await
    })
}
