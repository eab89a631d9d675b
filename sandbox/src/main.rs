//! `syncfleet-sandbox`: serves the fake upstream APIs until ctrl-c or SIGTERM.

use clap::Parser;
use syncfleet_sandbox::{SandboxConfig, Scale};

#[derive(Parser)]
#[command(name = "syncfleet-sandbox", about = "Local fakes of Northpass, Impartner, Moodle and an ERP API")]
struct Args {
    #[arg(long, default_value_t = 8090)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// small | seed | large
    #[arg(long, default_value = "small")]
    scale: Scale,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of ERP items to generate instead of the scale's (e.g. 1000000)
    #[arg(long, value_name = "N")]
    erp_items: Option<usize>,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let config =
        SandboxConfig { seed: args.seed, scale: args.scale, erp_items: args.erp_items, ..SandboxConfig::default() };
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    match config.erp_items {
        Some(n) => println!("syncfleet-sandbox: scale {} seed {} erp items {n}", config.scale, config.seed),
        None => println!("syncfleet-sandbox: scale {} seed {}", config.scale, config.seed),
    }
    println!("  northpass  {base}/northpass/v2                       X-Api-Key: {}", config.northpass_key);
    println!(
        "  impartner  {base}/impartner/api/objects/v1           Authorization: prm-key {} (X-PRM-TenantId: {})",
        config.impartner_key, config.impartner_tenant
    );
    println!("  moodle     {base}/moodle/webservice/rest/server.php  wstoken={}", config.moodle_token);
    println!("  erp        {base}/erp/api                            Authorization: Bearer {}", config.erp_token);
    println!("  control    {base}/_sandbox                           Authorization: Bearer {}", config.control_token);
    syncfleet_sandbox::run(listener, config, shutdown_signal()).await
}
