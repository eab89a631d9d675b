//! The SQL-like `filter` of Impartner objects v1: `=`, `!=`/`<>`, `>`, `>=`, `<`, `<=`, `like`,
//! `in (…)`, `not in (…)`, `= null`, `and`/`or`, parentheses; field names case-insensitive, text
//! compared case-insensitively (SQL Server collation), `'` escaped as `\'` or `''`.
//! Also parses `orderby` (`Name desc, Id`) and `fields`.

use std::cmp::Ordering;

use crate::data::impartner::{FieldType, Record, Schema, Val};
use crate::util::parse_time;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    Op(&'static str),
    Str(String),
    Num(f64),
    Word(String),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '=' => {
                out.push(Tok::Op("="));
                i += if chars.get(i + 1) == Some(&'=') { 2 } else { 1 };
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Op("!="));
                i += 2;
            }
            '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let op = match (c, next) {
                    ('<', Some('>')) => "!=",
                    ('<', Some('=')) => "<=",
                    ('>', Some('=')) => ">=",
                    ('<', _) => "<",
                    _ => ">",
                };
                i += if op.len() == 2 { 2 } else { 1 };
                out.push(Tok::Op(op));
            }
            '\'' | '"' => {
                let quote = c;
                let mut lit = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('\\') if chars.get(i + 1) == Some(&quote) => {
                            lit.push(quote);
                            i += 2;
                        }
                        Some(&q) if q == quote && chars.get(i + 1) == Some(&quote) => {
                            lit.push(quote);
                            i += 2;
                        }
                        Some(&q) if q == quote => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            lit.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(lit));
            }
            c if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                out.push(Tok::Num(text.parse().map_err(|_| format!("bad number {text}"))?));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

/// A literal converted to the field's type.
#[derive(Debug, Clone)]
pub enum Lit {
    Null,
    Num(f64),
    Text(String),
    Bool(bool),
    Time(i64),
}

#[derive(Debug, Clone)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp { field: usize, op: &'static str, lit: Lit },
    In { field: usize, lits: Vec<Lit>, negate: bool },
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    schema: &'a Schema,
}

fn is_kw(t: Option<&Tok>, kw: &str) -> bool {
    matches!(t, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while is_kw(self.peek(), "or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.atom()?;
        while is_kw(self.peek(), "and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.atom()?));
        }
        Ok(left)
    }
    fn literal(&mut self, ty: FieldType) -> Result<Lit, String> {
        let tok = self.next().ok_or("missing value")?;
        let lit = match tok {
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => return Ok(Lit::Null),
            Tok::Word(w) if w.eq_ignore_ascii_case("true") => Lit::Bool(true),
            Tok::Word(w) if w.eq_ignore_ascii_case("false") => Lit::Bool(false),
            Tok::Str(s) => Lit::Text(s),
            Tok::Num(n) => Lit::Num(n),
            other => return Err(format!("expected a value, found {other:?}")),
        };
        Ok(match (ty, lit) {
            (FieldType::Int | FieldType::Float, Lit::Text(s)) => {
                Lit::Num(s.trim().parse().map_err(|_| format!("'{s}' is not a number"))?)
            }
            (FieldType::Int | FieldType::Float, Lit::Bool(b)) => Lit::Num(if b { 1.0 } else { 0.0 }),
            (FieldType::Bool, Lit::Text(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" => Lit::Bool(true),
                "false" | "0" => Lit::Bool(false),
                _ => return Err(format!("'{s}' is not a boolean")),
            },
            (FieldType::Bool, Lit::Num(n)) => Lit::Bool(n != 0.0),
            (FieldType::Time, Lit::Text(s)) => Lit::Time(parse_time(&s).ok_or_else(|| format!("'{s}' is not a date"))?),
            (FieldType::Text, Lit::Num(n)) => Lit::Text(n.to_string()),
            (FieldType::Text, Lit::Text(s)) => Lit::Text(s.to_lowercase()),
            (_, l) => l,
        })
    }
    fn atom(&mut self) -> Result<Expr, String> {
        match self.next() {
            Some(Tok::LParen) => {
                let e = self.or()?;
                match self.next() {
                    Some(Tok::RParen) => Ok(e),
                    _ => Err("missing )".into()),
                }
            }
            Some(Tok::Word(name)) => {
                let field = self
                    .schema
                    .field(&name)
                    .ok_or_else(|| format!("Unknown field '{name}' on {}", self.schema.entity))?;
                let ty = self.schema.fields[field].ty;
                let negate = is_kw(self.peek(), "not");
                if negate {
                    self.pos += 1;
                }
                if is_kw(self.peek(), "in") {
                    self.pos += 1;
                    if self.next() != Some(Tok::LParen) {
                        return Err("expected ( after in".into());
                    }
                    let mut lits = vec![self.literal(ty)?];
                    loop {
                        match self.next() {
                            Some(Tok::Comma) => lits.push(self.literal(ty)?),
                            Some(Tok::RParen) => break,
                            _ => return Err("expected , or ) in list".into()),
                        }
                    }
                    return Ok(Expr::In { field, lits, negate });
                }
                if negate {
                    return Err("expected in after not".into());
                }
                let op = match self.next() {
                    Some(Tok::Op(op)) => op,
                    Some(Tok::Word(w)) if w.eq_ignore_ascii_case("like") => "like",
                    Some(Tok::Word(w)) if w.eq_ignore_ascii_case("is") => {
                        if is_kw(self.peek(), "not") {
                            self.pos += 1;
                            "!="
                        } else {
                            "="
                        }
                    }
                    other => {
                        return Err(format!("expected an operator after {name}, found {other:?}"));
                    }
                };
                let lit = self.literal(ty)?;
                Ok(Expr::Cmp { field, op, lit })
            }
            other => Err(format!("expected a field name, found {other:?}")),
        }
    }
}

/// Parses a filter for `schema`; the message explains a syntax error or an unknown field.
pub fn parse(filter: &str, schema: &Schema) -> Result<Expr, String> {
    let toks = tokenize(filter)?;
    let mut p = Parser { toks, pos: 0, schema };
    let e = p.or()?;
    if p.pos < p.toks.len() {
        return Err(format!("unexpected {:?}", p.toks[p.pos]));
    }
    Ok(e)
}

fn like(text: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('%').collect();
    if parts.len() == 1 {
        return text == pattern;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return part.is_empty() || rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

fn compare(v: &Val, lit: &Lit) -> Option<Ordering> {
    match (v, lit) {
        (Val::Int(a), Lit::Num(b)) => (*a as f64).partial_cmp(b),
        (Val::Float(a), Lit::Num(b)) => a.partial_cmp(b),
        (Val::Text(a), Lit::Text(b)) => Some(a.to_lowercase().cmp(b)),
        (Val::Bool(a), Lit::Bool(b)) => Some(a.cmp(b)),
        (Val::Time(a), Lit::Time(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn eval_cmp(v: &Val, op: &str, lit: &Lit) -> bool {
    if let Lit::Null = lit {
        let is_null = matches!(v, Val::Null);
        return if op == "!=" { !is_null } else { op == "=" && is_null };
    }
    if matches!(v, Val::Null) {
        return false;
    }
    if op == "like" {
        return match (v, lit) {
            (Val::Text(a), Lit::Text(p)) => like(&a.to_lowercase(), p),
            _ => false,
        };
    }
    let Some(ord) = compare(v, lit) else {
        return false;
    };
    match op {
        "=" => ord == Ordering::Equal,
        "!=" => ord != Ordering::Equal,
        ">" => ord == Ordering::Greater,
        ">=" => ord != Ordering::Less,
        "<" => ord == Ordering::Less,
        "<=" => ord != Ordering::Greater,
        _ => false,
    }
}

impl Expr {
    pub fn eval(&self, r: &Record) -> bool {
        match self {
            Expr::And(a, b) => a.eval(r) && b.eval(r),
            Expr::Or(a, b) => a.eval(r) || b.eval(r),
            Expr::Cmp { field, op, lit } => eval_cmp(&r.vals[*field], op, lit),
            Expr::In { field, lits, negate } => {
                let v = &r.vals[*field];
                if matches!(v, Val::Null) {
                    return false;
                }
                lits.iter().any(|l| eval_cmp(v, "=", l)) != *negate
            }
        }
    }
}

/// `orderby=Name desc, Id` → (field, descending).
pub fn parse_orderby(s: &str, schema: &Schema) -> Result<Vec<(usize, bool)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let mut words = part.split_whitespace();
            let name = words.next().unwrap_or("");
            let field = schema.field(name).ok_or_else(|| format!("Unknown field '{name}' in orderby"))?;
            let desc = words.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
            Ok((field, desc))
        })
        .collect()
}

/// `fields=Id,Name` → indexes (always starting with `Id`); `None` = every field.
pub fn parse_fields(s: Option<&str>, schema: &Schema) -> Result<Vec<usize>, String> {
    let Some(s) = s.filter(|s| !s.trim().is_empty()) else {
        return Ok((0..schema.fields.len()).collect());
    };
    let mut out = vec![0];
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let f = schema.field(name).ok_or_else(|| format!("Unknown field '{name}' on {}", schema.entity))?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

pub fn cmp_vals(a: &Val, b: &Val) -> Ordering {
    match (a, b) {
        (Val::Null, Val::Null) => Ordering::Equal,
        (Val::Null, _) => Ordering::Less,
        (_, Val::Null) => Ordering::Greater,
        (Val::Int(x), Val::Int(y)) => x.cmp(y),
        (Val::Float(x), Val::Float(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Val::Text(x), Val::Text(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
        (Val::Bool(x), Val::Bool(y)) => x.cmp(y),
        (Val::Time(x), Val::Time(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::impartner::{account_schema, user_schema};

    fn user(email: &str, active: bool, account: i64) -> Record {
        let s = user_schema();
        let mut vals = vec![Val::Null; s.fields.len()];
        vals[0] = Val::Int(7);
        vals[s.field("Email").unwrap_or(0)] = Val::text(email);
        vals[s.field("IsActive").unwrap_or(0)] = Val::Bool(active);
        vals[s.field("AccountId").unwrap_or(0)] = Val::Int(account);
        vals[s.field("Updated").unwrap_or(0)] = Val::Time(1_767_225_600);
        Record { vals }
    }

    #[test]
    fn evaluates_the_operators_clients_use() {
        let s = user_schema();
        let r = user("Pat@Acme.example", true, 101);
        let t = |f: &str| parse(f, s).map(|e| e.eval(&r));
        assert_eq!(t("email='pat@acme.example'"), Ok(true));
        assert_eq!(t("Email != 'x@y.com' and IsActive = true"), Ok(true));
        assert_eq!(t("AccountId in (100, 101)"), Ok(true));
        assert_eq!(t("AccountId not in (100, 101)"), Ok(false));
        assert_eq!(t("Title != null"), Ok(false));
        assert_eq!(t("Title = null or AccountId > 200"), Ok(true));
        assert_eq!(t("(Updated > '2025-12-31T00:00:00.000')"), Ok(true));
        assert_eq!(t("Updated > '2026-01-02T00:00:00'"), Ok(false));
        assert_eq!(t("Email like '%@acme.example'"), Ok(true));
        assert_eq!(t("Email = 'o\\'brien@x.com'"), Ok(false));
        assert!(t("Nope = 1").is_err());
        assert!(t("Email eq 'x'").is_err());
        assert!(parse("Name = 'A'", account_schema()).is_ok());
    }
}
