//! Northpass LMS v2 (JSON:API): `X-Api-Key`, `page` + `limit` paging following the absolute
//! `links.next` (omitted or `null` on the last page), `filter[updated_at][gteq]` for changes, and the
//! mapping of people, groups, memberships and courses to items. Course properties are read one course
//! at a time (`GET /properties/courses/{id}`), which answers 403 (sometimes 404) for some courses.

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt, future::BoxFuture};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::settings::Settings;
use syncfleet_sdk::{
    http::{HttpClient, HttpError, Pages, redact},
    sync::{Item, Page, Record, Source, SourceError, pointer, table::parse_timestamp},
};

/// Course property reads in flight at once (the client's gate and the rate budget still apply).
const PROPERTY_READS_IN_FLIGHT: usize = 8;

/// One step's view of the Northpass API.
pub struct Northpass<'a> {
    client: &'a HttpClient,
    base_url: String,
    headers: Vec<(String, String)>,
    page_size: u32,
    cancel: CancellationToken,
}

impl<'a> Northpass<'a> {
    pub fn new(settings: &Settings, client: &'a HttpClient, cancel: CancellationToken) -> Result<Self, String> {
        let key = settings.northpass_key(client.secrets()?)?;
        Ok(Northpass {
            client,
            base_url: settings.northpass.base_url.trim_end_matches('/').to_owned(),
            headers: vec![("X-Api-Key".into(), key), ("Accept".into(), "application/json".into())],
            page_size: settings.northpass.page_size,
            cancel,
        })
    }

    /// A list endpoint (`/courses`, `/people`, `/groups/{id}/memberships`, …) read page by page.
    pub fn list(&'a self, path: &str, map: fn(Value) -> Item) -> NorthpassList<'a> {
        let pages = self.client.pages();
        NorthpassList { api: self, path: path.to_owned(), map, next: None, page: 1, done: false, pages }
    }

    /// A course's properties (`data.attributes.properties`), or `None` when the course does not expose
    /// them (403, or 404 for a course gone since it was listed).
    pub async fn course_properties(&self, course_id: &str) -> Result<Option<Value>, HttpError> {
        let url = format!("{}/properties/courses/{}", self.base_url, escape(course_id));
        match self.client.get_json(&url, &self.headers, &[], &self.cancel).await {
            Ok(mut body) => {
                Ok(Some(body.pointer_mut("/data/attributes/properties").map(Value::take).unwrap_or(json!({}))))
            }
            Err(e) if matches!(e.status(), Some(403 | 404)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Northpass timestamps: `YYYY-MM-DDThh:mm:ssZ`.
fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A Northpass list, page by page.
pub struct NorthpassList<'a> {
    api: &'a Northpass<'a>,
    path: String,
    map: fn(Value) -> Item,
    next: Option<String>,
    page: u32,
    done: bool,
    /// The pages of this read (`upstream.max_pages`; a next link seen twice ends it).
    pages: Pages,
}

impl NorthpassList<'_> {
    async fn fetch(&mut self, since: Option<DateTime<Utc>>) -> Result<Option<Page>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let api = self.api;
        let limit = api.page_size;
        self.pages.next(self.next.as_deref())?;
        let (url, query) = match &self.next {
            // The next link carries every parameter already.
            Some(link) => (link.clone(), vec![]),
            None => {
                let mut q = vec![("page".to_owned(), self.page.to_string()), ("limit".to_owned(), limit.to_string())];
                if let Some(s) = since {
                    q.push(("filter[updated_at][gteq]".into(), fmt_time(s)));
                }
                (format!("{}{}", api.base_url, self.path), q)
            }
        };
        let mut body = api.client.get_json(&url, &api.headers, &query, &api.cancel).await?;
        let Some(Value::Array(records)) = body.get_mut("data").map(Value::take) else {
            return Err(SourceError::Shape(format!("{}: no `data` array", redact::link(&url))));
        };
        let received = records.len();
        self.next = body.pointer("/links/next").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let mut page = Page::default();
        if self.next.is_some() && received < limit as usize {
            page.short = Some(format!("{} page {} returned {received} of {limit} items", self.path, self.page));
        }
        self.done = self.next.is_none() || received == 0;
        self.page += 1;
        page.items = records.into_iter().map(self.map).collect();
        Ok(Some(page))
    }
}

impl Source for NorthpassList<'_> {
    fn next_page(&mut self, since: Option<DateTime<Utc>>) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        self.fetch(since).boxed()
    }
}

/// The NPCU of courses, read one course at a time. `courses` are (course id, the course's change
/// time); an incremental read takes the courses changed since `since`. Courses whose properties
/// answer 403/404 are skipped and listed in `skipped`.
pub struct CourseProperties<'a> {
    api: &'a Northpass<'a>,
    courses: Vec<(String, Option<DateTime<Utc>>)>,
    started: bool,
    pub skipped: Vec<String>,
}

impl<'a> CourseProperties<'a> {
    pub fn new(api: &'a Northpass<'a>, courses: Vec<(String, Option<DateTime<Utc>>)>) -> Self {
        CourseProperties { api, courses, started: false, skipped: vec![] }
    }

    async fn fetch(&mut self, since: Option<DateTime<Utc>>) -> Result<Option<Page>, SourceError> {
        if !self.started {
            self.started = true;
            if let Some(s) = since {
                self.courses.retain(|(_, changed)| changed.is_none_or(|c| c >= s));
            }
            // Served from the end: reverse so pages go in the given order.
            self.courses.reverse();
        }
        if self.courses.is_empty() {
            return Ok(None);
        }
        let take = self.courses.len().min(self.api.page_size as usize);
        let batch: Vec<_> = self.courses.split_off(self.courses.len() - take).into_iter().rev().collect();
        let api = self.api;
        let answers: Vec<_> = futures::stream::iter(batch)
            .map(|(id, changed)| async move { (api.course_properties(&id).await, id, changed) })
            .buffered(PROPERTY_READS_IN_FLIGHT)
            .collect()
            .await;
        let mut page = Page::default();
        for (answer, id, changed) in answers {
            match answer? {
                Some(properties) => page.items.push(npcu_item(id, changed, properties)),
                None => self.skipped.push(id),
            }
        }
        Ok(Some(page))
    }
}

impl Source for CourseProperties<'_> {
    fn next_page(&mut self, since: Option<DateTime<Utc>>) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        self.fetch(since).boxed()
    }
}

/// `properties.npcu` comes as a string ("2"); the table's integer column reads it.
fn npcu_item(course_id: String, changed: Option<DateTime<Utc>>, properties: Value) -> Item {
    let mut fields = Map::new();
    fields.insert("npcu".into(), properties.get("npcu").cloned().unwrap_or(Value::Null));
    fields.insert("certification".into(), properties.get("certification").cloned().unwrap_or(Value::Null));
    fields.insert("properties".into(), properties.clone());
    Item::Record(Record { external_id: course_id, cursor: changed, fields, raw: properties })
}

/// A JSON:API resource: id, `attributes.updated_at` as the cursor, and `columns` (column ← JSON
/// pointer) as fields. A missing id or unreadable `updated_at` makes a bad item.
fn resource(raw: Value, columns: &[(&str, &str)], with_cursor: bool) -> Item {
    let id = raw.get("id").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let cursor = pointer::get(&raw, "/attributes/updated_at").and_then(Value::as_str).and_then(parse_timestamp);
    let Some(external_id) = id else {
        return Item::Bad { external_id: None, cursor, message: "no readable `id`".into() };
    };
    if with_cursor && cursor.is_none() {
        return Item::Bad {
            external_id: Some(external_id),
            cursor,
            message: "no readable `attributes.updated_at`".into(),
        };
    }
    let fields = columns
        .iter()
        .map(|(column, at)| ((*column).to_owned(), pointer::get(&raw, at).cloned().unwrap_or(Value::Null)))
        .collect();
    Item::Record(Record { external_id, cursor, fields, raw })
}

pub fn course_item(raw: Value) -> Item {
    resource(
        raw,
        &[
            ("name", "/attributes/name"),
            ("status", "/attributes/status"),
            ("published", "/attributes/published"),
            ("permalink", "/attributes/permalink"),
            ("enrollments_count", "/attributes/enrollments_count"),
            ("source_created_at", "/attributes/created_at"),
            ("source_updated_at", "/attributes/updated_at"),
        ],
        true,
    )
}

pub fn person_item(raw: Value) -> Item {
    resource(
        raw,
        &[
            ("email", "/attributes/email"),
            ("first_name", "/attributes/first_name"),
            ("last_name", "/attributes/last_name"),
            ("activated_at", "/attributes/activated_at"),
            ("deactivated_at", "/attributes/deactivated_at"),
            ("last_active_at", "/attributes/last_active_at"),
            ("source_created_at", "/attributes/created_at"),
            ("source_updated_at", "/attributes/updated_at"),
        ],
        true,
    )
}

pub fn group_item(raw: Value) -> Item {
    resource(
        raw,
        &[
            ("name", "/attributes/name"),
            ("member_count", "/attributes/memberships_count"),
            ("source_created_at", "/attributes/created_at"),
            ("source_updated_at", "/attributes/updated_at"),
        ],
        true,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn resources_map_to_items() {
        let raw = json!({"id": "c1", "type": "courses", "attributes": {"name": "Basics", "updated_at": "2025-01-02T03:04:05Z"}});
        let Item::Record(r) = course_item(raw) else { panic!("a record") };
        assert_eq!(r.external_id, "c1");
        assert_eq!(r.fields["name"], json!("Basics"));
        assert_eq!(r.fields["status"], Value::Null);
        assert_eq!(r.cursor.map(fmt_time).as_deref(), Some("2025-01-02T03:04:05Z"));
        let bad = course_item(json!({"id": "c2", "attributes": {"updated_at": 12345}}));
        assert!(matches!(bad, Item::Bad { external_id: Some(ref id), .. } if id == "c2"));
        assert!(matches!(person_item(json!({"attributes": {}})), Item::Bad { external_id: None, .. }));
    }
}
