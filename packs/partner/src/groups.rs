//! `sync_groups`: Northpass groups, then each active group matched to an active partner
//! (`matching.rs`). Links go to `partner_group_links`; ambiguous and unmatched groups to
//! `partner_group_match_issues` and the step's report. Both are replaced as a whole each run.

use futures::{FutureExt, future::BoxFuture};
use serde_json::{Map, Value, json};

use super::{
    for_cursor,
    matching::{Match, Matcher, Partner},
    northpass::{Northpass, group_item},
    pull_spec, settings_of, tables, write_derived,
};
use syncfleet_sdk::{
    step::{StepContext, StepError, StepHandler},
    sync::pull,
};

/// The active named groups in id order, as a cursor of the completion transaction.
const GROUPS_CURSOR: &str = "DECLARE partner_groups NO SCROLL CURSOR FOR
    SELECT external_id, name FROM partner_lms_groups
    WHERE integration_id = $1 AND is_active AND name IS NOT NULL ORDER BY external_id";
/// The groups the step holds at once: one `FETCH` of [`GROUPS_CURSOR`].
const GROUPS_FETCH: &str = "FETCH 1000 FROM partner_groups";

pub struct SyncGroups;

impl StepHandler for SyncGroups {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.northpass_client(&ctx.http);
            let api = Northpass::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let spec = pull_spec(&settings, "groups", tables::lms_groups());
            let outcome = pull::pull(ctx, &spec, &mut api.list("/groups", group_item)).await;
            ctx.record_calls(&[&client]);
            pull::merge(&mut ctx.result, "groups", outcome?, 1);

            let (integration_id, run) = (ctx.integration.id, ctx.run_id);
            let conn = ctx.tx().await?;
            let partners: Vec<(String, String)> = sqlx::query_as(
                "SELECT external_id, name FROM partner_partners
                 WHERE integration_id = $1 AND is_active AND name IS NOT NULL",
            )
            .bind(integration_id)
            .fetch_all(&mut *conn)
            .await?;
            let names: std::collections::HashMap<&str, &str> =
                partners.iter().map(|(id, name)| (id.as_str(), name.as_str())).collect();
            let list: Vec<Partner<'_>> = partners.iter().map(|(id, name)| Partner { id, name }).collect();
            let matcher = Matcher::new(&settings.groups, &list);

            // The groups a page at a time (a cursor of the completion transaction), each page's links
            // and issues written before the next; what no page wrote is swept at the end.
            let started = syncfleet_sdk::sync::sweep::database_now(&mut *conn).await?;
            let (links_table, issues_table) = (tables::group_links(), tables::group_match_issues());
            let (mut linked, mut ambiguous, mut unmatched) = (0, 0, 0);
            let mut counts = [0usize; 3];
            for_cursor(conn).await?;
            sqlx::query(GROUPS_CURSOR).bind(integration_id).execute(&mut *conn).await?;
            loop {
                let groups: Vec<(String, String)> =
                    sqlx::query_as(GROUPS_FETCH).persistent(false).fetch_all(&mut *conn).await?;
                if groups.is_empty() {
                    break;
                }
                let (mut links, mut issues) = (vec![], vec![]);
                for (group, name) in groups {
                    let mut row = Map::new();
                    row.insert("group_name".into(), json!(name));
                    match matcher.group(&name) {
                        Match::Linked { partner, method } => {
                            counts[method as usize] += 1;
                            row.insert("partner_name".into(), json!(names.get(partner.as_str())));
                            row.insert("partner_id".into(), Value::String(partner));
                            row.insert("method".into(), json!(method.as_str()));
                            links.push((group, row));
                        }
                        Match::Ambiguous { method, candidates } => {
                            tracing::warn!(group = %name, method = method.as_str(), ?candidates, "Group matches several partners.");
                            row.insert("issue".into(), json!("ambiguous"));
                            row.insert("candidates".into(), json!(candidates));
                            ambiguous += 1;
                            issues.push((group, row));
                        }
                        Match::Unmatched => {
                            row.insert("issue".into(), json!("unmatched"));
                            row.insert("candidates".into(), json!([]));
                            unmatched += 1;
                            issues.push((group, row));
                        }
                        Match::AllPartners => {}
                    }
                }
                linked += write_derived(conn, &links_table, integration_id, run, links).await?;
                write_derived(conn, &issues_table, integration_id, run, issues).await?;
            }
            sqlx::query("CLOSE partner_groups").execute(&mut *conn).await?;
            links_table.sweep(conn, integration_id, run, started).await?;
            issues_table.sweep(conn, integration_id, run, started).await?;
            let [exact, prefix, fuzzy] = counts;
            ctx.note(format!(
                    "matching: {linked} group(s) linked (exact {exact}, prefix {prefix}, fuzzy {fuzzy}), \
                     {ambiguous} ambiguous, {unmatched} unmatched"
                ),
            );
            Ok(())
        }
        .boxed()
    }
}
