//! Successes without effects, recorded together.
//!
//! A step that succeeded without writes of its own to commit is finished by a call that costs
//! PostgreSQL far more than the row it writes (its round trip, its commit, the settle check after
//! it). So this process's successes go through one recorder: each waits its turn, and every success
//! waiting when a call returns goes into the next call (`runs::finish_successes`, `CALL
//! step_succeed_settle`, `0029`). Alone, a success is recorded at once; under load, the calls carry
//! several. Each step keeps its own fence, and each run is settled after the commit as a success
//! alone would settle it.
//!
//! When a call of several fails, each of its successes is recorded again on its own, so each gets
//! its own answer (a fence that no longer holds, or its own error).

use std::sync::OnceLock;

use sqlx::PgPool;
use syncfleet_store::runs::{self, Finished, Success};
use tokio::sync::{mpsc, oneshot};

/// Successes one call carries at most.
const CALL_MAX: usize = 64;

type Answer = Result<Option<Finished>, sqlx::Error>;

struct Request {
    success: Success,
    answer: oneshot::Sender<Answer>,
}

/// The recorder of this process's successes without effects.
pub(crate) struct Finishes {
    pool: PgPool,
    worker: String,
    /// Started on the first success, inside the runtime.
    requests: OnceLock<mpsc::UnboundedSender<Request>>,
}

impl Finishes {
    pub(crate) fn new(pool: PgPool, worker: String) -> Finishes {
        Finishes { pool, worker, requests: OnceLock::new() }
    }

    /// Records a success of this worker's: `None` when its fence no longer holds.
    pub(crate) async fn succeed(&self, success: Success) -> Answer {
        let requests = self.requests.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(record_in_turn(self.pool.clone(), self.worker.clone(), receiver));
            sender
        });
        let (answer, answered) = oneshot::channel();
        if let Err(mpsc::error::SendError(request)) = requests.send(Request { success, answer }) {
            let mut answers = runs::finish_successes(&self.pool, Some(&self.worker), &[request.success]).await?;
            return Ok(answers.pop().flatten());
        }
        answered.await.unwrap_or_else(|_| Err(sqlx::Error::Protocol("the success recorder stopped".into())))
    }
}

/// One call at a time, for every success waiting when the previous one returned.
async fn record_in_turn(pool: PgPool, worker: String, mut requests: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < CALL_MAX
            && let Ok(more) = requests.try_recv()
        {
            batch.push(more);
        }
        record(&pool, &worker, batch).await;
    }
}

/// One call for the batch; each success again on its own when a call of several failed.
async fn record(pool: &PgPool, worker: &str, batch: Vec<Request>) {
    let (successes, answers): (Vec<Success>, Vec<oneshot::Sender<Answer>>) =
        batch.into_iter().map(|r| (r.success, r.answer)).unzip();
    match runs::finish_successes(pool, Some(worker), &successes).await {
        Ok(finished) => {
            for (answer, finished) in answers.into_iter().zip(finished) {
                answer.send(Ok(finished)).ok();
            }
        }
        Err(error) if successes.len() == 1 => {
            if let Some(answer) = answers.into_iter().next() {
                answer.send(Err(error)).ok();
            }
        }
        Err(error) => {
            tracing::warn!(%error, successes = successes.len(), "Recording successes together failed; each on its own.");
            for (success, answer) in successes.into_iter().zip(answers) {
                let alone = runs::finish_successes(pool, Some(worker), &[success]).await;
                answer.send(alone.map(|mut answers| answers.pop().flatten())).ok();
            }
        }
    }
}
