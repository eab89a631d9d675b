//! `sync_enrollments`, in three phases so that concurrent writers never deadlock on shared user rows.
//! Phase 1 reads the courses; phases 2 and 3 write them a batch of courses at a time as the answers
//! come in ([`Writer`]), so the writes of one batch overlap the reads of the next and the step takes
//! about the time of its reads, not of its reads and then its writes.
//!
//! 1. **Fetch**: the enrolled users of every active course, `concurrency` courses at once; each user
//!    comes with their groups and roles in that course.
//! 2. **Users**, per batch of courses: the batch's users the step has not written yet, deduplicated
//!    by id, upserted in one statement (up to 5,000 rows a statement), each statement its own
//!    transaction, rows in id order: two shards lock shared rows in the same order, and a shard waits
//!    for another only while one statement of it runs (`user_batches`: a statement refused by a
//!    unique index runs again before its rows are written alone, and only the failing ones are item
//!    errors); a user is written once per step.
//! 3. **Per batch of courses, sequentially** (up to 5,000 enrollment rows or 100 courses, a course never
//!    split, in the order their answers came), one transaction and a fixed number of statements each:
//!    sections upserted from the users' groups (no extra Moodle call), enrollments upserted with the
//!    section of the user's first group, and each course's enrollments and sections missing from
//!    Moodle soft-deactivated by the SDK's scoped sweep, behind the deletion guard decided for each
//!    course: an empty answer while the course has active enrollments, a user without a readable id
//!    (the read is not complete), or a share above `max_deactivate_share` is refused unless the run
//!    forces the sweep. The step's `guard` records the decisions.
//!
//! A course whose read failed is recorded (item error `course:{id}`) and left as it was. Enrollments
//! and sections of courses no longer active are deactivated with the step.
//!
//! Moodle sends a user's `groups` only to a token with `moodle/site:accessallgroups`. A course whose
//! answer left the key out says nothing about its groups: its sections are neither written nor swept
//! and its enrollments keep their section, and the step's result says so. When every course's read
//! failed with Moodle's own answer (an error envelope such as `required_capability_exception`), the
//! step fails at once with that answer: asking again gets the same one. Transport failures of every
//! course are retried.

use std::collections::{BTreeMap, BTreeSet};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use serde_json::{Map, Value};
use sqlx::PgPool;

use super::{
    Rows,
    client::Moodle,
    client::MoodleError,
    concurrency_of,
    enrolled::{Enrolled, read_enrolled},
    settings_of, shard, shard_of, tables,
    user_batches::{UsersWritten, upsert_users},
};
use syncfleet_sdk::{
    ids::RunId,
    step::{AttemptFence, StepContext, StepError, StepHandler},
    sync::{
        pull,
        sweep::{self, ScopeRead, ScopedSweep, Sweeps},
        table::Table,
    },
};

/// A course's read: the users with a readable id, and how many had none.
struct CourseRead {
    course: String,
    users: Vec<Enrolled>,
    unreadable: usize,
}

impl CourseRead {
    /// Whether the answer told the users' groups: Moodle sent the `groups` key for every user.
    fn groups_known(&self) -> bool {
        self.users.iter().all(|u| u.groups.is_some())
    }

    /// The course's read for a scoped sweep that keeps the rows `listed`.
    fn scope<'a>(&'a self, listed: &'a [String]) -> ScopeRead<'a> {
        ScopeRead {
            scope: &self.course,
            answered: (self.users.len() + self.unreadable) as i64,
            listed,
            unreadable: self.unreadable as i64,
        }
    }
}

/// How phase 3 sweeps: the guard's share limit and the run's `force_sweep`.
#[derive(Clone, Copy)]
struct SweepPolicy {
    max_share: f64,
    force: bool,
}

/// Totals of phase 3.
#[derive(Default)]
struct Phase3 {
    inserted: i64,
    updated: i64,
    unchanged: i64,
    deactivated: i64,
    sections: i64,
    sections_new: i64,
    /// Courses whose answer left out the users' `groups`: sections untouched.
    groups_missing: Vec<String>,
    /// The guard's decisions per course: enrollments, then sections.
    enrollment_sweeps: Sweeps,
    section_sweeps: Sweeps,
}

/// Phase 3 writes courses in batches of this many enrollment rows (a course is never split; a
/// batch holds at most [`BATCH_COURSES`] courses).
const BATCH_ROWS: usize = 5_000;
const BATCH_COURSES: usize = 100;

/// Whether a batch of `courses` courses holding `rows` enrollment rows is full: it closes at the
/// course that reaches [`BATCH_ROWS`] rows, or at the [`BATCH_COURSES`]th course.
fn batch_full(rows: usize, courses: usize) -> bool {
    rows >= BATCH_ROWS || courses == BATCH_COURSES
}

/// A course's rows for phase 3.
struct CourseRows<'r, 't> {
    read: &'r CourseRead,
    sections: Rows<'t>,
    enrollments: Rows<'t>,
}

/// Phase 3 for one batch of courses, in one transaction and a fixed number of statements whatever
/// the number of courses: the sections, the enrollments (those of courses whose answer left out the
/// `groups` in a second statement that keeps their section), the enrollments' and the sections'
/// scoped sweeps (decided per course), and the courses' item errors resolved.
async fn write_courses(
    pool: &PgPool,
    fence: Option<&AttemptFence>,
    integration_id: i64,
    run: RunId,
    policy: SweepPolicy,
    reads: &[CourseRead],
    totals: &mut Phase3,
) -> Result<Vec<(String, String)>, StepError> {
    let (sections_t, enrollments_t, keeping_t) =
        (tables::sections(), tables::enrollments(), tables::enrollments_keeping_sections());
    let mut courses = Vec::with_capacity(reads.len());
    for read in reads {
        let course = &read.course;
        // Without `groups` nothing is known of the course's sections: none written, none swept, and
        // the enrollments are written without their section, which keeps what it was.
        let groups_known = read.groups_known();
        if !groups_known {
            totals.groups_missing.push(course.clone());
        }
        let mut sections: BTreeMap<&str, &str> = BTreeMap::new();
        for u in &read.users {
            for (id, name) in u.groups.iter().flatten() {
                sections.entry(id).or_insert(name);
            }
        }
        let mut srows = Rows::new(&sections_t);
        for (id, name) in &sections {
            let mut f = Map::new();
            f.insert("course_id".into(), Value::from(course.as_str()));
            f.insert("name".into(), Value::from(*name));
            srows.push((*id).to_owned(), &f);
        }
        let mut erows = Rows::new(if groups_known { &enrollments_t } else { &keeping_t });
        for u in &read.users {
            let mut f = Map::new();
            f.insert("course_id".into(), Value::from(course.as_str()));
            f.insert("user_id".into(), Value::from(u.user_id.as_str()));
            let first_group = u.groups.as_ref().and_then(|g| g.first());
            f.insert("section_id".into(), first_group.map_or(Value::Null, |(g, _)| Value::from(g.as_str())));
            f.insert("role".into(), u.roles.first().map_or(Value::Null, |r| Value::from(r.as_str())));
            f.insert("roles".into(), Value::from(u.roles.clone()));
            f.insert("lastcourseaccess".into(), u.lastcourseaccess.clone());
            erows.push(format!("{course}:{}", u.user_id), &f);
        }
        courses.push(CourseRows { read, sections: srows, enrollments: erows });
    }
    let mut tx = AttemptFence::begin(fence, pool).await?;
    // Sections of every course in one statement (a group id once: the last course's, as writing the
    // courses one after the other would leave it).
    let mut section_rows: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (c, course) in courses.iter().enumerate() {
        for (i, id) in course.sections.ids.iter().enumerate() {
            section_rows.insert(id, (c, i));
        }
    }
    if !section_rows.is_empty() {
        let ids: Vec<String> = section_rows.keys().map(|id| (*id).to_owned()).collect();
        let columns: Vec<Vec<Option<String>>> = (0..sections_t.columns.len())
            .map(|k| section_rows.values().map(|&(c, i)| courses[c].sections.columns[k][i].clone()).collect())
            .collect();
        let c = sections_t.upsert(&mut tx, integration_id, Some(run), &ids, &columns).await?;
        totals.sections += ids.len() as i64;
        totals.sections_new += c.inserted;
    }
    for (table, groups_known) in [(&enrollments_t, true), (&keeping_t, false)] {
        let these: Vec<&CourseRows<'_, '_>> =
            courses.iter().filter(|c| c.read.groups_known() == groups_known && !c.enrollments.ids.is_empty()).collect();
        if these.is_empty() {
            continue;
        }
        let ids: Vec<String> = these.iter().flat_map(|c| c.enrollments.ids.iter().cloned()).collect();
        let columns: Vec<Vec<Option<String>>> = (0..table.columns.len())
            .map(|k| these.iter().flat_map(|c| c.enrollments.columns[k].iter().cloned()).collect())
            .collect();
        let c = table.upsert(&mut tx, integration_id, Some(run), &ids, &columns).await?;
        totals.inserted += c.inserted;
        totals.updated += c.updated;
        totals.unchanged += c.unchanged;
    }
    // Rows that failed to convert keep their last state rather than being deactivated. Sections come
    // from the same answer as the enrollments: an empty answer refuses both.
    let keep = |rows: &Rows<'_>| -> Vec<String> {
        rows.ids.iter().chain(rows.failed.iter().map(|(id, _)| id)).cloned().collect()
    };
    let enrollment_keep: Vec<Vec<String>> = courses.iter().map(|c| keep(&c.enrollments)).collect();
    let section_keep: Vec<Vec<String>> = courses.iter().map(|c| keep(&c.sections)).collect();
    let enrollments: Vec<ScopeRead> = courses.iter().zip(&enrollment_keep).map(|(c, k)| c.read.scope(k)).collect();
    let sweep = ScopedSweep::new(&enrollments_t, integration_id, "course_id", policy.max_share, policy.force);
    totals.enrollment_sweeps.add(sweep.sweep(&mut tx, &enrollments).await?);
    let sections: Vec<ScopeRead> = courses
        .iter()
        .zip(&section_keep)
        .filter(|(c, _)| c.read.groups_known())
        .map(|(c, k)| c.read.scope(k))
        .collect();
    let sweep = ScopedSweep::new(&sections_t, integration_id, "course_id", policy.max_share, policy.force);
    totals.section_sweeps.add(sweep.sweep(&mut tx, &sections).await?);
    let resolved: Vec<String> = courses.iter().map(|c| format!("course:{}", c.read.course)).collect();
    pull::resolve(&mut tx, integration_id, "enrollments", &resolved).await?;
    tx.commit().await?;
    Ok(courses.into_iter().flat_map(|c| c.enrollments.failed.into_iter().chain(c.sections.failed)).collect())
}

/// The users of a step, as its batches of courses go through phase 2.
#[derive(Default)]
struct StepUsers {
    /// Every user id read (written or refused), each once.
    seen: BTreeSet<String>,
    /// The users given to the upsert, each once.
    ids: Vec<String>,
    /// Enrollment rows read (a user once per course).
    rows: usize,
    /// Users whose columns could not be written: (id, why).
    refused: Vec<(String, String)>,
    written: UsersWritten,
}

/// Phases 2 and 3 of one step, fed the courses' answers as phase 1 gets them: every full batch of
/// courses ([`batch_full`]) has its users not written yet upserted, then its sections and
/// enrollments written, while the next courses are read.
struct Writer<'c> {
    pool: &'c PgPool,
    fence: Option<&'c AttemptFence>,
    integration_id: i64,
    run: RunId,
    policy: SweepPolicy,
    users_t: Table,
    /// The batch being filled, and its enrollment rows.
    pending: Vec<CourseRead>,
    pending_rows: usize,
    errors: Vec<(&'static str, String, String)>,
    failed_courses: usize,
    /// The failures that were Moodle's own answer (an error envelope), each message once.
    answers: Vec<String>,
    transport_failures: usize,
    /// Users read, including those without a readable id.
    fetched: i64,
    users: StepUsers,
    totals: Phase3,
}

impl<'c> Writer<'c> {
    fn new(ctx: &'c StepContext, policy: SweepPolicy) -> Self {
        Writer {
            pool: &ctx.pool,
            fence: ctx.fence.as_ref(),
            integration_id: ctx.integration.id,
            run: ctx.run_id,
            policy,
            users_t: tables::users(),
            pending: vec![],
            pending_rows: 0,
            errors: vec![],
            failed_courses: 0,
            answers: vec![],
            transport_failures: 0,
            fetched: 0,
            users: StepUsers::default(),
            totals: Phase3::default(),
        }
    }

    /// One course's answer: read into the batch (written once full), or recorded as failed.
    async fn take(&mut self, course: String, answer: Result<Vec<Value>, MoodleError>) -> Result<(), StepError> {
        match answer {
            Ok(raw) => {
                let mut read = CourseRead { course, users: Vec::with_capacity(raw.len()), unreadable: 0 };
                for r in &raw {
                    match read_enrolled(r) {
                        Ok(u) => read.users.push(u),
                        Err(m) => {
                            read.unreadable += 1;
                            self.errors.push((
                                "enrollments",
                                format!("course:{}:?{}", read.course, read.unreadable),
                                m,
                            ));
                        }
                    }
                }
                self.fetched += raw.len() as i64;
                self.pending_rows += read.users.len();
                self.pending.push(read);
                if batch_full(self.pending_rows, self.pending.len()) {
                    self.flush().await?;
                }
            }
            Err(e) => {
                tracing::warn!(%course, error = %e, "Course's enrolled users failed; the others go on.");
                self.failed_courses += 1;
                match &e {
                    MoodleError::Exception { .. } => {
                        let text = e.to_string();
                        if !self.answers.contains(&text) {
                            self.answers.push(text);
                        }
                    }
                    _ => self.transport_failures += 1,
                }
                self.errors.push(("enrollments", format!("course:{course}"), e.to_string()));
            }
        }
        Ok(())
    }

    /// Writes the batch being filled: phase 2 for its users not written yet (in id order), then
    /// phase 3 for its courses (in course order).
    async fn flush(&mut self) -> Result<(), StepError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut reads = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        reads.sort_by(|a, b| a.course.cmp(&b.course));
        let mut new: BTreeMap<&str, &Enrolled> = BTreeMap::new();
        for u in reads.iter().flat_map(|r| &r.users) {
            self.users.rows += 1;
            if !self.users.seen.contains(&u.user_id) {
                new.entry(u.user_id.as_str()).or_insert(u);
            }
        }
        let mut rows = Rows::new(&self.users_t);
        for (id, u) in &new {
            self.users.seen.insert((*id).to_owned());
            match &u.user {
                Ok(f) => rows.push((*id).to_owned(), f),
                Err(m) => rows.failed.push(((*id).to_owned(), m.clone())),
            }
        }
        let written = upsert_users(self.pool, self.fence, &self.users_t, self.integration_id, self.run, &rows).await?;
        self.users.written.add(written);
        self.users.ids.extend(rows.ids.iter().cloned());
        self.users.refused.append(&mut rows.failed);
        let bad =
            write_courses(self.pool, self.fence, self.integration_id, self.run, self.policy, &reads, &mut self.totals)
                .await?;
        self.errors.extend(bad.into_iter().map(|(id, m)| ("enrollments", id, m)));
        Ok(())
    }
}

pub struct SyncEnrollments;

impl StepHandler for SyncEnrollments {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let concurrency = concurrency_of(ctx, &settings)?;
            let client = settings.client(&ctx.http, concurrency);
            let concurrency = concurrency as usize;
            let api = Moodle::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let (me, shards) = shard(ctx);
            let (integration_id, run) = (ctx.integration.id, ctx.run_id);
            let policy = SweepPolicy { max_share: settings.max_deactivate_share, force: ctx.force_sweep };
            let courses: Vec<String> = sqlx::query_scalar(
                "SELECT external_id FROM moodle_courses WHERE integration_id = $1 AND is_active ORDER BY external_id",
            )
            .bind(integration_id)
            .fetch_all(&ctx.pool)
            .await?;
            let courses: Vec<String> = courses.into_iter().filter(|c| shard_of(c, shards) == me).collect();

            // Phase 1, bounded, while each batch of the courses read goes through phases 2 and 3.
            let api_ref = &api;
            let (sender, receiver) = futures::channel::mpsc::unbounded();
            let to_fetch = courses.clone();
            let fetch = async move {
                let mut answers = futures::stream::iter(to_fetch)
                    .map(move |c| async move {
                        let answer = api_ref.enrolled_users(&c).await;
                        (c, answer)
                    })
                    .buffer_unordered(concurrency);
                while let Some(answer) = answers.next().await {
                    if sender.unbounded_send(answer).is_err() {
                        break; // The writer stopped on an error.
                    }
                }
            };
            let mut w = Writer::new(ctx, policy);
            let write = async {
                let mut receiver = receiver;
                while let Some((course, answer)) = receiver.next().await {
                    w.take(course, answer).await?;
                }
                w.flush().await
            };
            let ((), written) = futures::future::join(fetch, write).await;
            written?;
            let Writer { mut errors, failed_courses, answers, transport_failures, fetched, users, mut totals, .. } = w;
            let failed = &users.written.failed;
            ctx.record_calls(&[&client]);
            ctx.result.fetched += fetched;
            let failed_users: BTreeSet<&String> = users.refused.iter().chain(failed.iter()).map(|(id, _)| id).collect();
            errors.extend(users.refused.iter().chain(failed.iter()).map(|(id, m)| ("users", id.clone(), m.clone())));
            let mut tx = ctx.begin().await?;
            let written: Vec<String> = users.ids.iter().filter(|id| !failed_users.contains(id)).cloned().collect();
            pull::resolve(&mut tx, integration_id, "users", &written).await?;
            tx.commit().await?;

            // Enrollments and sections of courses that are no longer active.
            let gone: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT e.course_id FROM moodle_enrollments e
                 WHERE e.integration_id = $1 AND e.is_active AND NOT EXISTS (
                     SELECT 1 FROM moodle_courses c WHERE c.integration_id = e.integration_id
                        AND c.external_id = e.course_id AND c.is_active)",
            )
            .bind(integration_id)
            .fetch_all(&ctx.pool)
            .await?;
            let gone: Vec<String> = gone.into_iter().filter(|c| shard_of(c, shards) == me).collect();
            if !gone.is_empty() {
                let conn = ctx.tx().await?;
                totals.deactivated +=
                    sweep::deactivate_scopes(conn, &tables::enrollments(), integration_id, "course_id", &gone).await?;
                sweep::deactivate_scopes(conn, &tables::sections(), integration_id, "course_id", &gone).await?;
            }

            if !errors.is_empty() {
                let mut tx = ctx.begin().await?;
                for entity in ["users", "enrollments"] {
                    let these: Vec<(String, String)> =
                        errors.iter().filter(|e| e.0 == entity).map(|e| (e.1.clone(), e.2.clone())).collect();
                    if !these.is_empty() {
                        pull::record_errors(&mut tx, Some(run), ctx.step.name.as_str(), integration_id, entity, &these)
                            .await?;
                    }
                }
                tx.commit().await?;
            }
            if !courses.is_empty() && failed_courses == courses.len() {
                return Err(every_course_failed(failed_courses, &answers, transport_failures, &errors));
            }
            let r = &mut ctx.result;
            r.inserted = totals.inserted;
            r.updated = totals.updated;
            r.unchanged = totals.unchanged;
            r.deactivated = totals.deactivated + totals.enrollment_sweeps.deactivated;
            r.errors = errors.len() as i64;
            let users_text = format!(
                "users: {} distinct of {} enrollment row(s), upserted {}",
                users.seen.len(),
                users.rows,
                users.written.describe()
            );
            let mut sections_text = format!("sections: {} from groups ({} new)", totals.sections, totals.sections_new);
            if !totals.groups_missing.is_empty() {
                let n = totals.groups_missing.len();
                tracing::warn!(
                    courses = n,
                    "Moodle left out the users' `groups` (no moodle/site:accessallgroups); sections left as they were."
                );
                sections_text = format!(
                    "{sections_text}; groups not read for {n} of {} course(s): Moodle left out the users' `groups` \
                     (the token lacks moodle/site:accessallgroups), so their sections and the enrollments' sections \
                     were left as they were",
                    courses.len() - failed_courses
                );
            }
            let courses_text = if failed_courses == 0 {
                format!("courses: {} read", courses.len())
            } else {
                format!("partial: {failed_courses} of {} course(s) failed", courses.len())
            };
            tracing::info!(courses = courses.len(), failed_courses, "{users_text}; {sections_text}.");
            let sweeps_text = format!(
                "{}; {}",
                totals.enrollment_sweeps.note("enrollments", "course"),
                totals.section_sweeps.note("sections", "course")
            );
            let text = format!("{courses_text}; {users_text}; {sections_text}; {sweeps_text}");
            if failed_courses == 0 {
                ctx.note(text)
            } else {
                ctx.partial(text)
            }
            Ok(())
        }
        .boxed()
    }
}

/// The error of a step whose every course's read failed. When every failure was Moodle's own
/// answer (an error envelope: a missing capability, a bad token), asking again gets the same answer:
/// the step fails at once, with Moodle's message. Otherwise it is retried.
fn every_course_failed(
    failed: usize,
    answers: &[String],
    transport_failures: usize,
    errors: &[(&'static str, String, String)],
) -> StepError {
    if transport_failures == 0 && !answers.is_empty() {
        let more = match answers.len() {
            1 => String::new(),
            n => format!(" (and {} other answer(s))", n - 1),
        };
        return StepError::abort(format!(
            "every course's enrolled users failed ({failed}), with Moodle's own answer: {}{more}",
            answers[0]
        ));
    }
    let example = errors.iter().find(|e| e.1.starts_with("course:")).map_or("", |e| e.2.as_str());
    StepError::retry(format!("every course's enrolled users failed ({failed}), e.g. {example}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Splits the reads (in arrival order) into phase 3's batches, as [`Writer::take`] closes them.
    fn batches(reads: &[CourseRead]) -> Vec<&[CourseRead]> {
        let mut out = vec![];
        let (mut start, mut rows) = (0, 0);
        for (i, read) in reads.iter().enumerate() {
            rows += read.users.len();
            if batch_full(rows, i + 1 - start) {
                out.push(&reads[start..=i]);
                (start, rows) = (i + 1, 0);
            }
        }
        if start < reads.len() {
            out.push(&reads[start..]);
        }
        out
    }

    #[test]
    fn phase_3_batches_courses_by_rows_and_never_splits_one() {
        let user = read_enrolled(&json!({"id": 1, "username": "a", "groups": []})).unwrap();
        let course = |id: usize, users: usize| CourseRead {
            course: id.to_string(),
            users: vec![user.clone(); users],
            unreadable: 0,
        };
        let sizes = |reads: &[CourseRead]| -> Vec<usize> { batches(reads).iter().map(|b| b.len()).collect() };
        assert_eq!(sizes(&[]), Vec::<usize>::new());
        // 2,000 rows a course: a batch closes at the course that reaches 5,000 rows.
        let big: Vec<CourseRead> = (0..5).map(|i| course(i, 2_000)).collect();
        assert_eq!(sizes(&big), [3, 2]);
        // A course above the limit closes its batch whole.
        assert_eq!(sizes(&[course(1, 10), course(2, 9_000), course(3, 10)]), [2, 1]);
        // Small courses: at most 100 a batch, every course exactly once, in order.
        let small: Vec<CourseRead> = (0..250).map(|i| course(i, 1)).collect();
        assert_eq!(sizes(&small), [100, 100, 50]);
        let order: Vec<&str> = batches(&small).iter().flat_map(|b| b.iter().map(|r| r.course.as_str())).collect();
        assert_eq!(order, small.iter().map(|r| r.course.as_str()).collect::<Vec<_>>());
    }
}
