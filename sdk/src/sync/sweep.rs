//! Every deactivation of a synced row goes through here: the deletion guard's rules (one function
//! for the full sweep of [`pull`](super::pull::pull) and for scoped sweeps), the scoped sweep (one
//! Moodle program's courses, one course's enrollments, one partner user's transcript, one group's
//! members), and the deactivations that are no sweep: rows the upstream itself lists as deleted
//! ([`deactivate_ids`]) and the rows of scopes that are gone ([`deactivate_scopes`]).
//!
//! Rows are soft-deleted (`is_active = FALSE`, `deleted_at = now()`), never deleted.
//!
//! **One clock.** A sweep spares rows written since its read began (`updated_at`, set by the
//! database's `now()`), so the read's start comes from the database too ([`database_now`]), never
//! from the worker's clock, which may be seconds or minutes off.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::table::{Table, quote_ident};

/// The database's current time (`statement_timestamp()`), for comparisons with the `updated_at`
/// the database itself writes: when a read began ([`ScopedSweep::written_before`],
/// [`super::pull`]'s full sweep). On a transaction's connection it is the time of this statement,
/// not of the transaction's start.
pub async fn database_now(conn: impl PgExecutor<'_>) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT statement_timestamp()").fetch_one(conn).await
}

/// The share rule applies to a scope only when more than this many of its rows would go: a course
/// of 8 enrollments that loses 2 (25 %) is a course, not an outage. An empty answer while the scope
/// has active rows is refused whatever the count. A pull's full sweep has no such exemption.
pub const SCOPED_SHARE_EXEMPT_ROWS: i64 = 5;

/// What the deletion guard weighs for one sweep: a pull's whole table, or one scope.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// Items the read answered, readable or not; 0 is an empty answer.
    pub fetched: i64,
    /// Active rows the sweep covers.
    pub active: i64,
    /// Of those, the rows the sweep would deactivate.
    pub missing: i64,
    /// Items of the answer without a readable id: the read is not complete.
    pub unreadable_ids: i64,
    /// Pages that ended before the upstream said they would.
    pub short_pages: &'a [String],
    /// The total the upstream reported for the read, when it reports one.
    pub total: Option<i64>,
    /// The first external id the read listed more than once, and how many ids it repeated: the
    /// upstream's paging served some records twice, so others may not have been served at all.
    pub repeated: Option<(&'a str, i64)>,
}

/// The guard's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The largest share of the active rows one sweep may deactivate.
    pub max_share: f64,
    /// The share rule applies only when more rows than this would go.
    pub share_exempt_rows: i64,
}

impl Limits {
    /// A pull's full sweep: the share rule applies whatever the count.
    pub fn full(max_share: f64) -> Limits {
        Limits { max_share, share_exempt_rows: 0 }
    }

    /// A scoped sweep: the share rule applies above [`SCOPED_SHARE_EXEMPT_ROWS`].
    pub fn scoped(max_share: f64) -> Limits {
        Limits { max_share, share_exempt_rows: SCOPED_SHARE_EXEMPT_ROWS }
    }
}

/// The deletion guard: why this sweep must not run, or `None` when it may. In order: a short page,
/// an id read twice, an unreadable id, an empty answer while rows are active, a total that disagrees with the count
/// read, a deactivation above the share limit.
pub fn refusal(f: &Facts<'_>, limits: Limits) -> Option<String> {
    let share = if f.active > 0 { f.missing as f64 / f.active as f64 } else { 0.0 };
    if let Some(short) = f.short_pages.first() {
        Some(format!("{short} ({} short page(s))", f.short_pages.len()))
    } else if let Some((id, ids)) = f.repeated {
        let more = if ids > 1 { format!(" ({ids} ids repeated)") } else { String::new() };
        Some(format!("id {id} seen twice in one read: the upstream's paging repeated records{more}"))
    } else if f.unreadable_ids > 0 {
        Some(format!("{} item(s) had no readable id", f.unreadable_ids))
    } else if f.fetched == 0 && f.active > 0 {
        Some(format!("fetch returned nothing while {} rows are active", f.active))
    } else if let Some(total) = f.total.filter(|t| *t != f.fetched) {
        Some(format!("upstream reported {total} items, fetched {}", f.fetched))
    } else if share > limits.max_share && f.missing > limits.share_exempt_rows {
        Some(format!(
            "{} of {} active rows ({:.1}%) would be deactivated, over the {:.0}% limit",
            f.missing,
            f.active,
            share * 100.0,
            limits.max_share * 100.0
        ))
    } else {
        None
    }
}

/// The guard's decision with the run's `force_sweep`: `Ok(overridden)` to sweep (naming the refusal
/// a forced run goes past), `Err(reason)` to leave the rows as they are.
pub fn decide(refusal: Option<String>, force: bool) -> Result<Option<String>, String> {
    match (refusal, force) {
        (Some(reason), false) => Err(reason),
        (overridden, _) => Ok(overridden),
    }
}

/// What the guard decided for one scope.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Swept: `deactivated` of `active` rows; `overridden` is the refusal a forced run went past.
    Swept { active: i64, deactivated: i64, overridden: Option<String> },
    /// Refused: the scope's rows stay as they are.
    Refused { reason: String },
}

/// One scope's read, as the step got it from the upstream.
#[derive(Debug, Clone, Copy)]
pub struct ScopeRead<'a> {
    /// The scope's value in the scope column (a program id, a course id, a person id).
    pub scope: &'a str,
    /// Items the upstream answered for the scope, readable or not: 0 is an empty answer.
    pub answered: i64,
    /// External ids of the scope's rows the answer lists (written, or kept as they were because
    /// they could not be written): these stay; the scope's other active rows go.
    pub listed: &'a [String],
    /// Items of the answer without a readable id: the read is incomplete and the sweep refused.
    pub unreadable: i64,
}

/// A scope's decision, keyed by the scope's value.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeDecision {
    pub scope: String,
    pub decision: Decision,
}

/// Sweeps of one table by scope: the rows of a scope (its `column` equal to the scope's value) that
/// the scope's answer no longer lists go, behind the same deletion guard as a pull's full sweep,
/// decided per scope. Runs in the transaction that wrote the scope's answer.
#[derive(Debug, Clone)]
pub struct ScopedSweep<'a> {
    pub table: &'a Table,
    pub integration_id: i64,
    /// The mapped column that names a row's scope (`program_id`, `course_id`, `person_id`).
    column: &'a str,
    /// The run's `force_sweep`: refusals are recorded and overridden.
    pub force: bool,
    pub limits: Limits,
    /// Rows written at or after this time stay (a webhook wrote them during the read); `None` when
    /// the sweep runs in the transaction that wrote the answer.
    pub written_before: Option<DateTime<Utc>>,
}

impl<'a> ScopedSweep<'a> {
    /// A scoped sweep of `table` by `column`, one of the table's mapped columns (a declaration
    /// error otherwise, like an invalid [`Table`]: this panics), with the share limit `max_share`
    /// (above [`SCOPED_SHARE_EXEMPT_ROWS`] rows) and the run's `force_sweep`.
    pub fn new(table: &'a Table, integration_id: i64, column: &'a str, max_share: f64, force: bool) -> Self {
        assert!(
            table.columns.iter().any(|c| c.name == column),
            "scoped sweep of {}: `{column}` is not one of its mapped columns",
            table.name
        );
        ScopedSweep { table, integration_id, column, force, limits: Limits::scoped(max_share), written_before: None }
    }

    /// Spares rows written at or after `t`.
    pub fn written_before(mut self, t: DateTime<Utc>) -> Self {
        self.written_before = Some(t);
        self
    }

    /// Decides each scope of `reads` and deactivates, in the scopes it allows, the active rows their
    /// answers do not list. Two statements whatever the number of scopes.
    pub async fn sweep(
        &self,
        conn: &mut PgConnection,
        reads: &[ScopeRead<'_>],
    ) -> Result<Vec<ScopeDecision>, sqlx::Error> {
        if reads.is_empty() {
            return Ok(vec![]);
        }
        let scopes: Vec<&str> = reads.iter().map(|r| r.scope).collect();
        let listed: Vec<&str> = reads.iter().flat_map(|r| r.listed.iter().map(String::as_str)).collect();
        let (table, column) = (self.table.ident(), quote_ident(self.column));
        // A join, not `<> ALL(…)`: that compares each row with every listed id (a group of thousands).
        // One scope (a course, a user) is the common call, thousands of times a step: its scope is
        // compared with `=` as a scalar, which the planner always answers from the scope's index;
        // `= ANY($2)` in a generic plan was seen to double the Moodle enrollments step at `large`.
        let in_scope = if scopes.len() == 1 { format!("t.{column} = $2[1]") } else { format!("t.{column} = ANY($2)") };
        let counts: Vec<(String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT t.{column}, count(*), count(*) FILTER (WHERE l.id IS NULL AND {SPARED})
             FROM {table} t LEFT JOIN (SELECT DISTINCT id FROM UNNEST($3::text[]) AS u(id)) l ON l.id = t.external_id
             WHERE t.integration_id = $1 AND t.is_active AND {in_scope}
             GROUP BY t.{column}"
        )))
        .bind(self.integration_id)
        .bind(&scopes)
        .bind(&listed)
        .bind(self.written_before)
        .fetch_all(&mut *conn)
        .await?;
        let mut verdicts = Vec::with_capacity(reads.len());
        let mut allowed: Vec<&str> = vec![];
        for read in reads {
            let (active, missing) =
                counts.iter().find(|(s, _, _)| s == read.scope).map_or((0, 0), |(_, a, m)| (*a, *m));
            let facts =
                Facts { fetched: read.answered, active, missing, unreadable_ids: read.unreadable, ..Facts::default() };
            let verdict = decide(refusal(&facts, self.limits), self.force);
            if verdict.is_ok() && missing > 0 {
                allowed.push(read.scope);
            }
            verdicts.push((read.scope, active, verdict));
        }
        let mut gone: Vec<String> = vec![];
        if !allowed.is_empty() {
            gone = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} t SET is_active = FALSE, deleted_at = now(), updated_at = now()
                 WHERE t.integration_id = $1 AND t.is_active AND {in_scope} AND {SPARED}
                   AND NOT EXISTS (SELECT 1 FROM UNNEST($3::text[]) AS u(id) WHERE u.id = t.external_id)
                 RETURNING t.{column}"
            )))
            .bind(self.integration_id)
            .bind(&allowed)
            .bind(&listed)
            .bind(self.written_before)
            .fetch_all(&mut *conn)
            .await?;
        }
        Ok(verdicts
            .into_iter()
            .map(|(scope, active, verdict)| {
                let decision = match verdict {
                    Ok(overridden) => Decision::Swept {
                        active,
                        deactivated: gone.iter().filter(|g| *g == scope).count() as i64,
                        overridden,
                    },
                    Err(reason) => {
                        tracing::warn!(table = %self.table.name, scope, %reason, "Deletion guard refused a scoped sweep.");
                        Decision::Refused { reason }
                    }
                };
                ScopeDecision { scope: scope.to_owned(), decision }
            })
            .collect())
    }
}

/// Rows written during the read (`$4`, NULL for none) are spared.
const SPARED: &str = "($4::timestamptz IS NULL OR t.updated_at < $4)";

/// A step's scoped sweeps together, for its result and its `guard` text.
#[derive(Debug, Clone, Default)]
pub struct Sweeps {
    pub scopes: i64,
    pub swept: i64,
    pub deactivated: i64,
    /// (scope, reason) of each refused scope.
    pub refused: Vec<(String, String)>,
    /// (scope, reason) of each refusal a forced run went past.
    pub forced: Vec<(String, String)>,
}

/// Refusals named in a step's note; the rest are counted.
const NAMED: usize = 3;

impl Sweeps {
    pub fn add(&mut self, decisions: impl IntoIterator<Item = ScopeDecision>) {
        for d in decisions {
            self.scopes += 1;
            match d.decision {
                Decision::Swept { deactivated, overridden, .. } => {
                    self.swept += 1;
                    self.deactivated += deactivated;
                    if let Some(reason) = overridden {
                        self.forced.push((d.scope, reason));
                    }
                }
                Decision::Refused { reason } => self.refused.push((d.scope, reason)),
            }
        }
    }

    pub fn merge(&mut self, other: Sweeps) {
        self.scopes += other.scopes;
        self.swept += other.swept;
        self.deactivated += other.deactivated;
        self.refused.extend(other.refused);
        self.forced.extend(other.forced);
    }

    /// The step's line, e.g. `courses: 31 of 32 program(s) swept, 3 deactivated; blocked: program 42:
    /// fetch returned nothing while 2 rows are active`. `rows` names the table's rows, `scope` a scope.
    pub fn note(&self, rows: &str, scope: &str) -> String {
        let mut refused = self.refused.clone();
        refused.sort();
        let mut forced = self.forced.clone();
        forced.sort();
        let list = |items: &[(String, String)]| {
            let mut text: Vec<String> =
                items.iter().take(NAMED).map(|(s, reason)| format!("{scope} {s}: {reason}")).collect();
            if items.len() > NAMED {
                text.push(format!("{} more", items.len() - NAMED));
            }
            text.join(", ")
        };
        let lead = if forced.is_empty() { "" } else { "forced: " };
        let mut text = format!(
            "{rows}: {lead}{} of {} {scope}(s) swept, {} deactivated",
            self.swept, self.scopes, self.deactivated
        );
        if !forced.is_empty() {
            text.push_str(&format!(" (guard: {})", list(&forced)));
        }
        if !refused.is_empty() {
            text.push_str(&format!("; blocked: {}", list(&refused)));
        }
        text
    }
}

/// Soft-deletes rows by external id: those the upstream itself reports deleted (Impartner's
/// `_deleted`) or that a read's filters now leave out. No sweep, so no guard: the upstream named
/// each one. Returns how many were active.
pub async fn deactivate_ids(
    conn: &mut PgConnection,
    table: &Table,
    integration_id: i64,
    ids: &[String],
) -> Result<i64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {} SET is_active = FALSE, deleted_at = now(), updated_at = now()
         WHERE integration_id = $1 AND is_active AND external_id = ANY($2)",
        table.ident()
    )))
    .bind(integration_id)
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() as i64)
}

/// Soft-deletes every active row of the scopes in `scopes` (`column`, a mapped column of `table`):
/// the rows of parents that are themselves gone (the courses of a program no longer active, the
/// enrollments of a course no longer active or of a user no longer a partner user). The parent's own
/// deactivation went through the guard. Returns how many.
pub async fn deactivate_scopes(
    conn: &mut PgConnection,
    table: &Table,
    integration_id: i64,
    column: &str,
    scopes: &[String],
) -> Result<i64, sqlx::Error> {
    assert!(
        table.columns.iter().any(|c| c.name == column),
        "deactivation of {} by `{column}`: not one of its mapped columns",
        table.name
    );
    if scopes.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {} SET is_active = FALSE, deleted_at = now(), updated_at = now()
         WHERE integration_id = $1 AND is_active AND {} = ANY($2)",
        table.ident(),
        quote_ident(column)
    )))
    .bind(integration_id)
    .bind(scopes)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(fetched: i64, active: i64, missing: i64) -> Facts<'static> {
        Facts { fetched, active, missing, ..Facts::default() }
    }

    #[test]
    fn one_rule_set_for_full_and_scoped_sweeps() {
        let full = Limits::full(0.15);
        let scoped = Limits::scoped(0.15);
        // An empty answer while rows are active: refused for both, whatever the count.
        for limits in [full, scoped] {
            assert_eq!(
                refusal(&facts(0, 1, 1), limits).as_deref(),
                Some("fetch returned nothing while 1 rows are active")
            );
            assert_eq!(refusal(&facts(0, 0, 0), limits), None, "nothing active, nothing to refuse");
            assert_eq!(
                refusal(&Facts { unreadable_ids: 2, ..facts(5, 5, 0) }, limits).as_deref(),
                Some("2 item(s) had no readable id")
            );
        }
        // The share: a few rows of a small scope go; a pull's whole table has no exemption.
        assert_eq!(refusal(&facts(6, 8, 2), scoped), None);
        assert_eq!(
            refusal(&facts(6, 8, 2), full).as_deref(),
            Some("2 of 8 active rows (25.0%) would be deactivated, over the 15% limit")
        );
        let n = SCOPED_SHARE_EXEMPT_ROWS;
        assert_eq!(refusal(&facts(1, n + 1, n), scoped), None);
        assert!(refusal(&facts(1, n + 2, n + 1), scoped).is_some_and(|r| r.contains("over the 15% limit")));
        assert_eq!(refusal(&facts(90, 100, 10), scoped), None, "10 % is under the limit");
        // A total that disagrees, and short pages, come first.
        assert!(refusal(&Facts { total: Some(9), ..facts(8, 8, 0) }, full).is_some_and(|r| r.contains("reported 9")));
        let short = ["page 2 held 3 of 10".to_owned()];
        assert_eq!(
            refusal(&Facts { short_pages: &short, ..facts(0, 5, 5) }, full).as_deref(),
            Some("page 2 held 3 of 10 (1 short page(s))")
        );
        // An id read twice: the paging cannot be trusted, whatever the share.
        assert_eq!(
            refusal(&Facts { repeated: Some(("17", 1)), ..facts(10, 10, 0) }, full).as_deref(),
            Some("id 17 seen twice in one read: the upstream's paging repeated records")
        );
        assert!(
            refusal(&Facts { repeated: Some(("17", 50)), ..facts(500, 500, 50) }, full)
                .is_some_and(|r| r.ends_with("records (50 ids repeated)"))
        );
    }

    #[test]
    fn force_goes_past_a_refusal_and_names_it() {
        assert_eq!(decide(None, false), Ok(None));
        assert_eq!(decide(Some("r".into()), false), Err("r".into()));
        assert_eq!(decide(Some("r".into()), true), Ok(Some("r".into())));
    }

    #[test]
    fn the_note_names_the_refused_scopes() {
        let mut s = Sweeps::default();
        s.add([
            ScopeDecision {
                scope: "7".into(),
                decision: Decision::Swept { active: 4, deactivated: 1, overridden: None },
            },
            ScopeDecision {
                scope: "42".into(),
                decision: Decision::Refused { reason: "fetch returned nothing while 2 rows are active".into() },
            },
        ]);
        assert_eq!(
            s.note("courses", "program"),
            "courses: 1 of 2 program(s) swept, 1 deactivated; blocked: program 42: fetch returned nothing while 2 rows are active"
        );
        let mut f = Sweeps::default();
        f.add([ScopeDecision {
            scope: "42".into(),
            decision: Decision::Swept { active: 2, deactivated: 2, overridden: Some("fetch returned nothing".into()) },
        }]);
        assert_eq!(
            f.note("courses", "program"),
            "courses: forced: 1 of 1 program(s) swept, 2 deactivated (guard: program 42: fetch returned nothing)"
        );
        for i in 0..5 {
            f.refused.push((i.to_string(), "r".into()));
        }
        assert!(f.note("courses", "program").ends_with("blocked: program 0: r, program 1: r, program 2: r, 2 more"));
    }
}
