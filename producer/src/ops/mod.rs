//! Operations shared by the admin API, the CLI and the scheduler: trigger, resume, cancel, and
//! reading queue depth. Each writes PostgreSQL first, then pushes what became ready.

mod schedules;

use std::sync::Arc;

use sqlx::PgPool;
use syncfleet_sdk::{Registry, http::HttpClients};
use syncfleet_shared::{
    chain::{ChainDef, ChainRegistry, Mode},
    config::Config,
    ids::RunId,
};
use syncfleet_store::{
    self as store, StoreError, dispatch,
    queue::{QueueClient, QueueDepth},
    queues,
    runs::{self, TriggerKind, TriggerRequest},
};

pub use schedules::{ResolvedSchedule, ScheduleView};

/// What every operation needs.
#[derive(Clone)]
pub struct Ops {
    pub config: Config,
    pub pool: PgPool,
    pub queues: QueueClient,
    pub chains: Arc<ChainRegistry>,
    /// For single-item syncs that fetch the record by id.
    pub http: HttpClients,
    /// The packs this producer serves.
    pub registry: Arc<Registry>,
}

impl Ops {
    /// The shortest schedule interval of `chain`: the deployment's, or its pack's when larger.
    pub fn min_interval_for(&self, chain: &str) -> std::time::Duration {
        self.registry.min_interval_for(&self.config, chain)
    }
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
    /// Run only this step of the chain (its prerequisites are not run).
    pub step: Option<String>,
    /// Per-step modes replacing the chain's pinned mode and `mode` for those steps.
    pub step_modes: std::collections::BTreeMap<String, Mode>,
}

/// A worker process seen in Redis, with what it runs now.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct WorkerView {
    pub name: String,
    pub queues: Vec<String>,
    pub last_seen: chrono::DateTime<chrono::Utc>,
    pub current: Vec<queues::RunningStep>,
}

impl Ops {
    /// Triggers a run. While another chain of its exclusion group (`Pack::exclusive_chains`) is
    /// active for the integration, a scheduled, start-up or webhook run waits queued behind it;
    /// a manual one is refused ([`StoreError::Excluded`], 409) — [`Ops::trigger_or_queue`] lets it
    /// wait.
    pub async fn trigger(&self, t: Trigger) -> Result<RunId, StoreError> {
        let queue = t.kind != TriggerKind::Manual;
        self.trigger_or_queue(t, queue).await
    }

    /// Triggers a run; `queue`: wait behind an active run of the chain's exclusion group instead of
    /// refusing. The root span of the run's trace: the run stores its context, and every step job
    /// carries it.
    #[tracing::instrument(
        name = "trigger",
        parent = None,
        skip_all,
        fields(chain = %t.chain, integration = %t.integration, trigger = t.kind.as_str())
    )]
    pub async fn trigger_or_queue(&self, t: Trigger, queue: bool) -> Result<RunId, StoreError> {
        let full = self.chains.get(&t.chain).ok_or_else(|| StoreError::UnknownChain(t.chain.clone()))?;
        if let Some(unknown) = t.step_modes.keys().find(|s| full.step(s).is_none()) {
            let known: Vec<&str> = full.steps.iter().map(|s| s.name.as_str()).collect();
            return Err(StoreError::Invalid(format!(
                "step_modes: chain `{}` has no step `{unknown}` (steps: {})",
                t.chain,
                known.join(", ")
            )));
        }
        let chain: ChainDef = match &t.step {
            None => (**full).clone(),
            Some(step) => {
                let mut def = full.step(step).cloned().ok_or_else(|| {
                    let known: Vec<&str> = full.steps.iter().map(|s| s.name.as_str()).collect();
                    StoreError::Invalid(format!(
                        "step: chain `{}` has no step `{step}` (steps: {})",
                        t.chain,
                        known.join(", ")
                    ))
                })?;
                def.prerequisites.clear();
                ChainDef { steps: vec![def], ..(**full).clone() }
            }
        };
        let integration = store::integration_by_name(&self.pool, &t.integration).await?;
        let detail = serde_json::json!({
            "chain": t.chain, "integration": t.integration, "mode": t.mode.as_str(), "step": t.step,
            "force_sweep": t.force_sweep, "step_modes": t.step_modes, "queue": queue,
        });
        let actor = t.triggered_by.clone();
        let exclusion_group = self.registry.exclusion_group(&t.chain);
        let waits_its_turn = exclusion_group.is_some();
        let triggered = dispatch::create_and_push(
            &self.pool,
            &self.queues,
            self.config.producer.dispatch_cap,
            TriggerRequest {
                chain: &chain,
                integration: &integration,
                mode: t.mode,
                kind: t.kind,
                triggered_by: t.triggered_by,
                tick_key: t.tick_key,
                force_sweep: t.force_sweep,
                step_modes: t.step_modes,
                exclusion_group,
                queue,
                // Someone asked for it (API, CLI): audited, in the run's own statement. Scheduled
                // runs are recorded as runs only.
                audit: (t.kind == TriggerKind::Manual).then_some((actor, detail)),
            },
        )
        .await?;
        let run_id = triggered.run_id;
        if let Some(error) = &triggered.push_error {
            tracing::warn!(%error, "Push of ready steps failed; the reconciler will dispatch them.");
        }
        let waiting = triggered.ready == 0 && waits_its_turn;
        tracing::info!(%run_id, chain = %t.chain, integration = %t.integration, trigger = t.kind.as_str(), waiting, "Run created.");
        Ok(run_id)
    }

    /// Resumes a failed or partial run on behalf of `actor` (audited).
    pub async fn resume(&self, run_id: RunId, actor: &str) -> Result<(), StoreError> {
        let ready = runs::resume(&self.pool, run_id).await?;
        self.push_ready(&ready).await;
        self.audit(actor, "run.resume", &run_id.to_string(), serde_json::json!({})).await;
        tracing::info!(%run_id, ready = ready.len(), "Run resumed.");
        Ok(())
    }

    /// Cancels an active run on behalf of `actor` (audited).
    pub async fn cancel(&self, run_id: RunId, actor: &str) -> Result<(), StoreError> {
        runs::cancel(&self.pool, run_id).await?;
        self.audit(actor, "run.cancel", &run_id.to_string(), serde_json::json!({})).await;
        if let Ok(run) = store::views::run(&self.pool, run_id).await {
            syncfleet_runtime::metrics::run_ended(&run.chain, "cancelled");
        }
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

    /// Depth of every queue the chains use: Redis's states, plus what PostgreSQL knows (paused,
    /// blocked behind an entity lease, and so runnable).
    pub async fn queue_depths(&self) -> anyhow::Result<Vec<QueueDepth>> {
        let facts = queues::depth_facts(&self.pool).await?;
        let mut out = Vec::new();
        for q in self.chains.queues() {
            out.push(facts.complete(&self.queues, self.queues.depth(&q).await?).await?);
        }
        Ok(out)
    }

    /// `NotFound` unless a chain uses `queue`.
    pub fn known_queue(&self, queue: &str) -> Result<(), StoreError> {
        if self.chains.queues().iter().any(|q| q == queue) {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("unknown queue `{queue}` (queues: {})", self.chains.queues().join(", "))))
        }
    }

    /// Pauses a queue: nothing new is dispatched to it; steps already in Redis still run.
    pub async fn pause_queue(&self, queue: &str, actor: &str) -> Result<bool, StoreError> {
        self.known_queue(queue)?;
        let changed = queues::pause(&self.pool, queue, &self.queues.queue_name(queue), actor).await?;
        self.audit(actor, "queue.pause", queue, serde_json::json!({ "changed": changed })).await;
        Ok(changed)
    }

    pub async fn resume_queue(&self, queue: &str, actor: &str) -> Result<bool, StoreError> {
        self.known_queue(queue)?;
        let changed = queues::resume(&self.pool, queue).await?;
        self.audit(actor, "queue.resume", queue, serde_json::json!({ "changed": changed })).await;
        let cap = self.config.producer.dispatch_cap;
        if changed && let Err(error) = dispatch::dispatch(&self.pool, &self.queues, queue, cap, None).await {
            tracing::warn!(%error, %queue, "Dispatch after resume failed; the reconciler will do it.");
        }
        Ok(changed)
    }

    /// Records a mutation in the audit trail after the fact; a failure to record is logged, not
    /// returned (the mutation has happened). For runs and queues, whose transitions are their own
    /// transactions; configuration changes (integrations, schedules, tokens) write their row in the
    /// change's transaction instead ([`store::audit::Audited`]).
    pub async fn audit(&self, actor: &str, action: &str, target: &str, detail: serde_json::Value) {
        if let Err(error) = store::audit::record(&self.pool, actor, action, target, detail).await {
            tracing::error!(%error, %actor, %action, %target, "Audit record failed.");
        }
    }

    /// Worker processes registered in Redis and seen within five heartbeats, with their running
    /// steps from PostgreSQL.
    pub async fn workers(&self) -> anyhow::Result<Vec<WorkerView>> {
        let now = chrono::Utc::now();
        let alive_secs = (self.config.worker.heartbeat_secs.max(1) * 5) as f64;
        let mut by_name: std::collections::BTreeMap<String, WorkerView> = Default::default();
        for q in self.chains.queues() {
            for (registered, seen) in self.queues.workers(&q).await? {
                if (now.timestamp() as f64) - seen > alive_secs {
                    continue;
                }
                // apalis registers `<process name>:<restart count>` per queue.
                let name = registered.rsplit_once(':').map(|(n, _)| n.to_owned()).unwrap_or(registered);
                let last_seen = chrono::DateTime::from_timestamp(seen as i64, 0).unwrap_or(now);
                let w = by_name.entry(name.clone()).or_insert_with(|| WorkerView {
                    name,
                    queues: vec![],
                    last_seen,
                    current: vec![],
                });
                if !w.queues.contains(&q) {
                    w.queues.push(q.clone());
                }
                w.last_seen = w.last_seen.max(last_seen);
            }
        }
        for step in queues::running_steps(&self.pool).await? {
            if let Some(w) = by_name.get_mut(&step.worker) {
                w.current.push(step);
            }
        }
        Ok(by_name.into_values().collect())
    }
}
