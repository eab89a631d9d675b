//! syncfleet's shared library: domain types, job payloads, the chain model, the store (PostgreSQL),
//! queue access (Redis), packs and configuration. Used by the producer, the workers and the CLI.

pub mod chain;
pub mod config;
pub mod dispatch;
pub mod http;
pub mod ids;
pub mod job;
pub mod mail;
pub mod metrics;
pub mod packs;
pub mod queue;
pub mod step;
pub mod store;
pub mod sync;
pub mod telemetry;

use std::sync::Arc;

use chain::{ChainError, ChainRegistry};
use config::Config;
use step::HandlerRegistry;

/// Chains (with this deployment's overrides) and step handlers of every built-in pack.
pub fn registries(config: &Config) -> Result<(Arc<ChainRegistry>, Arc<HandlerRegistry>), ChainError> {
    let packs = packs::all();
    let chains = ChainRegistry::build(packs.iter().flat_map(|p| p.chains.clone()), &config.chains)?;
    Ok((Arc::new(chains), Arc::new(HandlerRegistry::from_packs(&packs))))
}
