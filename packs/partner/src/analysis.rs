//! `group_analysis`: domain matching. A partner's domains are the email domains of its active
//! contacts, leaving out public mail domains ([`PUBLIC_MAIL_DOMAINS`]) and the integration's
//! `filters.internal_domains`; a domain of several partners belongs to none. Every active LMS user
//! (not deactivated in the LMS, not the user of a deleted contact) whose email domain belongs to a
//! partner with a linked group, and who is not a confirmed member of one of that partner's groups,
//! is listed in `partner_group_analysis` (migration `0009`) with the partner's group (the smallest
//! linked group id). With `analysis.add_pending`, each listed user also gets a pending membership in
//! that group, which `group_members_sync` later confirms or removes. Reads only PostgreSQL.

use futures::{FutureExt, future::BoxFuture};
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::{replace_derived, settings_of};
use syncfleet_sdk::{
    step::{StepContext, StepError, StepHandler},
    sync::table::{Column, ColumnType, Table},
};

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
            let conn = ctx.tx().await?;
            let mut findings: Vec<Finding> =
                sqlx::query_as(FINDINGS).bind(integration_id).bind(&excluded).fetch_all(&mut *conn).await?;
            let mut added = 0;
            if settings.analysis.add_pending {
                let (groups, people): (Vec<String>, Vec<String>) =
                    findings.iter().filter(|f| !f.6).map(|f| (f.5.clone(), f.0.clone())).unzip();
                added = sqlx::query(ADD_PENDING)
                    .bind(integration_id)
                    .bind(&groups)
                    .bind(&people)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                for f in &mut findings {
                    f.6 = true;
                }
            }
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
            ctx.note(format!(
                "domain matching: {listed} user(s) of {partners} partner(s) not in the partner's group, \
                     {added} pending membership(s) added, {gone} no longer listed"
            ));
            Ok(())
        }
        .boxed()
    }
}
