//! `impartner_sync`: partners (Impartner accounts) and contacts (Impartner users) that pass the
//! configured filters. Full mode reads everything and sweeps what is gone or filtered out, under the
//! deletion guard. Incremental mode reads what changed (`Updated`), deactivates the changed records
//! the filters now leave out, and those `_deleted` lists since the cursor.

use futures::{FutureExt, future::BoxFuture};

use super::{
    Filtered,
    impartner::{ACCOUNT, Impartner, Object, USER},
    pull_spec,
    settings::Filters,
    settings_of, tables, text,
};
use syncfleet_sdk::{
    chain::Mode,
    step::{StepContext, StepError, StepHandler},
    sync::{Record, pull, sweep, table::Table},
};

pub struct ImpartnerSync;

/// Which records of an entity the filters keep.
type Keep<'a> = &'a (dyn Fn(&Record) -> bool + Sync);

impl StepHandler for ImpartnerSync {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.impartner_client(&ctx.http);
            let api = Impartner::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let filters = &settings.filters;
            let keep_partner = |r: &Record| is_partner(filters, r);
            let keep_contact = |r: &Record| is_contact(filters, r);
            let entities: [(&str, &Object, Table, Keep<'_>); 2] = [
                ("partners", &ACCOUNT, tables::partners(), &keep_partner),
                ("contacts", &USER, tables::contacts(), &keep_contact),
            ];
            // Both entities are read first (their pages commit as they go); their cursors, sweeps and
            // deletions then commit with the step, in a completion transaction opened only now, so
            // no transaction stays open while Impartner is read.
            let mut read = Vec::with_capacity(entities.len());
            let mut outcome = Ok(());
            for (entity, object, table, keep) in entities {
                let spec = pull_spec(&settings, entity, table);
                match read_entity(ctx, &api, &spec, object, keep).await {
                    Ok((fetched, gone)) => read.push((spec, fetched, gone)),
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            ctx.record_calls(&[&client]);
            outcome?;
            let integration_id = ctx.integration.id;
            for (spec, fetched, gone) in read {
                let mut result = fetched.complete(ctx.tx().await?).await?;
                if !gone.is_empty() {
                    result.deactivated +=
                        sweep::deactivate_ids(ctx.tx().await?, &spec.table, integration_id, &gone).await?;
                }
                pull::merge(&mut ctx.result, &spec.entity, result, 2);
            }
            Ok(())
        }
        .boxed()
    }
}

/// Reads one entity (its pages written as they come) and, in incremental mode, the ids to
/// deactivate with the step's completion: changed records the filters now leave out, and records
/// Impartner lists deleted since the read's cursor.
async fn read_entity(
    ctx: &StepContext,
    api: &Impartner<'_>,
    spec: &pull::PullSpec,
    object: &Object,
    keep: Keep<'_>,
) -> Result<(pull::Fetched, Vec<String>), StepError> {
    let cursor_before = match ctx.mode {
        Mode::Incremental => pull::load_cursor(&ctx.pool, ctx.integration.id, &spec.entity).await?,
        Mode::Full => None,
    };
    let mut list = api.list(object);
    let mut source = Filtered { inner: &mut list, keep, excluded: vec![] };
    let fetched = pull::fetch(ctx, spec, &mut source).await?;
    let mut gone = vec![];
    if ctx.mode == Mode::Incremental {
        gone = source.excluded;
        if let Some(since) = cursor_before {
            gone.extend(api.deleted(object, since - spec.lookback).await?);
        }
    }
    Ok((fetched, gone))
}

fn listed(list: &[String], value: Option<&str>) -> bool {
    value.is_some_and(|v| list.iter().any(|x| x.trim().eq_ignore_ascii_case(v)))
}

/// Partners: not in an excluded tier, not in an excluded status.
pub fn is_partner(filters: &Filters, r: &Record) -> bool {
    !listed(&filters.exclude_partner_tiers, text(r, "tier"))
        && !listed(&filters.exclude_partner_statuses, text(r, "account_status"))
}

/// Contacts: not at an internal domain (or its subdomains), not a test account.
pub fn is_contact(filters: &Filters, r: &Record) -> bool {
    let email = text(r, "email").unwrap_or("").to_lowercase();
    let (local, domain) = email.rsplit_once('@').unwrap_or((email.as_str(), ""));
    let internal = filters.internal_domains.iter().any(|d| {
        let d = d.trim().to_lowercase();
        domain == d || domain.ends_with(&format!(".{d}"))
    });
    let test = filters.exclude_test_accounts
        && (local == "test"
            || local.strip_prefix("test").is_some_and(|rest| {
                rest.starts_with(['.', '_', '-', '+']) || rest.starts_with(|c: char| c.is_ascii_digit())
            })
            || (text(r, "first_name").is_some_and(|f| f.eq_ignore_ascii_case("test"))
                && text(r, "last_name").is_some_and(|l| l.eq_ignore_ascii_case("user"))));
    !internal && !test
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn record(fields: Value) -> Record {
        Record { external_id: "1".into(), cursor: None, fields: fields.as_object().unwrap().clone(), raw: Value::Null }
    }

    #[test]
    fn filters_follow_the_settings() {
        let f = Filters::default();
        assert!(is_partner(&f, &record(json!({"tier": "Premier", "account_status": "Active"}))));
        assert!(is_partner(&f, &record(json!({"tier": null, "account_status": "Active"}))));
        assert!(!is_partner(&f, &record(json!({"tier": "pending", "account_status": "Active"}))));
        assert!(!is_partner(&f, &record(json!({"tier": "Select", "account_status": "Inactive"}))));
        assert!(is_contact(&f, &record(json!({"email": "pat.lee@acme.example"}))));
        assert!(is_contact(&f, &record(json!({"email": "tester@acme.example"}))));
        assert!(!is_contact(&f, &record(json!({"email": "Pat@Nintex.com"}))));
        assert!(!is_contact(&f, &record(json!({"email": "pat@eu.nintex.com"}))));
        assert!(!is_contact(&f, &record(json!({"email": "test.user12@acme.example"}))));
        assert!(!is_contact(
            &f,
            &record(json!({"email": "x@acme.example", "first_name": "Test", "last_name": "User"}))
        ));
        let none = Filters { exclude_test_accounts: false, internal_domains: vec![], ..Filters::default() };
        assert!(is_contact(&none, &record(json!({"email": "test.user12@nintex.com"}))));
    }
}
