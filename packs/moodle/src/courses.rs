//! `sync_courses`: the courses of every active program, `concurrency` programs at once. Each
//! program's courses are written in their own transaction: upserted, and the program's courses
//! missing from Moodle deactivated by the SDK's scoped sweep, behind the deletion guard decided for
//! that program (an empty answer while the program has active courses, or a share above
//! `max_deactivate_share`, is refused unless the run forces the sweep; the step's `guard` records
//! the decisions). A program that fails (an error envelope, a timeout) leaves the others synced: its
//! error is recorded (item error `program:{id}`), its rows are left as they were, and the step
//! reports it in `errors` and `guard` (`partial: …`) and ends partial, so the run ends `partial`.
//! The step fails only when every program failed: at once, with Moodle's message, when every failure
//! was Moodle's own answer (an error envelope, which asking again does not change), else retried.
//! Courses of programs no longer active are
//! deactivated with the step.

use futures::{FutureExt, StreamExt, future::BoxFuture};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};

use super::{
    Rows,
    client::{Course, Moodle, MoodleError},
    concurrency_of, epoch, settings_of, shard, shard_of, tables,
};
use syncfleet_sdk::{
    ids::RunId,
    step::{AttemptFence, StepContext, StepError, StepHandler},
    sync::{
        pull,
        sweep::{self, ScopeDecision, ScopeRead, ScopedSweep, Sweeps},
    },
};

const ENTITY: &str = "courses";

/// What writing one program did.
#[derive(Debug, Default)]
struct Written {
    fetched: i64,
    inserted: i64,
    updated: i64,
    unchanged: i64,
    /// The guard's decision on the program's sweep.
    sweep: Option<ScopeDecision>,
    bad: Vec<(String, String)>,
}

fn course_fields(c: &Course, program: &str) -> Result<Map<String, Value>, String> {
    let mut f = Map::new();
    f.insert("fullname".into(), Value::from(c.fullname.clone()));
    f.insert("shortname".into(), Value::from(c.shortname.clone()));
    f.insert("idnumber".into(), c.idnumber.clone().filter(|s| !s.is_empty()).map_or(Value::Null, Value::from));
    f.insert("program_id".into(), Value::from(program));
    f.insert("visible".into(), c.visible.map_or(Value::Null, |v| Value::from(v != 0)));
    f.insert("startdate".into(), epoch(c.startdate.map(Value::from).as_ref(), "startdate")?);
    f.insert("source_updated_at".into(), epoch(c.timemodified.map(Value::from).as_ref(), "timemodified")?);
    Ok(f)
}

/// Fetches one program's courses and writes them in one transaction, with the program's sweep.
async fn sync_program(
    api: &Moodle<'_>,
    pool: &PgPool,
    fence: Option<&AttemptFence>,
    sweeper: &ScopedSweep<'_>,
    run: RunId,
    program: &str,
) -> Result<Written, MoodleOrDb> {
    let (table, integration_id) = (sweeper.table, sweeper.integration_id);
    let courses = api.courses_in(program).await?;
    let mut rows = Rows::new(table);
    let in_program: Vec<&Course> = courses.iter().filter(|c| c.categoryid.to_string() == program).collect();
    for c in &in_program {
        match course_fields(c, program) {
            Ok(f) => rows.push(c.id.to_string(), &f),
            Err(m) => rows.failed.push((c.id.to_string(), m)),
        }
    }
    let mut tx = AttemptFence::begin(fence, pool).await?;
    let counts = if rows.ids.is_empty() {
        Default::default()
    } else {
        table.upsert(&mut tx, integration_id, Some(run), &rows.ids, &rows.columns).await?
    };
    // Rows that failed to convert keep their last state rather than being deactivated.
    let keep: Vec<String> = rows.ids.iter().chain(rows.failed.iter().map(|(id, _)| id)).cloned().collect();
    let read = ScopeRead { scope: program, answered: in_program.len() as i64, listed: &keep, unreadable: 0 };
    let sweep = sweeper.sweep(&mut tx, &[read]).await?.pop();
    resolve_program(&mut tx, integration_id, program, &rows.ids).await?;
    tx.commit().await?;
    Ok(Written {
        fetched: courses.len() as i64,
        inserted: counts.inserted,
        updated: counts.updated,
        unchanged: counts.unchanged,
        sweep,
        bad: rows.failed,
    })
}

/// A program that synced has no open error any more, nor have its courses that synced.
async fn resolve_program(
    conn: &mut PgConnection,
    integration_id: i64,
    program: &str,
    courses: &[String],
) -> Result<(), sqlx::Error> {
    let mut ids = courses.to_vec();
    ids.push(format!("program:{program}"));
    pull::resolve(conn, integration_id, ENTITY, &ids).await
}

#[derive(Debug, thiserror::Error)]
enum MoodleOrDb {
    #[error(transparent)]
    Moodle(#[from] MoodleError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The attempt no longer holds the step (or the fenced transaction could not begin).
    #[error(transparent)]
    Step(#[from] StepError),
}

pub struct SyncCourses;

impl StepHandler for SyncCourses {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let concurrency = concurrency_of(ctx, &settings)?;
            let client = settings.client(&ctx.http, concurrency);
            let concurrency = concurrency as usize;
            let api = Moodle::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let (me, shards) = shard(ctx);
            let integration_id = ctx.integration.id;
            let programs: Vec<String> = sqlx::query_scalar(
                "SELECT external_id FROM moodle_categories
                 WHERE integration_id = $1 AND is_active AND kind = 'program' ORDER BY external_id",
            )
            .bind(integration_id)
            .fetch_all(&ctx.pool)
            .await?;
            let programs: Vec<String> = programs.into_iter().filter(|p| shard_of(p, shards) == me).collect();
            let table = tables::courses();
            let sweeper =
                ScopedSweep::new(&table, integration_id, "program_id", settings.max_deactivate_share, ctx.force_sweep);
            let (pool, run, fence) = (ctx.pool.clone(), ctx.run_id, ctx.fence.clone());
            let (api_ref, pool_ref, sweeper_ref, fence_ref) = (&api, &pool, &sweeper, fence.as_ref());
            let outcomes: Vec<(String, Result<Written, MoodleOrDb>)> = futures::stream::iter(programs.clone())
                .map(move |p| async move {
                    let outcome = sync_program(api_ref, pool_ref, fence_ref, sweeper_ref, run, &p).await;
                    (p, outcome)
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            ctx.record_calls(&[&client]);

            let mut failed: Vec<(String, String)> = Vec::new();
            let mut transport_failures = 0usize;
            let mut bad: Vec<(String, String)> = Vec::new();
            let mut sweeps = Sweeps::default();
            let r = &mut ctx.result;
            for (program, outcome) in outcomes {
                match outcome {
                    Ok(w) => {
                        r.fetched += w.fetched;
                        r.inserted += w.inserted;
                        r.updated += w.updated;
                        r.unchanged += w.unchanged;
                        sweeps.add(w.sweep);
                        bad.extend(w.bad);
                    }
                    Err(MoodleOrDb::Db(e)) => return Err(e.into()),
                    Err(MoodleOrDb::Step(e)) => return Err(e),
                    Err(MoodleOrDb::Moodle(e)) => {
                        tracing::warn!(%program, error = %e, "Program's courses failed; the others go on.");
                        if !matches!(e, MoodleError::Exception { .. }) {
                            transport_failures += 1;
                        }
                        failed.push((format!("program:{program}"), e.to_string()));
                    }
                }
            }
            r.errors = (failed.len() + bad.len()) as i64;
            if !failed.is_empty() || !bad.is_empty() {
                let mut tx = ctx.begin().await?;
                let all: Vec<(String, String)> = failed.iter().chain(bad.iter()).cloned().collect();
                pull::record_errors(&mut tx, Some(run), ctx.step.name.as_str(), integration_id, ENTITY, &all).await?;
                tx.commit().await?;
            }
            if !programs.is_empty() && failed.len() == programs.len() && transport_failures == 0 {
                return Err(StepError::abort(format!(
                    "every program's courses failed ({}), with Moodle's own answer: {}",
                    failed.len(),
                    failed[0].1
                )));
            }
            if !programs.is_empty() && failed.len() == programs.len() {
                return Err(StepError::retry(format!(
                    "every program's courses failed ({}), e.g. {}",
                    failed.len(),
                    failed[0].1
                )));
            }
            // Courses of programs that are gone (or no longer programs): deactivated with the step.
            let gone: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT c.program_id FROM moodle_courses c
                 WHERE c.integration_id = $1 AND c.is_active AND c.program_id IS NOT NULL AND NOT EXISTS (
                     SELECT 1 FROM moodle_categories k WHERE k.integration_id = c.integration_id
                        AND k.external_id = c.program_id AND k.is_active AND k.kind = 'program')",
            )
            .bind(integration_id)
            .fetch_all(&ctx.pool)
            .await?;
            let gone: Vec<String> = gone.into_iter().filter(|p| shard_of(p, shards) == me).collect();
            if !gone.is_empty() {
                let n = sweep::deactivate_scopes(ctx.tx().await?, &table, integration_id, "program_id", &gone).await?;
                ctx.result.deactivated += n;
            }
            ctx.result.deactivated += sweeps.deactivated;
            ctx.note(sweeps.note("courses", "program"));
            let text = if failed.is_empty() {
                format!("programs: {} synced", programs.len())
            } else {
                let ids: Vec<&str> = failed.iter().map(|(p, _)| p.trim_start_matches("program:")).collect();
                format!(
                    "partial: {} of {} program(s) failed ({}); the others synced",
                    failed.len(),
                    programs.len(),
                    ids.join(", ")
                )
            };
            tracing::info!(programs = programs.len(), failed = failed.len(), "{text}");
            if failed.is_empty() {
                ctx.note(text)
            } else {
                ctx.partial(text)
            }
            Ok(())
        }
        .boxed()
    }
}
