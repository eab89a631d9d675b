//! Northpass list machinery: `page` + `limit` paging with absolute links, Ransack-style
//! `filter[attr]` / `filter[attr][pred]` filters (unknown attributes are silently ignored, as upstream)
//! and `sort=a,-b`.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::Response;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::api::envelope::ok;
use crate::config::{Api, FaultSettings};
use crate::data::northpass::Northpass;
use crate::state::AppState;
use crate::util::{fmt_utc, parse_pairs, parse_time, url_encode};

pub const DEFAULT_LIMIT: usize = 10;
pub const MAX_LIMIT: usize = 100;

/// A filterable, sortable attribute value.
#[derive(Debug, Clone)]
pub enum AttrVal<'a> {
    Str(Cow<'a, str>),
    Time(Option<i64>),
    Bool(bool),
    Int(i64),
}

/// A resource the list machinery can serve.
pub trait NpItem {
    type View<'a>: Serialize
    where
        Self: 'a;
    fn key(&self) -> u32;
    fn attr(&self, np: &Northpass, name: &str) -> Option<AttrVal<'_>>;
    fn view<'a>(&'a self, np: &'a Northpass, base: &str) -> Self::View<'a>;
}

#[derive(Debug, Clone)]
pub struct Filter {
    pub attr: String,
    pub pred: String,
    pub value: String,
}

/// The parsed query of a list request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub pairs: Vec<(String, String)>,
    pub page: usize,
    pub limit: usize,
    pub filters: Vec<Filter>,
    pub sort: Vec<(String, bool)>,
}

impl ListQuery {
    pub fn parse(raw: Option<&str>) -> ListQuery {
        let pairs = parse_pairs(raw.unwrap_or(""));
        let mut q =
            ListQuery { pairs: Vec::new(), page: 1, limit: DEFAULT_LIMIT, filters: Vec::new(), sort: Vec::new() };
        for (k, v) in &pairs {
            match k.as_str() {
                "page" => q.page = v.parse().unwrap_or(1).max(1),
                "limit" => q.limit = v.parse().unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
                "sort" => {
                    q.sort = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| match s.strip_prefix('-') {
                            Some(a) => (a.to_string(), true),
                            None => (s.to_string(), false),
                        })
                        .collect();
                }
                _ => {
                    if let Some(rest) = k.strip_prefix("filter[") {
                        let mut parts = rest.split(['[', ']']).filter(|s| !s.is_empty());
                        if let Some(attr) = parts.next() {
                            let pred = parts.next().unwrap_or("cont");
                            q.filters.push(Filter { attr: attr.to_string(), pred: pred.to_string(), value: v.clone() });
                        }
                    }
                }
            }
        }
        q.pairs = pairs;
        q
    }

    /// The query string for another page (`None` = the first page, which carries no `page`).
    fn with_page(&self, page: usize) -> String {
        let mut out = String::new();
        for (k, v) in self.pairs.iter().filter(|(k, _)| k != "page") {
            out.push(if out.is_empty() { '?' } else { '&' });
            out.push_str(&url_encode(k));
            out.push('=');
            out.push_str(&url_encode(v));
        }
        if page > 1 {
            out.push(if out.is_empty() { '?' } else { '&' });
            out.push_str(&format!("page={page}"));
        }
        out
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "yes" => Some(true),
        "false" | "0" | "f" | "no" => Some(false),
        _ => None,
    }
}

fn cmp_pred(ord: Ordering, pred: &str) -> Option<bool> {
    Some(match pred {
        "eq" => ord == Ordering::Equal,
        "not_eq" => ord != Ordering::Equal,
        "gt" => ord == Ordering::Greater,
        "gteq" => ord != Ordering::Less,
        "lt" => ord == Ordering::Less,
        "lteq" => ord != Ordering::Greater,
        _ => return None,
    })
}

/// Whether `v` passes `pred value`; `None` when the condition does not apply (ignored, like Ransack).
fn matches(v: &AttrVal<'_>, pred: &str, value: &str) -> Option<bool> {
    match v {
        AttrVal::Str(s) => {
            let (ls, lv) = (s.to_lowercase(), value.to_lowercase());
            Some(match pred {
                "cont" | "matches" => ls.contains(&lv),
                "not_cont" => !ls.contains(&lv),
                "start" => ls.starts_with(&lv),
                "end" => ls.ends_with(&lv),
                "in" => value.split(',').any(|x| x.trim() == s.as_ref()),
                "not_in" => !value.split(',').any(|x| x.trim() == s.as_ref()),
                "present" => parse_bool(value)? != s.is_empty(),
                "blank" => parse_bool(value)? == s.is_empty(),
                "null" => parse_bool(value)? == s.is_empty(),
                other => cmp_pred(s.as_ref().cmp(value), other)?,
            })
        }
        AttrVal::Time(t) => match pred {
            "null" | "blank" => Some(parse_bool(value)? == t.is_none()),
            "present" | "not_null" => Some(parse_bool(value)? == t.is_some()),
            "cont" => Some(t.is_some_and(|t| fmt_utc(t).contains(value))),
            _ => {
                let want = parse_time(value)?;
                match t {
                    Some(t) => cmp_pred(t.cmp(&want), pred),
                    None => Some(pred == "not_eq"),
                }
            }
        },
        AttrVal::Bool(b) => {
            let want = parse_bool(value)?;
            match pred {
                "eq" | "cont" | "in" => Some(*b == want),
                "not_eq" => Some(*b != want),
                _ => None,
            }
        }
        AttrVal::Int(i) => match pred {
            "cont" => Some(i.to_string().contains(value)),
            "in" => Some(value.split(',').any(|x| x.trim().parse::<i64>().ok() == Some(*i))),
            _ => cmp_pred(i.cmp(&value.trim().parse().ok()?), pred),
        },
    }
}

fn cmp_attr(a: &Option<AttrVal<'_>>, b: &Option<AttrVal<'_>>) -> Ordering {
    match (a, b) {
        (Some(AttrVal::Str(x)), Some(AttrVal::Str(y))) => x.to_lowercase().cmp(&y.to_lowercase()),
        (Some(AttrVal::Time(x)), Some(AttrVal::Time(y))) => x.cmp(y),
        (Some(AttrVal::Bool(x)), Some(AttrVal::Bool(y))) => x.cmp(y),
        (Some(AttrVal::Int(x)), Some(AttrVal::Int(y))) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// Applies filters and sort (key order when no sort is given).
pub fn select<'a, T: NpItem + 'a>(np: &Northpass, items: impl Iterator<Item = &'a T>, q: &ListQuery) -> Vec<&'a T> {
    let mut out: Vec<&T> = if q.filters.is_empty() {
        items.collect()
    } else {
        items
            .filter(|it| {
                q.filters.iter().all(|f| match it.attr(np, &f.attr) {
                    Some(v) => matches(&v, &f.pred, &f.value).unwrap_or(true),
                    None => true,
                })
            })
            .collect()
    };
    if !q.sort.is_empty() {
        out.sort_by(|a, b| {
            for (attr, desc) in &q.sort {
                let o = cmp_attr(&a.attr(np, attr), &b.attr(np, attr));
                let o = if *desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            a.key().cmp(&b.key())
        });
    }
    out
}

/// What every list handler starts from: the parsed query, the absolute API base for links, and
/// the fault settings and seed that shape the page.
pub struct ListRequest {
    pub q: ListQuery,
    pub base: String,
    pub faults: FaultSettings,
    pub seed: u64,
}

impl FromRequestParts<Arc<AppState>> for ListRequest {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, Infallible> {
        Ok(ListRequest {
            q: ListQuery::parse(parts.uri.query()),
            base: api_base(&parts.headers, &st.base_url),
            faults: st.faults(Api::Northpass),
            seed: st.config.seed,
        })
    }
}

impl ListRequest {
    /// One page of `selected` at `path` (relative to the API base), with links and faults applied.
    pub fn page<T: NpItem>(&self, np: &Northpass, selected: &[&T], path: &str) -> Response {
        page(np, selected, &self.q, &self.base, path, &self.faults, self.seed)
    }
}

/// `http://host/northpass/v2` from the request's Host header.
pub fn api_base(headers: &HeaderMap, fallback: &str) -> String {
    match headers.get("host").and_then(|h| h.to_str().ok()) {
        Some(h) => format!("http://{h}/northpass/v2"),
        None => format!("{fallback}/northpass/v2"),
    }
}

#[derive(Serialize)]
struct Links {
    #[serde(rename = "self")]
    this: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[derive(Serialize)]
struct Page<V: Serialize> {
    data: Vec<V>,
    links: Links,
}

/// Whether the item with `key` is served malformed.
pub fn is_malformed(faults: &FaultSettings, seed: u64, key: u32) -> bool {
    faults.serves_malformed(Api::Northpass, seed, u64::from(key))
}

/// Breaks one serialized item: even keys lose their `id`, odd keys get a wrong-typed attribute.
pub fn break_item(mut v: Value, key: u32) -> Value {
    if let Some(obj) = v.as_object_mut() {
        if key.is_multiple_of(2) {
            obj.remove("id");
        } else if let Some(Value::Object(attrs)) = obj.get_mut("attributes") {
            attrs.insert("updated_at".into(), Value::from(12345));
            let name_key = ["email", "name", "resource_id", "progress"].into_iter().find(|k| attrs.contains_key(*k));
            if let Some(k) = name_key {
                attrs.insert(k.into(), Value::Object(Map::new()));
            }
        }
    }
    v
}

/// One page of `selected`, with links built from `path` (e.g. `/people`).
pub fn page<T: NpItem>(
    np: &Northpass,
    selected: &[&T],
    q: &ListQuery,
    base: &str,
    path: &str,
    faults: &FaultSettings,
    seed: u64,
) -> Response {
    if faults.fails(path) {
        return crate::api::envelope::api_error(
            Api::Northpass,
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "Internal server error.",
        );
    }
    let selected = if faults.empties(path) { &[] } else { selected };
    let total = selected.len();
    // A repeated page serves the previous page's items again (links unchanged).
    let served = if faults.repeats(q.page) { q.page - 1 } else { q.page };
    let start = (served - 1).saturating_mul(q.limit).min(total);
    let mut end = (start + q.limit).min(total);
    if faults.truncate_page && end > start {
        end = start + (end - start).div_ceil(2);
    }
    let url = format!("{base}{path}");
    let links = Links {
        this: format!("{url}{}", q.with_page(q.page)),
        prev: (q.page > 1).then(|| format!("{url}{}", q.with_page(q.page - 1))),
        next: (q.page * q.limit < total).then(|| format!("{url}{}", q.with_page(q.page + 1))),
    };
    let items = &selected[start..end];
    if items.iter().any(|it| is_malformed(faults, seed, it.key())) || crate::odd::any(faults) {
        let data: Vec<Value> = items
            .iter()
            .map(|it| {
                let mut v = serde_json::to_value(it.view(np, base)).unwrap_or(Value::Null);
                crate::odd::apply(faults, &crate::odd::id_of(&v), &mut v);
                if is_malformed(faults, seed, it.key()) { break_item(v, it.key()) } else { v }
            })
            .collect();
        crate::odd::respond(&Page { data, links })
    } else {
        let data: Vec<T::View<'_>> = items.iter().map(|it| it.view(np, base)).collect();
        ok(&Page { data, links })
    }
}
