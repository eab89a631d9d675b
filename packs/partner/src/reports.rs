//! `pam_weekly_report` and `executive_weekly_report`: the partner program's week, per partner
//! account manager (the Impartner account owner, `partner_partners.owner_name` / `owner_email`) and
//! rolled up for the executives.
//!
//! Figures per active partner: certifications and total NPCU (as `sync_to_impartner` counts them),
//! new users (partner users first synced in the last 7 days) and offboarded users (people removed
//! from LMS groups by `lms_offboarding` in the last 7 days); sync health: this integration's other
//! runs created in the last 7 days by status, and its open item errors.
//!
//! Each report is rendered as HTML (every value escaped, non-ASCII as character references), mailed
//! when `reports.smtp` is set, and stored in `reports` (migration 0008) in the step's completion
//! transaction. A mail the SMTP server accepted is recorded at once (`report_deliveries`), so a
//! retried step does not mail it again (a crash between the two can still repeat one mail).
//!
//! ```toml
//! [integrations.acme.reports]
//! smtp = { host = "127.0.0.1", port = 25, from = "partners@example.com" }
//! executive_recipients = ["vp@example.com"]
//! # A manager (owner email or name, any case) → addresses; managers not listed get their own report.
//! pam_recipients = { "jane.doe@example.com" = ["jane.doe@example.com", "team@example.com"] }
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write,
};

use chrono::{DateTime, Duration, Utc};
use futures::{FutureExt, future::BoxFuture};
use serde::{Deserialize, Serialize};

use super::{push::COUNTS_SQL, settings_of};
use syncfleet_sdk::{
    mail::{self, SmtpServer, check_addresses},
    step::{StepContext, StepError, StepHandler},
};

pub const PAM_KIND: &str = "pam_weekly";
pub const EXECUTIVE_KIND: &str = "executive_weekly";
/// The `recipient` of the executive report.
pub const EXECUTIVE: &str = "executive";
/// The manager key of partners without an owner.
pub const UNASSIGNED: &str = "(unassigned)";
/// The window a weekly report covers, ending when the step runs.
pub const WINDOW_DAYS: i64 = 7;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSettings {
    /// Where reports are mailed through; none = reports are only stored.
    pub smtp: Option<SmtpServer>,
    pub executive_recipients: Vec<String>,
    /// A manager's email or name (any case) → the addresses of their report.
    pub pam_recipients: BTreeMap<String, Vec<String>>,
}

impl ReportSettings {
    /// Checks the settings; the error names the key relative to `reports`.
    pub fn check(&self) -> Result<(), (String, String)> {
        if let Some(smtp) = &self.smtp {
            smtp.check().map_err(|(k, m)| (format!("reports.smtp.{k}"), m))?;
        }
        check_addresses("reports.executive_recipients", &self.executive_recipients)?;
        for (pam, to) in &self.pam_recipients {
            check_addresses(&format!("reports.pam_recipients.{pam}"), to)?;
        }
        Ok(())
    }

    /// The addresses of a manager's report: the configured list, else their own email.
    fn pam_addresses(&self, pam: &Pam) -> Vec<String> {
        let configured = self.pam_recipients.iter().find(|(k, _)| {
            let k = k.trim().to_lowercase();
            Some(&k) == pam.email.as_ref() || pam.name.as_deref().is_some_and(|n| n.trim().to_lowercase() == k)
        });
        match configured {
            Some((_, to)) => to.clone(),
            None => pam.email.iter().filter(|e| check_addresses("", &[(*e).clone()]).is_ok()).cloned().collect(),
        }
    }
}

/// Every active partner with its owner and its week; `$1` the integration, `$2` the window start.
const PARTNERS_SQL: &str = "
    WITH users AS (
        SELECT u.created_at, COALESCE(u.partner_id, (
            SELECT min(l.partner_id) FROM partner_group_memberships m
            JOIN partner_group_links l ON l.integration_id = m.integration_id AND l.external_id = m.group_id AND l.is_active
            WHERE m.integration_id = u.integration_id AND m.person_id = u.external_id AND m.is_active
              AND m.status = 'confirmed')) AS partner_id
        FROM partner_lms_users u WHERE u.integration_id = $1 AND u.is_active
    ), new_users AS (
        SELECT partner_id, count(*) AS n FROM users WHERE partner_id IS NOT NULL AND created_at >= $2 GROUP BY partner_id
    ), offboarded AS (
        SELECT partner_id, count(DISTINCT person_id) AS n FROM partner_offboarding_removals
        WHERE integration_id = $1 AND kind = 'membership' AND removed_at >= $2 AND partner_id IS NOT NULL
        GROUP BY partner_id
    )
    SELECT p.external_id, COALESCE(p.name, ''), COALESCE(p.tier, ''), NULLIF(btrim(p.owner_name), ''),
           NULLIF(lower(btrim(p.owner_email)), ''), COALESCE(n.n, 0)::bigint, COALESCE(o.n, 0)::bigint
    FROM partner_partners p
    LEFT JOIN new_users n ON n.partner_id = p.external_id
    LEFT JOIN offboarded o ON o.partner_id = p.external_id
    WHERE p.integration_id = $1 AND p.is_active
    ORDER BY p.name, p.external_id";

/// One partner's line.
#[derive(Debug, Clone)]
struct PartnerWeek {
    id: String,
    name: String,
    tier: String,
    certifications: i64,
    npcu: i64,
    new_users: i64,
    offboarded: i64,
}

/// A partner account manager: their email (lower case) and name, as the partners name them.
#[derive(Debug, Clone, Default)]
struct Pam {
    email: Option<String>,
    name: Option<String>,
}

impl Pam {
    /// The report's `recipient` and the manager's key in the executive report.
    fn key(&self) -> String {
        self.email.clone().or_else(|| self.name.clone()).unwrap_or_else(|| UNASSIGNED.into())
    }
}

#[derive(Debug, Default)]
struct Health {
    runs: Vec<(String, i64)>,
    open_item_errors: i64,
}

/// What both reports are made of.
struct Week {
    integration: String,
    period: String,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    /// Manager key → the manager and their partners.
    by_pam: BTreeMap<String, (Pam, Vec<PartnerWeek>)>,
    /// Distinct people offboarded in the window, partners deleted since included.
    offboarded_people: i64,
    health: Health,
}

async fn load(ctx: &StepContext) -> Result<Week, StepError> {
    let integration_id = ctx.integration.id;
    let until = Utc::now();
    let since = until - Duration::days(WINDOW_DAYS);
    let counts: Vec<(String, i64, i64, bool)> =
        sqlx::query_as(COUNTS_SQL).bind(integration_id).fetch_all(&ctx.pool).await?;
    let counts: HashMap<String, (i64, i64)> = counts.into_iter().map(|(id, c, n, _)| (id, (c, n))).collect();
    type Row = (String, String, String, Option<String>, Option<String>, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(PARTNERS_SQL).bind(integration_id).bind(since).fetch_all(&ctx.pool).await?;
    let mut by_pam: BTreeMap<String, (Pam, Vec<PartnerWeek>)> = BTreeMap::new();
    for (id, name, tier, owner_name, owner_email, new_users, offboarded) in rows {
        let pam = Pam { email: owner_email, name: owner_name };
        let (certifications, npcu) = counts.get(&id).copied().unwrap_or_default();
        let entry = by_pam.entry(pam.key()).or_insert_with(|| (pam, vec![]));
        entry.1.push(PartnerWeek { id, name, tier, certifications, npcu, new_users, offboarded });
    }
    let offboarded_people: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT person_id) FROM partner_offboarding_removals
         WHERE integration_id = $1 AND kind = 'membership' AND removed_at >= $2",
    )
    .bind(integration_id)
    .bind(since)
    .fetch_one(&ctx.pool)
    .await?;
    let runs: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM chain_runs
         WHERE integration_id = $1 AND created_at >= $2 AND id <> $3 GROUP BY status ORDER BY status",
    )
    .bind(integration_id)
    .bind(since)
    .bind(ctx.run_id.0)
    .fetch_all(&ctx.pool)
    .await?;
    let open_item_errors: i64 =
        sqlx::query_scalar("SELECT count(*) FROM item_errors WHERE integration_id = $1 AND resolved_at IS NULL")
            .bind(integration_id)
            .fetch_one(&ctx.pool)
            .await?;
    Ok(Week {
        integration: ctx.integration.name.clone(),
        period: until.format("%G-W%V").to_string(),
        since,
        until,
        by_pam,
        offboarded_people,
        health: Health { runs, open_item_errors },
    })
}

/// Escapes text for HTML content and attribute values; non-ASCII becomes a character reference,
/// so the document is plain ASCII.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_ascii() && (!c.is_ascii_control() || c == '\n') => out.push(c),
            c => {
                let _ = write!(out, "&#x{:x};", c as u32);
            }
        }
    }
    out
}

fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
}

fn window(out: &mut String, week: &Week) {
    let _ = writeln!(
        out,
        "<p>Integration {}; week {}: {} to {} (UTC).</p>",
        escape(&week.integration),
        escape(&week.period),
        week.since.format("%Y-%m-%d %H:%M"),
        week.until.format("%Y-%m-%d %H:%M"),
    );
}

fn health(out: &mut String, h: &Health) {
    out.push_str("<h2>Sync health</h2>\n<table id=\"health\">\n<tr><th>Runs this week</th><th>Count</th></tr>\n");
    for (status, n) in &h.runs {
        let _ = writeln!(out, "<tr data-status=\"{s}\"><td>{s}</td><td>{n}</td></tr>", s = escape(status));
    }
    let _ = writeln!(
        out,
        "<tr id=\"open-item-errors\"><td>Open item errors</td><td>{}</td></tr>\n</table>",
        h.open_item_errors
    );
}

/// One manager's report: a line per partner, a total, sync health.
fn render_pam(week: &Week, pam: &Pam, partners: &[PartnerWeek]) -> String {
    let who = pam.name.clone().or_else(|| pam.email.clone()).unwrap_or_else(|| UNASSIGNED.into());
    let mut out = String::new();
    head(&mut out, &format!("Partner report for {who}, week {}", week.period));
    window(&mut out, week);
    out.push_str(
        "<table id=\"partners\">\n<tr><th>Partner</th><th>Tier</th><th>Certifications</th><th>Total NPCU</th>\
         <th>New users</th><th>Offboarded users</th></tr>\n",
    );
    for p in partners {
        let _ = writeln!(out, "{}", partner_row(p));
    }
    let sum = |f: fn(&PartnerWeek) -> i64| partners.iter().map(f).sum::<i64>();
    let _ = writeln!(
        out,
        "<tr id=\"total\"><th>Total</th><td></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n</table>",
        sum(|p| p.certifications),
        sum(|p| p.npcu),
        sum(|p| p.new_users),
        sum(|p| p.offboarded),
    );
    health(&mut out, &week.health);
    out.push_str("</body></html>\n");
    out
}

/// A partner's line of a manager's report.
pub fn partner_row_html(
    id: &str,
    name: &str,
    tier: &str,
    certifications: i64,
    npcu: i64,
    new_users: i64,
    offboarded: i64,
) -> String {
    format!(
        "<tr data-partner=\"{}\"><td>{}</td><td>{}</td><td>{certifications}</td><td>{npcu}</td><td>{new_users}</td><td>{offboarded}</td></tr>",
        escape(id),
        escape(name),
        escape(tier)
    )
}

fn partner_row(p: &PartnerWeek) -> String {
    partner_row_html(&p.id, &p.name, &p.tier, p.certifications, p.npcu, p.new_users, p.offboarded)
}

/// The executive rollup: totals, a line per manager, sync health.
fn render_executive(week: &Week) -> String {
    let all: Vec<&PartnerWeek> = week.by_pam.values().flat_map(|(_, ps)| ps).collect();
    let sum = |f: fn(&PartnerWeek) -> i64| all.iter().map(|p| f(p)).sum::<i64>();
    let mut out = String::new();
    head(&mut out, &format!("Partner program, week {}", week.period));
    window(&mut out, week);
    out.push_str("<table id=\"summary\">\n");
    for (id, label, n) in [
        ("partners", "Active partners", all.len() as i64),
        ("certifications", "Certifications", sum(|p| p.certifications)),
        ("npcu", "Total NPCU", sum(|p| p.npcu)),
        ("new-users", "New users", sum(|p| p.new_users)),
        ("offboarded-users", "Offboarded users", week.offboarded_people),
    ] {
        let _ = writeln!(out, "<tr id=\"{id}\"><th>{label}</th><td>{n}</td></tr>");
    }
    out.push_str(
        "</table>\n<h2>By partner account manager</h2>\n<table id=\"managers\">\n<tr><th>Manager</th><th>Email</th>\
         <th>Partners</th><th>Certifications</th><th>Total NPCU</th><th>New users</th><th>Offboarded users</th></tr>\n",
    );
    for (key, (pam, partners)) in &week.by_pam {
        let s = |f: fn(&PartnerWeek) -> i64| partners.iter().map(f).sum::<i64>();
        let _ = writeln!(
            out,
            "<tr data-pam=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(key),
            escape(pam.name.as_deref().unwrap_or("")),
            escape(pam.email.as_deref().unwrap_or("")),
            partners.len(),
            s(|p| p.certifications),
            s(|p| p.npcu),
            s(|p| p.new_users),
            s(|p| p.offboarded),
        );
    }
    out.push_str("</table>\n");
    health(&mut out, &week.health);
    out.push_str("</body></html>\n");
    out
}

/// A rendered report and where it goes.
struct Report {
    kind: &'static str,
    period: String,
    recipient: String,
    subject: String,
    html: String,
    to: Vec<String>,
}

/// Mails (when configured) and stores the reports in the step's completion transaction. Each mail
/// the SMTP server accepted is recorded at once in `report_deliveries` (own transaction), so a
/// retried step does not mail it again.
async fn deliver(ctx: &mut StepContext, smtp: Option<&SmtpServer>, reports: Vec<Report>) -> Result<(), StepError> {
    let (mut sent, mut failed, mut first_error) = (0, 0, None);
    let run_id = ctx.run_id.0;
    let delivered: Vec<(String, String, Vec<String>)> =
        sqlx::query_as("SELECT kind, recipient, sent_to FROM report_deliveries WHERE run_id = $1")
            .bind(run_id)
            .fetch_all(&ctx.pool)
            .await?;
    let mut rows = Vec::with_capacity(reports.len());
    for r in reports {
        let mut sent_to = vec![];
        if let Some((_, _, to)) = delivered.iter().find(|(k, who, _)| k == r.kind && *who == r.recipient) {
            sent += 1;
            sent_to = to.clone();
        } else if let Some(smtp) = smtp
            && !r.to.is_empty()
        {
            match mail::send(smtp, ctx.http.secrets().ok(), &r.to, &r.subject, r.html.clone(), true).await {
                Ok(()) => {
                    sent += 1;
                    sent_to = r.to.clone();
                    sqlx::query(
                        "INSERT INTO report_deliveries (run_id, kind, recipient, sent_to) VALUES ($1, $2, $3, $4)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(run_id)
                    .bind(r.kind)
                    .bind(&r.recipient)
                    .bind(&sent_to)
                    .execute(&ctx.pool)
                    .await?;
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(error = %e, recipient = %r.recipient, "Report mail failed.");
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        rows.push((r, sent_to));
    }
    if failed > 0 && sent == 0 {
        return Err(StepError::retry(format!("no report could be mailed: {}", first_error.unwrap_or_default())));
    }
    let integration_id = ctx.integration.id;
    let stored = rows.len() as i64;
    let conn = ctx.tx().await?;
    // One statement for all reports; `sent_to` goes as text (arrays of arrays must be rectangular).
    let (mut kinds, mut periods, mut recipients, mut sent_tos, mut htmls) = (vec![], vec![], vec![], vec![], vec![]);
    for (r, sent_to) in &rows {
        kinds.push(r.kind);
        periods.push(r.period.as_str());
        recipients.push(r.recipient.as_str());
        sent_tos.push(serde_json::to_string(sent_to).unwrap_or_else(|_| "[]".into()));
        htmls.push(r.html.as_str());
    }
    sqlx::query(
        "INSERT INTO reports (kind, integration_id, run_id, period, recipient, sent_to, html)
         SELECT t.kind, $1, $2, t.period, t.recipient,
                ARRAY(SELECT jsonb_array_elements_text(t.sent_to::jsonb)), t.html
         FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) AS t(kind, period, recipient, sent_to, html)",
    )
    .bind(integration_id)
    .bind(run_id)
    .bind(&kinds)
    .bind(&periods)
    .bind(&recipients)
    .bind(&sent_tos)
    .bind(&htmls)
    .execute(&mut *conn)
    .await?;
    ctx.result.inserted = stored;
    ctx.result.errors = failed;
    let mut text = format!("reports: {stored} stored, {sent} mailed");
    if let Some(e) = first_error {
        let _ = write!(text, ", {failed} not mailed ({e})");
    }
    ctx.note(text);
    Ok(())
}

pub struct PamWeeklyReport;

impl StepHandler for PamWeeklyReport {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?.reports;
            let week = load(ctx).await?;
            let reports = week
                .by_pam
                .iter()
                .map(|(key, (pam, partners))| Report {
                    kind: PAM_KIND,
                    period: week.period.clone(),
                    recipient: key.clone(),
                    subject: format!("Partner report for {key}, week {}", week.period),
                    html: render_pam(&week, pam, partners),
                    to: settings.pam_addresses(pam),
                })
                .collect();
            deliver(ctx, settings.smtp.as_ref(), reports).await
        }
        .boxed()
    }
}

pub struct ExecutiveWeeklyReport;

impl StepHandler for ExecutiveWeeklyReport {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?.reports;
            let week = load(ctx).await?;
            let report = Report {
                kind: EXECUTIVE_KIND,
                period: week.period.clone(),
                recipient: EXECUTIVE.into(),
                subject: format!("Partner program report, week {}", week.period),
                html: render_executive(&week),
                to: settings.executive_recipients.clone(),
            };
            deliver(ctx, settings.smtp.as_ref(), vec![report]).await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_no_markup_and_only_ascii() {
        let e = escape("<b>Smith & \"Sons\"</b> 'n' Müller");
        assert_eq!(e, "&lt;b&gt;Smith &amp; &quot;Sons&quot;&lt;/b&gt; &#39;n&#39; M&#xfc;ller");
        assert!(e.is_ascii());
    }
}
