//! What a pack is written against.
//!
//! - [`Pack`]: the trait a pack implements. Its chains and step handlers are required; every
//!   other method has a default, so a pack overrides only what it has (settings checks, default
//!   schedules, start-up runs, single-item sync, extra API routes, its `[packs.<name>]` section).
//! - [`step`]: [`StepContext`](step::StepContext), the step handler trait and the errors that say
//!   what should happen next.
//! - [`sync`]: the sync contract (pull, push, table, the deletion guard), the same for every pack.
//! - [`http`]: the HTTP client with the fleet-wide rate budget; [`mail`]: outgoing mail.
//! - [`secrets`]: the one resolver of secrets, under the deployment's `[secrets]` policy (`env:NAME`,
//!   `file:NAME`, a pack's `secret_env` or `secret_file`).
//! - [`Registry`]: the packs a build includes; the worker and the producer take one.
//!
//! The vocabulary (`chain`, `ids`, `config`, `job`, `phase`) is re-exported from
//! `syncfleet-shared`, and `metrics` / `telemetry` from `syncfleet-runtime`, so a pack depends on
//! this crate alone. `packs/README.md` says how to write one.
//!
//! **Invariant:** the SDK names no pack.

pub mod http;
pub mod mail;
pub mod pack;
pub mod registry;
pub mod secrets;
pub mod step;
pub mod sync;

pub use pack::{DefaultSchedule, IntervalSchedule, Pack, PackConfig, StartupRun};
pub use registry::Registry;
pub use syncfleet_runtime::{metrics, telemetry};
pub use syncfleet_shared::{chain, config, ids, job, phase};
pub use syncfleet_store::Integration;
