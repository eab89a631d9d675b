//! The producer: scheduler, reconciler (bounded dispatch and healing), and the admin API; plus the
//! `syncfleet` CLI, which drives the same operations.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod cli;
pub mod dashboard;
pub mod metrics;
pub mod moodle;
pub mod ops;
pub mod reconciler;
pub mod reports;
pub mod scheduler;

use syncfleet_shared::{
    config::Config,
    http::{HttpClients, RateBudget},
    queue::QueueClient,
    registries, store,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use ops::Ops;

/// Connects to PostgreSQL (creating and migrating the database) and Redis.
pub async fn connect(config: &Config) -> anyhow::Result<Ops> {
    let pool = store::connect(&config.database).await?;
    store::migrate(&pool).await?;
    store::register_integrations(&pool, &config.integrations).await?;
    let queues = QueueClient::connect(config.redis.url.expose(), &config.redis.namespace).await?;
    let (chains, _) = registries(config)?;
    let http = HttpClients::new(Some(RateBudget::new(queues.connection(), queues.namespace())));
    Ok(Ops { config: config.clone(), pool, queues, chains, http })
}

/// Runs the producer on `listener` until `shutdown`: the API, the scheduler and the reconciler.
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ops = connect(&config).await?;
    run_with(listener, ops, shutdown).await
}

pub async fn run_with(listener: TcpListener, ops: Ops, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "Producer started.");
    let mut tasks = Vec::new();
    if ops.config.producer.scheduler_enabled {
        moodle::startup_triggers(&ops).await;
        tasks.push(tokio::spawn(scheduler::Scheduler::new(ops.clone()).run(shutdown.clone())));
    }
    tasks.push(tokio::spawn(reconciler::Reconciler::new(ops.clone()).run(shutdown.clone())));
    let app = api::router(ops);
    let stop = shutdown.clone();
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
    for t in tasks {
        t.await.ok();
    }
    tracing::info!("Producer stopped.");
    Ok(())
}
