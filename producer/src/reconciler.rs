//! The reconciler: makes Redis agree with PostgreSQL. Each pass:
//! 1. retries (or, past `max_lost_attempts`, fails) running steps whose worker stopped sending
//!    heartbeats: a lost attempt, which spends none of the step's error budget
//!    ([`syncfleet_shared::retry::decide`], the engine's decision too);
//! 2. re-pushes dispatched ready steps that Redis no longer holds (lost message, flushed Redis),
//!    under the same task id, or a new one if Redis already spent the old id;
//! 3. settles runs whose last finish was not followed by its settle (`runs::settle_stranded`: a
//!    worker killed between the two), starts waiting runs whose exclusion group's runs ended
//!    (`runs::promote_waiting`), and dispatches due ready steps into every queue, up to the
//!    dispatch cap;
//! 4. vacuums finished tasks out of Redis.
//!
//! After step 1 it also sends the alerts of required steps that failed since the last pass
//! ([`crate::alerts`]), and starts delivering the due run lifecycle hooks in the background
//! ([`crate::hooks`]: a slow receiver never holds up a pass).
//!
//! Every action is idempotent (fenced updates, fixed task ids, `SKIP LOCKED`), so several
//! producers may reconcile at once.

use std::{collections::BTreeMap, time::Duration};

use syncfleet_runtime::metrics;
use syncfleet_shared::retry::{self, Failure};
use syncfleet_store::{
    dispatch,
    queue::JobState,
    runs::{self, Fence, Outcome},
};
use tokio_util::sync::CancellationToken;

use crate::ops::Ops;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub reaped: usize,
    pub redelivered: usize,
    pub dispatched: usize,
    pub vacuumed: usize,
}

pub struct Reconciler {
    ops: Ops,
    hooks: crate::hooks::Deliverer,
}

impl Reconciler {
    pub fn new(ops: Ops) -> Self {
        Reconciler { ops, hooks: Default::default() }
    }

    pub async fn pass(&self) -> anyhow::Result<PassReport> {
        let mut report = PassReport { reaped: self.reap_lost_workers().await?, ..Default::default() };
        if let Err(error) = crate::alerts::send_new(&self.ops).await {
            tracing::warn!(%error, "Failure alerts could not be claimed.");
        }
        self.hooks.spawn_due(&self.ops);
        report.redelivered = self.redeliver_lost_messages().await?;
        // A finish commits its step row, then settles its run; a worker killed between the two
        // leaves a step that could run still pending, or a run with nothing open still running.
        // Settled here; step 3 dispatches what became ready.
        let settled = runs::settle_stranded(&self.ops.pool).await?;
        for (chain, status) in settled.iter().filter_map(|f| f.run_ended.as_ref()) {
            metrics::run_ended(chain, status);
        }
        let made_ready: usize = settled.iter().map(|f| f.ready.len()).sum();
        if made_ready > 0 || settled.iter().any(|f| f.run_ended.is_some()) {
            tracing::debug!(runs = settled.len(), steps = made_ready, "Runs settled.");
        }
        // Waiting runs whose exclusion group's runs all ended (a cancelled run, a missed
        // promotion) start here; step 3 dispatches their root steps.
        let promoted = runs::promote_waiting(&self.ops.pool).await?;
        if !promoted.is_empty() {
            tracing::info!(steps = promoted.len(), "Waiting runs started.");
        }
        for queue in self.ops.chains.queues() {
            report.dispatched += dispatch::dispatch(
                &self.ops.pool,
                &self.ops.queues,
                &queue,
                self.ops.config.producer.dispatch_cap,
                None,
            )
            .await?;
            report.vacuumed += self.ops.queues.vacuum(&queue, 2_000).await?;
        }
        Ok(report)
    }

    async fn reap_lost_workers(&self) -> anyhow::Result<usize> {
        let stale_after = Duration::from_secs(self.ops.config.producer.stale_after_secs);
        let stale = runs::stale_running(&self.ops.pool, stale_after, 500).await?;
        let mut reaped = 0;
        for s in stale {
            // The worker stopped (killed, or cut off): its attempt is lost to the infrastructure,
            // not failed by the step. The same decision as the engine's, on the row's counters.
            let policy = self.ops.chains.get(&s.chain).and_then(|c| c.step(&s.step)).map(|d| d.retry);
            let backoff = policy.unwrap_or_default().backoff();
            let decision = retry::decide(Failure::Lost, s.tally(), &backoff);
            let retry = decision.retry_in().is_some();
            let message = format!(
                "worker {} lost: no heartbeat for {}s",
                s.worker.as_deref().unwrap_or("?"),
                stale_after.as_secs()
            );
            let outcome = Outcome::failed(message.clone(), Failure::Lost, decision, Default::default());
            let mut tx = self.ops.pool.begin().await?;
            let fence = Fence { step_run_id: s.id, job_id: &s.job_id, worker: None };
            if let Some(finished) = runs::finish_step_in(&mut tx, &fence, &outcome).await? {
                tx.commit().await?;
                let runs::Finished { ready, run_ended, .. } = runs::settled(&self.ops.pool, finished).await?;
                if let Some((chain, status)) = run_ended {
                    metrics::run_ended(&chain, &status);
                }
                reaped += 1;
                tracing::warn!(step = %s.step, chain = %s.chain, %message, retry, "Lost step recovered.");
                dispatch::dispatch_ready(
                    &self.ops.pool,
                    &self.ops.queues,
                    self.ops.config.producer.dispatch_cap,
                    &ready,
                )
                .await?;
            }
        }
        Ok(reaped)
    }

    async fn redeliver_lost_messages(&self) -> anyhow::Result<usize> {
        let age = Duration::from_secs(self.ops.config.producer.redeliver_after_secs);
        let dispatched = dispatch::dispatched_before(&self.ops.pool, age, 2_000).await?;
        let mut by_queue: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        for d in dispatched {
            by_queue.entry(d.queue).or_default().push((d.id, d.job_id));
        }
        let mut n = 0;
        for (queue, steps) in by_queue {
            let ids: Vec<String> = steps.iter().map(|(_, j)| j.clone()).collect();
            let states = self.ops.queues.job_states(&queue, &ids).await?;
            let (mut missing, mut spent) = (vec![], vec![]);
            for ((id, _), state) in steps.iter().zip(states) {
                match state {
                    JobState::Missing => missing.push(*id),
                    JobState::Spent => spent.push(*id),
                    JobState::Pending => {}
                }
            }
            if !missing.is_empty() || !spent.is_empty() {
                tracing::warn!(%queue, missing = missing.len(), spent = spent.len(), "Redis lost step jobs; pushing them again.");
            }
            n += dispatch::redeliver(&self.ops.pool, &missing, false).await? as usize;
            n += dispatch::redeliver(&self.ops.pool, &spent, true).await? as usize;
        }
        metrics::reconciler_redeliveries(n);
        Ok(n)
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_millis(self.ops.config.producer.reconcile_interval_ms));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Shutdown first: after a slow pass the next tick is due at once too.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            match self.pass().await {
                Ok(r) if r.reaped + r.redelivered > 0 => tracing::info!(?r, "Reconciled."),
                Ok(_) => {}
                Err(error) => {
                    metrics::reconciler_error();
                    tracing::warn!(%error, "Reconcile pass failed.");
                }
            }
        }
    }
}
