//! The chain model: a DAG of steps declared per pack in code, overridable per deployment in the
//! config file (`[chains.<chain>.steps.<step>]`). An invalid chain (cycle, unknown step or
//! prerequisite) stops start-up with an error naming it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::ids::{ChainName, StepName};
/// The step's retry policy; it lives with the backoff and the retry decision in [`crate::retry`].
pub use crate::retry::RetryPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Pull,
    Push,
    Derive,
    Report,
    Cleanup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Full,
    #[default]
    Incremental,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
        }
    }
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "full" => Some(Mode::Full),
            "incremental" => Some(Mode::Incremental),
            _ => None,
        }
    }
}

/// A check on data that must hold before a step runs, e.g. "courses exist before enrollments".
/// `sql` is a query returning one value, `$1` being the integration id: a boolean (`false` fails
/// the step with `description`), or text naming what is missing (NULL when nothing is), which the
/// step's error shows before `description`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    pub description: String,
    pub sql: String,
}

#[derive(Debug, Clone)]
pub struct StepDef {
    pub name: StepName,
    pub kind: StepKind,
    pub prerequisites: Vec<StepName>,
    /// Failure aborts the chain (downstream `skipped`); optional failure ends the run `partial`.
    pub required: bool,
    /// Fixed mode; `None` takes the run's mode.
    pub mode: Option<Mode>,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    pub precondition: Option<Precondition>,
    /// Redis queue (without the namespace) the step's jobs go to.
    pub queue: String,
    /// What the step writes; the entity key is `{integration}:{entity}`.
    pub entity: String,
    /// Fan-out: number of shard jobs (1 = not sharded).
    pub shards: u32,
    /// Shards write one shared entity (one lease for all) instead of one entity per shard.
    pub shared_entity: bool,
}

impl StepDef {
    pub fn new(name: &str, kind: StepKind, queue: &str) -> StepDef {
        StepDef {
            name: StepName::parse(name).expect("step names in code are valid"),
            kind,
            prerequisites: vec![],
            required: true,
            mode: None,
            retry: RetryPolicy::DEFAULT,
            timeout: Duration::from_secs(3600),
            precondition: None,
            queue: queue.to_owned(),
            entity: name.to_owned(),
            shards: 1,
            shared_entity: false,
        }
    }
    pub fn after(mut self, prerequisites: &[&str]) -> Self {
        self.prerequisites =
            prerequisites.iter().map(|p| StepName::parse(p).expect("step names in code are valid")).collect();
        self
    }
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }
    pub fn retry(mut self, max_attempts: u32, base: Duration) -> Self {
        self.retry.max_attempts = max_attempts;
        self.retry.base = base;
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    pub fn shards(mut self, shards: u32) -> Self {
        self.shards = shards;
        self
    }
    pub fn entity(mut self, entity: &str, shared: bool) -> Self {
        self.entity = entity.to_owned();
        self.shared_entity = shared;
        self
    }
    pub fn precondition(mut self, description: &str, sql: &str) -> Self {
        self.precondition = Some(Precondition { description: description.into(), sql: sql.into() });
        self
    }
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }
}

#[derive(Debug, Clone)]
pub struct ChainDef {
    pub name: ChainName,
    pub pack: String,
    pub description: String,
    pub steps: Vec<StepDef>,
}

impl ChainDef {
    pub fn step(&self, name: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.name.as_str() == name)
    }

    /// Every queue this chain's steps use.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().map(|s| s.queue.as_str())
    }

    /// The steps a new run makes ready at once: none of their prerequisites is a step of this
    /// chain (a one-step trigger's chain keeps its step and drops its prerequisites).
    pub fn roots(&self) -> impl Iterator<Item = &StepDef> {
        self.steps.iter().filter(|s| !s.prerequisites.iter().any(|p| self.step(p.as_str()).is_some()))
    }

    /// Checks prerequisites name steps of this chain and that there is no cycle.
    pub fn validate(&self) -> Result<(), ChainError> {
        let names: HashSet<&str> = self.steps.iter().map(|s| s.name.as_str()).collect();
        if names.len() != self.steps.len() {
            return Err(ChainError::Invalid { chain: self.name.to_string(), message: "duplicate step name".into() });
        }
        if self.steps.is_empty() {
            return Err(ChainError::Invalid { chain: self.name.to_string(), message: "has no steps".into() });
        }
        for s in &self.steps {
            for p in &s.prerequisites {
                if !names.contains(p.as_str()) {
                    return Err(ChainError::UnknownStep {
                        chain: self.name.to_string(),
                        step: p.to_string(),
                        context: format!("prerequisite of `{}`", s.name),
                    });
                }
            }
            if s.shards == 0 || s.shards > 100_000 {
                return Err(ChainError::Invalid {
                    chain: self.name.to_string(),
                    message: format!("step `{}`: shards must be between 1 and 100000", s.name),
                });
            }
            if s.retry.max_attempts == 0 {
                return Err(ChainError::Invalid {
                    chain: self.name.to_string(),
                    message: format!("step `{}`: max_attempts must be at least 1", s.name),
                });
            }
            if s.retry.max_lost_attempts == 0 {
                return Err(ChainError::Invalid {
                    chain: self.name.to_string(),
                    message: format!("step `{}`: max_lost_attempts must be at least 1", s.name),
                });
            }
        }
        // Kahn's algorithm; what remains is on or behind a cycle.
        let mut indegree: HashMap<&str, usize> =
            self.steps.iter().map(|s| (s.name.as_str(), s.prerequisites.len())).collect();
        let mut queue: Vec<&str> = indegree.iter().filter(|(_, d)| **d == 0).map(|(n, _)| *n).collect();
        let mut seen = 0;
        while let Some(n) = queue.pop() {
            seen += 1;
            for s in &self.steps {
                if s.prerequisites.iter().any(|p| p.as_str() == n) {
                    let d = indegree.get_mut(s.name.as_str()).expect("known step");
                    *d -= 1;
                    if *d == 0 {
                        queue.push(s.name.as_str());
                    }
                }
            }
        }
        if seen != self.steps.len() {
            let mut cycle: Vec<&str> = indegree.into_iter().filter(|(_, d)| *d > 0).map(|(n, _)| n).collect();
            cycle.sort();
            return Err(ChainError::Cycle { chain: self.name.to_string(), steps: cycle.join(", ") });
        }
        Ok(())
    }

    /// Applies one deployment's overrides.
    pub fn apply(&mut self, o: &ChainOverride) -> Result<(), ChainError> {
        for (step_name, so) in &o.steps {
            let chain = self.name.to_string();
            let step = self.steps.iter_mut().find(|s| s.name.as_str() == step_name).ok_or_else(|| {
                ChainError::UnknownStep {
                    chain: chain.clone(),
                    step: step_name.clone(),
                    context: format!("configured in `chains.{chain}.steps`"),
                }
            })?;
            if let Some(p) = &so.prerequisites {
                step.prerequisites = p
                    .iter()
                    .map(|n| {
                        StepName::parse(n)
                            .map_err(|e| ChainError::Invalid { chain: chain.clone(), message: e.to_string() })
                    })
                    .collect::<Result<_, _>>()?;
            }
            if let Some(r) = so.required {
                step.required = r;
            }
            if let Some(m) = so.mode {
                step.mode = Some(m);
            }
            if let Some(n) = so.max_attempts {
                step.retry.max_attempts = n;
            }
            if let Some(ms) = so.backoff_base_ms {
                step.retry.base = Duration::from_millis(ms);
            }
            if let Some(ms) = so.backoff_max_ms {
                step.retry.max = Duration::from_millis(ms);
            }
            if let Some(n) = so.max_lost_attempts {
                step.retry.max_lost_attempts = n;
            }
            if let Some(t) = so.timeout_secs {
                step.timeout = Duration::from_secs(t);
            }
            if let Some(n) = so.shards {
                step.shards = n;
            }
            if let Some(q) = &so.queue {
                step.queue = q.clone();
            }
            if so.precondition == Some(false) {
                step.precondition = None;
            }
        }
        self.validate()
    }
}

/// `[chains.<chain>]` in the config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainOverride {
    #[serde(default)]
    pub steps: BTreeMap<String, StepOverride>,
}

/// `[chains.<chain>.steps.<step>]` in the config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepOverride {
    pub prerequisites: Option<Vec<String>>,
    pub required: Option<bool>,
    pub mode: Option<Mode>,
    pub max_attempts: Option<u32>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    /// Attempts lost to the infrastructure (worker killed, entity lease lost) before the step fails
    /// for good (default 10); they do not spend `max_attempts`.
    pub max_lost_attempts: Option<u32>,
    pub timeout_secs: Option<u64>,
    pub shards: Option<u32>,
    pub queue: Option<String>,
    /// `false` turns the step's data precondition off.
    pub precondition: Option<bool>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("chain `{chain}` has a cycle through steps: {steps}")]
    Cycle { chain: String, steps: String },
    #[error("chain `{chain}`: unknown step `{step}` ({context})")]
    UnknownStep { chain: String, step: String, context: String },
    #[error("unknown chain `{0}` (configured in `chains`)")]
    UnknownChain(String),
    #[error("chain `{chain}`: {message}")]
    Invalid { chain: String, message: String },
}

/// Every chain the deployment runs, with overrides applied.
#[derive(Debug, Clone, Default)]
pub struct ChainRegistry {
    chains: BTreeMap<String, Arc<ChainDef>>,
}

impl ChainRegistry {
    pub fn build(
        chains: impl IntoIterator<Item = ChainDef>,
        overrides: &BTreeMap<String, ChainOverride>,
    ) -> Result<ChainRegistry, ChainError> {
        let mut map = BTreeMap::new();
        for mut chain in chains {
            chain.validate()?;
            if let Some(o) = overrides.get(chain.name.as_str()) {
                chain.apply(o)?;
            }
            map.insert(chain.name.to_string(), Arc::new(chain));
        }
        if let Some(unknown) = overrides.keys().find(|k| !map.contains_key(*k)) {
            return Err(ChainError::UnknownChain(unknown.clone()));
        }
        Ok(ChainRegistry { chains: map })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ChainDef>> {
        self.chains.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ChainDef>> {
        self.chains.values()
    }

    /// Every queue any chain uses, sorted and deduplicated.
    pub fn queues(&self) -> Vec<String> {
        let mut q: Vec<String> = self.chains.values().flat_map(|c| c.queues().map(str::to_owned)).collect();
        q.sort();
        q.dedup();
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(steps: Vec<StepDef>) -> ChainDef {
        ChainDef { name: ChainName::parse("c").unwrap(), pack: "p".into(), description: String::new(), steps }
    }

    #[test]
    fn diamond_is_valid() {
        let c = chain(vec![
            StepDef::new("a", StepKind::Pull, "q"),
            StepDef::new("b", StepKind::Pull, "q").after(&["a"]),
            StepDef::new("c", StepKind::Pull, "q").after(&["a"]),
            StepDef::new("d", StepKind::Derive, "q").after(&["b", "c"]),
        ]);
        c.validate().unwrap();
    }

    #[test]
    fn roots_are_the_steps_waiting_on_no_step_of_the_chain() {
        let names = |c: &ChainDef| c.roots().map(|s| s.name.to_string()).collect::<Vec<_>>();
        let c = chain(vec![
            StepDef::new("a", StepKind::Pull, "q"),
            StepDef::new("b", StepKind::Pull, "q").after(&["a"]),
            StepDef::new("e", StepKind::Pull, "r"),
        ]);
        assert_eq!(names(&c), ["a", "e"]);
        // One step of a chain, triggered alone, keeps prerequisites the trigger dropped or not.
        let alone = chain(vec![StepDef::new("b", StepKind::Pull, "q").after(&["a"])]);
        assert_eq!(names(&alone), ["b"]);
    }

    #[test]
    fn cycle_is_named() {
        let c = chain(vec![
            StepDef::new("a", StepKind::Pull, "q"),
            StepDef::new("b", StepKind::Pull, "q").after(&["a", "c"]),
            StepDef::new("c", StepKind::Pull, "q").after(&["b"]),
        ]);
        assert_eq!(c.validate().unwrap_err(), ChainError::Cycle { chain: "c".into(), steps: "b, c".into() });
    }

    #[test]
    fn unknown_prerequisite_is_named() {
        let c = chain(vec![StepDef::new("a", StepKind::Pull, "q").after(&["zz"])]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("unknown step `zz`"), "{e}");
    }

    #[test]
    fn overrides_apply_and_are_checked() {
        let base = || {
            chain(vec![StepDef::new("a", StepKind::Pull, "q"), StepDef::new("b", StepKind::Pull, "q").after(&["a"])])
        };
        let mut o = ChainOverride::default();
        o.steps.insert("b".into(), StepOverride { required: Some(false), max_attempts: Some(7), ..Default::default() });
        let reg = ChainRegistry::build([base()], &BTreeMap::from([("c".to_string(), o)])).unwrap();
        let b = reg.get("c").unwrap().step("b").unwrap().clone();
        assert!(!b.required);
        assert_eq!(b.retry.max_attempts, 7);

        let mut cyc = ChainOverride::default();
        cyc.steps.insert("a".into(), StepOverride { prerequisites: Some(vec!["b".into()]), ..Default::default() });
        let e = ChainRegistry::build([base()], &BTreeMap::from([("c".to_string(), cyc)])).unwrap_err();
        assert!(matches!(e, ChainError::Cycle { .. }));

        let mut unknown = ChainOverride::default();
        unknown.steps.insert("nope".into(), StepOverride::default());
        let e = ChainRegistry::build([base()], &BTreeMap::from([("c".to_string(), unknown)])).unwrap_err();
        assert!(e.to_string().contains("unknown step `nope`"));

        let e = ChainRegistry::build([base()], &BTreeMap::from([("zz".to_string(), ChainOverride::default())]))
            .unwrap_err();
        assert_eq!(e, ChainError::UnknownChain("zz".into()));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            ..RetryPolicy::DEFAULT
        };
        for _ in 0..50 {
            let d1 = p.delay_after(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = p.delay_after(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(p.delay_after(30) <= Duration::from_secs(1));
        }
    }
}
