//! The packs one build includes. `syncfleet-registry` builds the registry of the production
//! binaries (a cargo feature per pack); a test builds its own, with a pack of its own among them.
//! The worker and the producer take a registry and ask it what they would otherwise have to
//! match on a pack's name for.

use std::{path::Path, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgPool;
use syncfleet_store::PackCatalog;

use crate::{
    Pack, PackConfig,
    chain::{ChainDef, ChainError, ChainRegistry},
    config::{Config, ConfigError, Schedule},
    step::HandlerRegistry,
};

/// The packs of a build, in the order they were added.
#[derive(Clone, Default)]
pub struct Registry {
    packs: Vec<Arc<dyn Pack>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a pack. Panics when a pack of that name is registered already: two packs answering
    /// to one name is a build error.
    pub fn with(mut self, pack: impl Pack) -> Self {
        assert!(self.pack(pack.name()).is_none(), "pack `{}` is registered twice", pack.name());
        self.packs.push(Arc::new(pack));
        self
    }

    pub fn packs(&self) -> impl Iterator<Item = &Arc<dyn Pack>> {
        self.packs.iter()
    }

    pub fn pack(&self, name: &str) -> Option<&Arc<dyn Pack>> {
        self.packs.iter().find(|p| p.name() == name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.packs.iter().map(|p| p.name()).collect()
    }

    /// `pack`'s view of the configuration.
    pub fn pack_config<'a>(&self, config: &'a Config, pack: &str) -> PackConfig<'a> {
        PackConfig { environment: config.environment, section: config.pack_section(pack) }
    }

    /// Every pack's chains with this deployment's overrides.
    pub fn chains(&self, config: &Config) -> Result<ChainRegistry, ChainError> {
        let all: Vec<ChainDef> = self.packs.iter().flat_map(|p| p.chains()).collect();
        ChainRegistry::build(all, &config.chains)
    }

    /// Every pack's step handlers.
    pub fn handlers(&self) -> HandlerRegistry {
        HandlerRegistry::from_packs(&self.packs)
    }

    /// Chains and handlers together, as the worker and the producer hold them.
    pub fn build(&self, config: &Config) -> Result<(Arc<ChainRegistry>, Arc<HandlerRegistry>), ChainError> {
        Ok((Arc::new(self.chains(config)?), Arc::new(self.handlers())))
    }

    /// The packs' plain environment variables: `(variable, pack, key)`.
    pub fn env_aliases(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        self.packs.iter().flat_map(|p| p.env_aliases().iter().map(|(var, key)| (*var, p.name(), *key))).collect()
    }

    /// Loads the configuration (defaults, file, `SYNCFLEET__…` and the packs' plain variables)
    /// and validates it, the packs' parts included.
    pub fn load_config(&self, file: Option<&Path>) -> Result<Config, ConfigError> {
        let config = Config::load_with_aliases(file, &self.env_aliases())?;
        self.validate(&config)?;
        Ok(config)
    }

    /// Parses a TOML document over the defaults and validates it, the packs' parts included.
    pub fn config_from_toml(&self, text: &str) -> Result<Config, ConfigError> {
        let config = Config::from_toml(text)?;
        self.validate(&config)?;
        Ok(config)
    }

    /// The shortest schedule interval of `chain`: the deployment's, or its pack's when larger.
    pub fn min_interval_for(&self, config: &Config, chain: &str) -> Duration {
        let pack = self.packs.iter().filter_map(|p| p.min_interval(chain)).max().unwrap_or_default();
        config.min_interval().max(pack)
    }

    /// What the pack-agnostic [`Config::validate`] cannot check: each integration's pack and
    /// settings, each `[packs.<name>]` section, and schedules against their pack's minimum.
    pub fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
        for (name, spec) in &config.integrations {
            let key = format!("integrations.{name}");
            self.check_settings(&spec.pack, &Value::Object(spec.settings.clone()))
                .map_err(|(k, m)| invalid(if k.is_empty() { key.clone() } else { format!("{key}.{k}") }, m))?;
        }
        for pack in config.packs.keys() {
            let Some(p) = self.pack(pack) else {
                return Err(invalid(
                    format!("packs.{pack}"),
                    format!("unknown pack (known: {})", self.names().join(", ")),
                ));
            };
            p.check_config(&self.pack_config(config, pack)).map_err(|(k, m)| {
                invalid(if k.is_empty() { format!("packs.{pack}") } else { format!("packs.{pack}.{k}") }, m)
            })?;
        }
        for (chain, by_integration) in &config.schedules {
            for (integration, spec) in by_integration {
                Schedule::from_spec(spec, self.min_interval_for(config, chain))
                    .map_err(|m| invalid(format!("schedules.{chain}.{integration}"), m))?;
            }
        }
        Ok(())
    }
}

impl PackCatalog for Registry {
    fn check_settings(&self, pack: &str, settings: &Value) -> Result<(), (String, String)> {
        match self.pack(pack) {
            Some(p) => p.check_settings(settings),
            None => Err(("pack".into(), format!("unknown pack `{pack}` (known: {})", self.names().join(", ")))),
        }
    }

    fn prepare<'a>(
        &'a self,
        pool: &'a PgPool,
        name: &'a str,
        pack: &'a str,
        settings: &'a Value,
    ) -> BoxFuture<'a, Result<(), String>> {
        match self.pack(pack) {
            Some(p) => p.prepare(pool, name, settings),
            None => Box::pin(async { Ok(()) }),
        }
    }
}
