//! Operations shared by the admin API, the CLI and the scheduler: trigger, resume, cancel, and
//! reading queue depth. Each writes PostgreSQL first, then pushes what became ready.

use std::sync::Arc;

use sqlx::PgPool;
use syncfleet_shared::{
    chain::{ChainRegistry, Mode},
    config::Config,
    dispatch,
    http::HttpClients,
    ids::RunId,
    queue::{QueueClient, QueueDepth},
    store::{
        self, StoreError,
        runs::{self, TriggerKind, TriggerRequest},
    },
};

/// What every operation needs.
#[derive(Clone)]
pub struct Ops {
    pub config: Config,
    pub pool: PgPool,
    pub queues: QueueClient,
    pub chains: Arc<ChainRegistry>,
    /// For single-item syncs that fetch the record by id.
    pub http: HttpClients,
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub chain: String,
    pub integration: String,
    pub mode: Mode,
    pub kind: TriggerKind,
    pub triggered_by: String,
    pub tick_key: Option<String>,
    pub force_sweep: bool,
}

impl Ops {
    pub async fn trigger(&self, t: Trigger) -> Result<RunId, StoreError> {
        let chain = self.chains.get(&t.chain).ok_or_else(|| StoreError::UnknownChain(t.chain.clone()))?;
        let integration = store::integration_by_name(&self.pool, &t.integration).await?;
        let (run_id, ready) = runs::create_run(
            &self.pool,
            TriggerRequest {
                chain,
                integration: &integration,
                mode: t.mode,
                kind: t.kind,
                triggered_by: t.triggered_by,
                tick_key: t.tick_key,
                force_sweep: t.force_sweep,
            },
        )
        .await?;
        self.push_ready(&ready).await;
        tracing::info!(%run_id, chain = %t.chain, integration = %t.integration, trigger = t.kind.as_str(), "Run created.");
        Ok(run_id)
    }

    pub async fn resume(&self, run_id: RunId) -> Result<(), StoreError> {
        let ready = runs::resume(&self.pool, run_id).await?;
        self.push_ready(&ready).await;
        tracing::info!(%run_id, ready = ready.len(), "Run resumed.");
        Ok(())
    }

    pub async fn cancel(&self, run_id: RunId) -> Result<(), StoreError> {
        runs::cancel(&self.pool, run_id).await?;
        tracing::info!(%run_id, "Run cancelled.");
        Ok(())
    }

    /// Pushes steps a transition made ready; on failure the reconciler dispatches them.
    async fn push_ready(&self, ready: &[runs::ReadyStep]) {
        if let Err(error) =
            dispatch::dispatch_ready(&self.pool, &self.queues, self.config.producer.dispatch_cap, ready).await
        {
            tracing::warn!(%error, "Push of ready steps failed; the reconciler will dispatch them.");
        }
    }

    /// Depth of every queue the chains use.
    pub async fn queue_depths(&self) -> Result<Vec<QueueDepth>, syncfleet_shared::queue::QueueError> {
        let mut out = Vec::new();
        for q in self.chains.queues() {
            out.push(self.queues.depth(&q).await?);
        }
        Ok(out)
    }
}
