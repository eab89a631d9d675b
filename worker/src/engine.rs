//! The step engine: one entry point, [`Engine::execute`], used by the apalis handler and by tests.
//! Phases: take the entity lease (the payload names the entity) → claim in PostgreSQL (one
//! statement, fenced on the job id: a stale delivery stops here and lets the lease go) →
//! run the handler under a timeout with heartbeats → record the outcome (the step row, with the
//! step's effects when it has some) and settle the run after that commit (one round trip when the
//! step has no effects: `CALL step_finish_settle`; after a finish with effects, a caller holding the
//! run's settle turn settles for it, [`crate::settles`]; the success of a shard whose step has other
//! rows still open settles nothing, `0028`) → release the lease → push the steps that became ready
//! (which wakes idle workers at once). A heartbeat that finds the run cancelled stops the step,
//! which is recorded `cancelled`.
//!
//! Each delivery is a `process` span (messaging attributes) continuing the trace of the run the job
//! carries, with the `step` span inside; the engine records the job wait, the step duration, lease
//! waits and run ends as metrics.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use sqlx::PgPool;
use syncfleet_runtime::{metrics, telemetry};
use syncfleet_sdk::{
    http::{HttpClients, RateBudget},
    step::{HandlerRegistry, StepContext, StepError, StepHandler},
};
use syncfleet_shared::{
    chain::ChainRegistry,
    config::Config,
    ids::RunId,
    job::JobPayload,
    retry::{self, Backoff, Decision, Failure},
};
use syncfleet_store::{
    dispatch,
    queue::{QueueClient, QueueError, SettleMarks},
    runs::{self, Beat, Claim, ClaimedStep, Fence, Finished, Outcome, Success, ToClaim},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    settles::{Lead, Settles},
    together::{Claims, Successes, Together},
};

/// How long a handler may take to stop once the drain's hard stop cancelled it.
const HANDLER_STOP_GRACE: Duration = Duration::from_secs(3);

/// One delivery of a step job.
struct Delivery<'a> {
    queue: &'a str,
    run: RunId,
    id: i64,
    job_id: &'a str,
    due_at_ms: Option<i64>,
    entity: Option<&'a str>,
}

/// The `outcome` label of the step duration.
fn outcome_label<T>(recorded: &Result<(Executed, T), EngineError>) -> &'static str {
    match recorded {
        Ok((Executed::Succeeded, _)) => "succeeded",
        Ok((Executed::Retrying, _)) => "retrying",
        Ok((Executed::Fenced, _)) => "fenced",
        Ok((Executed::Cancelled, _)) => "cancelled",
        Ok(_) | Err(_) => "failed",
    }
}

/// Why a running step was stopped from outside its handler. The attempt of a step stopped so and
/// failing is lost to the infrastructure: it spends none of the step's error budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruption {
    /// The entity lease was lost (a Redis flush) or could not be renewed within its TTL.
    LeaseLost,
    /// PostgreSQL no longer names this attempt (the reconciler reaped it); its result is fenced off.
    TakenAway,
    /// The worker is stopping and its drain time ran out.
    WorkerStopping,
    /// The step's run was cancelled (`syncfleet cancel`): the step is recorded `cancelled`.
    RunCancelled,
}

/// A step error as recorded: its message, then each cause the message does not already say.
fn error_text(e: &StepError) -> String {
    let mut text = e.message().to_owned();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What one delivery of a step job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executed {
    /// The job is not the step's current job (duplicate or old delivery): nothing done.
    Stale,
    /// The run is no longer active; the step was cancelled.
    RunInactive,
    /// Another job holds the entity; the step will be delivered again shortly.
    LeaseBusy,
    Succeeded,
    /// Failed; a new attempt is scheduled.
    Retrying,
    /// Failed for good.
    Failed,
    /// The step was taken away while running (lost heartbeat); its result was discarded.
    Fenced,
    /// The run was cancelled while the step ran; the step stopped and was recorded cancelled.
    Cancelled,
}

pub struct Engine {
    pub config: Config,
    pub pool: PgPool,
    pub queues: QueueClient,
    pub chains: Arc<ChainRegistry>,
    pub handlers: Arc<HandlerRegistry>,
    /// This process's HTTP clients: rate budgets shared with the fleet through Redis.
    pub http: HttpClients,
    pub name: String,
    /// Running steps; shutdown waits for them.
    pub tracker: TaskTracker,
    /// Cancelled when the drain timeout passes: handlers should stop at once.
    pub hard_stop: CancellationToken,
    /// Wake-ups of this process's queue workers on push ([`crate::wake`]).
    pub wake: crate::wake::Hub,
    /// The runs' settle turns after finishes that commit a step's writes ([`crate::settles`]).
    settles: Settles,
    /// This process's claims in runs it saw running, made together ([`crate::together`]).
    claims: Together<Claims>,
    /// This process's successes without effects, recorded together ([`crate::together`]).
    successes: Together<Successes>,
    /// Runs this process claimed steps of lately.
    running: RecentRuns,
    /// The process's tracing subscriber when the engine was made, where the steps' spans and logs
    /// go: a step's first poll runs in its queue consumer's task, which runs under a quiet one.
    dispatch: tracing::Dispatch,
}

/// The last [`RecentRuns::KEPT`] runs a process claimed steps of: they were running then, and a
/// claim in such a run is made in one statement with this process's other claims waiting at that
/// moment (`runs::claim_in_running_runs`, which still checks).
#[derive(Default)]
struct RecentRuns(std::sync::Mutex<std::collections::VecDeque<RunId>>);

impl RecentRuns {
    const KEPT: usize = 64;

    fn contains(&self, run: RunId) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(&run)
    }

    fn insert(&self, run: RunId) {
        let mut runs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !runs.contains(&run) {
            if runs.len() == Self::KEPT {
                runs.pop_front();
            }
            runs.push_back(run);
        }
    }
}

impl Engine {
    pub fn new(
        config: Config,
        pool: PgPool,
        queues: QueueClient,
        chains: Arc<ChainRegistry>,
        handlers: Arc<HandlerRegistry>,
        name: String,
    ) -> Engine {
        // Packs read their integrations' secrets under the deployment's `[secrets]` policy.
        let http = HttpClients::new(Some(RateBudget::new(queues.connection(), queues.namespace())), &config.upstream)
            .with_secrets(config.secrets.policy());
        metrics::install();
        metrics::preregister_runs(chains.all().map(|c| c.name.as_str()));
        let observed = pool.clone();
        metrics::observe_db_pool(move || {
            (observed.size(), observed.num_idle(), observed.options().get_max_connections())
        });
        let wake = crate::wake::Hub::new(&config.redis);
        let settles = Settles::new(queues.clone());
        let claims = Together::new(Claims, pool.clone(), name.clone());
        let successes = Together::new(Successes, pool.clone(), name.clone());
        Engine {
            config,
            pool,
            queues,
            chains,
            handlers,
            http,
            name,
            tracker: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            wake,
            settles,
            claims,
            successes,
            running: RecentRuns::default(),
            dispatch: tracing::dispatcher::get_default(|d| d.clone()),
        }
    }

    /// The process's tracing subscriber, where the steps' spans and logs go.
    pub fn dispatch(&self) -> &tracing::Dispatch {
        &self.dispatch
    }

    /// Runs one delivery of `job`, taken from `queue`.
    pub async fn execute(&self, queue: &str, job: JobPayload) -> Result<Executed, EngineError> {
        match job {
            JobPayload::StepV1 { run_id, step_run_id, step, shard, job_id, trace_context, due_at_ms, entity } => {
                let process = telemetry::process_span(queue, &job_id, trace_context.as_deref());
                let span = process.in_scope(
                    || tracing::info_span!("step", %run_id, %step, shard, job_id = %job_id, worker = %self.name),
                );
                let delivery = Delivery {
                    queue,
                    run: run_id,
                    id: step_run_id,
                    job_id: &job_id,
                    due_at_ms,
                    entity: entity.as_deref(),
                };
                self.execute_step(&delivery).instrument(span).instrument(process).await
            }
        }
    }

    async fn execute_step(&self, d: &Delivery<'_>) -> Result<Executed, EngineError> {
        let (id, job_id) = (d.id, d.job_id);
        // The payload names the entity; the claim, fenced on the job id, drops a stale delivery
        // after the lease. A payload of an older producer has no entity: it is read first.
        let entity = match d.entity {
            Some(entity) => entity.to_owned(),
            None => match runs::ready_entity(&self.pool, id, job_id).await? {
                Some(entity) => entity,
                None => {
                    tracing::debug!("Stale delivery ignored.");
                    return Ok(Executed::Stale);
                }
            },
        };
        if !self.lease(&entity, job_id).await? {
            let low = Duration::from_millis(self.config.worker.lease_retry_ms.max(1));
            let delay = Backoff::from_low(low, low, Backoff::LEASE_BUSY.factor).delay(1);
            // Fenced on the job id and `ready`: a stale delivery requeues nothing.
            if !runs::requeue_lease_busy(&self.pool, id, job_id, delay).await? {
                tracing::debug!("Stale delivery ignored.");
                return Ok(Executed::Stale);
            }
            metrics::lease_wait(d.queue);
            tracing::debug!(%entity, "Entity lease busy; delivering again later.");
            return Ok(Executed::LeaseBusy);
        }
        let result = self.run_leased(d, &entity).await;
        let ready = match &result {
            Ok((_, ready)) => ready.as_slice(),
            Err(_) => &[],
        };
        // The lease goes before the downstream steps are pushed: a woken worker taking one of them
        // on the same entity finds it free.
        if let Err(error) = self.queues.lease_release(&entity, job_id).await {
            tracing::warn!(%error, %entity, "Lease release failed; it expires on its own.");
        }
        if !ready.is_empty()
            && let Err(error) =
                dispatch::dispatch_ready(&self.pool, &self.queues, self.config.producer.dispatch_cap, ready).await
        {
            tracing::warn!(%error, "Downstream push failed; the producer will dispatch them.");
        }
        result.map(|(executed, _)| executed)
    }

    /// Takes the entity lease for this delivery, trying a busy one [`retry::LEASE_TRIES`] times: a
    /// stale delivery of another job of the entity holds it only until its claim is refused.
    async fn lease(&self, entity: &str, job_id: &str) -> Result<bool, QueueError> {
        let ttl = Duration::from_secs(self.config.worker.lease_ttl_secs);
        for retry in 0..retry::LEASE_TRIES {
            if retry > 0 {
                tokio::time::sleep(Backoff::LEASE_TRY.delay(retry)).await;
            }
            if self.queues.lease_acquire(entity, job_id, ttl).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Claims and runs a leased step; returns what it did and the steps its finish made ready.
    async fn run_leased(
        &self,
        d: &Delivery<'_>,
        entity: &str,
    ) -> Result<(Executed, Vec<runs::ReadyStep>), EngineError> {
        let (id, job_id) = (d.id, d.job_id);
        // A step of a run this process claimed a step of is claimed in one statement with the other
        // claims waiting then; a run it has not seen may still be queued, which only `step_claim`
        // starts.
        let in_running_run = if self.running.contains(d.run) {
            self.claims.make(ToClaim { step_run_id: id, job_id: job_id.to_owned() }).await?
        } else {
            None
        };
        let claim = match in_running_run {
            Some(claim) => claim,
            None => runs::claim(&self.pool, id, job_id, &self.name).await?,
        };
        let claimed = match claim {
            Claim::Claimed(c) => {
                self.running.insert(d.run);
                c
            }
            Claim::Stale => return Ok((Executed::Stale, vec![])),
            Claim::RunInactive => return Ok((Executed::RunInactive, vec![])),
        };
        let started = Instant::now();
        if let Some(due) = d.due_at_ms {
            metrics::job_started(d.queue, &claimed.step, due);
        }
        let fence = Fence { step_run_id: id, job_id, worker: Some(&self.name) };
        let (mut ctx, handler) = match self.prepare(&claimed, &fence) {
            Ok(p) => p,
            Err(message) => {
                let decision = retry::decide(Failure::Permanent, claimed.tally(), &Backoff::STEP);
                let outcome = Outcome::failed(message, Failure::Permanent, decision, Default::default());
                let recorded = self.record(&fence, outcome, None).await;
                metrics::step_finished(&claimed.chain, &claimed.step, outcome_label(&recorded), started);
                return recorded;
            }
        };
        tracing::info!(attempt = claimed.attempt, "Step started.");

        let interrupted = Arc::new(OnceLock::new());
        let heartbeat = self.spawn_heartbeat(id, job_id, entity, ctx.cancel.clone(), interrupted.clone());
        let hard_stop = self.hard_stop.clone();
        let cancel = ctx.cancel.clone();
        let stopped = interrupted.clone();
        let stop_link = tokio::spawn(async move {
            hard_stop.cancelled().await;
            stopped.set(Interruption::WorkerStopping).ok();
            cancel.cancel();
        });
        // A handler that does not heed its cancelled token is dropped `HANDLER_STOP_GRACE` after the
        // hard stop: the worker is exiting, and the attempt is lost either way.
        let result = tokio::select! {
            result = self.run_handler(&mut ctx, handler.as_ref()) => result,
            () = async {
                self.hard_stop.cancelled().await;
                tokio::time::sleep(HANDLER_STOP_GRACE).await;
            } => Err(StepError::retry("stopped: the worker is exiting")),
        };
        heartbeat.abort();
        stop_link.abort();

        let outcome = match result {
            Ok(()) => Outcome::Succeeded(ctx.result.clone()),
            Err(error) if interrupted.get() == Some(&Interruption::RunCancelled) => {
                tracing::info!(error = %error_text(&error), "Step stopped: its run was cancelled.");
                Outcome::Cancelled {
                    message: "cancelled with its run while running".into(),
                    result: ctx.result.clone(),
                }
            }
            Err(error) => {
                // A step stopped because its lease went or its worker is stopping did not fail by
                // its own error: the attempt is lost to the infrastructure.
                let failure = match interrupted.get() {
                    Some(why) => {
                        tracing::warn!(interruption = ?why, "Step attempt interrupted; it spends none of the error budget.");
                        Failure::Lost
                    }
                    None => error.failure(),
                };
                let decision = retry::decide(failure, claimed.tally(), &ctx.step.retry.backoff());
                let message = error_text(&error);
                tracing::warn!(error = %message, attempt = claimed.attempt, ?failure,
                    retry_in_ms = ?decision.retry_in().map(|d| d.as_millis()), "Step attempt failed.");
                Outcome::failed(message, failure, decision, ctx.result.clone())
            }
        };
        let tx = match &outcome {
            Outcome::Succeeded(_) => ctx.take_tx(),
            Outcome::Failed { message, .. } => {
                telemetry::mark_error(&tracing::Span::current(), message);
                None // the attempt's writes roll back
            }
            Outcome::Cancelled { .. } => None, // the attempt's writes roll back
        };
        let recorded = self.record(&fence, outcome, tx).await;
        metrics::step_finished(&claimed.chain, &claimed.step, outcome_label(&recorded), started);
        recorded
    }

    /// Builds the context of a claimed step, fenced on this attempt, and finds its handler. `Err`
    /// is a permanent misconfiguration (this worker does not know the chain, step or handler),
    /// recorded as the step's failure.
    fn prepare(&self, c: &ClaimedStep, fence: &Fence<'_>) -> Result<(StepContext, Arc<dyn StepHandler>), String> {
        let chain = self
            .chains
            .get(&c.chain)
            .cloned()
            .ok_or_else(|| format!("chain `{}` is not known to worker {}", c.chain, self.name))?;
        let def =
            chain.step(&c.step).cloned().ok_or_else(|| format!("step `{}` is not in chain `{}`", c.step, c.chain))?;
        let handler = self
            .handlers
            .get(&chain.pack, &c.step)
            .ok_or_else(|| format!("pack `{}` has no handler for step `{}`", chain.pack, c.step))?;
        let mode = c.step_mode.or(def.mode).unwrap_or(c.mode);
        let chain_pack = chain.pack.clone();
        let ctx = StepContext::new(
            self.pool.clone(),
            c.run_id,
            chain,
            def,
            // The config file's own settings for an integration it declares (the database keeps
            // them without static header and query values or URL user info).
            syncfleet_sdk::registry::with_declared_settings(&self.config, c.integration.clone()),
            mode,
            c.shard,
            c.attempt,
            self.name.clone(),
            c.force_sweep,
            self.http.clone(),
        )
        .with_pack_section(self.config.pack_section(&chain_pack).clone())
        .with_config_settings(
            self.config.integrations.get(&c.integration.name).map(|i| serde_json::Value::Object(i.settings.clone())),
        )
        .fenced(fence.step_run_id, fence.job_id);
        Ok((ctx, handler))
    }

    /// Checks the step's data precondition, then runs the handler under the step's timeout.
    async fn run_handler(&self, ctx: &mut StepContext, handler: &dyn StepHandler) -> Result<(), StepError> {
        if let Some(p) = ctx.step.precondition.clone() {
            // One value: a boolean, or the text of what is missing (NULL when nothing is).
            let sql = format!("SELECT q.v::text FROM ({}) AS q(v)", p.sql);
            let answer = sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql))
                .bind(ctx.integration.id)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| StepError::retry(format!("precondition check failed: {e}")).with_source(e))?;
            match answer.as_deref() {
                None | Some("true") => {}
                Some("false") => return Err(StepError::abort(format!("precondition not met: {}", p.description))),
                Some(missing) => {
                    return Err(StepError::abort(format!("precondition not met: {missing} ({})", p.description)));
                }
            }
        }
        let timeout = ctx.step.timeout;
        tokio::time::timeout(timeout, handler.run(ctx))
            .await
            .unwrap_or_else(|_| Err(StepError::retry(format!("timed out after {}s", timeout.as_secs()))))
    }

    /// Keeps the step's heartbeat (PostgreSQL) and entity lease (Redis) alive; cancels the step
    /// when either is lost. The two beat independently: a PostgreSQL outage must not stall the
    /// lease renewal and let another worker take the entity while this one still runs the step;
    /// and a lease that could not be renewed for its whole TTL counts as lost.
    fn spawn_heartbeat(
        &self,
        id: i64,
        job_id: &str,
        entity: &str,
        cancel: CancellationToken,
        interrupted: Arc<OnceLock<Interruption>>,
    ) -> tokio::task::JoinHandle<()> {
        let (pool, queues) = (self.pool.clone(), self.queues.clone());
        let (job_id, entity) = (job_id.to_owned(), entity.to_owned());
        let every = Duration::from_secs(self.config.worker.heartbeat_secs);
        let ttl = Duration::from_secs(self.config.worker.lease_ttl_secs);
        tokio::spawn(async move {
            let step = async {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match runs::heartbeat(&pool, id, &job_id).await {
                        Ok(Beat::Alive) => {}
                        Ok(Beat::TakenAway) => {
                            tracing::warn!("Step was taken away from this worker; stopping it.");
                            return Interruption::TakenAway;
                        }
                        Ok(Beat::RunCancelled) => {
                            tracing::info!("The step's run was cancelled; stopping the step.");
                            return Interruption::RunCancelled;
                        }
                        Err(error) => tracing::warn!(%error, "Heartbeat failed."),
                    }
                }
            };
            let lease = async {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                let mut renewed = Instant::now();
                loop {
                    tick.tick().await;
                    match tokio::time::timeout(every, queues.lease_renew(&entity, &job_id, ttl)).await {
                        Ok(Ok(true)) => renewed = Instant::now(),
                        Ok(Ok(false)) => {
                            tracing::warn!(%entity, "Entity lease lost; stopping the step.");
                            return Interruption::LeaseLost;
                        }
                        Ok(Err(error)) => tracing::warn!(%error, "Lease renewal failed."),
                        Err(_) => tracing::warn!("Lease renewal timed out."),
                    }
                    if renewed.elapsed() >= ttl {
                        tracing::warn!(%entity, "Entity lease not renewed within its TTL; stopping the step.");
                        return Interruption::LeaseLost;
                    }
                }
            };
            let why = tokio::select! {
                why = step => why,
                why = lease => why,
            };
            interrupted.set(why).ok();
            cancel.cancel();
        })
    }

    /// Settles the run a committed finish names ([`Finished::settle`]), unless another caller holds
    /// the run's settle turn: that one then settles again after it ([`crate::settles`]).
    async fn settle_committed(&self, finished: Finished) -> Result<Finished, EngineError> {
        let Some(run) = finished.settle else {
            return Ok(finished);
        };
        let Some(lead) = self.settles.follow(run, finished.succeeded).await else {
            return Ok(Finished { settle: None, ..finished });
        };
        let finished = runs::settled(&self.pool, finished).await?;
        self.settle_while_marked(lead, finished).await
    }

    /// Settles the led run again while finishes committed during its last settle.
    async fn settle_while_marked(&self, mut lead: Lead, mut finished: Finished) -> Result<Finished, EngineError> {
        loop {
            let settled = match self.settles.again(&mut lead).await {
                SettleMarks::None => break,
                SettleMarks::Any => runs::settle(&self.pool, lead.run()).await?,
                SettleMarks::Successes(succeeded) => {
                    runs::settle_after_successes(&self.pool, lead.run(), &succeeded).await?
                }
            };
            finished = finished.merge(settled);
        }
        Ok(finished)
    }

    /// Records the outcome (with the handler's writes on success); returns the steps that became
    /// ready, for the caller to push. A finish with no writes of the step's to commit is one round
    /// trip (the step row commits, then the run is settled), shared with this process's other
    /// successes waiting at that moment when it is a success ([`crate::together`]); with writes,
    /// the step row commits with them and the run is settled after the commit, unless another
    /// caller holds its run's settle turn ([`crate::settles`]). The success of a shard whose step
    /// has other rows still open settles nothing: the last of them settles (`0028`, `0029`).
    async fn record(
        &self,
        fence: &Fence<'_>,
        outcome: Outcome,
        tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    ) -> Result<(Executed, Vec<runs::ReadyStep>), EngineError> {
        let finished: Option<Finished> = match (tx, &outcome) {
            (None, Outcome::Succeeded(result)) => {
                let success =
                    Success { step_run_id: fence.step_run_id, job_id: fence.job_id.to_owned(), result: result.clone() };
                self.successes.make(success).await?
            }
            (None, _) => runs::finish_step_alone(&self.pool, fence, &outcome).await?,
            (Some(mut tx), _) => match runs::finish_step_in(&mut tx, fence, &outcome).await? {
                Some(finished) => {
                    tx.commit().await?;
                    Some(self.settle_committed(finished).await?)
                }
                None => {
                    tx.rollback().await.ok();
                    None
                }
            },
        };
        let Some(Finished { ready, run_ended, .. }) = finished else {
            tracing::warn!("Step result discarded: the step is no longer this worker's.");
            return Ok((Executed::Fenced, vec![]));
        };
        if let Some((chain, status)) = run_ended {
            metrics::run_ended(&chain, &status);
        }
        let executed = match &outcome {
            Outcome::Succeeded(_) => Executed::Succeeded,
            Outcome::Cancelled { .. } => Executed::Cancelled,
            Outcome::Failed { decision: Decision::FailForGood(_), .. } => Executed::Failed,
            Outcome::Failed { .. } => Executed::Retrying,
        };
        tracing::info!(outcome = ?executed, next = ready.len(), "Step finished.");
        Ok((executed, ready))
    }
}
