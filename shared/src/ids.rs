//! Newtypes for identifiers, built only through `parse`/constructors and tested here.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} `{value}`: {reason}")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// A chain run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct RunId(pub Uuid);

impl RunId {
    pub fn new() -> Self {
        RunId(Uuid::now_v7())
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RunId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(RunId).map_err(|_| IdError { kind: "run id", value: s.to_owned(), reason: "not a UUID" })
    }
}

/// A name used in keys and task ids: lowercase letters, digits, `_` and `-`, 1–63 characters.
fn check_name(kind: &'static str, s: &str) -> Result<(), IdError> {
    let ok_chars = s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    let err = |reason| Err(IdError { kind, value: s.to_owned(), reason });
    if s.is_empty() || s.len() > 63 {
        return err("must be 1 to 63 characters");
    }
    if !ok_chars {
        return err("only lowercase letters, digits, `_` and `-` are allowed");
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return err("must start with a letter or digit");
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$m:meta])* $name:ident, $kind:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_name($kind, s)?;
                Ok(Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }
        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// An integration (one tenant's connection to one upstream), e.g. `acme-northpass`.
    IntegrationName,
    "integration name"
);
name_type!(
    /// A chain declared by a pack, e.g. `partner_daily`.
    ChainName,
    "chain name"
);
name_type!(
    /// A step of a chain, e.g. `sync_users`.
    StepName,
    "step name"
);

/// What a step writes; at most one job per entity key runs anywhere in the fleet.
/// `{integration}:{step}` (or the step's declared entity), plus `:{shard}` for a fan-out slice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntityKey(String);

impl EntityKey {
    pub fn new(integration: &IntegrationName, entity: &str, shard: Option<i32>) -> Self {
        match shard {
            Some(s) => EntityKey(format!("{integration}:{entity}:{s}")),
            None => EntityKey(format!("{integration}:{entity}")),
        }
    }
    pub fn from_stored(s: String) -> Self {
        EntityKey(s)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of an upstream record (`(integration_id, external_id)` keys every synced row).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExternalId(String);

impl ExternalId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(IdError { kind: "external id", value: s.to_owned(), reason: "is empty" });
        }
        if t.len() > 255 {
            return Err(IdError { kind: "external id", value: s.to_owned(), reason: "is longer than 255" });
        }
        Ok(ExternalId(t.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ExternalId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}
impl From<ExternalId> for String {
    fn from(e: ExternalId) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_and_refuse() {
        assert!(IntegrationName::parse("acme-northpass_1").is_ok());
        assert!(IntegrationName::parse("").is_err());
        assert!(IntegrationName::parse("Acme").is_err());
        assert!(IntegrationName::parse("a:b").is_err());
        assert!(StepName::parse("-x").is_err());
        assert!(ChainName::parse(&"x".repeat(64)).is_err());
        let e = StepName::parse("a b").unwrap_err();
        assert_eq!(e.kind, "step name");
    }

    #[test]
    fn names_deserialize_through_parse() {
        let ok: StepName = serde_json::from_str("\"sync_users\"").unwrap();
        assert_eq!(ok.as_str(), "sync_users");
        assert!(serde_json::from_str::<StepName>("\"Sync Users\"").is_err());
    }

    #[test]
    fn entity_keys() {
        let i = IntegrationName::parse("acme").unwrap();
        assert_eq!(EntityKey::new(&i, "sync_users", None).as_str(), "acme:sync_users");
        assert_eq!(EntityKey::new(&i, "enroll", Some(3)).as_str(), "acme:enroll:3");
    }

    #[test]
    fn external_ids_trim_and_refuse_empty() {
        assert_eq!(ExternalId::parse(" 42 ").unwrap().as_str(), "42");
        assert!(ExternalId::parse("  ").is_err());
    }

    #[test]
    fn run_ids_parse() {
        let r = RunId::new();
        assert_eq!(r.to_string().parse::<RunId>().unwrap(), r);
        assert!("nope".parse::<RunId>().is_err());
    }
}
