//! `sync_to_impartner`: each partner's certification count and total NPCU, pushed to its Impartner
//! account with the push engine (`sync::push`) as a bulk `PATCH /Account` of [`BATCH`] accounts,
//! each answered on its own (`results[]`).
//!
//! A certification is a completed enrollment (`completed_at` set) of a partner user in a course whose
//! NPCU is above 0; the total NPCU is the sum of those courses' NPCU. A user counts for the partner of
//! their contact, else for the partner of the linked group they are a confirmed member of.
//!
//! Only partners with a valid tier are pushed: never a Pending or blank tier, never an inactive
//! partner. Incremental mode sends only the values that differ from what Impartner last accepted
//! (`push_state`); full mode sends every valid partner's values again.

use futures::{FutureExt, future::BoxFuture};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::{settings::Settings, settings_of};
use syncfleet_sdk::{
    chain::Mode,
    http::HttpClient,
    step::{StepContext, StepError, StepHandler},
    sync::{
        SourceError,
        push::{Change, Outcomes, Pusher, Sink},
    },
};

/// The `push_state` entity of the pushed account fields.
pub const ENTITY: &str = "impartner_accounts";

/// The Impartner account fields written.
pub const CERTIFICATIONS_FIELD: &str = "Nintex_CE_Certifications__cf";
pub const NPCU_FIELD: &str = "Total_NPCU__cf";

/// Accounts per bulk PATCH.
pub const BATCH: usize = 50;

/// Every valid partner with its counts; `$1` is the integration.
pub(super) const COUNTS_SQL: &str = "
    WITH users AS (
        SELECT u.external_id AS person_id, COALESCE(u.partner_id, (
            SELECT min(l.partner_id) FROM partner_group_memberships m
            JOIN partner_group_links l ON l.integration_id = m.integration_id AND l.external_id = m.group_id AND l.is_active
            WHERE m.integration_id = u.integration_id AND m.person_id = u.external_id AND m.is_active
              AND m.status = 'confirmed')) AS partner_id
        FROM partner_lms_users u WHERE u.integration_id = $1 AND u.is_active
    ), certified AS (
        SELECT users.partner_id, count(*) AS certifications, sum(n.npcu) AS npcu
        FROM users
        JOIN partner_enrollments e ON e.integration_id = $1 AND e.person_id = users.person_id AND e.is_active
            AND e.completed_at IS NOT NULL
        JOIN partner_course_npcu n ON n.integration_id = $1 AND n.external_id = e.course_id AND n.is_active AND n.npcu > 0
        WHERE users.partner_id IS NOT NULL
        GROUP BY users.partner_id
    )
    SELECT p.external_id, COALESCE(c.certifications, 0)::bigint, COALESCE(c.npcu, 0)::bigint,
           (p.tier IS NOT NULL AND btrim(p.tier) <> '' AND lower(btrim(p.tier)) <> 'pending'
            AND p.upstream_active IS NOT FALSE AND lower(coalesce(p.account_status, '')) <> 'inactive') AS valid
    FROM partner_partners p LEFT JOIN certified c ON c.partner_id = p.external_id
    WHERE p.integration_id = $1 AND p.is_active
    ORDER BY p.external_id";

pub struct SyncToImpartner;

impl StepHandler for SyncToImpartner {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.impartner_client(&ctx.http);
            let sink = AccountSink::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let integration_id = ctx.integration.id;
            let partners: Vec<(String, i64, i64, bool)> =
                sqlx::query_as(COUNTS_SQL).bind(integration_id).fetch_all(&ctx.pool).await?;
            let invalid = partners.iter().filter(|p| !p.3).count();
            let desired: Vec<(String, Map<String, Value>)> = partners
                .into_iter()
                .filter(|p| p.3)
                .map(|(id, certifications, npcu, _)| {
                    let mut fields = Map::new();
                    fields.insert(CERTIFICATIONS_FIELD.into(), json!(certifications));
                    fields.insert(NPCU_FIELD.into(), json!(npcu));
                    (id, fields)
                })
                .collect();
            if ctx.mode == Mode::Full {
                // Full: every valid partner's values are sent again, whatever was accepted before.
                sqlx::query("DELETE FROM push_state WHERE integration_id = $1 AND entity = $2")
                    .bind(integration_id)
                    .bind(ENTITY)
                    .execute(&ctx.pool)
                    .await?;
            }
            let pusher = Pusher {
                pool: &ctx.pool,
                fence: ctx.fence.as_ref(),
                integration_id,
                run: ctx.run_id,
                step: ctx.step.name.as_str(),
                entity: ENTITY,
                sink: &sink,
            };
            let mut result = std::mem::take(&mut ctx.result);
            let pushed = pusher.push_chunk(desired, &mut result).await;
            ctx.result = result;
            ctx.record_calls(&[&client]);
            pushed?;
            ctx.note(format!("skipped: {invalid} partner(s) with a Pending or blank tier or inactive"));
            Ok(())
        }
        .boxed()
    }
}

/// Impartner accounts as a push sink: bulk `PATCH /Account` with `[{"Id": …, field: value}]`.
struct AccountSink<'a> {
    client: &'a HttpClient,
    url: String,
    headers: Vec<(String, String)>,
    cancel: CancellationToken,
}

impl<'a> AccountSink<'a> {
    fn new(settings: &Settings, client: &'a HttpClient, cancel: CancellationToken) -> Result<Self, String> {
        let i = &settings.impartner;
        let mut headers = vec![
            ("Authorization".to_owned(), format!("prm-key {}", settings.impartner_key(client.secrets()?)?)),
            ("Accept".into(), "application/json".into()),
        ];
        if let Some(t) = &i.tenant_id {
            headers.push(("X-PRM-TenantId".into(), t.trim().to_owned()));
        }
        Ok(AccountSink { client, url: format!("{}/Account", i.base_url.trim_end_matches('/')), headers, cancel })
    }

    async fn patch(&self, changes: &[Change]) -> Result<Outcomes, SourceError> {
        let mut body = Vec::with_capacity(changes.len());
        for c in changes {
            let Ok(id) = c.external_id.parse::<i64>() else {
                return Err(SourceError::Shape(format!("partner id {:?} is not an Impartner id", c.external_id)));
            };
            let mut item = Map::new();
            item.insert("Id".into(), json!(id));
            item.extend(c.fields.clone());
            body.push(Value::Object(item));
        }
        let body = Value::Array(body);
        let build = |http: &reqwest::Client| {
            let mut r = http.patch(&self.url).json(&body);
            for (name, value) in &self.headers {
                r = r.header(name, value);
            }
            r
        };
        let answer = self.client.send(build, &self.cancel).await?;
        // Read under the upstream policy's body cap.
        let answer: Value = self.client.read_json(answer).await?;
        outcomes(changes, &answer).map_err(|m| SourceError::Shape(format!("{}: {m}", self.url)))
    }
}

impl Sink for AccountSink<'_> {
    fn max_batch(&self) -> usize {
        BATCH
    }
    fn send<'b>(&'b self, changes: &'b [Change]) -> BoxFuture<'b, Result<Outcomes, SourceError>> {
        self.patch(changes).boxed()
    }
}

/// Each change's outcome from a bulk answer: top-level `results[]`, one per item in order, each with
/// `success` and `errors[].message`.
fn outcomes(changes: &[Change], answer: &Value) -> Result<Outcomes, String> {
    let Some(results) = answer.get("results").and_then(Value::as_array) else {
        return Err("no `results` array".into());
    };
    if results.len() != changes.len() {
        return Err(format!("{} results for {} items", results.len(), changes.len()));
    }
    Ok(changes
        .iter()
        .zip(results)
        .map(|(c, r)| {
            let outcome = if r.get("success").and_then(Value::as_bool) == Some(true) {
                Ok(())
            } else {
                let messages: Vec<&str> = r
                    .get("errors")
                    .and_then(Value::as_array)
                    .map(|e| e.iter().filter_map(|e| e.get("message").and_then(Value::as_str)).collect())
                    .unwrap_or_default();
                Err(if messages.is_empty() { "refused without a message".into() } else { messages.join("; ") })
            };
            (c.external_id.clone(), outcome)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_answers_give_per_item_outcomes() {
        let changes: Vec<Change> =
            ["1", "2"].iter().map(|id| Change { external_id: (*id).into(), fields: Map::new() }).collect();
        let answer = json!({"success": false, "results": [
            {"success": true, "data": {"id": 1}, "errors": null},
            {"success": false, "data": {"id": 2}, "errors": [{"code": "NOT_FOUND", "message": "Account 2 was not found."}]}]});
        let got = outcomes(&changes, &answer).unwrap();
        assert_eq!(got[0], ("1".into(), Ok(())));
        assert_eq!(got[1], ("2".into(), Err("Account 2 was not found.".into())));
        assert!(outcomes(&changes, &json!({"success": true})).is_err());
    }
}
