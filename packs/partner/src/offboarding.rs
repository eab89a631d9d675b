//! `lms_offboarding`: LMS access follows the PRM. For every contact `impartner_sync` soft-deleted
//! (deleted upstream or no longer passing the filters), the LMS person with the contact's email is
//! removed from its partner's LMS group and from the "All Partners" group; for every soft-deleted
//! partner, the LMS people of all its contacts are removed from "All Partners" and the partner's LMS
//! groups are deleted.
//!
//! Every removal is a row of `partner_offboarding_removals` (external_id
//! `membership:{group}:{person}` or `group:{group}`), written on the pool right after Northpass
//! accepted it, so a retried or repeated step never removes the same thing twice. A record expires
//! (is deleted at the start of the step) once what it was owed for is undone: the person is a partner
//! person again (an active contact of an active partner has their email; nothing is owed for such a
//! person, whatever older contacts with the email were deleted), or the deleted partner is active
//! again. A person deleted, re-added and deleted again is removed again.

use std::collections::BTreeMap;

use futures::{FutureExt, future::BoxFuture};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{settings::Settings, settings_of};
use syncfleet_sdk::{
    http::{HttpClient, HttpError},
    step::{StepContext, StepError, StepHandler},
};

/// People removed from one group per request.
const REMOVALS_PER_REQUEST: usize = 50;

pub struct LmsOffboarding;

/// One removal still to do.
#[derive(Debug, sqlx::FromRow)]
struct Removal {
    external_id: String,
    kind: String,
    group_id: String,
    person_id: Option<String>,
    partner_id: Option<String>,
    contact_id: Option<String>,
    reason: String,
}

/// Whether LMS person `u` has an active contact of an active partner (a correlated condition).
macro_rules! active_contact {
    () => {
        "SELECT 1 FROM partner_contacts ac
         JOIN partner_partners ap ON ap.integration_id = ac.integration_id AND ap.external_id = ac.partner_id
             AND ap.is_active
         WHERE ac.integration_id = u.integration_id AND ac.is_active AND lower(ac.email) = lower(u.email)"
    };
}

/// Expires the records of removals no longer owed because the person or the partner is active again
/// (`$1` the integration): a membership removal once the person is a partner person again (an active
/// contact of an active partner has their email), a removal for a deleted partner once the partner is
/// active again. Should they be offboarded again, the removal is owed, planned and done again.
const EXPIRE: &str = concat!(
    "DELETE FROM partner_offboarding_removals r
     WHERE r.integration_id = $1 AND (
         (r.kind = 'membership' AND EXISTS (
             SELECT 1 FROM partner_lms_users u
             WHERE u.integration_id = r.integration_id AND u.external_id = r.person_id AND EXISTS (",
    active_contact!(),
    ")))
         OR (r.reason = 'partner deleted' AND EXISTS (
             SELECT 1 FROM partner_partners p
             WHERE p.integration_id = r.integration_id AND p.external_id = r.partner_id AND p.is_active)))"
);

/// Removals owed and not yet recorded: memberships first (grouped by group), then group deletions.
const PLAN: &str = concat!(
    "
WITH
all_partners AS (
    SELECT external_id FROM partner_lms_groups
    WHERE integration_id = $1 AND is_active AND name = $2
),
-- A partner's LMS groups: active links, or the last links of a partner no longer active
-- (sync_groups stops linking groups to inactive partners).
partner_groups AS (
    SELECT l.partner_id, l.external_id AS group_id
    FROM partner_group_links l
    JOIN partner_lms_groups g ON g.integration_id = l.integration_id AND g.external_id = l.external_id AND g.is_active
    LEFT JOIN partner_partners p ON p.integration_id = l.integration_id AND p.external_id = l.partner_id
    WHERE l.integration_id = $1 AND l.partner_id IS NOT NULL
      AND (l.is_active OR p.is_active IS NOT TRUE)
),
-- LMS people who are partner people (again): an active contact of an active partner has their email.
-- Nothing is owed for them, whatever older contacts with their email were deleted.
active_people AS (
    SELECT u.external_id AS person_id
    FROM partner_lms_users u
    WHERE u.integration_id = $1 AND u.is_active AND EXISTS (",
    active_contact!(),
    ")
),
gone_contacts AS (
    SELECT c.external_id AS contact_id, c.partner_id, u.external_id AS person_id
    FROM partner_contacts c
    JOIN partner_lms_users u ON u.integration_id = c.integration_id AND u.is_active AND lower(u.email) = lower(c.email)
    WHERE c.integration_id = $1 AND NOT c.is_active AND c.email IS NOT NULL
      AND u.external_id NOT IN (SELECT person_id FROM active_people)
),
gone_partner_people AS (
    SELECT DISTINCT p.external_id AS partner_id, u.external_id AS person_id
    FROM partner_partners p
    JOIN partner_contacts c ON c.integration_id = p.integration_id AND c.partner_id = p.external_id
    JOIN partner_lms_users u ON u.integration_id = p.integration_id AND u.is_active AND lower(u.email) = lower(c.email)
    WHERE p.integration_id = $1 AND NOT p.is_active
      AND u.external_id NOT IN (SELECT person_id FROM active_people)
),
owed AS (
    SELECT 'membership' AS kind, pg.group_id, gc.person_id, gc.partner_id, gc.contact_id,
           'contact deleted' AS reason, 1 AS rank
    FROM gone_contacts gc JOIN partner_groups pg ON pg.partner_id = gc.partner_id
    UNION ALL
    SELECT 'membership', a.external_id, gc.person_id, gc.partner_id, gc.contact_id, 'contact deleted', 1
    FROM gone_contacts gc CROSS JOIN all_partners a
    UNION ALL
    SELECT 'membership', a.external_id, gp.person_id, gp.partner_id, NULL, 'partner deleted', 2
    FROM gone_partner_people gp CROSS JOIN all_partners a
    UNION ALL
    SELECT 'group', pg.group_id, NULL, pg.partner_id, NULL, 'partner deleted', 3
    FROM partner_groups pg
    JOIN partner_partners p ON p.integration_id = $1 AND p.external_id = pg.partner_id AND NOT p.is_active
),
keyed AS (
    SELECT DISTINCT ON (external_id) *
    FROM (
        SELECT o.*, CASE WHEN o.kind = 'group' THEN 'group:' || o.group_id
                         ELSE 'membership:' || o.group_id || ':' || o.person_id END AS external_id
        FROM owed o
    ) k
    ORDER BY external_id, rank
)
SELECT external_id, kind, group_id, person_id, partner_id, contact_id, reason
FROM keyed k
WHERE NOT EXISTS (
    SELECT 1 FROM partner_offboarding_removals r WHERE r.integration_id = $1 AND r.external_id = k.external_id
)
ORDER BY kind DESC, group_id, person_id"
);

impl StepHandler for LmsOffboarding {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.northpass_client(&ctx.http);
            let lms = LmsWrites::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let outcome = offboard(ctx, &lms, &settings).await;
            ctx.record_calls(&[&client]);
            let done = outcome?;
            ctx.note(format!(
                "offboarding: {} membership(s) removed, {} group(s) deleted, {} person(s) unknown to the LMS, \
                 {} record(s) expired (active again)",
                done.memberships, done.groups, done.unknown, done.expired
            ));
            Ok(())
        }
        .boxed()
    }
}

#[derive(Default)]
struct Done {
    memberships: i64,
    groups: i64,
    unknown: i64,
    /// Records of earlier removals expired: the person or partner is active again.
    expired: i64,
}

async fn offboard(ctx: &mut StepContext, lms: &LmsWrites<'_>, settings: &Settings) -> Result<Done, StepError> {
    let (pool, integration_id, run) = (ctx.pool.clone(), ctx.integration.id, ctx.run_id);
    let expired = sqlx::query(EXPIRE).bind(integration_id).execute(&pool).await?;
    let owed: Vec<Removal> =
        sqlx::query_as(PLAN).bind(integration_id).bind(&settings.groups.all_partners_group).fetch_all(&pool).await?;
    ctx.result.fetched = owed.len() as i64;
    let mut done = Done { expired: expired.rows_affected() as i64, ..Done::default() };
    let (memberships, groups): (Vec<Removal>, Vec<Removal>) = owed.into_iter().partition(|r| r.kind == "membership");
    let mut by_group: BTreeMap<String, Vec<Removal>> = BTreeMap::new();
    for r in memberships {
        by_group.entry(r.group_id.clone()).or_default().push(r);
    }
    for (group, removals) in by_group {
        for batch in removals.chunks(REMOVALS_PER_REQUEST) {
            let people: Vec<&str> = batch.iter().filter_map(|r| r.person_id.as_deref()).collect();
            match lms.remove_people(&group, &people).await {
                Ok(()) => {
                    record(&pool, integration_id, run, batch).await?;
                    done.memberships += batch.len() as i64;
                }
                // One unknown person makes the whole request 422: remove one by one.
                Err(e) if e.status() == Some(422) => {
                    for r in batch {
                        match lms.remove_people(&group, &[r.person_id.as_deref().unwrap_or_default()]).await {
                            Ok(()) => {
                                record(&pool, integration_id, run, std::slice::from_ref(r)).await?;
                                done.memberships += 1;
                            }
                            Err(e) if e.status() == Some(422) => {
                                tracing::warn!(group = %group, person = ?r.person_id, "Person unknown to the LMS; nothing to remove.");
                                done.unknown += 1;
                            }
                            Err(e) => return Err(StepError::retry(e.to_string())),
                        }
                    }
                }
                Err(e) => return Err(StepError::retry(e.to_string())),
            }
        }
    }
    for r in groups {
        lms.delete_group(&r.group_id).await.map_err(|e| StepError::retry(e.to_string()))?;
        record(&pool, integration_id, run, std::slice::from_ref(&r)).await?;
        done.groups += 1;
    }
    ctx.result.updated = done.memberships + done.groups;
    ctx.result.errors = done.unknown;
    Ok(done)
}

/// Records removals Northpass accepted (or had nothing to do for).
async fn record(
    pool: &sqlx::PgPool,
    integration_id: i64,
    run: syncfleet_sdk::ids::RunId,
    rows: &[Removal],
) -> Result<(), sqlx::Error> {
    let col = |f: fn(&Removal) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO partner_offboarding_removals
             (integration_id, external_id, kind, group_id, person_id, partner_id, contact_id, reason, run_id,
              removed_at, last_seen_run)
         SELECT $1, e, k, g, p, pa, c, re, $9, now(), $9
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
              AS t(e, k, g, p, pa, c, re)
         ON CONFLICT (integration_id, external_id) DO NOTHING",
    )
    .bind(integration_id)
    .bind(col(|r| Some(r.external_id.clone())))
    .bind(col(|r| Some(r.kind.clone())))
    .bind(col(|r| Some(r.group_id.clone())))
    .bind(col(|r| r.person_id.clone()))
    .bind(col(|r| r.partner_id.clone()))
    .bind(col(|r| r.contact_id.clone()))
    .bind(col(|r| Some(r.reason.clone())))
    .bind(run)
    .execute(pool)
    .await?;
    Ok(())
}

/// The Northpass writes of the pack: membership removals and group deletions (offboarding), and
/// membership additions (`group_analysis` with `analysis.add_pending`).
pub(super) struct LmsWrites<'a> {
    client: &'a HttpClient,
    base_url: String,
    key: String,
    cancel: CancellationToken,
}

impl<'a> LmsWrites<'a> {
    pub(super) fn new(settings: &Settings, client: &'a HttpClient, cancel: CancellationToken) -> Result<Self, String> {
        Ok(LmsWrites {
            client,
            base_url: settings.northpass.base_url.trim_end_matches('/').to_owned(),
            key: settings.northpass_key(client.secrets()?)?,
            cancel,
        })
    }

    /// `DELETE /groups/{id}/relationships/people`; a group already gone has nothing to remove.
    async fn remove_people(&self, group: &str, people: &[&str]) -> Result<(), HttpError> {
        let url = format!("{}/groups/{}/relationships/people", self.base_url, escape(group));
        let body = json!({"data": people.iter().map(|id| json!({"type": "people", "id": id})).collect::<Vec<_>>()});
        let sent =
            self.client.send(|http| http.delete(&url).header("X-Api-Key", &self.key).json(&body), &self.cancel).await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST /groups/{id}/relationships/people`: Northpass ignores people already in the group, and
    /// answers 422 when an id is not a person's, 404 when the group is gone.
    pub(super) async fn add_people(&self, group: &str, people: &[&str]) -> Result<(), HttpError> {
        let url = format!("{}/groups/{}/relationships/people", self.base_url, escape(group));
        let body = json!({"data": people.iter().map(|id| json!({"type": "people", "id": id})).collect::<Vec<_>>()});
        self.client
            .send(|http| http.post(&url).header("X-Api-Key", &self.key).json(&body), &self.cancel)
            .await
            .map(|_| ())
    }

    /// `DELETE /groups/{id}`; a group already gone is deleted.
    async fn delete_group(&self, group: &str) -> Result<(), HttpError> {
        let url = format!("{}/groups/{}", self.base_url, escape(group));
        match self.client.send(|http| http.delete(&url).header("X-Api-Key", &self.key), &self.cancel).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
