//! Start-up configuration of the sandbox: seed, scale, tokens and the initial fault settings per API.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::SandboxError;

/// How much data the sandbox generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// A few hundred records per resource, every quirk present: for tests.
    #[default]
    Small,
    /// The size of a real tenant (22K LMS people, 40K contacts, ...).
    Seed,
    /// Ten times `Seed`.
    Large,
}

impl Scale {
    /// Multiplier applied to the `seed` sizes (small is its own table).
    pub(crate) fn factor(self) -> usize {
        match self {
            Scale::Small | Scale::Seed => 1,
            Scale::Large => 10,
        }
    }
}

impl fmt::Display for Scale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scale::Small => "small",
            Scale::Seed => "seed",
            Scale::Large => "large",
        })
    }
}

impl FromStr for Scale {
    type Err = SandboxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "small" => Ok(Scale::Small),
            "seed" => Ok(Scale::Seed),
            "large" => Ok(Scale::Large),
            other => Err(SandboxError::UnknownScale(other.to_string())),
        }
    }
}

/// One of the imitated upstream APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Northpass,
    Impartner,
    Moodle,
    Erp,
}

impl Api {
    pub const ALL: [Api; 4] = [Api::Northpass, Api::Impartner, Api::Moodle, Api::Erp];

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Northpass => "northpass",
            Api::Impartner => "impartner",
            Api::Moodle => "moodle",
            Api::Erp => "erp",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Api {
    type Err = SandboxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "northpass" => Ok(Api::Northpass),
            "impartner" => Ok(Api::Impartner),
            "moodle" => Ok(Api::Moodle),
            "erp" => Ok(Api::Erp),
            other => Err(SandboxError::UnknownApi(other.to_string())),
        }
    }
}

/// Fault injection for one API. All off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSettings {
    /// Added to every request of the API.
    pub latency_ms: u64,
    /// Requests per second per credential; `None` = unlimited. Beyond it: 429 with `Retry-After: 1`.
    pub rate_per_sec: Option<u32>,
    /// Share (0..=1) of requests answered 500/502/503 in the API's own error envelope.
    pub error_5xx_share: f64,
    /// Share (0..=1) of requests that hang (30 s or until shutdown) so the client's timeout fires.
    pub timeout_share: f64,
    /// List pages end early while the reported total / `links.next` stay as if complete.
    pub truncate_page: bool,
    /// List endpoints answer an empty list (total 0, no next page) however much data there is: the
    /// upstream hiccup a deletion guard must not take for "everything was deleted".
    #[serde(default)]
    pub empty_list: bool,
    /// Share (0..=1) of list items that lose their id or carry a wrong-typed field.
    pub malformed_share: f64,
    /// Ids always served malformed, on top of `malformed_share` (Northpass: the internal record key).
    #[serde(default)]
    pub malformed_ids: Vec<u64>,
    /// Endpoints the latency, timeout and 5xx faults apply to, named as the counters name them
    /// (`GET /northpass/v2/people`); empty = every endpoint of the API.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Moodle only: calls answered with HTTP 200 and Moodle's error envelope (`{"exception", …}`)
    /// instead of data. Each entry is a function (`core_course_get_categories`), or a function and
    /// one parameter it was called with (`core_course_get_courses_by_field:value=12`,
    /// `core_enrol_get_enrolled_users:courseid=7`); `[]` = none.
    #[serde(default)]
    pub exceptions: Vec<String>,
    /// Calls answered with a valid answer that lists nothing, however much data there is: the
    /// upstream that "forgets" one scope, which a scoped sweep's guard must not take for "all of it
    /// was deleted". Moodle: named as in `exceptions` (`core_course_get_courses_by_field:value=12`,
    /// `core_enrol_get_enrolled_users:courseid=7`). Northpass: a list's path under the API
    /// (`/transcripts/{person id}`, `/groups/{id}/memberships`). `[]` = none.
    #[serde(default)]
    pub empty_answers: Vec<String>,
    /// List pages (1-based page numbers; Impartner: `skip / take + 1`) that answer the previous
    /// page's items again, with links and totals as usual: the paging bug that serves some records
    /// twice and never serves others. `[]` = none.
    #[serde(default)]
    pub repeat_pages: Vec<u32>,
    /// Values served odd in records (Northpass lists and course properties, Impartner searches): a
    /// NUL inside a value, a 3,000-character value, a byte that is not UTF-8, a lone surrogate
    /// escape, a boolean as `"True"` / `"False"`. `[]` = none.
    #[serde(default)]
    pub odd_values: Vec<OddValue>,
    /// Northpass only: lists answered 500 in the API's error envelope on every call, whatever the
    /// other faults say: one broken record upstream (a person's `/transcripts/{person id}`). Named
    /// by the list's path under the API, as in `empty_answers`. `[]` = none.
    #[serde(default)]
    pub failing_answers: Vec<String>,
    /// Moodle only: calls (named as in `exceptions`) answered with the envelope Moodle sends when the
    /// token's user lacks the capability the function checks: `required_capability_exception`
    /// (`nopermissions`), "Sorry, but you do not currently have permissions to do that (…)".
    #[serde(default)]
    pub capability_exceptions: Vec<String>,
    /// Moodle only: `core_enrol_get_enrolled_users` leaves out every user's `groups` key, as Moodle
    /// does when the token's user lacks `moodle/site:accessallgroups`.
    #[serde(default)]
    pub no_groups: bool,
}

impl FaultSettings {
    /// Whether a Moodle call of `function` with `pairs` is answered with the error envelope.
    pub fn moodle_exception(&self, function: &str, pairs: &[(String, String)]) -> bool {
        names_call(&self.exceptions, function, pairs)
    }

    /// Whether a Moodle call of `function` with `pairs` is refused for a missing capability.
    pub fn moodle_capability(&self, function: &str, pairs: &[(String, String)]) -> bool {
        names_call(&self.capability_exceptions, function, pairs)
    }

    /// Whether a Moodle call of `function` with `pairs` is answered with nothing to list.
    pub fn moodle_empty(&self, function: &str, pairs: &[(String, String)]) -> bool {
        names_call(&self.empty_answers, function, pairs)
    }

    /// Whether the list at `path` (under the API) fails on every call.
    pub fn fails(&self, path: &str) -> bool {
        self.failing_answers.iter().any(|p| p == path)
    }

    /// Whether the list at `path` (under the API) answers nothing.
    pub fn empties(&self, path: &str) -> bool {
        self.empty_list || self.empty_answers.iter().any(|p| p == path)
    }

    /// Whether item `id` of `api` is served malformed: every id in `malformed_ids`, plus the same share
    /// of items for the same seed and `malformed_share`.
    pub fn serves_malformed(&self, api: Api, seed: u64, id: u64) -> bool {
        if self.malformed_ids.contains(&id) {
            return true;
        }
        let salt: u64 = match api {
            Api::Northpass => 0x6d61_6c66,
            Api::Impartner => 0x696d_7072,
            Api::Moodle => 0x6d6f_6f64,
            Api::Erp => 0x0065_7270,
        };
        self.malformed_share > 0.0 && crate::util::unit(seed ^ salt, id) < self.malformed_share
    }
}

/// One odd value: `{"id": "42", "field": "attributes.email", "kind": "long"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OddValue {
    /// The record's id as served (`"*"`: every record).
    pub id: String,
    /// Where the value is in the served record, keys joined by dots (`attributes.properties.name`,
    /// Impartner `isActive`).
    pub field: String,
    pub kind: OddKind,
}

/// How a value is served odd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OddKind {
    /// A NUL character inside the value (`"An\u0000n"`), in a text or inside a JSON value.
    Nul,
    /// The value made 3,000 characters long (an email keeps its `@domain`).
    Long,
    /// One Latin-1 byte (`0xE9`, `é`) in the value: the body is no longer valid UTF-8.
    Latin1,
    /// A lone surrogate escape (`\ud800`) in the value.
    Surrogate,
    /// A boolean served as the string `"True"` / `"False"`.
    StringBool,
}

impl FaultSettings {
    /// Whether list page `page` (1-based) answers the previous page's items.
    pub fn repeats(&self, page: usize) -> bool {
        page > 1 && self.repeat_pages.iter().any(|p| *p as usize == page)
    }

    /// The odd values of the record with id `id`.
    pub fn odd_values_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a OddValue> + 'a {
        self.odd_values.iter().filter(move |o| o.id == "*" || o.id == id)
    }
}

/// Whether `calls` names a Moodle call of `function` with `pairs`: the function, or the function and
/// one parameter it was called with (`function:key=value`).
fn names_call(calls: &[String], function: &str, pairs: &[(String, String)]) -> bool {
    calls.iter().any(|e| match e.split_once(':') {
        None => e == function,
        Some((f, param)) => {
            f == function && param.split_once('=').is_some_and(|(k, v)| pairs.iter().any(|(pk, pv)| pk == k && pv == v))
        }
    })
}

impl Default for FaultSettings {
    fn default() -> Self {
        FaultSettings {
            latency_ms: 0,
            rate_per_sec: None,
            error_5xx_share: 0.0,
            timeout_share: 0.0,
            truncate_page: false,
            empty_list: false,
            malformed_share: 0.0,
            malformed_ids: Vec::new(),
            routes: Vec::new(),
            exceptions: Vec::new(),
            empty_answers: Vec::new(),
            repeat_pages: Vec::new(),
            odd_values: Vec::new(),
            failing_answers: Vec::new(),
            capability_exceptions: Vec::new(),
            no_groups: false,
        }
    }
}

/// Everything the sandbox needs to start.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub seed: u64,
    pub scale: Scale,
    /// Number of ERP items to generate instead of the scale's (`None` = the scale's number).
    pub erp_items: Option<usize>,
    /// `Authorization: Bearer <control_token>` on `/_sandbox/...`.
    pub control_token: String,
    /// `X-Api-Key` for Northpass.
    pub northpass_key: String,
    /// `Authorization: prm-key <impartner_key>`.
    pub impartner_key: String,
    /// Accepted value of `X-PRM-TenantId` (the header itself is optional).
    pub impartner_tenant: String,
    /// Moodle `wstoken`.
    pub moodle_token: String,
    /// ERP `Authorization: Bearer <erp_token>`.
    pub erp_token: String,
    /// Northpass rate limit per API key (default `Some(10)`, as documented upstream).
    pub northpass_rate_per_sec: Option<u32>,
    /// Impartner rate limit (default unlimited).
    pub impartner_rate_per_sec: Option<u32>,
    /// Moodle rate limit (default unlimited; a WAF would answer 429).
    pub moodle_rate_per_sec: Option<u32>,
    /// ERP rate limit (default unlimited).
    pub erp_rate_per_sec: Option<u32>,
    /// Share of courses whose single `GET /v2/properties/courses/{id}` answers 403 (default 0.05).
    pub properties_forbidden_share: f64,
    /// How long a "timeout" fault hangs before answering 504 (default 30 s; shutdown ends it sooner).
    pub timeout_fault_secs: u64,
    /// Initial fault settings per API; their `rate_per_sec` is ignored in favour of the fields above.
    pub northpass_faults: FaultSettings,
    pub impartner_faults: FaultSettings,
    pub moodle_faults: FaultSettings,
    pub erp_faults: FaultSettings,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            seed: 42,
            scale: Scale::Small,
            erp_items: None,
            control_token: "sandbox-control".into(),
            northpass_key: "np-key".into(),
            impartner_key: "prm-key".into(),
            impartner_tenant: "1".into(),
            moodle_token: "moodle-token".into(),
            erp_token: "erp-token".into(),
            northpass_rate_per_sec: Some(10),
            impartner_rate_per_sec: None,
            moodle_rate_per_sec: None,
            erp_rate_per_sec: None,
            properties_forbidden_share: 0.05,
            timeout_fault_secs: 30,
            northpass_faults: FaultSettings::default(),
            impartner_faults: FaultSettings::default(),
            moodle_faults: FaultSettings::default(),
            erp_faults: FaultSettings::default(),
        }
    }
}

impl SandboxConfig {
    /// The fault settings in force at start (and after a reset) for `api`.
    pub fn initial_faults(&self, api: Api) -> FaultSettings {
        let (base, rate) = match api {
            Api::Northpass => (&self.northpass_faults, self.northpass_rate_per_sec),
            Api::Impartner => (&self.impartner_faults, self.impartner_rate_per_sec),
            Api::Moodle => (&self.moodle_faults, self.moodle_rate_per_sec),
            Api::Erp => (&self.erp_faults, self.erp_rate_per_sec),
        };
        FaultSettings { rate_per_sec: rate, ..base.clone() }
    }

    /// A config with every rate limit off (benchmarks).
    pub fn unlimited(mut self) -> Self {
        self.northpass_rate_per_sec = None;
        self.impartner_rate_per_sec = None;
        self.moodle_rate_per_sec = None;
        self.erp_rate_per_sec = None;
        self
    }
}
