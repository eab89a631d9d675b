//! Roles: each user's roles recomputed from their active enrollments (Moodle role shortname → our
//! role, the integration's `roles` map). Rows the sync grants carry `granted_by = 'sync'`; a sync
//! removes only those, so roles granted by hand (SUPER_ADMIN, ADMIN: `granted_by = 'manual'`) always
//! survive it. [`apply`] serves `role_derivation` and the hydrate endpoint alike.

use std::collections::{BTreeMap, BTreeSet};

use futures::{FutureExt, future::BoxFuture};
use serde::Serialize;
use sqlx::PgConnection;

use super::{settings::PROTECTED_ROLES, settings_of};
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

/// Recomputes the sync-granted roles of every active user (or the one named `only`) on `conn`.
pub async fn apply(
    conn: &mut PgConnection,
    integration_id: i64,
    map: &BTreeMap<String, String>,
    only: Option<&str>,
) -> Result<RoleReport, sqlx::Error> {
    let rows: Vec<(String, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT u.external_id, e.roles
         FROM moodle_users u
         LEFT JOIN moodle_enrollments e ON e.integration_id = u.integration_id AND e.user_id = u.external_id
              AND e.is_active
              AND EXISTS (SELECT 1 FROM moodle_courses c WHERE c.integration_id = e.integration_id
                          AND c.external_id = e.course_id AND c.is_active)
         WHERE u.integration_id = $1 AND u.is_active AND ($2::text IS NULL OR u.username = $2)",
    )
    .bind(integration_id)
    .bind(only)
    .fetch_all(&mut *conn)
    .await?;
    let mut shortnames: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (user, roles) in rows {
        let names = shortnames.entry(user).or_default();
        if let Some(serde_json::Value::Array(roles)) = roles {
            names.extend(roles.into_iter().filter_map(|r| r.as_str().map(str::to_owned)));
        }
    }
    let (mut users, mut pairs_user, mut pairs_role) = (vec![], vec![], vec![]);
    for (user, names) in &shortnames {
        for role in derive(names.iter().map(String::as_str), map) {
            pairs_user.push(user.clone());
            pairs_role.push(role);
        }
        users.push(user.clone());
    }
    let revoked = sqlx::query(
        // Joins, not `NOT IN (…)` / `= ANY(…)` over the arrays: those compare each role row with
        // every element (a second run at 8,000 users took 16 s; the joins hash the arrays).
        "DELETE FROM moodle_user_roles r
         USING UNNEST($2::text[]) AS s(user_id)
         WHERE r.integration_id = $1 AND r.granted_by = 'sync' AND r.user_id = s.user_id
           AND NOT EXISTS (SELECT 1 FROM UNNEST($3::text[], $4::text[]) AS k(user_id, role)
                            WHERE k.user_id = r.user_id AND k.role = r.role)",
    )
    .bind(integration_id)
    .bind(&users)
    .bind(&pairs_user)
    .bind(&pairs_role)
    .execute(&mut *conn)
    .await?
    .rows_affected() as i64;
    let granted = sqlx::query(
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
    Ok(RoleReport { users: users.len() as i64, granted, revoked })
}

pub struct RoleDerivation;

impl StepHandler for RoleDerivation {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let integration_id = ctx.integration.id;
            syncfleet_sdk::sync::pull::analyze_if_stale(&ctx.pool, &super::DERIVATION_INPUTS).await;
            let r = apply(ctx.tx().await?, integration_id, &settings.roles, None).await?;
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
