//! The producer: scheduler, reconciler (bounded dispatch and healing), and the admin API. The
//! `syncfleet` CLI (crate `syncfleet-cli`) drives the same operations through [`Ops`].
//!
//! **Invariant:** the library names no pack; it takes a [`Registry`] and asks it.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod reconciler;
pub mod scheduler;
pub mod startup;

use std::sync::Arc;

use syncfleet_sdk::{
    Registry,
    http::{HttpClients, RateBudget},
};
use syncfleet_shared::config::Config;
use syncfleet_store::{self as store, queue::QueueClient};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use ops::Ops;

/// Connects to PostgreSQL (creating and migrating the database) and Redis, and registers the
/// config file's integrations with `registry`'s packs.
pub async fn connect(config: &Config, registry: Registry) -> anyhow::Result<Ops> {
    let pool = store::connect(&config.database).await?;
    store::migrate(&pool).await?;
    store::register_integrations(&pool, &registry, &config.integrations).await?;
    let queues = QueueClient::connect(config.redis.url.expose(), &config.redis.namespace).await?;
    let chains = Arc::new(registry.chains(config)?);
    let http = HttpClients::new(Some(RateBudget::new(queues.connection(), queues.namespace())));
    Ok(Ops { config: config.clone(), pool, queues, chains, http, registry: Arc::new(registry) })
}

/// Runs the producer on `listener` until `shutdown`: the API, the scheduler and the reconciler.
pub async fn run(
    listener: TcpListener,
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ops = connect(&config, registry).await?;
    run_with(listener, ops, shutdown).await
}

pub async fn run_with(listener: TcpListener, ops: Ops, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "Producer started.");
    let mut tasks = Vec::new();
    if ops.config.producer.scheduler_enabled {
        startup::startup_triggers(&ops).await;
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
