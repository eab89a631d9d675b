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

use super::{for_cursor, offboarding::LmsWrites, settings_of, write_derived};
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

/// The tables the findings read; their statistics are refreshed first when stale
/// ([`syncfleet_sdk::sync::analyze::analyze_if_stale`]). The group links are derived in the
/// `sync_groups` step's completion, after its pull (which analyzes only the groups it wrote): left
/// at what autovacuum last saw (at `large` scale, 21 links estimated against 10,534), the findings
/// joined 123 million row pairs, each `FETCH` of a thousand rows took 1–4 s and the cursor 18 s.
const INPUTS: [&str; 5] =
    ["partner_lms_users", "partner_contacts", "partner_partners", "partner_group_links", "partner_group_memberships"];

/// (person id, email, domain, partner id, partner name, group id, has a pending membership there).
type Finding = (String, String, String, String, Option<String>, String, bool);

/// The users to list (`$1` the integration, `$2` the domains left out), as [`Finding`]s, unordered.
macro_rules! findings {
    () => {
        "
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
SELECT u.external_id, u.email, o.domain, o.partner_id, p.name AS partner_name, g.group_id,
       EXISTS (SELECT 1 FROM partner_group_memberships m
               WHERE m.integration_id = $1 AND m.is_active AND m.status = 'pending'
                 AND m.group_id = g.group_id AND m.person_id = u.external_id) AS pending
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
                    AND m.person_id = u.external_id AND l.partner_id = o.partner_id)"
    };
}

/// Every finding, in person order, as a cursor of the completion transaction: the step holds one
/// `FETCH` of them at a time.
const FINDINGS_CURSOR: &str =
    concat!("DECLARE partner_findings NO SCROLL CURSOR FOR ", findings!(), "\nORDER BY u.external_id");
/// The findings the step holds at once: one `FETCH` of [`FINDINGS_CURSOR`].
const FINDINGS_FETCH: &str = "FETCH 1000 FROM partner_findings";

/// One page (`$5` rows) of the findings without a pending membership, by (group, person) after
/// (`$3`, `$4`): the people to add to their partner's group in the LMS.
const TO_ADD: &str = concat!(
    "SELECT f.group_id, f.external_id FROM (",
    findings!(),
    ") f\nWHERE NOT f.pending AND (f.group_id, f.external_id) > ($3, $4)\nORDER BY f.group_id, f.external_id LIMIT $5"
);

/// People to add read per page.
const TO_ADD_PER_PAGE: i64 = 5000;

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
            let (mut added, mut unknown) = (0, 0);
            if settings.analysis.add_pending {
                let client = settings.northpass_client(&ctx.http);
                let lms = LmsWrites::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
                let outcome = add_in_lms(&ctx.pool, integration_id, &excluded, &lms).await;
                ctx.record_calls(&[&client]);
                (added, unknown) = outcome?;
            }
            // The list as it now is (pending memberships included), a page at a time, planned on
            // what the tables hold now.
            syncfleet_sdk::sync::analyze::analyze_if_stale(&ctx.pool, &INPUTS).await;
            let table = table();
            let conn = ctx.tx().await?;
            let started = syncfleet_sdk::sync::sweep::database_now(&mut *conn).await?;
            for_cursor(conn).await?;
            sqlx::query(FINDINGS_CURSOR).bind(integration_id).bind(&excluded).execute(&mut *conn).await?;
            loop {
                let page: Vec<Finding> = sqlx::query_as(FINDINGS_FETCH).persistent(false).fetch_all(&mut *conn).await?;
                if page.is_empty() {
                    break;
                }
                let rows = page
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
                write_derived(conn, &table, integration_id, run, rows).await?;
            }
            sqlx::query("CLOSE partner_findings").execute(&mut *conn).await?;
            let gone = table.sweep(conn, integration_id, run, started).await?;
            let (listed, partners): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(DISTINCT partner_id) FROM partner_group_analysis
                 WHERE integration_id = $1 AND is_active",
            )
            .bind(integration_id)
            .fetch_one(&mut *conn)
            .await?;
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
/// by group (read a page at a time, by group and person), and records a pending membership for each
/// one Northpass accepted (on the pool, right after the request). Returns (pending memberships
/// added, people unknown to the LMS).
async fn add_in_lms(
    pool: &sqlx::PgPool,
    integration_id: i64,
    excluded: &[String],
    lms: &LmsWrites<'_>,
) -> Result<(u64, i64), StepError> {
    let (mut added, mut unknown) = (0, 0);
    let mut after = (String::new(), String::new());
    // A group the LMS no longer has (404): nobody more is added to it.
    let mut gone: Option<String> = None;
    loop {
        let page: Vec<(String, String)> = sqlx::query_as(TO_ADD)
            .bind(integration_id)
            .bind(excluded)
            .bind(&after.0)
            .bind(&after.1)
            .bind(TO_ADD_PER_PAGE)
            .fetch_all(pool)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.clone();
        let more = page.len() as i64 == TO_ADD_PER_PAGE;
        for group_page in page.chunk_by(|a, b| a.0 == b.0) {
            let group = &group_page[0].0;
            if gone.as_ref() == Some(group) {
                continue;
            }
            let people: Vec<&str> = group_page.iter().map(|(_, p)| p.as_str()).collect();
            for batch in people.chunks(ADDS_PER_REQUEST) {
                let accepted: Vec<&str> = match lms.add_people(group, batch).await {
                    Ok(()) => batch.to_vec(),
                    Err(e) if e.status() == Some(404) => {
                        tracing::warn!(group = %group, "Group gone from the LMS; nobody added to it.");
                        gone = Some(group.clone());
                        break;
                    }
                    // One unknown person makes the whole request 422: add one by one.
                    Err(e) if e.status() == Some(422) => {
                        let mut one_by_one = vec![];
                        for person in batch {
                            match lms.add_people(group, &[person]).await {
                                Ok(()) => one_by_one.push(*person),
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
                let groups = vec![group.as_str(); accepted.len()];
                added += sqlx::query(ADD_PENDING)
                    .bind(integration_id)
                    .bind(&groups)
                    .bind(&accepted)
                    .execute(pool)
                    .await?
                    .rows_affected();
            }
        }
        if !more {
            break;
        }
    }
    Ok((added, unknown))
}
