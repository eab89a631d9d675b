//! What a pack implements: a handler per step. The engine (worker crate) claims the step, runs the
//! handler inside a timeout, and records the phase result and the downstream transitions.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;

pub use syncfleet_shared::phase::PhaseResult;
pub use syncfleet_store::Integration;

use crate::{
    chain::{ChainDef, Mode, StepDef},
    http::HttpClients,
    ids::RunId,
};

/// What should happen after a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Transient: try again (after the hint, or the step's backoff) while attempts remain.
    #[error("{message}")]
    Retry { message: String, after: Option<Duration> },
    /// Permanent: no retry; the step fails now.
    #[error("{message}")]
    Abort { message: String },
}

impl StepError {
    pub fn retry(message: impl Into<String>) -> Self {
        StepError::Retry { message: message.into(), after: None }
    }
    pub fn abort(message: impl Into<String>) -> Self {
        StepError::Abort { message: message.into() }
    }
}

impl StepError {
    /// The error for settings of `integration` that do not parse: `(key, message)` from a pack's
    /// `Settings::parse`, named as the config names it. Permanent.
    pub fn settings(integration: &Integration, (key, message): (String, String)) -> Self {
        let name = &integration.name;
        StepError::abort(format!("integration `{name}`: invalid `integrations.{name}.{key}`: {message}"))
    }
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> Self {
        StepError::retry(format!("database: {e}"))
    }
}

/// The attempt a step context runs for: the step row and the task id PostgreSQL names as its
/// current job while the attempt holds.
#[derive(Debug, Clone)]
pub struct AttemptFence {
    pub step_run_id: i64,
    pub job_id: String,
}

impl AttemptFence {
    /// A transaction for writes that commit before the step completes (a pull's pages). It first
    /// locks the step row `FOR SHARE` while this attempt still holds it (running under this job
    /// id): the writes of an attempt that was taken away (reaped after its heartbeats stopped, as
    /// during a PostgreSQL outage longer than `stale_after_secs`) never commit, and a reap waits
    /// for the page being written. `None` (a context built without a fence) gives a plain
    /// transaction.
    pub async fn begin(
        fence: Option<&AttemptFence>,
        pool: &PgPool,
    ) -> Result<Transaction<'static, Postgres>, StepError> {
        let mut tx = pool.begin().await?;
        if let Some(f) = fence {
            let holds: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM step_runs WHERE id = $1 AND job_id = $2 AND status = 'running' FOR SHARE",
            )
            .bind(f.step_run_id)
            .bind(&f.job_id)
            .fetch_optional(&mut *tx)
            .await?;
            if holds.is_none() {
                return Err(StepError::retry("the step was taken away from this attempt; its page is not written"));
            }
        }
        Ok(tx)
    }
}

/// Everything a step handler may use. Writes that must be applied exactly once with the step's
/// completion go through [`StepContext::tx`]: the engine commits that transaction together with
/// the step's result, fenced on the step still being this worker's.
pub struct StepContext {
    pub pool: PgPool,
    pub run_id: RunId,
    pub chain: Arc<ChainDef>,
    pub step: StepDef,
    pub integration: Integration,
    pub mode: Mode,
    pub shard: i32,
    pub attempt: i32,
    pub worker: String,
    pub force_sweep: bool,
    /// HTTP clients of this worker process (shared rate budgets and concurrency caps).
    pub http: HttpClients,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub result: PhaseResult,
    /// Cancelled when the worker shuts down hard or the step is taken away.
    pub cancel: CancellationToken,
    /// The attempt, set by the engine; writes that commit before the completion check it
    /// ([`AttemptFence::begin`]).
    pub fence: Option<AttemptFence>,
    /// The deployment's `[packs.<pack>]` section (`null` when absent), environment variables the
    /// pack aliases included: read once at start-up, never from the environment while a step runs.
    pub pack_section: serde_json::Value,
    tx: Option<Transaction<'static, Postgres>>,
}

impl StepContext {
    /// Copies the clients' call counts into the step's metrics (also when the step fails).
    pub fn record_calls(&mut self, clients: &[&crate::http::HttpClient]) {
        use std::sync::atomic::Ordering::Relaxed;
        self.result.api_calls = clients.iter().map(|c| c.stats().api_calls.load(Relaxed)).sum();
        self.result.throttled = clients.iter().map(|c| c.stats().throttled.load(Relaxed)).sum();
    }

    /// Adds a line of what the step found to its `guard` text.
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.result.guard = Some(match self.result.guard.take() {
            Some(g) => format!("{g}; {text}"),
            None => text,
        });
    }

    /// Marks the step partial: part of its work failed (recorded as item errors) while the rest was
    /// written. The step still succeeds, so the chain goes on, but the run ends `partial`, and resuming
    /// the run runs this step again. `text` joins the step's notes.
    pub fn partial(&mut self, text: impl Into<String>) {
        self.result.partial = true;
        self.note(text);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: PgPool,
        run_id: RunId,
        chain: Arc<ChainDef>,
        step: StepDef,
        integration: Integration,
        mode: Mode,
        shard: i32,
        attempt: i32,
        worker: String,
        force_sweep: bool,
        http: HttpClients,
    ) -> Self {
        StepContext {
            pool,
            run_id,
            chain,
            step,
            integration,
            mode,
            shard,
            attempt,
            worker,
            force_sweep,
            http,
            started_at: chrono::Utc::now(),
            result: PhaseResult::default(),
            cancel: CancellationToken::new(),
            fence: None,
            pack_section: serde_json::Value::Null,
            tx: None,
        }
    }

    /// A transaction for writes that commit before the step completes, fenced on this attempt
    /// ([`AttemptFence::begin`]).
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, StepError> {
        AttemptFence::begin(self.fence.as_ref(), &self.pool).await
    }

    /// The same context with the deployment's `[packs.<pack>]` section.
    pub fn with_pack_section(mut self, section: serde_json::Value) -> Self {
        self.pack_section = section;
        self
    }

    /// The same context fenced on attempt `job_id` of step row `step_run_id`.
    pub fn fenced(mut self, step_run_id: i64, job_id: &str) -> Self {
        self.fence = Some(AttemptFence { step_run_id, job_id: job_id.to_owned() });
        self
    }

    /// The completion transaction, opened on first use.
    pub async fn tx(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if self.tx.is_none() {
            self.tx = Some(self.pool.begin().await?);
        }
        Ok(self.tx.as_mut().expect("just opened"))
    }

    /// Hands the completion transaction to the engine.
    pub fn take_tx(&mut self) -> Option<Transaction<'static, Postgres>> {
        self.tx.take()
    }
}

/// One step's behaviour. Connectors hold API knowledge; the engine does the rest.
pub trait StepHandler: Send + Sync {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>>;
}

/// Step handlers of every pack, looked up by `(pack, step)`.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<(String, String), Arc<dyn StepHandler>>,
}

impl HandlerRegistry {
    pub fn from_packs<'a>(packs: impl IntoIterator<Item = &'a Arc<dyn crate::Pack>>) -> Self {
        let mut handlers = HashMap::new();
        for p in packs {
            for (step, h) in p.handlers() {
                handlers.insert((p.name().to_owned(), step.to_owned()), h);
            }
        }
        HandlerRegistry { handlers }
    }

    pub fn get(&self, pack: &str, step: &str) -> Option<Arc<dyn StepHandler>> {
        self.handlers.get(&(pack.to_owned(), step.to_owned())).cloned()
    }
}
