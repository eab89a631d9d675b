//! What the HTTP client shows of a request and of an upstream's answer in logs, spans and errors
//! (which end up in step errors, readable by every viewer):
//!
//! - a URL without user info and fragment, every query value masked ([`url`]): `?page=***&wstoken=***`;
//! - an answer body only as a short excerpt ([`excerpt`], at most [`EXCERPT_CHARS`] characters)
//!   with the values the request carried (header values, query values) replaced by `***` and
//!   anything that looks like a secret masked too (the value after a name such as `token`,
//!   `password`, `key`, `sig`, `access`; after `Bearer` / `Basic`; long mixed letter-digit strings).

use reqwest::Url;

/// Characters of an upstream body kept in an error.
pub const EXCERPT_CHARS: usize = 100;
/// The mask of a hidden value.
const MASK: &str = "***";
/// A query value shorter than this is not treated as a credential to strip (page numbers, limits,
/// `json`).
const MIN_QUERY_SECRET_CHARS: usize = 6;
/// A header value (or the credential after its auth scheme) shorter than this is not stripped.
const MIN_HEADER_SECRET_CHARS: usize = 4;
/// Headers whose values are not credentials.
const PLAIN_HEADERS: &[&str] = &["accept", "content-type", "content-length", "user-agent", "accept-encoding"];
/// Words after which a value is masked (substring of the word, any case).
const SECRET_WORDS: &[&str] = &[
    "token",
    "secret",
    "passw",
    "pwd",
    "key",
    "auth",
    "sig",
    "credential",
    "session",
    "cookie",
    "access",
    "bearer",
    "basic",
    "private",
    "jwt",
];
/// A word at least this long that mixes letters and digits is masked as a likely key or token.
const OPAQUE_CHARS: usize = 20;

/// `url` as logs and errors show it: no user info, no fragment, every query value masked.
pub fn url(url: &Url) -> String {
    let mut shown = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        // Only fails for URLs that cannot have credentials, which then have none.
        shown.set_username("").ok();
        shown.set_password(None).ok();
    }
    shown.set_fragment(None);
    if url.query().is_some() {
        let names: Vec<String> = url.query_pairs().map(|(name, _)| name.into_owned()).collect();
        if names.is_empty() {
            shown.set_query(None);
        } else {
            shown.query_pairs_mut().clear().extend_pairs(names.iter().map(|n| (n.as_str(), MASK)));
        }
    }
    // `extend_pairs` encodes the mask: show it as written.
    shown.to_string().replace("%2A%2A%2A", MASK)
}

/// A URL, link or page token as text: an absolute or relative URL as [`url`] shows it, anything
/// else as a short [`excerpt`].
pub fn link(text: &str) -> String {
    if let Ok(u) = Url::parse(text) {
        return url(&u);
    }
    let base = Url::parse("http://relative.invalid/").expect("a valid base");
    if (text.starts_with('/') || text.starts_with('?'))
        && let Ok(u) = base.join(text)
    {
        let shown = url(&u);
        return shown.strip_prefix("http://relative.invalid").unwrap_or(&shown).to_owned();
    }
    excerpt(text.as_bytes(), &[])
}

/// The values of `request` that may be credentials: every header value but the plain ones
/// (and the credential after an auth scheme such as `Bearer`), every query value of at least
/// [`MIN_QUERY_SECRET_CHARS`] characters. Texts made from the request's answer are [`scrub`]bed of them.
pub(super) fn sensitive_values(request: &reqwest::Request) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value) in request.headers() {
        if PLAIN_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        let value = value.trim();
        if value.chars().count() >= MIN_HEADER_SECRET_CHARS {
            out.push(value.to_owned());
        }
        if let Some((_, credential)) = value.split_once(' ')
            && credential.trim().chars().count() >= MIN_HEADER_SECRET_CHARS
        {
            out.push(credential.trim().to_owned());
        }
    }
    for (_, value) in request.url().query_pairs() {
        if value.chars().count() >= MIN_QUERY_SECRET_CHARS {
            out.push(value.into_owned());
        }
    }
    if let Some(password) = request.url().password() {
        out.push(password.to_owned());
    }
    // Longest first, so a value containing another is replaced whole.
    out.sort_by_key(|v| std::cmp::Reverse(v.len()));
    out.dedup();
    out
}

/// `text` with each of `known` replaced by the mask.
pub(super) fn scrub(text: &str, known: &[String]) -> String {
    let mut out = text.to_owned();
    for value in known.iter().filter(|v| !v.is_empty()) {
        if out.contains(value.as_str()) {
            out = out.replace(value.as_str(), MASK);
        }
    }
    out
}

/// A short excerpt of an upstream's body for an error: the start of it as text, scrubbed of `known`
/// (the request's own values), secret-looking values masked, white space collapsed, at most
/// [`EXCERPT_CHARS`] characters.
pub fn excerpt(body: &[u8], known: &[String]) -> String {
    // Enough to find the excerpt's words even after masking shortened it.
    let head = &body[..body.len().min(EXCERPT_CHARS * 16)];
    let text = scrub(&String::from_utf8_lossy(head), known);
    let masked = mask_secrets(&text);
    let collapsed = masked.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&collapsed, EXCERPT_CHARS)
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '/' | '~' | '%')
}

/// Masks the word after a secret-looking name (`token=…`, `"password": "…"`, `Bearer …`) and
/// long mixed letter-digit words.
fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut after_secret_name = false;
    let mut rest = text;
    while !rest.is_empty() {
        let word_len = rest.find(|c: char| !is_word_char(c)).unwrap_or(rest.len());
        if word_len == 0 {
            let c = rest.chars().next().expect("not empty");
            // Only `=`, `:`, quotes and blanks may stand between a name and its value.
            if !(c.is_whitespace() || matches!(c, '=' | ':' | '"' | '\'')) {
                after_secret_name = false;
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let word = &rest[..word_len];
        rest = &rest[word_len..];
        let lower = word.to_ascii_lowercase();
        let names_secret = SECRET_WORDS.iter().any(|s| lower.contains(s));
        if after_secret_name || looks_opaque(word) {
            out.push_str(MASK);
            // `Authorization: Bearer <token>`: a masked word that names a secret masks the next.
            after_secret_name = names_secret;
        } else {
            out.push_str(word);
            after_secret_name = names_secret;
        }
    }
    out
}

fn looks_opaque(word: &str) -> bool {
    word.chars().count() >= OPAQUE_CHARS
        && word.chars().any(|c| c.is_ascii_digit())
        && word.chars().any(|c| c.is_alphabetic())
}

pub(super) fn truncate(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_hide_user_info_and_every_query_value() {
        let u = Url::parse("https://u:pw@lms.example.com/ws?wstoken=abc&page=2&access=k&sig=s#frag").unwrap();
        assert_eq!(url(&u), "https://lms.example.com/ws?wstoken=***&page=***&access=***&sig=***");
        let with_key = Url::parse("https://u:pw@lms.example.com/ws?wstoken=abc&page=2&api_key=k").unwrap();
        assert_eq!(url(&with_key), "https://lms.example.com/ws?wstoken=***&page=***&api_key=***");
        let plain = Url::parse("https://erp.example.com/api/items").unwrap();
        assert_eq!(url(&plain), plain.as_str());
        assert_eq!(link("/items?cursor=abc"), "/items?cursor=***");
        assert_eq!(link("http://x.example/a?b=c"), "http://x.example/a?b=***");
        assert_eq!(link("opaque-cursor-1"), "opaque-cursor-1");
    }

    #[test]
    fn excerpts_are_short_and_hide_secret_looking_values() {
        let body = br#"{"error": "bad request", "access_token": "s3cr3t", "password":"hunter2", "note": "Authorization: Bearer abc.def"}"#;
        let e = excerpt(body, &[]);
        for secret in ["s3cr3t", "hunter2", "abc.def"] {
            assert!(!e.contains(secret), "{secret} in {e}");
        }
        assert!(e.starts_with(r#"{"error": "bad request""#), "{e}");
        let long = "x".repeat(1000);
        assert_eq!(excerpt(long.as_bytes(), &[]).chars().count(), EXCERPT_CHARS + 1, "the excerpt and …");
        let key = excerpt(b"the key is 9f8e7d6c5b4a39281706f5e4d3c2b1a0 ok", &[]);
        assert!(!key.contains("9f8e7d6c5b4a"), "{key}");
        assert_eq!(excerpt(b"not found:\n  no item 42", &[]), "not found: no item 42");
    }

    #[test]
    fn excerpts_never_carry_the_request_values() {
        let known = vec!["plain-words-credential".to_owned()];
        let e = excerpt(b"you sent plain-words-credential, which is wrong", &known);
        assert_eq!(e, "you sent ***, which is wrong");
    }

    #[test]
    fn the_request_values_include_headers_and_long_query_values() {
        let client = reqwest::Client::new();
        let request = client
            .get("http://h.example/x?page=2&access=query-credential")
            .header("Authorization", "Bearer the-bearer-value")
            .header("X-Api-Key", "static-key")
            .header("Accept", "application/json")
            .build()
            .unwrap();
        let values = sensitive_values(&request);
        for v in ["Bearer the-bearer-value", "the-bearer-value", "static-key", "query-credential"] {
            assert!(values.iter().any(|x| x == v), "{v} in {values:?}");
        }
        assert!(!values.iter().any(|x| x == "2" || x == "application/json"), "{values:?}");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
