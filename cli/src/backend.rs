//! Where a command's reads and changes go: the producer's admin API (API mode), or PostgreSQL and
//! Redis through the producer's `Ops` (direct mode). Both answer with the same types, so every
//! command prints the same either way.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use syncfleet_producer::{
    Ops,
    api::repair::{CursorReset, SweepPreview},
    ops::{ScheduleView, Trigger, WorkerView},
};
use syncfleet_shared::{chain::Mode, config::ScheduleSpec, ids::RunId};
use syncfleet_store::{
    self as store, StoreError,
    integrations::IntegrationView,
    queue::QueueDepth,
    runs::TriggerKind,
    tokens::TokenInfo,
    views::{self, ChainStatus, RunFilter, RunPage, RunView},
};

use crate::api::{ApiClient, segment};

pub(crate) enum Backend {
    /// PostgreSQL and Redis; changes are recorded as `actor`.
    Direct {
        ops: Box<Ops>,
        actor: String,
    },
    Api(ApiClient),
}

/// A trigger as the command line gives it.
pub(crate) struct TriggerRequest {
    pub chain: String,
    pub integration: String,
    pub mode: Mode,
    pub force_sweep: bool,
    pub step: Option<String>,
    pub step_modes: BTreeMap<String, Mode>,
    pub queue: bool,
}

impl Backend {
    pub async fn trigger(&self, t: TriggerRequest) -> anyhow::Result<RunId> {
        match self {
            Backend::Direct { ops, actor } => {
                let trigger = Trigger {
                    chain: t.chain,
                    integration: t.integration,
                    mode: t.mode,
                    kind: TriggerKind::Manual,
                    triggered_by: actor.clone(),
                    tick_key: None,
                    force_sweep: t.force_sweep,
                    step: t.step,
                    step_modes: t.step_modes,
                };
                Ok(ops.trigger_or_queue(trigger, t.queue).await?)
            }
            Backend::Api(api) => {
                let step_modes: BTreeMap<String, &str> =
                    t.step_modes.iter().map(|(step, m)| (step.clone(), m.as_str())).collect();
                let body = json!({
                    "integration": t.integration, "mode": t.mode.as_str(), "step": t.step,
                    "force_sweep": t.force_sweep, "step_modes": step_modes, "queue": t.queue,
                });
                let created: Value = api.post(&format!("api/chains/{}/runs", segment(&t.chain)), body).await?;
                let id = created["run_id"].as_str().unwrap_or_default();
                Ok(id.parse().map_err(|e| anyhow::anyhow!("the API answered a bad run id `{id}`: {e}"))?)
            }
        }
    }

    pub async fn run(&self, id: RunId) -> anyhow::Result<RunView> {
        match self {
            Backend::Direct { ops, .. } => Ok(views::run(&ops.pool, id).await?),
            Backend::Api(api) => api.get(&format!("api/runs/{id}"), &[]).await,
        }
    }

    /// Runs newest first, without their steps.
    pub async fn runs(&self, f: &RunFilter) -> anyhow::Result<Vec<RunView>> {
        match self {
            Backend::Direct { ops, .. } => Ok(views::runs(&ops.pool, f).await?),
            Backend::Api(api) => {
                let mut query = vec![];
                for (key, value) in [("chain", &f.chain), ("integration", &f.integration), ("status", &f.status)] {
                    if let Some(v) = value {
                        query.push((key, v.clone()));
                    }
                }
                if let Some(limit) = f.limit {
                    query.push(("limit", limit.to_string()));
                }
                let page: RunPage = api.get("api/runs", &query).await?;
                Ok(page.runs.into_iter().map(|r| RunView { steps: vec![], ..r }).collect())
            }
        }
    }

    pub async fn resume(&self, id: RunId) -> anyhow::Result<()> {
        match self {
            Backend::Direct { ops, actor } => Ok(ops.resume(id, actor).await?),
            Backend::Api(api) => api.post::<Value>(&format!("api/runs/{id}/resume"), json!({})).await.map(drop),
        }
    }

    pub async fn cancel(&self, id: RunId) -> anyhow::Result<()> {
        match self {
            Backend::Direct { ops, actor } => Ok(ops.cancel(id, actor).await?),
            Backend::Api(api) => api.post::<Value>(&format!("api/runs/{id}/cancel"), json!({})).await.map(drop),
        }
    }

    pub async fn chain_status(&self, chain: &str, integration: &str) -> anyhow::Result<ChainStatus> {
        match self {
            Backend::Direct { ops, .. } => {
                if ops.chains.get(chain).is_none() {
                    return Err(StoreError::UnknownChain(chain.into()).into());
                }
                Ok(views::chain_status(&ops.pool, chain, integration).await?)
            }
            Backend::Api(api) => {
                api.get(&format!("api/chains/{}/status", segment(chain)), &[("integration", integration.into())]).await
            }
        }
    }

    pub async fn queue_depths(&self) -> anyhow::Result<Vec<QueueDepth>> {
        match self {
            Backend::Direct { ops, .. } => ops.queue_depths().await,
            Backend::Api(api) => api.get("api/queues", &[]).await,
        }
    }

    /// Pauses or resumes `queue`; whether that changed its state.
    pub async fn set_paused(&self, queue: &str, paused: bool) -> anyhow::Result<bool> {
        match self {
            Backend::Direct { ops, actor } if paused => Ok(ops.pause_queue(queue, actor).await?),
            Backend::Direct { ops, actor } => Ok(ops.resume_queue(queue, actor).await?),
            Backend::Api(api) => {
                let action = if paused { "pause" } else { "resume" };
                let state: Value = api.post(&format!("api/queues/{}/{action}", segment(queue)), json!({})).await?;
                Ok(state["changed"].as_bool().unwrap_or(true))
            }
        }
    }

    pub async fn workers(&self) -> anyhow::Result<Vec<WorkerView>> {
        match self {
            Backend::Direct { ops, .. } => ops.workers().await,
            Backend::Api(api) => api.get("api/workers", &[]).await,
        }
    }

    pub async fn schedules(&self) -> anyhow::Result<Vec<ScheduleView>> {
        match self {
            Backend::Direct { ops, .. } => ops.schedules().await,
            Backend::Api(api) => api.get("api/schedules", &[]).await,
        }
    }

    /// Whether the deployment runs `chain`.
    pub async fn has_chain(&self, chain: &str) -> anyhow::Result<bool> {
        match self {
            Backend::Direct { ops, .. } => Ok(ops.chains.get(chain).is_some()),
            Backend::Api(api) => {
                let chains: Vec<Value> = api.get("api/chains", &[]).await?;
                Ok(chains.iter().any(|c| c["name"] == chain))
            }
        }
    }

    /// Stores a schedule; the schedule of the mode shown afterwards (`None` once disabled).
    pub async fn set_schedule(
        &self,
        chain: &str,
        integration: &str,
        spec: &ScheduleSpec,
    ) -> anyhow::Result<Option<ScheduleView>> {
        let shown = match spec.mode {
            Some(m) => m.as_str(),
            None if !spec.is_enabled() => store::schedules::ALL_MODES,
            None => Mode::Incremental.as_str(),
        };
        match self {
            Backend::Direct { ops, actor } => ops.set_schedule(chain, integration, spec, actor).await?,
            Backend::Api(api) => {
                let step_modes: BTreeMap<&String, &str> =
                    spec.step_modes.iter().map(|(k, m)| (k, m.as_str())).collect();
                let body = json!({
                    "integration": integration, "mode": spec.mode.map(|m| m.as_str()),
                    "step_modes": step_modes, "interval_secs": spec.interval_secs, "cron": spec.cron,
                    "tz": spec.tz, "enabled": spec.enabled,
                });
                api.put::<Value>(&format!("api/chains/{}/schedule", segment(chain)), body).await?;
            }
        }
        let schedules = self.schedules().await?;
        Ok(schedules.into_iter().find(|s| s.chain == chain && s.integration == integration && s.mode == shown))
    }

    pub async fn integrations(&self) -> anyhow::Result<Vec<IntegrationView>> {
        match self {
            Backend::Direct { ops, .. } => Ok(store::integrations::list(&ops.pool).await?),
            Backend::Api(api) => api.get("api/integrations", &[]).await,
        }
    }

    pub async fn sweep_preview(
        &self,
        chain: &str,
        integration: &str,
        entity: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<SweepPreview> {
        match self {
            Backend::Direct { ops, actor } => Ok(ops.sweep_preview(chain, integration, entity, limit, actor).await?),
            Backend::Api(api) => {
                let mut query = vec![("integration", integration.to_owned()), ("limit", limit.to_string())];
                if let Some(e) = entity {
                    query.push(("entity", e.to_owned()));
                }
                api.get(&format!("api/chains/{}/sweep-preview", segment(chain)), &query).await
            }
        }
    }

    pub async fn reset_cursor(
        &self,
        integration: &str,
        entity: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> anyhow::Result<CursorReset> {
        match self {
            Backend::Direct { ops, actor } => Ok(ops.reset_cursor(integration, entity, since, actor).await?),
            Backend::Api(api) => {
                let path = format!("api/integrations/{}/cursors/{}/reset", segment(integration), segment(entity));
                api.post(&path, json!({ "since": since })).await
            }
        }
    }

    pub async fn tokens(&self) -> anyhow::Result<Vec<TokenInfo>> {
        match self {
            Backend::Direct { ops, .. } => Ok(store::tokens::list(&ops.pool).await?),
            Backend::Api(api) => api.get("api/tokens", &[]).await,
        }
    }

    pub async fn revoke_token(&self, name: &str) -> anyhow::Result<TokenInfo> {
        match self {
            Backend::Direct { ops, actor } => {
                // The change commits with its audit row.
                let mut tx = store::audit::Audited::begin(&ops.pool).await?;
                let info = store::tokens::revoke(tx.conn(), name).await?;
                tx.commit(actor, "token.revoke", name, json!({})).await?;
                Ok(info)
            }
            Backend::Api(api) => api.delete(&format!("api/tokens/{}", segment(name))).await,
        }
    }
}
