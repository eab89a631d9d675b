//! Calls that carry several of this process's requests at once.
//!
//! A claim or a finish costs PostgreSQL far more than the row it writes: its round trip, its
//! commit, the checks around it. So requests of one kind go through one caller per process: each
//! waits its turn, and every request waiting when a call returns goes into the next call. Alone, as
//! on an idle fleet, a request is made at once; under load, calls carry several. One call at a time
//! was measured best for successes: three side by side got smaller and cost more (`bench/RESULTS.md`).
//!
//! When a call of several fails, each of its requests is made again on its own, so each gets its
//! own answer (a fence that no longer holds, or its own error).
//!
//! The caller keeps the connection of its last call while calls follow each other, and gives it
//! back to the pool once no request came for [`PING_IDLE_AFTER`] or a call failed: a call taken
//! from the pool and given back costs a round trip more (sqlx pings a connection as it returns to
//! the pool) and a task to return it, once per call.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};
use syncfleet_store::{
    PING_IDLE_AFTER,
    runs::{self, Claim, Finished, Success, ToClaim},
};
use tokio::sync::{mpsc, oneshot};

/// Requests one call carries at most.
const CALL_MAX: usize = 64;

/// A call that answers several requests: one answer per item, in order.
pub(crate) trait Call: Send + Sync + 'static {
    type Item: Send + 'static;
    type Answer: Send + 'static;

    /// One call on `conn` for `items`, made by worker process `worker`.
    fn call(
        &self,
        conn: &mut PgConnection,
        worker: &str,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Answer>, sqlx::Error>> + Send;
}

type Answer<C> = Result<<C as Call>::Answer, sqlx::Error>;

struct Request<C: Call> {
    item: C::Item,
    answer: oneshot::Sender<Answer<C>>,
}

/// A kind of call, with the pool it takes its connections from and the worker process making it.
struct Caller<C> {
    call: C,
    pool: PgPool,
    worker: String,
}

impl<C: Call> Caller<C> {
    fn call<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        items: &'a [C::Item],
    ) -> impl Future<Output = Result<Vec<C::Answer>, sqlx::Error>> + Send + 'a {
        self.call.call(conn, &self.worker, items)
    }
}

/// This process's caller for one kind of request.
pub(crate) struct Together<C: Call> {
    caller: Arc<Caller<C>>,
    /// Started on the first request, inside the runtime.
    requests: OnceLock<mpsc::UnboundedSender<Request<C>>>,
}

impl<C: Call> Together<C> {
    pub(crate) fn new(call: C, pool: PgPool, worker: String) -> Together<C> {
        Together { caller: Arc::new(Caller { call, pool, worker }), requests: OnceLock::new() }
    }

    /// Makes the request in the next call.
    pub(crate) async fn make(&self, item: C::Item) -> Answer<C> {
        let requests = self.requests.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(in_turn(self.caller.clone(), receiver));
            sender
        });
        let (answer, answered) = oneshot::channel();
        if let Err(mpsc::error::SendError(request)) = requests.send(Request { item, answer }) {
            return alone(&self.caller, request.item).await;
        }
        answered.await.unwrap_or_else(|_| Err(sqlx::Error::Protocol("the caller of requests together stopped".into())))
    }
}

/// One call at a time, for every request waiting when the previous one returned.
async fn in_turn<C: Call>(caller: Arc<Caller<C>>, mut requests: mpsc::UnboundedReceiver<Request<C>>) {
    let mut held: Option<PoolConnection<Postgres>> = None;
    loop {
        let first = match held {
            Some(_) => match tokio::time::timeout(PING_IDLE_AFTER, requests.recv()).await {
                Ok(first) => first,
                Err(_) => {
                    held = None; // idle: back to the pool
                    continue;
                }
            },
            None => requests.recv().await,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < CALL_MAX
            && let Ok(more) = requests.try_recv()
        {
            batch.push(more);
        }
        answer(&caller, &mut held, batch).await;
    }
}

/// One call for the batch on the held connection (taken from the pool if none is); each request
/// again on its own when a call of several failed. A failed call gives its connection back.
async fn answer<C: Call>(caller: &Caller<C>, held: &mut Option<PoolConnection<Postgres>>, batch: Vec<Request<C>>) {
    let (items, answers): (Vec<C::Item>, Vec<oneshot::Sender<Answer<C>>>) =
        batch.into_iter().map(|r| (r.item, r.answer)).unzip();
    let called = match held {
        Some(conn) => Some(caller.call(conn, &items).await),
        None => match caller.pool.acquire().await {
            Ok(conn) => Some(caller.call(held.insert(conn), &items).await),
            Err(_) => None, // each request on its own gets its own error
        },
    };
    match called {
        Some(Ok(answered)) => {
            for (answer, answered) in answers.into_iter().zip(answered) {
                answer.send(Ok(answered)).ok();
            }
            return;
        }
        Some(Err(error)) if items.len() == 1 => {
            *held = None;
            if let Some(answer) = answers.into_iter().next() {
                answer.send(Err(error)).ok();
            }
            return;
        }
        Some(Err(error)) => {
            *held = None;
            tracing::warn!(%error, requests = items.len(), "A call of several requests failed; each on its own.");
        }
        None => {}
    }
    for (item, answer) in items.into_iter().zip(answers) {
        answer.send(alone(caller, item).await).ok();
    }
}

async fn alone<C: Call>(caller: &Caller<C>, item: C::Item) -> Answer<C> {
    let mut conn = caller.pool.acquire().await?;
    let mut answers = caller.call(&mut conn, std::slice::from_ref(&item)).await?;
    answers.pop().ok_or_else(|| sqlx::Error::Protocol("a call answered no request".into()))
}

/// Claims of delivered steps in runs this process saw running (`runs::claim_in_running_runs`).
pub(crate) struct Claims;

impl Call for Claims {
    type Item = ToClaim;
    /// `None`: the step's run is not running after all; `runs::claim` decides.
    type Answer = Option<Claim>;

    async fn call(
        &self,
        conn: &mut PgConnection,
        worker: &str,
        items: &[ToClaim],
    ) -> Result<Vec<Option<Claim>>, sqlx::Error> {
        runs::claim_in_running_runs(conn, worker, items).await
    }
}

/// Successes without effects (`runs::finish_successes`, `CALL step_succeed_settle`, `0029`): each
/// step keeps its own fence, and each run is settled after the commit as a success alone would
/// settle it. `None` when a success's fence no longer holds.
pub(crate) struct Successes;

impl Call for Successes {
    type Item = Success;
    type Answer = Option<Finished>;

    async fn call(
        &self,
        conn: &mut PgConnection,
        worker: &str,
        items: &[Success],
    ) -> Result<Vec<Option<Finished>>, sqlx::Error> {
        runs::finish_successes(conn, Some(worker), items).await
    }
}
