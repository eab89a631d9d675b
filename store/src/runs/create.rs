//! A run's creation: its row and its step rows in one statement, the root steps ready. On the
//! trigger's path ([`crate::dispatch::create_and_push`]) the same statement also marks the root
//! steps dispatched, so that one commit stands between a trigger and a worker.

use sqlx::{PgConnection, PgPool};

use super::{DueStep, ReadyStep, StoreError, TriggerRequest};
use crate::exclusion::{group_blocker, lock_group};
use crate::ids::RunId;

/// A run just created.
#[derive(Debug)]
pub struct NewRun {
    pub id: RunId,
    /// Its steps made ready and left for dispatch to push.
    pub ready: Vec<ReadyStep>,
    /// Its steps made ready and marked dispatched in the creating transaction: the caller pushes
    /// them after the commit (or gives them back).
    pub due: Vec<DueStep>,
}

impl NewRun {
    /// The creating statement took the queue's dispatch lock for the session (it marks steps
    /// dispatched only with it): the caller releases it.
    pub fn locked(&self) -> bool {
        !self.due.is_empty()
    }
}

/// A root step of a new run, as its creation returned it.
#[derive(Debug, sqlx::FromRow)]
struct RootStep {
    queue: String,
    dispatched: bool,
    #[sqlx(flatten)]
    step: DueStep,
}

/// Creates a run with its step rows and makes the root steps ready: one statement, committed on
/// its own unless the chain has an exclusion group (then in a transaction with the group's check).
pub async fn create_run(pool: &PgPool, req: TriggerRequest<'_>) -> Result<(RunId, Vec<ReadyStep>), StoreError> {
    check(&req)?;
    let run_id = RunId::new();
    // The group's lock serializes the check and the insert below with every other creation and
    // promotion in the group; the unique index `chain_runs_one_active_exclusive` backs it.
    let Some(group) = &req.exclusion_group else {
        return match insert(pool, run_id, &req, None, None).await {
            Ok(created) => Ok((run_id, split(run_id, created).ready)),
            Err(e) => Err(insert_error(pool, &req, e).await),
        };
    };
    let mut tx = pool.begin().await?;
    lock_group(&mut tx, req.integration.id, group).await?;
    let mut waiting_for = None;
    if let Some(blocker) = group_blocker(&mut tx, req.integration.id, group).await? {
        // A second run of the same chain is the one-active-run rule's to refuse (below).
        if !req.queue && blocker.chain != req.chain.name.as_str() {
            return Err(StoreError::Excluded {
                chain: req.chain.name.to_string(),
                integration: req.integration.name.clone(),
                running_chain: blocker.chain,
                running_run: blocker.id.to_string(),
                running_status: blocker.status,
            });
        }
        waiting_for = Some(blocker.id);
    }
    match insert(&mut *tx, run_id, &req, waiting_for, None).await {
        Ok(created) => {
            tx.commit().await?;
            Ok((run_id, split(run_id, created).ready))
        }
        Err(e) => {
            drop(tx);
            Err(insert_error(pool, &req, e).await)
        }
    }
}

/// Creates a run outside any exclusion group, its root steps ready, in one statement that
/// commits on its own. Unless `queue` (the queue of every root step) is paused, the statement
/// also tries to take that queue's dispatch lock `lock_key` for the session
/// (`pg_try_advisory_lock`): when it gets it ([`NewRun::locked`]), the root steps are marked
/// dispatched too ([`NewRun::due`]), the commit does not wait for the disk, and the caller pushes
/// them, then releases the lock and waits for the disk. When another dispatcher holds it, the
/// steps are only ready (and committed to disk), as with [`create_run`]. On an error the caller
/// releases the lock (it may hold it), then makes the error to show with [`insert_error`].
pub async fn create_run_dispatching(
    conn: &mut PgConnection,
    req: &TriggerRequest<'_>,
    queue: &str,
    lock_key: i64,
) -> Result<NewRun, CreateError> {
    check(req).map_err(CreateError::Refused)?;
    debug_assert!(req.exclusion_group.is_none(), "a run of an exclusion group is created by `create_run`");
    let id = RunId::new();
    let created = insert(&mut *conn, id, req, None, Some((lock_key, queue))).await.map_err(CreateError::Insert)?;
    Ok(split(id, created))
}

/// Why [`create_run_dispatching`] created nothing.
#[derive(Debug)]
pub enum CreateError {
    Refused(StoreError),
    /// The insert's own error, for [`insert_error`] once the transaction is gone.
    Insert(sqlx::Error),
}

fn check(req: &TriggerRequest<'_>) -> Result<(), StoreError> {
    if req.chain.pack != req.integration.pack {
        return Err(StoreError::PackMismatch {
            chain: req.chain.name.to_string(),
            chain_pack: req.chain.pack.clone(),
            integration: req.integration.name.clone(),
            integration_pack: req.integration.pack.clone(),
        });
    }
    if !req.integration.enabled {
        return Err(StoreError::IntegrationDisabled(req.integration.name.clone()));
    }
    Ok(())
}

/// The insert's error as the caller should see it (the active run it collides with is read on
/// a connection of its own: call it after the insert's transaction is gone).
pub async fn insert_error(pool: &PgPool, req: &TriggerRequest<'_>, e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(e) if e.constraint() == Some("chain_runs_one_active") => {
            active_run_error(pool, req.chain.name.as_str(), req.integration.id).await
        }
        sqlx::Error::Database(e) if e.constraint() == Some("chain_runs_tick_key_key") => {
            StoreError::DuplicateTick(req.tick_key.clone().unwrap_or_default())
        }
        other => other.into(),
    }
}

/// The created ready steps, split into those left to dispatch and those marked dispatched.
fn split(id: RunId, created: Vec<RootStep>) -> NewRun {
    let (mut ready, mut due) = (vec![], vec![]);
    for root in created {
        match root.dispatched {
            true => due.push(root.step),
            false => ready.push(ReadyStep { id: root.step.id, queue: root.queue }),
        }
    }
    NewRun { id, ready, due }
}

/// The run and its steps in one statement. A step of a new run is ready when it is one of the
/// chain's roots (`ChainDef::roots`: nothing has ended yet, so `promote_ready` on a new run); a
/// waiting run's steps stay pending until it is promoted; the trigger's audit row is written with
/// them (`req.audit`). With a `lock` (its key and its queue,
/// the queue of every root step), the statement tries to take that dispatch lock for the
/// session, once, when a step is ready (`dispatch_lock_unpaused`, `0025`: not while the queue is
/// paused); if it gets it, the ready steps are also marked dispatched (`take_due`'s mark), and the
/// statement commits without waiting for its WAL to reach the disk (`synchronous_commit` off for
/// its transaction alone): the caller pushes at once and waits for the disk only afterwards, when
/// it lets the lock go ([`crate::dispatch::create_and_push`]).
async fn insert<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    run_id: RunId,
    req: &TriggerRequest<'_>,
    waiting_for: Option<uuid::Uuid>,
    lock: Option<(i64, &str)>,
) -> Result<Vec<RootStep>, sqlx::Error> {
    let integration = req.integration.name();
    let (mut steps, mut shards, mut sharded, mut queues, mut entities, mut required, mut prereqs, mut max_attempts) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut modes, mut max_lost, mut roots) = (vec![], vec![], vec![]);
    let root_names: Vec<&str> = req.chain.roots().map(|s| s.name.as_str()).collect();
    for s in &req.chain.steps {
        for shard in 0..s.shards as i32 {
            let is_sharded = s.shards > 1;
            steps.push(s.name.to_string());
            shards.push(shard);
            sharded.push(is_sharded);
            queues.push(s.queue.clone());
            let entity_shard = (is_sharded && !s.shared_entity).then_some(shard);
            entities.push(crate::ids::EntityKey::new(&integration, &s.entity, entity_shard).as_str().to_owned());
            required.push(s.required);
            // Arrays of arrays must be rectangular in PostgreSQL: pass prerequisites joined.
            prereqs.push(s.prerequisites.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(","));
            max_attempts.push(s.retry.max_attempts as i32);
            max_lost.push(s.retry.max_lost_attempts as i32);
            let mode = req.step_modes.get(s.name.as_str()).copied().or(s.mode).unwrap_or(req.mode);
            modes.push(mode.as_str());
            roots.push(root_names.contains(&s.name.as_str()));
        }
    }
    sqlx::query_as::<_, RootStep>(
        "WITH lock AS MATERIALIZED (
             SELECT CASE WHEN $22::bigint IS NULL THEN false
                         WHEN dispatch_lock_unpaused($22, $23)
                         THEN set_config('synchronous_commit', 'off', true) IS NOT NULL
                         ELSE false END AS got),
         audit AS (
             INSERT INTO audit_log (actor, action, target, detail)
             SELECT $24, 'run.trigger', $1::uuid::text, $25 WHERE $24::text IS NOT NULL),
         run AS (
             INSERT INTO chain_runs (id, chain, integration_id, mode, trigger_kind, triggered_by, tick_key, status,
                                     force_sweep, trace_context, exclusion_group, waiting_for)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10, $11)
             RETURNING id),
         planned AS (
             SELECT t.*, CASE WHEN t.prereqs = '' THEN '{}'::text[] ELSE string_to_array(t.prereqs, ',') END AS prerequisites,
                    $11::uuid IS NULL AND t.root AS ready
               FROM UNNEST($12::text[], $13::int[], $14::bool[], $15::text[], $16::text[], $17::bool[], $18::text[],
                           $19::int[], $20::text[], $21::int[], $26::bool[])
                    AS t(step, shard, sharded, queue, entity, required, prereqs, max_attempts, mode, max_lost, root)),
         steps AS (
             INSERT INTO step_runs (run_id, step, shard, sharded, queue, entity_key, required, prerequisites, status,
                                    max_attempts, attempt_budget, mode, max_lost_attempts, lost_budget,
                                    ready_at, not_before, job_id, dispatched_at)
             SELECT run.id, t.step, t.shard, t.sharded, t.queue, t.entity, t.required, t.prerequisites,
                    CASE WHEN t.ready THEN 'ready' ELSE 'pending' END,
                    t.max_attempts, t.max_attempts, t.mode, t.max_lost, t.max_lost,
                    CASE WHEN t.ready THEN now() END, CASE WHEN t.ready THEN now() END,
                    CASE WHEN t.ready THEN step_job_id(run.id, t.step, t.shard, t.sharded, 1, 0) END,
                    CASE WHEN t.ready THEN CASE WHEN (SELECT got FROM lock) THEN now() END END
               FROM run, planned t
             RETURNING id, run_id, step, shard, queue, entity_key, job_id, not_before, status, dispatched_at)
         SELECT id, run_id, step, shard, queue, entity_key, job_id, not_before, $9::text AS trace_context,
                dispatched_at IS NOT NULL AS dispatched
           FROM steps WHERE status = 'ready' ORDER BY id",
    )
    .bind(run_id)
    .bind(req.chain.name.as_str())
    .bind(req.integration.id)
    .bind(req.mode.as_str())
    .bind(req.kind.as_str())
    .bind(&req.triggered_by)
    .bind(&req.tick_key)
    .bind(req.force_sweep)
    .bind(crate::telemetry::current_traceparent())
    .bind(&req.exclusion_group)
    .bind(waiting_for)
    .bind(&steps)
    .bind(&shards)
    .bind(&sharded)
    .bind(&queues)
    .bind(&entities)
    .bind(&required)
    .bind(&prereqs)
    .bind(&max_attempts)
    .bind(&modes)
    .bind(&max_lost)
    .bind(lock.map(|l| l.0))
    .bind(lock.map(|l| l.1))
    .bind(req.audit.as_ref().map(|a| &a.0))
    .bind(req.audit.as_ref().map(|a| &a.1))
    .bind(&roots)
    .fetch_all(conn)
    .await
}

/// The `ActiveRun` error naming the run that is active for this chain and integration.
pub(super) async fn active_run_error(pool: &PgPool, chain: &str, integration_id: i64) -> StoreError {
    let found: Result<Option<(String, uuid::Uuid)>, _> = sqlx::query_as(
        "SELECT i.name, a.id FROM chain_runs a JOIN integrations i ON i.id = a.integration_id
          WHERE a.chain = $1 AND a.integration_id = $2 AND a.status IN ('queued', 'running')",
    )
    .bind(chain)
    .bind(integration_id)
    .fetch_optional(pool)
    .await;
    match found {
        Ok(found) => {
            let (integration, run_id) = found.map(|(i, r)| (i, r.to_string())).unwrap_or_default();
            StoreError::ActiveRun { chain: chain.to_owned(), integration, run_id }
        }
        Err(e) => StoreError::Db(e),
    }
}
