//! syncfleet's vocabulary, shared by every other crate: ids, job payloads and task ids, the chain
//! model, retries (backoff with jitter, the step's retry policy, the retry decision), a step's phase result, schedules, the layered configuration and
//! secret references.
//!
//! **Invariant:** this crate knows no pack and does no I/O. It depends on no other syncfleet
//! crate and on no runtime, network, queue or HTTP crate; sqlx appears only for the type
//! mapping of [`ids::RunId`], lettre only for address syntax. `tests/tests/architecture.rs`
//! checks it.

pub mod chain;
pub mod config;
pub mod ids;
pub mod job;
pub mod mail;
pub mod phase;
pub mod retry;
pub mod schedule;
pub mod secret;
