//! The producer: scheduler, reconciler (bounded dispatch and healing), and the admin API. The
//! `syncfleet` CLI (crate `syncfleet-cli`) drives the same operations through [`Ops`].
//!
//! **Invariant:** the library names no pack; it takes a [`Registry`] and asks it.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod hooks;
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

/// Connects to PostgreSQL as the runtime role and to Redis. With `database.owner_url` set, the
/// owner path runs first (create and migrate the database, grant the runtime role, register the
/// config file's integrations with `registry`'s packs); without it the schema must be migrated
/// already (`syncfleet migrate`). See `syncfleet_store::roles::start`.
pub async fn connect(config: &Config, registry: Registry) -> anyhow::Result<Ops> {
    // The API's settings and webhook references are checked, and secrets read, under `[secrets]`.
    let registry = registry.with_secrets(config.secrets.policy());
    let pool = store::roles::start(config, &registry).await?;
    let queues = QueueClient::connect_to(&config.redis).await?;
    let chains = Arc::new(registry.chains(config)?);
    let http = HttpClients::new(Some(RateBudget::new(queues.connection(), queues.namespace())), &config.upstream)
        .with_secrets(config.secrets.policy());
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
    // Header-read and request timeouts, a connection limit, a shutdown deadline (`[producer]`).
    let limits = syncfleet_runtime::server::ServerLimits::of_producer(&ops.config.producer);
    let app = api::router(ops);
    syncfleet_runtime::server::serve(listener, app, limits, shutdown.clone()).await?;
    for t in tasks {
        t.await.ok();
    }
    tracing::info!("Producer stopped.");
    Ok(())
}
