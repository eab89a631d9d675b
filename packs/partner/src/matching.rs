//! Matching LMS groups to partners by name, most certain first: the exact name, then the name after
//! the partner prefix (`ptr_`), then a fuzzy key that ignores case, punctuation, whitespace and legal
//! suffixes (Inc, LLC, GmbH, Ltd, …). A stage that finds more than one partner reports the group as
//! ambiguous; a group no stage matches is unmatched. Nothing is guessed.

use std::collections::HashMap;

use super::settings::GroupMatching;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Exact,
    Prefix,
    Fuzzy,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Exact => "exact",
            Method::Prefix => "prefix",
            Method::Fuzzy => "fuzzy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Linked {
        partner: String,
        method: Method,
    },
    /// Partner ids that matched equally well (sorted).
    Ambiguous {
        method: Method,
        candidates: Vec<String>,
    },
    Unmatched,
    /// The group of every partner user: belongs to no single partner.
    AllPartners,
}

/// A partner: id and name.
pub struct Partner<'a> {
    pub id: &'a str,
    pub name: &'a str,
}

pub struct Matcher<'a> {
    rules: &'a GroupMatching,
    exact: HashMap<&'a str, Vec<&'a str>>,
    fuzzy: HashMap<String, Vec<&'a str>>,
    suffixes: Vec<Vec<String>>,
}

impl<'a> Matcher<'a> {
    pub fn new(rules: &'a GroupMatching, partners: &[Partner<'a>]) -> Self {
        let suffixes: Vec<Vec<String>> =
            rules.legal_suffixes.iter().map(|s| tokens(s)).filter(|t: &Vec<String>| !t.is_empty()).collect();
        let mut m = Matcher { rules, exact: HashMap::new(), fuzzy: HashMap::new(), suffixes };
        for p in partners {
            m.exact.entry(p.name).or_default().push(p.id);
            let key = m.key(p.name);
            if !key.is_empty() {
                m.fuzzy.entry(key).or_default().push(p.id);
            }
        }
        m
    }

    /// The fuzzy key: without the prefix, punctuation and trailing legal suffixes, lower case, no
    /// whitespace.
    pub fn key(&self, name: &str) -> String {
        let mut t = tokens(self.strip_prefix(name).unwrap_or(name));
        'strip: loop {
            for s in &self.suffixes {
                if t.len() > s.len() && t.ends_with(s) {
                    t.truncate(t.len() - s.len());
                    continue 'strip;
                }
            }
            break;
        }
        t.concat()
    }

    fn strip_prefix<'n>(&self, name: &'n str) -> Option<&'n str> {
        let p = &self.rules.prefix;
        name.get(..p.len()).filter(|head| head.eq_ignore_ascii_case(p)).map(|_| name[p.len()..].trim())
    }

    pub fn group(&self, name: &str) -> Match {
        if name.trim().eq_ignore_ascii_case(self.rules.all_partners_group.trim()) {
            return Match::AllPartners;
        }
        let decide = |ids: &[&str], method| {
            let mut ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
            ids.sort();
            ids.dedup();
            if ids.len() == 1 {
                Match::Linked { partner: ids.remove(0), method }
            } else {
                Match::Ambiguous { method, candidates: ids }
            }
        };
        if let Some(ids) = self.exact.get(name) {
            return decide(ids, Method::Exact);
        }
        if let Some(ids) = self.strip_prefix(name).and_then(|n| self.exact.get(n)) {
            return decide(ids, Method::Prefix);
        }
        match self.fuzzy.get(&self.key(name)) {
            Some(ids) => decide(ids, Method::Fuzzy),
            None => Match::Unmatched,
        }
    }
}

/// Lower-case words with punctuation removed (`"Acme, Inc."` → `["acme", "inc"]`).
fn tokens(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect::<String>())
        .filter(|w| !w.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher_for<'a>(rules: &'a GroupMatching, partners: &'a [(&'a str, &'a str)]) -> Matcher<'a> {
        let ps: Vec<Partner<'a>> = partners.iter().map(|(id, name)| Partner { id, name }).collect();
        Matcher::new(rules, &ps)
    }

    #[test]
    fn stages_from_exact_to_fuzzy() {
        let rules = GroupMatching::default();
        let partners = [
            ("1", "Acme Solutions, Inc."),
            ("2", "Blue Fin Systems GmbH"),
            ("3", "Nordic Data Pty Ltd"),
            ("4", "Twin Co LLC"),
            ("5", "Twin Co Ltd"),
            ("6", "Delta-Ray S.A."),
        ];
        let m = matcher_for(&rules, &partners);
        let linked = |p: &str, method| Match::Linked { partner: p.into(), method };
        assert_eq!(m.group("Acme Solutions, Inc."), linked("1", Method::Exact));
        assert_eq!(m.group("ptr_Acme Solutions, Inc."), linked("1", Method::Prefix));
        assert_eq!(m.group("PTR_Acme Solutions, Inc."), linked("1", Method::Prefix));
        assert_eq!(m.group("acme solutions, inc."), linked("1", Method::Fuzzy));
        assert_eq!(m.group("ACME SOLUTIONS INC"), linked("1", Method::Fuzzy));
        assert_eq!(m.group("Acme Solutions"), linked("1", Method::Fuzzy));
        assert_eq!(m.group("Acme Solutions Ltd"), linked("1", Method::Fuzzy));
        assert_eq!(m.group("ptr_acme  solutions,  inc."), linked("1", Method::Fuzzy));
        assert_eq!(m.group("Blue Fin Systems"), linked("2", Method::Fuzzy));
        assert_eq!(m.group("Nordic Data"), linked("3", Method::Fuzzy));
        assert_eq!(m.group("DeltaRay SA"), linked("6", Method::Fuzzy));
        assert_eq!(
            m.group("Twin Co"),
            Match::Ambiguous { method: Method::Fuzzy, candidates: vec!["4".into(), "5".into()] }
        );
        assert_eq!(m.group("Twin Co LLC"), linked("4", Method::Exact));
        assert_eq!(m.group("Customer Cohort 3"), Match::Unmatched);
        assert_eq!(m.group("ptr_Acme Holdings 3"), Match::Unmatched);
        assert_eq!(m.group("all partners"), Match::AllPartners);
    }

    #[test]
    fn a_name_is_never_reduced_to_its_suffix() {
        let rules = GroupMatching::default();
        let partners = [("1", "Inc"), ("2", "Co Ltd")];
        let m = matcher_for(&rules, &partners);
        assert_eq!(m.key("Inc"), "inc");
        assert_eq!(m.key("Co Ltd"), "co");
        assert_eq!(m.group("co"), Match::Linked { partner: "2".into(), method: Method::Fuzzy });
    }
}
