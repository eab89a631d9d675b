//! Small helpers shared by the generators and the handlers: timestamps, ids, hashing, query strings.

use rand::RngCore;

/// 2026-01-01T00:00:00Z: generated data lies before this instant, so it never depends on the clock.
pub const EPOCH_END: i64 = 1_767_225_600;

/// A change time `updated` (drawn after `created`) kept before [`EPOCH_END`] without piling the
/// overflow onto one second: times past the end wrap around into `created..EPOCH_END`, so the
/// newest records are as sparse as real ones (an incremental read with a look-back sees a few, not
/// thousands). Uses no randomness, so the rest of a generated data set does not change.
pub fn before_end(created: i64, updated: i64) -> i64 {
    if updated < EPOCH_END { updated } else { created + (updated - created) % (EPOCH_END - created).max(1) }
}
/// One day in seconds.
pub const DAY: i64 = 86_400;

/// Days since 1970-01-01 to a civil (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn push2(out: &mut String, v: u32) {
    out.push((b'0' + (v / 10) as u8) as char);
    out.push((b'0' + (v % 10) as u8) as char);
}

/// Formats epoch seconds shifted by `offset_secs` as `YYYY-MM-DDThh:mm:ss` (no zone).
fn fmt_naive(out: &mut String, secs: i64) {
    let days = secs.div_euclid(DAY);
    let rem = secs.rem_euclid(DAY) as u32;
    let (y, m, d) = civil_from_days(days);
    let y = y as u32;
    push2(out, y / 100);
    push2(out, y % 100);
    out.push('-');
    push2(out, m);
    out.push('-');
    push2(out, d);
    out.push('T');
    push2(out, rem / 3600);
    out.push(':');
    push2(out, rem / 60 % 60);
    out.push(':');
    push2(out, rem % 60);
}

/// `2020-03-31T17:15:17Z` (Northpass, ERP).
pub fn fmt_utc(secs: i64) -> String {
    let mut s = String::with_capacity(20);
    fmt_naive(&mut s, secs);
    s.push('Z');
    s
}

/// `2024-03-19T08:51:12-07:00` (Impartner shows the tenant's offset).
pub fn fmt_offset(secs: i64, offset_secs: i64) -> String {
    let mut s = String::with_capacity(25);
    fmt_naive(&mut s, secs + offset_secs);
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let abs = offset_secs.unsigned_abs() as u32;
    s.push(sign);
    push2(&mut s, abs / 3600);
    s.push(':');
    push2(&mut s, abs / 60 % 60);
    s
}

/// Parses an ISO date-time; a value without a zone is taken as UTC. Also accepts a bare date.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp());
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp())
}

/// Current time in epoch seconds (used only by mutations and writes, never by generation).
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A random v4 UUID drawn from `rng`.
pub fn uuid_v4(rng: &mut impl RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        s.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    s
}

/// SplitMix64: a stateless, well-mixed hash of one u64.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A deterministic value in [0, 1) for (a, b).
pub fn unit(a: u64, b: u64) -> f64 {
    (mix(a ^ mix(b)) >> 11) as f64 / (1u64 << 53) as f64
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes a query component (unreserved characters kept).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0').to_ascii_uppercase());
            out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0').to_ascii_uppercase());
        }
    }
    out
}

/// Splits a query string or form body into decoded `(key, value)` pairs, in order.
pub fn parse_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (url_decode(k), url_decode(v)),
            None => (url_decode(p), String::new()),
        })
        .collect()
}

/// The last value of `key` in `pairs`.
pub fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_times() {
        assert_eq!(fmt_utc(1_585_674_917), "2020-03-31T17:15:17Z");
        assert_eq!(fmt_offset(1_710_859_872, -6 * 3600), "2024-03-19T08:51:12-06:00");
        assert_eq!(parse_time("2020-03-31T17:15:17Z"), Some(1_585_674_917));
        assert_eq!(parse_time("2020-03-31T17:15:17.000"), Some(1_585_674_917));
        assert_eq!(parse_time("2024-03-19T08:51:12-06:00"), Some(1_710_859_872));
    }

    #[test]
    fn decodes_form_pairs() {
        let p = parse_pairs("filter%5Bname%5D=ptr_Acme+Inc&values[0]=a%40b.com&x");
        assert_eq!(p[0], ("filter[name]".into(), "ptr_Acme Inc".into()));
        assert_eq!(p[1], ("values[0]".into(), "a@b.com".into()));
        assert_eq!(p[2], ("x".into(), String::new()));
        assert_eq!(url_encode("a b[c]"), "a%20b%5Bc%5D");
    }
}
