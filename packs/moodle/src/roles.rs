//! Roles: each user's roles recomputed from their active enrollments (Moodle role shortname → our
//! role, the integration's `roles` map). Rows the sync grants carry `granted_by = 'sync'`; a sync
//! removes only those, so roles granted by hand (SUPER_ADMIN, ADMIN: `granted_by = 'manual'`) always
//! survive it. [`apply`] serves `role_derivation` (a shard of the users at a time when the step fans out) and the
//! hydrate endpoint alike.

use std::collections::{BTreeMap, BTreeSet};

use futures::{FutureExt, future::BoxFuture};
use serde::Serialize;
use sqlx::PgConnection;

use super::{scope::Users, settings::PROTECTED_ROLES, settings_of};
use syncfleet_sdk::step::{StepContext, StepError, StepHandler};

/// The roles a user's enrollment role shortnames give (never a protected role).
pub fn derive<'a>(shortnames: impl Iterator<Item = &'a str>, map: &BTreeMap<String, String>) -> BTreeSet<String> {
    shortnames.filter_map(|s| map.get(s)).filter(|r| !PROTECTED_ROLES.contains(&r.as_str())).cloned().collect()
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RoleReport {
    pub users: i64,
    pub granted: i64,
    pub revoked: i64,
}

/// Recomputes the sync-granted roles of the users `users` names (every active user, a shard of
/// them, or one) on `conn`, a page of users at a time ([`super::scope::PAGE`]).
pub async fn apply(
    conn: &mut PgConnection,
    integration_id: i64,
    map: &BTreeMap<String, String>,
    users: Users<'_>,
) -> Result<RoleReport, sqlx::Error> {
    let mut report = RoleReport::default();
    let mut after = String::new();
    loop {
        let (page, next) = users.read_page(conn, integration_id, &after).await?;
        let ids: Vec<String> = page.into_iter().map(|u| u.user_id).collect();
        apply_page(conn, integration_id, map, ids, &mut report).await?;
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    Ok(report)
}

/// Recomputes the sync-granted roles of the users `ids`.
async fn apply_page(
    conn: &mut PgConnection,
    integration_id: i64,
    map: &BTreeMap<String, String>,
    ids: Vec<String>,
    report: &mut RoleReport,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    // The page is a range of user ids: the range narrows the enrollments read through their user
    // index (`= ANY` of thousands alone reads every enrollment of the integration, page after page).
    let (first, last) = (&ids[0], &ids[ids.len() - 1]);
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT e.user_id, e.roles
         FROM moodle_enrollments e
         WHERE e.integration_id = $1 AND e.user_id >= $3 AND e.user_id <= $4 AND e.user_id = ANY($2)
           AND e.is_active AND e.roles IS NOT NULL
           AND EXISTS (SELECT 1 FROM moodle_courses c WHERE c.integration_id = e.integration_id
                       AND c.external_id = e.course_id AND c.is_active)",
    )
    .bind(integration_id)
    .bind(&ids)
    .bind(first)
    .bind(last)
    .fetch_all(&mut *conn)
    .await?;
    let mut shortnames: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (user, roles) in rows {
        let names = shortnames.entry(user).or_default();
        if let serde_json::Value::Array(roles) = roles {
            names.extend(roles.into_iter().filter_map(|r| r.as_str().map(str::to_owned)));
        }
    }
    let (mut pairs_user, mut pairs_role) = (vec![], vec![]);
    for (user, names) in &shortnames {
        for role in derive(names.iter().map(String::as_str), map) {
            pairs_user.push(user.clone());
            pairs_role.push(role);
        }
    }
    // The page's sync grants that its enrollments no longer give. Read as one range of the primary
    // key (the page is a range of user ids) and compared in Rust: a statement that joins the role
    // rows with the page's arrays is planned from statistics taken before this step wrote its
    // earlier pages and shards, and its nested loop compared every role row with every user
    // (30 s a page at 80,000 users).
    let held: Vec<(String, String)> = sqlx::query_as(
        "SELECT user_id, role FROM moodle_user_roles
         WHERE integration_id = $1 AND user_id >= $2 AND user_id <= $3 AND granted_by = 'sync'",
    )
    .bind(integration_id)
    .bind(first)
    .bind(last)
    .fetch_all(&mut *conn)
    .await?;
    let page: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let derived: BTreeSet<(&str, &str)> =
        pairs_user.iter().map(String::as_str).zip(pairs_role.iter().map(String::as_str)).collect();
    let (gone_user, gone_role): (Vec<&str>, Vec<&str>) = held
        .iter()
        .map(|(u, r)| (u.as_str(), r.as_str()))
        .filter(|(u, r)| page.contains(u) && !derived.contains(&(*u, *r)))
        .unzip();
    if !gone_user.is_empty() {
        report.revoked += sqlx::query(
            "DELETE FROM moodle_user_roles r USING UNNEST($2::text[], $3::text[]) AS k(user_id, role)
             WHERE r.integration_id = $1 AND r.user_id = k.user_id AND r.role = k.role AND r.granted_by = 'sync'",
        )
        .bind(integration_id)
        .bind(&gone_user)
        .bind(&gone_role)
        .execute(&mut *conn)
        .await?
        .rows_affected() as i64;
    }
    report.granted += sqlx::query(
        "INSERT INTO moodle_user_roles (integration_id, user_id, role, granted_by)
         SELECT $1, u, r, 'sync' FROM UNNEST($2::text[], $3::text[]) AS x(u, r)
         ON CONFLICT (integration_id, user_id, role) DO NOTHING",
    )
    .bind(integration_id)
    .bind(&pairs_user)
    .bind(&pairs_role)
    .execute(&mut *conn)
    .await?
    .rows_affected() as i64;
    report.users += ids.len() as i64;
    Ok(())
}

pub struct RoleDerivation;

impl StepHandler for RoleDerivation {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let integration_id = ctx.integration.id;
            let (shard, shards) = super::shard(ctx);
            syncfleet_sdk::sync::analyze::analyze_if_stale(&ctx.pool, &super::DERIVATION_INPUTS).await;
            let r = apply(ctx.tx().await?, integration_id, &settings.roles, Users::shard(shard, shards)).await?;
            tracing::info!(users = r.users, granted = r.granted, revoked = r.revoked, "Roles derived.");
            ctx.result.fetched = r.users;
            ctx.result.inserted = r.granted;
            ctx.result.deactivated = r.revoked;
            ctx.note(format!("roles: {} granted, {} revoked (manual grants untouched)", r.granted, r.revoked));
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_the_map_and_never_include_protected_ones() {
        let mut map: BTreeMap<String, String> =
            [("student", "STUDENT"), ("editingteacher", "INSTRUCTOR"), ("teacher", "INSTRUCTOR")]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect();
        let got = derive(["student", "teacher", "editingteacher", "guest"].into_iter(), &map);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["INSTRUCTOR", "STUDENT"]);
        map.insert("manager".into(), "ADMIN".into());
        assert!(derive(["manager"].into_iter(), &map).is_empty());
    }
}
