//! User scopes: each user's campus, department and program. One pure function ([`plan`]) decides
//! for one user from their enrollments; [`backfill`] loads what it needs, plans the users it is given
//! (every user, a shard of them, or one; a page at a time) and writes the changes.
//! `user_scope_backfill` and the hydrate endpoint both go through [`backfill`], so a chain run and a
//! login-time hydration cannot decide differently.
//!
//! Rules (issue #6):
//! - Department: the department most of the user's active enrollments are in; program: the program
//!   most of their enrollments *in that department* are in (so the two always agree). Ties go to the
//!   category id first in alphabetical order, so every environment decides alike for the same data.
//! - A user whose `department_source` or `program_source` is `manual` is skipped entirely: both
//!   fields change together or not at all.
//! - Campus is filled only when empty, from the username prefix (`<campus code>-<id>`, the code
//!   upper-cased); an existing campus is never overwritten.
//! - A write that changes nothing is not made, so `updated_at` stays on an idempotent run.

use std::collections::{BTreeMap, HashMap};

use futures::{FutureExt, future::BoxFuture};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use syncfleet_sdk::step::{StepContext, StepError, StepHandler};

/// Where one active enrollment sits: its course's program and that program's department.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub program_id: String,
    pub department_id: Option<String>,
}

/// A user's scope as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct UserScope {
    pub user_id: String,
    pub username: String,
    pub campus_id: Option<String>,
    pub department_id: Option<String>,
    pub program_id: Option<String>,
    pub department_source: String,
    pub program_source: String,
}

/// What [`plan`] decided for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Department and program derived from the enrollments.
    Derived,
    /// A source is `manual`: nothing changes.
    ManualSkipped,
    /// No active enrollment: department and program stay as they are.
    NoEnrollments,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub outcome: Outcome,
    /// The campus was empty and the username named one.
    pub campus_assigned: bool,
    /// (campus, department, program) to store, when different from what is stored.
    pub write: Option<(Option<String>, Option<String>, Option<String>)>,
}

/// The key with the most votes; ties to the alphabetically first.
fn majority<'a>(votes: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in votes {
        *counts.entry(v).or_default() += 1;
    }
    // In alphabetical order; `min_by_key` returns the first of equal minimums.
    counts.into_iter().min_by_key(|(_, n)| std::cmp::Reverse(*n)).map(|(k, _)| k)
}

/// (department, program) from the majority of the enrollments, or `None` without any.
pub fn derive(enrollments: &[Placement]) -> Option<(Option<String>, String)> {
    let department = majority(enrollments.iter().filter_map(|e| e.department_id.as_deref())).map(str::to_owned);
    let program =
        majority(enrollments.iter().filter(|e| e.department_id == department).map(|e| e.program_id.as_str()))?;
    Some((department, program.to_owned()))
}

/// The campus a username names (`<code>-<id>`), by code upper-cased.
pub fn campus_from_username(username: &str, campuses: &HashMap<String, String>) -> Option<String> {
    let (code, rest) = username.split_once('-')?;
    if code.is_empty() || rest.is_empty() {
        return None;
    }
    campuses.get(&code.to_uppercase()).cloned()
}

/// Decides one user's scope. `campuses` maps campus code (upper-case) to campus id.
pub fn plan(user: &UserScope, enrollments: &[Placement], campuses: &HashMap<String, String>) -> Plan {
    if user.department_source == "manual" || user.program_source == "manual" {
        return Plan { outcome: Outcome::ManualSkipped, campus_assigned: false, write: None };
    }
    let derived = derive(enrollments);
    let (outcome, department, program) = match derived {
        Some((d, p)) => (Outcome::Derived, d, Some(p)),
        None => (Outcome::NoEnrollments, user.department_id.clone(), user.program_id.clone()),
    };
    let (campus, campus_assigned) = match &user.campus_id {
        Some(c) => (Some(c.clone()), false),
        None => {
            let c = campus_from_username(&user.username, campuses);
            let assigned = c.is_some();
            (c, assigned)
        }
    };
    let new = (campus, department, program);
    let changed = new != (user.campus_id.clone(), user.department_id.clone(), user.program_id.clone());
    Plan { outcome, campus_assigned, write: changed.then_some(new) }
}

/// What a backfill did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub users: i64,
    pub derived: i64,
    pub manual_skipped: i64,
    pub no_enrollments: i64,
    pub campus_assigned: i64,
    /// Users whose stored scope changed.
    pub updated: i64,
    /// Per user (only kept for a single-user backfill).
    pub plans: Vec<(UserScope, Plan)>,
}

/// Users a derivation reads at once by default: it pages through them by external id (keyset), so its memory
/// stays flat however many users the integration has.
pub const PAGE: i64 = 5_000;

/// The users a derivation takes: the active users of shard `shard` of `shards` (by user id,
/// [`super::shard_of`], as the fan-out steps split their work), or the one named `only`.
#[derive(Debug, Clone, Copy)]
pub struct Users<'a> {
    pub only: Option<&'a str>,
    pub shard: u32,
    pub shards: u32,
    /// Users read at once ([`PAGE`] unless set).
    pub page: i64,
}

impl<'a> Users<'a> {
    /// Every active user.
    pub const ALL: Users<'static> = Users { only: None, shard: 0, shards: 1, page: PAGE };

    /// The active user named `username`.
    pub fn named(username: &'a str) -> Self {
        Users { only: Some(username), ..Users::ALL }
    }

    /// The active users of shard `shard` of `shards`.
    pub fn shard(shard: u32, shards: u32) -> Users<'static> {
        Users { shard, shards: shards.max(1), ..Users::ALL }
    }

    /// The same users, `rows` (at least 1) at a time.
    pub fn paged(self, rows: i64) -> Self {
        Users { page: rows.max(1), ..self }
    }

    /// The next page of these users after external id `after` (`""` for the first), in external id
    /// order, and the cursor of the page after it (`None` after the last). PostgreSQL narrows by the
    /// numeric ids' remainder (an id of 1 to 18 digits, told by `ltrim`, which costs a third of a
    /// regular expression on the rows a shard skips); the shard of every row read is then decided by
    /// [`super::shard_of`].
    pub(crate) async fn read_page(
        &self,
        conn: &mut PgConnection,
        integration_id: i64,
        after: &str,
    ) -> Result<(Vec<UserScope>, Option<String>), sqlx::Error> {
        let rows: Vec<UserScope> = sqlx::query_as(
            "SELECT external_id AS user_id, username, campus_id, department_id, program_id, department_source,
                    program_source
             FROM moodle_users
             WHERE integration_id = $1 AND is_active AND ($2::text IS NULL OR username = $2) AND external_id > $3
               AND ($5::bigint = 1
                    OR CASE WHEN length(external_id) BETWEEN 1 AND 18 AND ltrim(external_id, '0123456789') = ''
                            THEN external_id::bigint % $5 = $4 ELSE TRUE END)
             ORDER BY external_id
             LIMIT $6",
        )
        .bind(integration_id)
        .bind(self.only)
        .bind(after)
        .bind(i64::from(self.shard))
        .bind(i64::from(self.shards))
        .bind(self.page)
        .fetch_all(&mut *conn)
        .await?;
        let next = if rows.len() as i64 == self.page { rows.last().map(|u| u.user_id.clone()) } else { None };
        let rows = rows.into_iter().filter(|u| super::shard_of(&u.user_id, self.shards) == self.shard).collect();
        Ok((rows, next))
    }
}

/// Plans the users `users` names (every active user of the integration, a shard of them, or one),
/// a page at a time, and writes each page's changes in one statement on `conn`. A user made
/// `manual` since the read is not written (checked in SQL).
pub async fn backfill(conn: &mut PgConnection, integration_id: i64, users: Users<'_>) -> Result<Report, sqlx::Error> {
    let campuses: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT upper(code), external_id FROM moodle_categories
         WHERE integration_id = $1 AND is_active AND kind = 'campus' AND code IS NOT NULL ORDER BY external_id DESC",
    )
    .bind(integration_id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let mut report = Report::default();
    let mut after = String::new();
    loop {
        let (page, next) = users.read_page(conn, integration_id, &after).await?;
        backfill_page(conn, integration_id, page, &campuses, users.only.is_some(), &mut report).await?;
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    Ok(report)
}

/// Plans one page of users from their placements and writes the changes; `keep_plans` keeps each
/// user's plan in the report.
async fn backfill_page(
    conn: &mut PgConnection,
    integration_id: i64,
    users: Vec<UserScope>,
    campuses: &HashMap<String, String>,
    keep_plans: bool,
    report: &mut Report,
) -> Result<(), sqlx::Error> {
    if users.is_empty() {
        return Ok(());
    }
    let user_ids: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
    // The page is a range of user ids (in the order the page was read): the range narrows the
    // enrollments read through their user index, where `= ANY` of thousands alone is a scan of
    // every enrollment of the integration, page after page.
    let (first, last) = (users[0].user_id.clone(), users[users.len() - 1].user_id.clone());
    let placements: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT e.user_id, p.external_id, p.parent_id
         FROM moodle_enrollments e
         JOIN moodle_courses c ON c.integration_id = e.integration_id AND c.external_id = e.course_id AND c.is_active
         JOIN moodle_categories p ON p.integration_id = c.integration_id AND p.external_id = c.program_id
              AND p.is_active AND p.kind = 'program'
         WHERE e.integration_id = $1 AND e.is_active AND e.user_id >= $3 AND e.user_id <= $4 AND e.user_id = ANY($2)",
    )
    .bind(integration_id)
    .bind(&user_ids)
    .bind(&first)
    .bind(&last)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_user: HashMap<String, Vec<Placement>> = HashMap::new();
    for (user, program_id, department_id) in placements {
        by_user.entry(user).or_default().push(Placement { program_id, department_id });
    }
    report.users += users.len() as i64;
    let (mut ids, mut campus, mut department, mut program) = (vec![], vec![], vec![], vec![]);
    for user in users {
        let p = plan(&user, by_user.get(&user.user_id).map_or(&[][..], Vec::as_slice), campuses);
        match p.outcome {
            Outcome::Derived => report.derived += 1,
            Outcome::ManualSkipped => report.manual_skipped += 1,
            Outcome::NoEnrollments => report.no_enrollments += 1,
        }
        report.campus_assigned += i64::from(p.campus_assigned);
        if let Some((c, d, pr)) = &p.write {
            ids.push(user.user_id.clone());
            campus.push(c.clone());
            department.push(d.clone());
            program.push(pr.clone());
        }
        if keep_plans {
            report.plans.push((user, p));
        }
    }
    if !ids.is_empty() {
        report.updated += sqlx::query(
            "UPDATE moodle_users u SET campus_id = n.campus, department_id = n.department, program_id = n.program,
                    scope_updated_at = now(), updated_at = now()
             FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[]) AS n(id, campus, department, program)
             WHERE u.integration_id = $1 AND u.external_id = n.id AND u.external_id >= $6 AND u.external_id <= $7
               AND u.department_source = 'auto' AND u.program_source = 'auto'
               AND (u.campus_id, u.department_id, u.program_id) IS DISTINCT FROM (n.campus, n.department, n.program)",
        )
        .bind(integration_id)
        .bind(&ids)
        .bind(&campus)
        .bind(&department)
        .bind(&program)
        .bind(&first)
        .bind(&last)
        .execute(&mut *conn)
        .await?
        .rows_affected() as i64;
    }
    Ok(())
}

pub struct UserScopeBackfill;

impl StepHandler for UserScopeBackfill {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let integration_id = ctx.integration.id;
            let (shard, shards) = super::shard(ctx);
            syncfleet_sdk::sync::analyze::analyze_if_stale(&ctx.pool, &super::DERIVATION_INPUTS).await;
            let r = backfill(ctx.tx().await?, integration_id, Users::shard(shard, shards)).await?;
            tracing::info!(
                users = r.users,
                derived = r.derived,
                manual_skipped = r.manual_skipped,
                no_enrollments = r.no_enrollments,
                campus_assigned = r.campus_assigned,
                updated = r.updated,
                "User scopes backfilled."
            );
            ctx.result.fetched = r.users;
            ctx.result.updated = r.updated;
            ctx.result.unchanged = r.users - r.updated;
            ctx.note(format!(
                "scopes: {} derived, {} manual skipped, {} no enrollments, {} campus assigned",
                r.derived, r.manual_skipped, r.no_enrollments, r.campus_assigned
            ));
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(program: &str, department: &str) -> Placement {
        Placement { program_id: program.into(), department_id: Some(department.into()) }
    }

    fn user(username: &str) -> UserScope {
        UserScope {
            user_id: "1".into(),
            username: username.into(),
            department_source: "auto".into(),
            program_source: "auto".into(),
            ..UserScope::default()
        }
    }

    fn campuses() -> HashMap<String, String> {
        [("NORTHGATE".to_owned(), "1".to_owned())].into_iter().collect()
    }

    #[test]
    fn majority_then_alphabetical_tie_break() {
        assert_eq!(derive(&[at("20", "3"), at("20", "3"), at("9", "3")]), Some((Some("3".into()), "20".into())));
        // 1 vs 1: "10" sorts before "9".
        assert_eq!(derive(&[at("9", "3"), at("10", "3")]), Some((Some("3".into()), "10".into())));
        // The department wins first; the program is the majority within it.
        let e = [at("5", "2"), at("5", "2"), at("6", "4"), at("7", "4"), at("7", "4"), at("8", "4")];
        assert_eq!(derive(&e), Some((Some("4".into()), "7".into())));
        assert_eq!(derive(&[]), None);
        // The same data in any order decides the same.
        let mut r = e.to_vec();
        r.reverse();
        assert_eq!(derive(&r), derive(&e));
    }

    #[test]
    fn manual_skips_everything_and_campus_fills_only_when_empty() {
        let mut u = user("northgate-100001");
        u.program_source = "manual".into();
        let p = plan(&u, &[at("5", "2")], &campuses());
        assert_eq!((p.outcome, p.write), (Outcome::ManualSkipped, None));

        let u = user("northgate-100001");
        let p = plan(&u, &[at("5", "2")], &campuses());
        assert!(p.campus_assigned);
        assert_eq!(p.write, Some((Some("1".into()), Some("2".into()), Some("5".into()))));

        let mut u = user("NorthGate-100001");
        u.campus_id = Some("77".into());
        let p = plan(&u, &[], &campuses());
        assert_eq!((p.outcome, p.campus_assigned, p.write), (Outcome::NoEnrollments, false, None));

        let u = user("jsmith12");
        assert_eq!(plan(&u, &[], &campuses()).write, None);

        // Already as derived: nothing to write.
        let mut u = user("northgate-100001");
        (u.campus_id, u.department_id, u.program_id) = (Some("1".into()), Some("2".into()), Some("5".into()));
        assert_eq!(plan(&u, &[at("5", "2")], &campuses()).write, None);
    }
}
