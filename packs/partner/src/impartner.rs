//! Impartner PRM objects v1: `Authorization: prm-key <key>` (+ optional `X-PRM-TenantId`),
//! `skip` + `take` paging with `data.count` as the total of the whole selection, PascalCase `fields`
//! and `filter` in requests, camelCase keys in answers, `Updated > '…'` for changes and
//! `/{Object}/_deleted?fromUtc=` for deletions.

use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::settings::Settings;
use syncfleet_sdk::{
    http::{HttpClient, Pages},
    sync::{Item, Page, Record, Source, SourceError, offset::OffsetPaging, table::parse_timestamp},
};

/// An Impartner object as this pack reads it: its name, the fields asked for, and the mapping of
/// answer keys (camelCase) to columns.
pub struct Object {
    pub name: &'static str,
    fields: &'static str,
    columns: &'static [(&'static str, &'static str)],
}

pub const ACCOUNT: Object = Object {
    name: "Account",
    fields: "Id,Name,CrmId,Partner_Tier__cf,Account_Status__cf,Account_Owner__cf,Account_Owner_Email__cf,\
             Partner_Type__cf,Website,MailingCountry,RegionId,MemberCount,IsActive,IsTest,LMS_Account_ID__cf,\
             LMS_Group_Name__cf,Updated",
    columns: &[
        ("name", "name"),
        ("crm_id", "crmId"),
        ("tier", "partner_Tier__cf"),
        ("account_status", "account_Status__cf"),
        ("owner_name", "account_Owner__cf"),
        ("owner_email", "account_Owner_Email__cf"),
        ("partner_type", "partner_Type__cf"),
        ("website", "website"),
        ("country", "mailingCountry"),
        ("region_id", "regionId"),
        ("member_count", "memberCount"),
        ("upstream_active", "isActive"),
        ("is_test", "isTest"),
        ("lms_account_id", "lmS_Account_ID__cf"),
        ("lms_group_name", "lmS_Group_Name__cf"),
        ("source_updated_at", "updated"),
    ],
};

pub const USER: Object = Object {
    name: "User",
    fields: "Id,Email,FirstName,LastName,Title,Phone,AccountId,AccountName,IsActive,Contact_Status__cf,CrmId,Updated",
    columns: &[
        ("email", "email"),
        ("first_name", "firstName"),
        ("last_name", "lastName"),
        ("title", "title"),
        ("phone", "phone"),
        ("partner_id", "accountId"),
        ("account_name", "accountName"),
        ("upstream_active", "isActive"),
        ("contact_status", "contact_Status__cf"),
        ("crm_id", "crmId"),
        ("source_updated_at", "updated"),
    ],
};

pub const LEAD: Object = Object {
    name: "Lead",
    fields: "Id,FirstName,LastName,Email,Company,Status,LeadSource,PartnerAccountId,EstimatedValue,Created,Updated",
    columns: &[
        ("first_name", "firstName"),
        ("last_name", "lastName"),
        ("email", "email"),
        ("company", "company"),
        ("status", "status"),
        ("lead_source", "leadSource"),
        ("partner_id", "partnerAccountId"),
        ("estimated_value", "estimatedValue"),
        ("source_created_at", "created"),
        ("source_updated_at", "updated"),
    ],
};

/// Filter dates: ISO without a zone, read as UTC.
fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// One step's view of the Impartner API.
pub struct Impartner<'a> {
    client: &'a HttpClient,
    base_url: String,
    headers: Vec<(String, String)>,
    page_size: u32,
    cancel: CancellationToken,
}

impl<'a> Impartner<'a> {
    pub fn new(settings: &Settings, client: &'a HttpClient, cancel: CancellationToken) -> Result<Self, String> {
        let i = &settings.impartner;
        let mut headers = vec![
            ("Authorization".to_owned(), format!("prm-key {}", settings.impartner_key(client.secrets()?)?)),
            ("Accept".into(), "application/json".into()),
        ];
        if let Some(t) = &i.tenant_id {
            headers.push(("X-PRM-TenantId".into(), t.trim().to_owned()));
        }
        Ok(Impartner {
            client,
            base_url: i.base_url.trim_end_matches('/').to_owned(),
            headers,
            page_size: i.page_size,
            cancel,
        })
    }

    /// Every record of `object` (changed since the read's `since`), in id order.
    pub fn list(&'a self, object: &'a Object) -> ImpartnerList<'a> {
        ImpartnerList { api: self, object, skip: OffsetPaging::default(), pages: self.client.pages() }
    }

    /// Ids of `object` records deleted since `since`.
    pub async fn deleted(&self, object: &Object, since: DateTime<Utc>) -> Result<Vec<String>, SourceError> {
        let url = format!("{}/{}/_deleted", self.base_url, object.name);
        let query = [("fromUtc".to_owned(), fmt_time(since))];
        let body = self.client.get_json(&url, &self.headers, &query, &self.cancel).await?;
        check_success(&url, &body)?;
        let Some(ids) = body.get("data").and_then(Value::as_array) else {
            return Err(SourceError::Shape(format!("{url}: no `data` array of ids")));
        };
        ids.iter()
            .map(|v| match v {
                Value::Number(n) => Ok(n.to_string()),
                other => Err(SourceError::Shape(format!("{url}: deleted id {other} is not a number"))),
            })
            .collect()
    }
}

fn check_success(url: &str, body: &Value) -> Result<(), SourceError> {
    match body.get("success").and_then(Value::as_bool) {
        Some(true) => Ok(()),
        _ => Err(SourceError::Shape(format!(
            "{url}: success is not true: {}",
            body.get("message").and_then(Value::as_str).unwrap_or("no message")
        ))),
    }
}

/// One object's search, page by page (`skip` + `take`, ordered by `Id`).
pub struct ImpartnerList<'a> {
    api: &'a Impartner<'a>,
    object: &'a Object,
    /// `skip`, and whether the last page was read.
    skip: OffsetPaging,
    /// The pages of this read (`upstream.max_pages`).
    pages: Pages,
}

impl ImpartnerList<'_> {
    async fn fetch(&mut self, since: Option<DateTime<Utc>>) -> Result<Option<Page>, SourceError> {
        if self.skip.done {
            return Ok(None);
        }
        let api = self.api;
        let take = i64::from(api.page_size);
        self.pages.next(None)?;
        let url = format!("{}/{}", api.base_url, self.object.name);
        let mut query = vec![
            ("fields".to_owned(), self.object.fields.to_owned()),
            ("orderby".into(), "Id".into()),
            ("skip".into(), self.skip.offset.to_string()),
            ("take".into(), take.to_string()),
        ];
        if let Some(s) = since {
            query.push(("filter".into(), format!("Updated >= '{}'", fmt_time(s))));
        }
        let mut body = api.client.get_json(&url, &api.headers, &query, &api.cancel).await?;
        check_success(&url, &body)?;
        let total = body.pointer("/data/count").and_then(Value::as_i64);
        let Some(Value::Array(records)) = body.pointer_mut("/data/results").map(Value::take) else {
            return Err(SourceError::Shape(format!("{url}: no `data.results` array")));
        };
        let Some(total) = total else {
            return Err(SourceError::Shape(format!("{url}: no `data.count`")));
        };
        let received = records.len() as i64;
        let mut page = Page { total: Some(total), ..Page::default() };
        page.short = self.skip.advance(self.object.name, received, take, Some(total));
        page.items = records.into_iter().map(|r| self.object.item(r)).collect();
        Ok(Some(page))
    }
}

impl Source for ImpartnerList<'_> {
    fn next_page(&mut self, since: Option<DateTime<Utc>>) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        self.fetch(since).boxed()
    }
}

impl Object {
    /// One answer record: `id` (an integer), `updated` (with an offset) as the cursor.
    pub fn item(&self, raw: Value) -> Item {
        let cursor = raw.get("updated").and_then(Value::as_str).and_then(parse_timestamp);
        let Some(id) = raw.get("id").and_then(Value::as_i64) else {
            return Item::Bad { external_id: None, cursor, message: format!("{}: no readable `id`", self.name) };
        };
        if cursor.is_none() {
            return Item::Bad {
                external_id: Some(id.to_string()),
                cursor,
                message: format!("{}: no readable `updated`", self.name),
            };
        }
        let fields = self
            .columns
            .iter()
            .map(|(column, key)| ((*column).to_owned(), raw.get(*key).cloned().unwrap_or(Value::Null)))
            .collect();
        Item::Record(Record { external_id: id.to_string(), cursor, fields, raw })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn records_map_from_camel_case() {
        let raw = json!({"id": 1295686, "name": "Acme", "partner_Tier__cf": "Premier", "updated": "2026-01-12T14:03:55-07:00"});
        let Item::Record(r) = ACCOUNT.item(raw) else { panic!("a record") };
        assert_eq!(r.external_id, "1295686");
        assert_eq!(r.fields["tier"], json!("Premier"));
        assert_eq!(r.cursor.map(fmt_time).as_deref(), Some("2026-01-12T21:03:55.000"));
        assert!(matches!(USER.item(json!({"id": 3, "updated": 12345})), Item::Bad { external_id: Some(_), .. }));
        assert!(matches!(USER.item(json!({"updated": "2026-01-01T00:00:00Z"})), Item::Bad { external_id: None, .. }));
    }
}
