//! `group_analysis`: domain matching. A partner's domains are the email domains of its active
//! contacts, leaving out public mail domains ([`PUBLIC_MAIL_DOMAINS`]) and the integration's
//! `filters.internal_domains`; a domain of several partners belongs to none. Every active LMS user
//! (not deactivated in the LMS, not the user of a deleted contact) whose email domain belongs to a
//! partner with a linked group, and who is not a confirmed member of one of that partner's groups,
//! is listed in `partner_group_analysis` (migration `0009`) with the partner's group (the smallest
//! linked group id). Reads PostgreSQL only, unless `analysis.add_pending` is on.
//!
//! With `analysis.add_pending`, each listed user is added to that group in Northpass
//! (`POST /groups/{id}/relationships/people`, [`ADDS_PER_REQUEST`] people a request; Northpass
//! ignores people already in the group, so a retried step adds nothing twice) and, once Northpass
//! accepted, gets a pending membership locally. The next `group_members_sync` reads the group (a
//! group with pending memberships is always read) and confirms it; the user is then a member and no
//! longer listed. A pending membership is never created for what Northpass was not asked to hold, so
//! nothing is removed and added again on every run. A person Northpass does not know (422 on their
//! own) gets nothing; a group gone (404) gets nothing.

use futures::{FutureExt, future::BoxFuture};
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};
use std::collections::{BTreeMap, BTreeSet};

use super::{offboarding::LmsWrites, replace_derived, settings_of};
use syncfleet_sdk::{
    step::{StepContext, StepError, StepHandler},
    sync::table::{Column, ColumnType, Table},
};

/// People added to one group per request.
pub const ADDS_PER_REQUEST: usize = 50;

/// Mail providers whose domain says nothing about the employer.
pub const PUBLIC_MAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "yahoo.com",
    "ymail.com",
    "icloud.com",
    "me.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "gmx.com",
    "gmx.de",
    "mail.com",
    "yandex.com",
    "qq.com",
    "163.com",
];

/// `[integrations.<name>.analysis]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisSettings {
    /// Add every listed user to the partner's group as a pending membership.
    pub add_pending: bool,
}

/// `partner_group_analysis` (migration `0009`).
pub fn table() -> Table {
    let columns = ["email", "domain", "partner_id", "partner_name", "group_id", "membership"]
        .into_iter()
        .map(|name| Column { name: name.to_owned(), ty: ColumnType::Text })
        .collect();
    Table::new("partner_group_analysis", columns).expect("a valid table declaration")
}

/// (person id, email, domain, partner id, partner name, group id, has a pending membership there).
type Finding = (String, String, String, String, Option<String>, String, bool);

const FINDINGS: &str = "
WITH contact_domains AS (
    SELECT DISTINCT lower(split_part(c.email, '@', 2)) AS domain, c.partner_id
    FROM partner_contacts c
    JOIN partner_partners p ON p.integration_id = c.integration_id AND p.external_id = c.partner_id AND p.is_active
    WHERE c.integration_id = $1 AND c.is_active AND c.email LIKE '_%@_%'
),
owned AS (
    SELECT domain, min(partner_id) AS partner_id FROM contact_domains
    WHERE domain <> ALL($2) GROUP BY domain HAVING count(*) = 1
),
partner_group AS (
    SELECT partner_id, min(external_id) AS group_id FROM partner_group_links
    WHERE integration_id = $1 AND is_active AND partner_id IS NOT NULL GROUP BY partner_id
)
SELECT u.external_id, u.email, o.domain, o.partner_id, p.name, g.group_id,
       EXISTS (SELECT 1 FROM partner_group_memberships m
               WHERE m.integration_id = $1 AND m.is_active AND m.status = 'pending'
                 AND m.group_id = g.group_id AND m.person_id = u.external_id)
FROM partner_lms_users u
JOIN owned o ON o.domain = lower(split_part(u.email, '@', 2))
JOIN partner_group g ON g.partner_id = o.partner_id
LEFT JOIN partner_partners p ON p.integration_id = u.integration_id AND p.external_id = o.partner_id
WHERE u.integration_id = $1 AND u.is_active AND u.deactivated_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM partner_contacts c
                  WHERE c.integration_id = $1 AND NOT c.is_active AND lower(c.email) = lower(u.email))
  AND NOT EXISTS (SELECT 1 FROM partner_group_memberships m
                  JOIN partner_group_links l
                    ON l.integration_id = m.integration_id AND l.external_id = m.group_id AND l.is_active
                  WHERE m.integration_id = $1 AND m.is_active AND m.status = 'confirmed'
                    AND m.person_id = u.external_id AND l.partner_id = o.partner_id)
ORDER BY u.external_id";

/// Adds pending memberships (a removed one comes back as pending; an active one is left alone).
const ADD_PENDING: &str = "
INSERT INTO partner_group_memberships (integration_id, external_id, group_id, person_id, status)
SELECT $1, g || ':' || p, g, p, 'pending' FROM UNNEST($2::text[], $3::text[]) AS t(g, p)
ON CONFLICT (integration_id, external_id) DO UPDATE
    SET status = 'pending', is_active = TRUE, deleted_at = NULL, updated_at = now()
    WHERE NOT partner_group_memberships.is_active";

pub struct GroupAnalysis;

impl StepHandler for GroupAnalysis {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let (integration_id, run) = (ctx.integration.id, ctx.run_id);
            let excluded: Vec<String> = PUBLIC_MAIL_DOMAINS
                .iter()
                .map(|d| (*d).to_owned())
                .chain(settings.filters.internal_domains.iter().map(|d| d.trim().to_lowercase()))
                .collect();
            let mut findings: Vec<Finding> =
                sqlx::query_as(FINDINGS).bind(integration_id).bind(&excluded).fetch_all(&ctx.pool).await?;
            let mut added = 0;
            let mut unknown = 0;
            if settings.analysis.add_pending {
                let client = settings.northpass_client(&ctx.http);
                let lms = LmsWrites::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
                let outcome = add_in_lms(&ctx.pool, integration_id, &lms, &mut findings).await;
                ctx.record_calls(&[&client]);
                (added, unknown) = outcome?;
            }
            let conn = ctx.tx().await?;
            let listed = findings.len();
            let partners = findings.iter().map(|f| f.3.as_str()).collect::<std::collections::BTreeSet<_>>().len();
            let rows = findings
                .into_iter()
                .map(|(person, email, domain, partner, name, group, pending)| {
                    let mut row = Map::new();
                    row.insert("email".into(), json!(email));
                    row.insert("domain".into(), json!(domain));
                    row.insert("partner_id".into(), json!(partner));
                    row.insert("partner_name".into(), json!(name));
                    row.insert("group_id".into(), json!(group));
                    row.insert("membership".into(), json!(if pending { "pending" } else { "none" }));
                    (person, row)
                })
                .collect();
            let (_, gone) = replace_derived(conn, &table(), integration_id, run, rows).await?;
            ctx.result.deactivated += gone;
            ctx.result.updated += added as i64;
            ctx.result.errors += unknown;
            ctx.note(format!(
                "domain matching: {listed} user(s) of {partners} partner(s) not in the partner's group, \
                     {added} pending membership(s) added, {gone} no longer listed"
            ));
            if unknown > 0 {
                ctx.note(format!("{unknown} person(s) unknown to the LMS not added"));
            }
            Ok(())
        }
        .boxed()
    }
}

/// Adds the listed users without a pending membership to their partner's group in Northpass, group
/// by group, and records a pending membership for each one Northpass accepted (on the pool, right
/// after the request). Marks every finding Northpass holds as pending. Returns (pending memberships
/// added, people unknown to the LMS).
async fn add_in_lms(
    pool: &sqlx::PgPool,
    integration_id: i64,
    lms: &LmsWrites<'_>,
    findings: &mut [Finding],
) -> Result<(u64, i64), StepError> {
    let mut by_group: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in findings.iter().filter(|f| !f.6) {
        by_group.entry(f.5.clone()).or_default().push(f.0.clone());
    }
    let (mut added, mut unknown) = (0, 0);
    let mut held: BTreeSet<(String, String)> = BTreeSet::new();
    for (group, people) in by_group {
        for batch in people.chunks(ADDS_PER_REQUEST) {
            let ids: Vec<&str> = batch.iter().map(String::as_str).collect();
            let accepted: Vec<String> = match lms.add_people(&group, &ids).await {
                Ok(()) => batch.to_vec(),
                Err(e) if e.status() == Some(404) => {
                    tracing::warn!(group = %group, "Group gone from the LMS; nobody added to it.");
                    break;
                }
                // One unknown person makes the whole request 422: add one by one.
                Err(e) if e.status() == Some(422) => {
                    let mut one_by_one = vec![];
                    for person in batch {
                        match lms.add_people(&group, &[person.as_str()]).await {
                            Ok(()) => one_by_one.push(person.clone()),
                            Err(e) if e.status() == Some(422) => {
                                tracing::warn!(group = %group, person = %person, "Person unknown to the LMS; not added.");
                                unknown += 1;
                            }
                            Err(e) => return Err(StepError::retry(e.to_string())),
                        }
                    }
                    one_by_one
                }
                Err(e) => return Err(StepError::retry(e.to_string())),
            };
            let groups = vec![group.clone(); accepted.len()];
            added += sqlx::query(ADD_PENDING)
                .bind(integration_id)
                .bind(&groups)
                .bind(&accepted)
                .execute(pool)
                .await?
                .rows_affected();
            held.extend(accepted.into_iter().map(|p| (group.clone(), p)));
        }
    }
    for f in findings.iter_mut() {
        f.6 = f.6 || held.contains(&(f.5.clone(), f.0.clone()));
    }
    Ok((added, unknown))
}
