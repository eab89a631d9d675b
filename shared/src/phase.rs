//! What a step run records (DESIGN §2): its business counts and the deletion guard's decision.

use serde::{Deserialize, Serialize};

/// The business counts of one step run (DESIGN §2), stored on `step_runs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseResult {
    pub fetched: i64,
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub deactivated: i64,
    pub errors: i64,
    pub api_calls: i64,
    pub throttled: i64,
    pub cursor_before: Option<String>,
    pub cursor_after: Option<String>,
    /// The deletion guard's decision, e.g. `swept` or `blocked: fetch returned nothing`.
    pub guard: Option<String>,
    /// Part of the step's work failed while the rest succeeded (see `StepContext::partial`): the
    /// step succeeds, its downstream steps run, and the run ends `partial`.
    #[serde(default)]
    pub partial: bool,
}
