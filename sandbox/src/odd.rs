//! Odd values ([`FaultSettings::odd_values`]): records served with a value the way real upstreams
//! sometimes send it. Applied to a record's JSON before the answer is serialized; the two kinds JSON
//! cannot hold as a value (a byte that is not UTF-8, a lone surrogate escape) are placed as markers
//! and written into the body's bytes by [`respond`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::config::{FaultSettings, OddKind};

/// Length of a [`OddKind::Long`] value, in characters.
pub const LONG_CHARS: usize = 3000;

const LATIN1_MARK: &str = "\u{E000}latin1\u{E000}";
const SURROGATE_MARK: &str = "\u{E000}surrogate\u{E000}";

/// Whether any odd value is set: the answer then goes through [`apply`] and [`respond`].
pub fn any(faults: &FaultSettings) -> bool {
    !faults.odd_values.is_empty()
}

/// Applies the odd values of the record `id` to `record` (its served JSON).
pub fn apply(faults: &FaultSettings, id: &str, record: &mut Value) {
    for odd in faults.odd_values_of(id) {
        let mut at = &mut *record;
        let mut path = odd.field.split('.').peekable();
        while let Some(key) = path.next() {
            let Some(obj) = at.as_object_mut() else { break };
            if path.peek().is_none() {
                let value = obj.entry(key.to_owned()).or_insert(Value::Null);
                *value = odd_value(value, odd.kind);
                break;
            }
            at = obj.entry(key.to_owned()).or_insert_with(|| Value::Object(Default::default()));
        }
    }
}

/// The record's id as served: `id` as a string or a number.
pub fn id_of(record: &Value) -> String {
    match record.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

fn odd_value(v: &Value, kind: OddKind) -> Value {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Null => String::from("odd"),
        other => other.to_string(),
    };
    let middle = text.floor_char_boundary(text.len() / 2);
    let with = |mark: &str| Value::from(format!("{}{mark}{}", &text[..middle], &text[middle..]));
    match kind {
        OddKind::Nul => with("\0"),
        OddKind::Latin1 => with(LATIN1_MARK),
        OddKind::Surrogate => with(SURROGATE_MARK),
        OddKind::Long => match text.split_once('@') {
            Some((_, domain)) => {
                Value::from(format!("{}@{domain}", "x".repeat(LONG_CHARS.saturating_sub(domain.len() + 1))))
            }
            None => Value::from("x".repeat(LONG_CHARS)),
        },
        OddKind::StringBool => match v {
            Value::Bool(true) => Value::from("True"),
            Value::Bool(false) => Value::from("False"),
            other => other.clone(),
        },
    }
}

/// A 200 JSON answer of `body`, with the markers written as the bytes they stand for.
pub fn respond<T: Serialize>(body: &T) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let bytes = replace(&replace(&bytes, LATIN1_MARK.as_bytes(), &[0xE9]), SURROGATE_MARK.as_bytes(), b"\\ud800");
    let mut resp = (StatusCode::OK, bytes).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OddValue;
    use serde_json::json;

    #[test]
    fn odd_values_land_where_named() {
        let odd = |id: &str, field: &str, kind| OddValue { id: id.into(), field: field.into(), kind };
        let faults = FaultSettings {
            odd_values: vec![
                odd("7", "attributes.name", OddKind::Nul),
                odd("7", "attributes.email", OddKind::Long),
                odd("*", "isActive", OddKind::StringBool),
                odd("8", "attributes.name", OddKind::Latin1),
            ],
            ..FaultSettings::default()
        };
        let mut r = json!({"id": "7", "isActive": false, "attributes": {"name": "Anna", "email": "a@b.io"}});
        apply(&faults, "7", &mut r);
        assert_eq!(r["attributes"]["name"], "An\0na");
        let email = r["attributes"]["email"].as_str().unwrap();
        assert!(email.len() == LONG_CHARS && email.ends_with("@b.io"));
        assert_eq!(r["isActive"], "False");
        let mut r = json!({"id": "8", "attributes": {"name": "Jose"}});
        apply(&faults, "8", &mut r);
        let body = respond(&r);
        assert_eq!(body.status(), StatusCode::OK);
        assert_eq!(replace(b"abXYc", b"XY", &[0xE9]), b"ab\xe9c");
    }
}
