//! The reading side: one entity's list endpoint, page by page, in the declared paging style. Every
//! page is counted by the SDK's [`Pages`] (the `upstream.max_pages` limit, and a next link or cursor
//! seen twice ends the read: the upstream is looping); next links are fetched by the step's client,
//! which sends only to the integration's origin.

use futures::{FutureExt, future::BoxFuture};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::settings::{EntitySpec, Paging, Settings};
use syncfleet_sdk::{
    http::{HttpClient, Pages, redact},
    sync::{Page, Source, SourceError, offset::OffsetPaging},
};

/// Reads one entity's list endpoint page by page.
pub(super) struct JsonSource<'a> {
    settings: &'a Settings,
    spec: &'a EntitySpec,
    client: &'a HttpClient,
    headers: &'a [(String, String)],
    auth_query: &'a [(String, String)],
    cancel: CancellationToken,
    /// Page number, offset, or the next token / link.
    position: i64,
    next: Option<String>,
    done: bool,
    /// The pages of this read.
    pages: Pages,
}

impl<'a> JsonSource<'a> {
    pub(super) fn new(
        settings: &'a Settings,
        spec: &'a EntitySpec,
        client: &'a HttpClient,
        headers: &'a [(String, String)],
        auth_query: &'a [(String, String)],
        cancel: CancellationToken,
    ) -> Self {
        let position = match spec.paging {
            Paging::Page { .. } => 1,
            _ => 0,
        };
        let pages = client.pages();
        JsonSource { settings, spec, client, headers, auth_query, cancel, position, next: None, done: false, pages }
    }

    async fn fetch(&mut self, since: Option<chrono::DateTime<chrono::Utc>>) -> Result<Option<Page>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let spec = self.spec;
        // Offsets and page numbers are ours and only count; a next link or cursor is the upstream's.
        self.pages.next(self.next.as_deref())?;
        let mut query: Vec<(String, String)> = self.auth_query.to_vec();
        let url = match (&spec.paging, &self.next) {
            // A next link carries every parameter already.
            (Paging::Page { .. }, Some(link)) => resolve_link(&self.settings.base_url, link),
            (paging, _) => {
                query.extend(spec.query.iter().map(|(k, v)| (k.clone(), v.clone())));
                if let (Some(p), Some(s)) = (&spec.since_param, since) {
                    query.push((p.clone(), s.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
                }
                match paging {
                    Paging::Page { page_param, limit_param, limit, .. } => {
                        query.push((page_param.clone(), self.position.to_string()));
                        query.push((limit_param.clone(), limit.to_string()));
                    }
                    Paging::Offset { offset_param, limit_param, limit, .. } => {
                        query.push((offset_param.clone(), self.position.to_string()));
                        query.push((limit_param.clone(), limit.to_string()));
                    }
                    Paging::Cursor { cursor_param, limit_param, limit, .. } => {
                        if let Some(token) = &self.next {
                            query.push((cursor_param.clone(), token.clone()));
                        }
                        query.push((limit_param.clone(), limit.to_string()));
                    }
                }
                self.settings.url(&spec.path)
            }
        };
        let body = self.client.get_json(&url, self.headers, &query, &self.cancel).await?;
        let records = if spec.records.is_empty() { Some(&body) } else { body.pointer(&spec.records) };
        let Some(records) = records.and_then(Value::as_array) else {
            return Err(SourceError::Shape(format!("{}: no records array at `{}`", redact::link(&url), spec.records)));
        };
        let received = records.len() as i64;
        let mut page = Page::default();
        match &spec.paging {
            Paging::Offset { limit, total, .. } => {
                page.total = total.as_ref().and_then(|p| body.pointer(p)).and_then(Value::as_i64);
                let mut offset = OffsetPaging { offset: self.position, done: false };
                page.short = offset.advance("page", received, i64::from(*limit), page.total);
                (self.position, self.done) = (offset.offset, offset.done);
            }
            Paging::Page { limit, next, .. } => {
                let limit = i64::from(*limit);
                match next {
                    Some(p) => {
                        self.next =
                            body.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
                        if self.next.is_some() && received < limit {
                            page.short = Some(format!("page {} returned {received} of {limit} items", self.position));
                        }
                        self.done = self.next.is_none() || received == 0;
                    }
                    None => self.done = received < limit,
                }
                self.position += 1;
            }
            Paging::Cursor { next, .. } => {
                self.next = body.pointer(next).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
                self.done = self.next.is_none() || received == 0;
            }
        }
        let Value::Array(records) = take_records(body, &spec.records) else { unreachable!("checked above") };
        page.items = records.into_iter().map(|r| spec.item(r)).collect();
        Ok(Some(page))
    }
}

fn take_records(mut body: Value, pointer: &str) -> Value {
    if pointer.is_empty() { body } else { body.pointer_mut(pointer).map(Value::take).unwrap_or(Value::Null) }
}

fn resolve_link(base: &str, link: &str) -> String {
    match url::Url::parse(base).and_then(|b| b.join(link)) {
        Ok(u) => u.to_string(),
        Err(_) => link.to_owned(),
    }
}

impl Source for JsonSource<'_> {
    fn next_page(
        &mut self,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        self.fetch(since).boxed()
    }
}
