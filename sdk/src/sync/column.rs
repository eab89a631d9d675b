//! The values of a synced table's mapped columns: their PostgreSQL types, and the checks and
//! conversions in Rust that turn an upstream's JSON value into the text a statement writes, so a bad
//! value is an item error, never a failed batch.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The PostgreSQL type of a mapped column. Values are checked and normalised in Rust, so a bad value
/// becomes an item error instead of failing the batch's statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Text,
    Bigint,
    Integer,
    Numeric,
    Double,
    Boolean,
    Timestamptz,
    Date,
    Jsonb,
}

impl ColumnType {
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Bigint => "bigint",
            ColumnType::Integer => "integer",
            ColumnType::Numeric => "numeric",
            ColumnType::Double => "double precision",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::Date => "date",
            ColumnType::Jsonb => "jsonb",
        }
    }

    /// Whether an existing column of `udt_name` (information_schema) can hold this type.
    pub(super) fn accepts_udt(self, udt: &str) -> bool {
        matches!(
            (self, udt),
            (ColumnType::Text, "text" | "varchar" | "bpchar" | "citext")
                | (ColumnType::Bigint, "int8")
                | (ColumnType::Integer, "int4" | "int8")
                | (ColumnType::Numeric, "numeric")
                | (ColumnType::Double, "float8" | "numeric")
                | (ColumnType::Boolean, "bool")
                | (ColumnType::Timestamptz, "timestamptz")
                | (ColumnType::Date, "date")
                | (ColumnType::Jsonb, "jsonb" | "json")
        )
    }

    /// The value as PostgreSQL text input for this type, `None` for SQL NULL. Every value is checked
    /// here, before any statement: text holding a NUL (PostgreSQL's text cannot) or U+FFFD (bytes the
    /// upstream sent that were not UTF-8, or a lone surrogate, see [`crate::http::decode_json`]), JSON
    /// holding either in any string or key. A boolean may come as a string, `"true"` / `"false"` in
    /// any case (Impartner answers `"True"`).
    pub fn convert(self, v: &Value) -> Result<Option<String>, String> {
        if v.is_null() {
            return Ok(None);
        }
        let wrong = || format!("expected {}, got {}", self.sql(), short(v));
        let text = match (self, v) {
            (ColumnType::Jsonb, v) => {
                check_json(v, &mut String::from("$"))?;
                v.to_string()
            }
            (ColumnType::Text, Value::String(s)) => s.clone(),
            (ColumnType::Text, Value::Number(n)) => n.to_string(),
            (ColumnType::Text, Value::Bool(b)) => b.to_string(),
            (ColumnType::Bigint | ColumnType::Integer, v) => {
                let n = match v {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                }
                .ok_or_else(wrong)?;
                if self == ColumnType::Integer && i32::try_from(n).is_err() {
                    return Err(format!("{n} is out of range for integer"));
                }
                n.to_string()
            }
            (ColumnType::Numeric | ColumnType::Double, v) => match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) if s.trim().parse::<f64>().is_ok_and(f64::is_finite) => s.trim().to_owned(),
                _ => return Err(wrong()),
            },
            (ColumnType::Boolean, Value::Bool(b)) => b.to_string(),
            (ColumnType::Boolean, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                b @ ("true" | "false") => b.to_owned(),
                _ => return Err(wrong()),
            },
            (ColumnType::Timestamptz, Value::String(s)) => {
                parse_timestamp(s).ok_or_else(wrong)?.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            }
            (ColumnType::Date, Value::String(s)) => {
                chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| wrong())?.to_string()
            }
            _ => return Err(wrong()),
        };
        if self != ColumnType::Jsonb {
            check_text(&text)?;
        }
        Ok(Some(text))
    }

    /// [`ColumnType::convert`] of a value the caller gives up (a text column keeps the upstream's
    /// string instead of copying it), and for a column an index covers (`indexed`), a size the
    /// index can hold: at most [`INDEXED_VALUE_MAX_BYTES`].
    pub fn convert_checked(self, v: Value, indexed: bool) -> Result<Option<String>, String> {
        let text = match (self, v) {
            (ColumnType::Text, Value::String(s)) => {
                check_text(&s)?;
                Some(s)
            }
            (_, v) => self.convert(&v)?,
        };
        if indexed
            && let Some(t) = &text
            && t.len() > INDEXED_VALUE_MAX_BYTES
        {
            return Err(format!(
                "value is {} bytes, over the {INDEXED_VALUE_MAX_BYTES}-byte limit of an indexed column",
                t.len()
            ));
        }
        Ok(text)
    }
}

/// The largest value written to a column an index covers. A B-tree index entry must fit in a third
/// of a page (2,704 bytes); above it PostgreSQL fails the whole statement ("index row size exceeds
/// maximum"), so the value is refused in Rust first, as one item error. External ids are held to it
/// too (every synced table has a unique index on them).
pub const INDEXED_VALUE_MAX_BYTES: usize = 2000;

/// Why `text` cannot be written as PostgreSQL text: a NUL, or U+FFFD (undecodable upstream bytes).
pub fn check_text(text: &str) -> Result<(), String> {
    if let Some(at) = text.find('\0') {
        return Err(format!("text contains a NUL character (at byte {at})"));
    }
    if let Some(at) = text.find('\u{FFFD}') {
        return Err(format!(
            "undecodable text at byte {at}: the upstream sent bytes that are not UTF-8 or a lone surrogate"
        ));
    }
    Ok(())
}

/// [`check_text`] on every string and key of a JSON value; `path` names the place (`$.a[2].b`).
fn check_json(v: &Value, path: &mut String) -> Result<(), String> {
    match v {
        Value::String(s) => check_text(s).map_err(|e| format!("JSON value at {path}: {e}")),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                check_json(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, item) in map {
                check_text(k).map_err(|e| format!("JSON key {k:?} at {path}: {e}"))?;
                let len = path.len();
                let _ = write!(path, ".{k}");
                check_json(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// RFC 3339, or a naive `YYYY-MM-DD[T ]HH:MM:SS[.f]` read as UTC.
pub fn parse_timestamp(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.to_utc());
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
        .map(|t| t.and_utc())
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 { format!("{}…", &s[..s.floor_char_boundary(60)]) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversions_accept_what_the_type_can_hold() {
        assert_eq!(ColumnType::Bigint.convert(&json!(12)).unwrap().as_deref(), Some("12"));
        assert_eq!(ColumnType::Bigint.convert(&json!("12")).unwrap().as_deref(), Some("12"));
        assert!(ColumnType::Bigint.convert(&json!("many")).unwrap_err().contains("expected bigint, got \"many\""));
        assert!(ColumnType::Integer.convert(&json!(1i64 << 40)).is_err());
        assert_eq!(ColumnType::Text.convert(&json!(null)).unwrap(), None);
        assert!(ColumnType::Text.convert(&json!({"a": 1})).is_err());
        assert_eq!(
            ColumnType::Timestamptz.convert(&json!("2025-03-01T10:00:00-07:00")).unwrap().as_deref(),
            Some("2025-03-01T17:00:00.000000Z")
        );
        assert!(ColumnType::Timestamptz.convert(&json!("yesterday")).is_err());
        assert_eq!(ColumnType::Jsonb.convert(&json!({"a": 1})).unwrap().as_deref(), Some("{\"a\":1}"));
        assert!(ColumnType::Numeric.convert(&json!("NaN")).is_err());
    }

    #[test]
    fn bad_values_are_refused_before_any_statement() {
        for (v, want) in [("True", "true"), ("FALSE", "false"), (" true ", "true")] {
            assert_eq!(ColumnType::Boolean.convert(&json!(v)).unwrap().as_deref(), Some(want));
        }
        assert!(ColumnType::Boolean.convert(&json!("maybe")).is_err());
        assert!(ColumnType::Text.convert(&json!("Ann\0e")).unwrap_err().contains("NUL character (at byte 3)"));
        assert!(ColumnType::Text.convert(&json!("caf\u{FFFD}")).unwrap_err().starts_with("undecodable text"));
        let nul_value = json!({"a": [1, {"b": "x\0"}]});
        assert_eq!(
            ColumnType::Jsonb.convert(&nul_value).unwrap_err(),
            "JSON value at $.a[1].b: text contains a NUL character (at byte 1)"
        );
        assert!(ColumnType::Jsonb.convert(&json!({"k\0": 1})).unwrap_err().starts_with("JSON key \"k\\0\" at $"));
        let long = json!("x".repeat(3000));
        assert!(ColumnType::Text.convert_checked(long.clone(), false).is_ok());
        assert_eq!(
            ColumnType::Text.convert_checked(long, true).unwrap_err(),
            "value is 3000 bytes, over the 2000-byte limit of an indexed column"
        );
    }
}
