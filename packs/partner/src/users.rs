//! `sync_users`: Northpass people (incremental by `updated_at`), then every LMS user linked to the
//! active contact with the same email (case-insensitive) and to that contact's partner when the
//! partner is active. Users without a contact are kept, unlinked, for orphan discovery.

use futures::{FutureExt, future::BoxFuture};

use super::{
    northpass::{Northpass, person_item},
    pull_spec, settings_of, tables,
};
use syncfleet_sdk::{
    step::{StepContext, StepError, StepHandler},
    sync::pull,
};

pub struct SyncUsers;

impl StepHandler for SyncUsers {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.northpass_client(&ctx.http);
            let api = Northpass::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let spec = pull_spec(&settings, "users", tables::lms_users());
            let outcome = pull::pull(ctx, &spec, &mut api.list("/people", person_item)).await;
            ctx.record_calls(&[&client]);
            pull::merge(&mut ctx.result, "users", outcome?, 1);
            let integration_id = ctx.integration.id;
            let (relinked, linked, partner_users) = link_contacts(ctx.tx().await?, integration_id).await?;
            ctx.note(format!(
                "links: {linked} user(s) linked to contacts, {partner_users} to partners ({relinked} changed)"
            ));
            Ok(())
        }
        .boxed()
    }
}

/// Sets every user's `contact_id` and `partner_id` from the contacts; returns (rows changed, users
/// with a contact, users with a partner).
async fn link_contacts(conn: &mut sqlx::PgConnection, integration_id: i64) -> Result<(i64, i64, i64), sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE partner_lms_users u SET contact_id = m.contact_id, partner_id = m.partner_id
         FROM (
             SELECT u2.id, c.external_id AS contact_id, p.external_id AS partner_id
             FROM partner_lms_users u2
             LEFT JOIN LATERAL (
                 SELECT c.external_id, c.partner_id FROM partner_contacts c
                 WHERE c.integration_id = u2.integration_id AND c.is_active AND lower(c.email) = lower(u2.email)
                 ORDER BY c.external_id LIMIT 1
             ) c ON TRUE
             LEFT JOIN partner_partners p
                 ON p.integration_id = u2.integration_id AND p.external_id = c.partner_id AND p.is_active
             WHERE u2.integration_id = $1
         ) m
         WHERE u.id = m.id AND (u.contact_id, u.partner_id) IS DISTINCT FROM (m.contact_id, m.partner_id)",
    )
    .bind(integration_id)
    .execute(&mut *conn)
    .await?
    .rows_affected() as i64;
    let (linked, partner_users): (i64, i64) = sqlx::query_as(
        "SELECT count(contact_id), count(partner_id) FROM partner_lms_users WHERE integration_id = $1 AND is_active",
    )
    .bind(integration_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok((changed, linked, partner_users))
}
