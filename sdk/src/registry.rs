//! The packs one build includes. `syncfleet-registry` builds the registry of the production
//! binaries (a cargo feature per pack); a test builds its own, with a pack of its own among them.
//! The worker and the producer take a registry and ask it what they would otherwise have to
//! match on a pack's name for.

use std::{path::Path, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgConnection;
use syncfleet_store::{Origin, PackCatalog};

use crate::{
    Pack, PackConfig,
    chain::{ChainDef, ChainError, ChainRegistry},
    config::{Config, ConfigError, check_specs},
    secrets::{SecretPolicy, check_secret_ref, check_settings_secrets},
    step::HandlerRegistry,
};

/// The packs of a build, in the order they were added, and the deployment's secrets policy the
/// admin API's settings are checked under ([`Registry::with_secrets`]).
#[derive(Clone, Default)]
pub struct Registry {
    packs: Vec<Arc<dyn Pack>>,
    /// `[secrets]` of the deployment this registry serves; `None` refuses every secret reference
    /// that comes through the API.
    secrets: Option<Arc<SecretPolicy>>,
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
        if let Err(e) = check_exclusive_chains(&pack) {
            panic!("pack `{}`: {e}", pack.name());
        }
        self.packs.push(Arc::new(pack));
        self
    }

    /// The same registry checking the secret references of settings from the admin API against
    /// `policy` (the loaded config's `[secrets]`; the config file's own are checked when it loads).
    pub fn with_secrets(mut self, policy: SecretPolicy) -> Self {
        self.secrets = Some(Arc::new(policy));
        self
    }

    /// Checks a secret reference against the policy given with [`Registry::with_secrets`].
    fn secret_policy(&self) -> Result<&SecretPolicy, String> {
        self.secrets.as_deref().ok_or_else(|| "this process has no secrets policy to check references against".into())
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

    /// The exclusion group of `chain` ([`Pack::exclusive_chains`]): `{pack}:{chains of the group
    /// joined by ","}`, or `None` when the chain may run beside every other.
    pub fn exclusion_group(&self, chain: &str) -> Option<String> {
        self.packs.iter().find_map(|p| {
            p.exclusive_chains()
                .into_iter()
                .find(|group| group.contains(&chain))
                .map(|group| format!("{}:{}", p.name(), group.join(",")))
        })
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
            self.check_settings(&spec.pack, &Value::Object(spec.settings.clone()), Origin::ConfigFile)
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
            for (integration, specs) in by_integration {
                let key = format!("schedules.{chain}.{integration}");
                check_specs(specs, self.min_interval_for(config, chain)).map_err(|m| invalid(key.clone(), m))?;
                let known = self.packs.iter().flat_map(|p| p.chains()).find(|c| c.name.as_str() == chain);
                for (step, _) in specs.iter().flat_map(|s| &s.step_modes) {
                    if known.as_ref().is_some_and(|c| c.step(step).is_none()) {
                        return Err(invalid(
                            format!("{key}.step_modes"),
                            format!("chain `{chain}` has no step `{step}`"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `integration` with the values the database does not keep put back from the config file, when
/// the file declares it. The database keeps a declared integration's settings without their
/// static header and query values or URL user info (`syncfleet_store::register_integrations`), so
/// what a request sends comes from the file itself; every other setting is the database's, so an
/// admin's later change counts. An integration created through the API keeps its settings in the
/// database alone.
pub fn with_declared_settings(config: &Config, mut integration: crate::Integration) -> crate::Integration {
    if let Some(spec) = config.integrations.get(&integration.name) {
        syncfleet_shared::secret::restore_redacted(&mut integration.settings, &Value::Object(spec.settings.clone()));
    }
    integration
}

/// A pack's exclusion groups name only its own chains, each chain in one group at most.
fn check_exclusive_chains(pack: &impl Pack) -> Result<(), String> {
    let chains: Vec<String> = pack.chains().iter().map(|c| c.name.to_string()).collect();
    let mut seen = std::collections::HashSet::new();
    for chain in pack.exclusive_chains().into_iter().flatten() {
        if !chains.iter().any(|c| c == chain) {
            return Err(format!("exclusive_chains names `{chain}`, which is not one of its chains"));
        }
        if !seen.insert(chain) {
            return Err(format!("exclusive_chains names `{chain}` in more than one group"));
        }
    }
    Ok(())
}

/// Whether `settings` name a secret anywhere (`secret_env`, `secret_file` or an inline `secret`).
fn names_a_secret(settings: &Value) -> bool {
    match settings {
        Value::Object(map) => {
            map.iter().any(|(k, v)| matches!(k.as_str(), "secret_env" | "secret_file" | "secret") || names_a_secret(v))
        }
        Value::Array(items) => items.iter().any(names_a_secret),
        _ => false,
    }
}

impl PackCatalog for Registry {
    fn check_settings(&self, pack: &str, settings: &Value, origin: Origin) -> Result<(), (String, String)> {
        match self.pack(pack) {
            Some(p) => {
                // The config file's references were checked under its own `[secrets]` when it loaded.
                if origin == Origin::Api {
                    match self.secrets.as_deref() {
                        Some(policy) => check_settings_secrets(settings, policy)?,
                        None if names_a_secret(settings) => {
                            return Err((String::new(), self.secret_policy().unwrap_err()));
                        }
                        None => {}
                    }
                }
                p.check_settings(settings)?;
                match origin {
                    Origin::ConfigFile => Ok(()),
                    Origin::Api => p.check_api_settings(settings),
                }
            }
            None => Err(("pack".into(), format!("unknown pack `{pack}` (known: {})", self.names().join(", ")))),
        }
    }

    fn check_secret_ref(&self, reference: &str) -> Result<(), String> {
        check_secret_ref(reference, self.secret_policy()?)
    }

    fn prepare<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        name: &'a str,
        pack: &'a str,
        settings: &'a Value,
    ) -> BoxFuture<'a, Result<(), String>> {
        match self.pack(pack) {
            Some(p) => p.prepare(conn, name, settings),
            None => Box::pin(async { Ok(()) }),
        }
    }
}
