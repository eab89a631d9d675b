//! Reading an upstream answer's JSON so that one bad value costs one record, not the page.

use serde_json::Value;

/// Parses an upstream answer as JSON. Bytes that are not UTF-8 (a Latin-1 `é`) or a lone surrogate
/// escape (`"\ud800"`) inside a string are read as U+FFFD, which the conversion refuses
/// ([`crate::sync::table::check_text`]): the one record holding it becomes an item error naming the field, and
/// the rest of the page is written. A body that still does not parse fails as a page, with the
/// place (line, column) and the position of the record in the page's list.
pub fn decode_json(body: &[u8]) -> Result<Value, String> {
    let error = match serde_json::from_slice(body) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if let Some(repaired) = repair(body)
        && let Ok(v) = serde_json::from_str(&repaired)
    {
        return Ok(v);
    }
    let offset = byte_offset(body, error.line(), error.column());
    match record_position(body, offset) {
        Some(n) => Err(format!("{error}, in record {n} of the page")),
        None => Err(error.to_string()),
    }
}

/// `body` with invalid UTF-8 and lone surrogate escapes replaced by U+FFFD; `None` when it has none.
fn repair(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let mut changed = matches!(text, std::borrow::Cow::Owned(_));
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().filter(|_| s.bytes().all(|b| b.is_ascii_hexdigit()));
    let mut out = String::with_capacity(text.len());
    let mut rest: &str = &text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let unit = tail.get(2..6).filter(|_| tail[1..].starts_with('u')).and_then(hex);
        match unit {
            Some(0xD800..=0xDBFF) => {
                let low = tail.get(8..12).filter(|_| tail[6..].starts_with("\\u")).and_then(hex);
                if low.is_some_and(|l| (0xDC00..=0xDFFF).contains(&l)) {
                    out.push_str(&tail[..12]);
                    rest = &tail[12..];
                } else {
                    out.push_str("\\uFFFD");
                    changed = true;
                    rest = &tail[6..];
                }
            }
            Some(0xDC00..=0xDFFF) => {
                out.push_str("\\uFFFD");
                changed = true;
                rest = &tail[6..];
            }
            _ => {
                // Any other escape: copied as it is, with the escaped character.
                let len = tail[1..].chars().next().map_or(1, |c| 1 + c.len_utf8());
                out.push_str(&tail[..len]);
                rest = &tail[len..];
            }
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// The byte offset of `line` and `column` (1-based, as `serde_json` counts them).
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let start: usize = body.split(|b| *b == b'\n').take(line.saturating_sub(1)).map(|l| l.len() + 1).sum();
    (start + column.saturating_sub(1)).min(body.len())
}

/// Which item (1-based) of the page's record list holds byte `offset`: the list is the body itself
/// when it is an array, else the first array value of the top-level object (`data`, `items`).
fn record_position(body: &[u8], offset: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut list: Option<(usize, usize)> = None; // (depth inside the list, records begun)
    for &b in &body[..offset.min(body.len())] {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if b == b'[' && list.is_none() && depth <= 2 {
                    list = Some((depth, 0));
                }
            }
            b']' | b'}' => {
                if list.is_some_and(|(d, _)| d == depth) {
                    return None;
                }
                depth = depth.saturating_sub(1);
            }
            b',' => {
                if let Some((d, n)) = &mut list
                    && *d == depth
                {
                    *n += 1;
                }
            }
            _ => {}
        }
    }
    list.map(|(_, n)| n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_text_is_one_value_not_a_page() {
        let latin1 = b"{\"data\":[{\"id\":\"1\",\"name\":\"Ann\"},{\"id\":\"2\",\"name\":\"Jos\xe9\"}]}";
        let v = decode_json(latin1).unwrap();
        assert_eq!(v["data"][1]["name"], "Jos\u{FFFD}");
        assert_eq!(v["data"][0]["name"], "Ann");
        let surrogate = br#"[{"id":"1","name":"a\ud800b"},{"id":"2","name":"\ud83d\ude00 \"\\u\u00e9"}]"#;
        let v = decode_json(surrogate).unwrap();
        assert_eq!(v[0]["name"], "a\u{FFFD}b");
        assert_eq!(v[1]["name"], "\u{1F600} \"\\u\u{e9}", "pairs and other escapes stay");
        let broken = b"{\"data\":[{\"id\":1},{\"id\":2},{\"id\":3,,}]}";
        let e = decode_json(broken).unwrap_err();
        assert!(e.ends_with("in record 3 of the page"), "{e}");
    }
}
