//! One typed, layered configuration: compiled-in defaults → optional TOML file → `SYNCFLEET__…`
//! environment variables (`__` separates levels, e.g. `SYNCFLEET__WORKER__CONCURRENCY=8`).
//! Validated at load; a bad value fails start-up naming its key. Passed explicitly, never read
//! from globals.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use crate::chain::ChainOverride;
pub use crate::schedule::{Schedule, ScheduleSpec, ScheduleSpecs, check_specs, parse_cron, parse_tz};
pub use crate::secret::Secret;

mod outbound;
use outbound::check_hook_url;
pub use outbound::{AlertsConfig, HooksConfig, SecretsConfig, UpstreamConfig};

/// Default PostgreSQL URL: the local server with trust auth.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/syncfleet";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// apalis-redis 1.0 wedges at about 8,000 due tasks per queue; stay well below.
pub const MAX_DISPATCH_CAP: usize = 7_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), message: message.into() }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Test,
    Staging,
    Production,
}

impl Environment {
    /// Smallest schedule interval allowed when the config does not set one.
    pub fn default_min_interval_secs(self) -> u64 {
        match self {
            Environment::Production | Environment::Staging => 60,
            Environment::Development => 5,
            Environment::Test => 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub environment: Environment,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub worker: WorkerConfig,
    pub producer: ProducerConfig,
    /// Smallest schedule interval accepted from any layer; default per environment.
    pub min_interval_secs: Option<u64>,
    /// `[schedules.<chain>.<integration>]` (one schedule) or `[[schedules.<chain>.<integration>]]`
    /// (several, e.g. incremental hourly and full nightly), each with `interval_secs` or `cron`, and
    /// optionally `mode`, `tz`, `step_modes` and `enabled` ([`ScheduleSpec`]).
    pub schedules: BTreeMap<String, BTreeMap<String, ScheduleSpecs>>,
    /// `[chains.<chain>.steps.<step>]` overrides of the chains declared in code.
    pub chains: BTreeMap<String, ChainOverride>,
    /// `[integrations.<name>]`: the systems this deployment syncs, registered in the database at
    /// start-up (the database keeps integrations created by other means too).
    pub integrations: BTreeMap<String, IntegrationSpec>,
    /// `[alerts]`: where a required step's failure is reported.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// `[packs.<pack>]`: each pack's own section (e.g. `[packs.moodle]`), kept raw here and
    /// validated by the pack at start-up; a pack may also read plain environment variables into
    /// its section ([`Config::load_with_aliases`]).
    #[serde(default)]
    pub packs: BTreeMap<String, serde_json::Value>,
    /// `[secrets]`: where secret references may point.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// `[upstream]`: what every upstream request of every pack may do.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// `[hooks]`: the fleet-wide run lifecycle hook (an integration's `hooks_url` replaces it).
    #[serde(default)]
    pub hooks: HooksConfig,
}

/// Reads a secret file named by the configuration key `key`: a regular file of at most
/// [`crate::secret::MAX_SECRET_BYTES`], UTF-8, not empty once trailing white space is dropped.
fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    use std::io::Read;
    let shown = path.display();
    let fail = |e: std::io::Error| invalid(key, format!("cannot read {shown}: {}", e.kind()));
    // Checked before opening: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path).map_err(fail)?.is_file() {
        return Err(invalid(key, format!("{shown} is not a regular file")));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(fail)?
        .take(crate::secret::MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(fail)?;
    if bytes.len() as u64 > crate::secret::MAX_SECRET_BYTES {
        return Err(invalid(key, format!("{shown} is larger than {} KiB", crate::secret::MAX_SECRET_BYTES / 1024)));
    }
    let text = String::from_utf8(bytes).map_err(|_| invalid(key, format!("{shown} is not UTF-8 text")))?;
    let value = text.trim_end();
    if value.is_empty() {
        return Err(invalid(key, format!("{shown} is empty")));
    }
    Ok(Secret::new(value))
}

/// One integration: its pack and the pack's settings (every other key of the table).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IntegrationSpec {
    pub pack: String,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Where the webhook HMAC secret lives: `env:NAME` or `file:NAME` (`[secrets]`).
    #[serde(default)]
    pub webhook_secret_ref: Option<String>,
    /// This integration's run lifecycle hook, replacing `[hooks] url` for its runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_url: Option<Secret>,
    /// Where the HMAC key of `hooks_url` lives: `env:NAME` or `file:NAME` (`[secrets]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_secret_ref: Option<String>,
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The runtime role's connection (producers, workers, the CLI): not a superuser, owning no table.
    pub url: Secret,
    /// A file holding `url` (a mounted secret, e.g. `SYNCFLEET__DATABASE__URL_FILE=/run/secrets/db-url`):
    /// read at load, replacing `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// The owner role's connection, used only to create the database and run migrations
    /// (`syncfleet migrate`); unset = this process migrates nothing and expects a migrated schema.
    #[serde(default)]
    pub owner_url: Option<Secret>,
    /// A file holding `owner_url`, read at load, replacing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_url_file: Option<PathBuf>,
    pub max_connections: u32,
    /// `statement_timeout` of every connection, in milliseconds.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// `lock_timeout` of every connection, in milliseconds.
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// `idle_in_transaction_session_timeout` of every connection, in milliseconds.
    #[serde(default = "default_idle_in_transaction_ms")]
    pub idle_in_transaction_ms: u64,
}

fn default_statement_timeout_ms() -> u64 {
    300_000
}
fn default_lock_timeout_ms() -> u64 {
    30_000
}
fn default_idle_in_transaction_ms() -> u64 {
    300_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://…`, or `rediss://…` for TLS (managed Redis), verified against the system's roots
    /// or `ca_file`. There is no switch to skip verification.
    pub url: Secret,
    /// A file holding `url` (a mounted secret), read at load, replacing `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// PEM file of the CA(s) a `rediss://` server's certificate is verified against, instead of the
    /// system's roots (a private Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Prefix of every Redis key we own, queues included (`{namespace}:{queue}:…`).
    pub namespace: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Steps one worker process runs at once.
    pub concurrency: usize,
    /// How often an idle worker polls Redis for due jobs.
    pub poll_interval_ms: u64,
    /// Step heartbeat (PostgreSQL) and entity lease renewal period.
    pub heartbeat_secs: u64,
    /// Entity lease time-to-live; a dead holder's lease frees itself after this.
    pub lease_ttl_secs: u64,
    /// Delay before a job that found its entity lease busy is delivered again.
    pub lease_retry_ms: u64,
    /// SIGTERM: how long running steps may take to finish before the process exits anyway.
    pub drain_timeout_secs: u64,
    /// Worker name prefix; a random suffix makes each process (and restart) unique.
    pub name: Option<String>,
    /// Address of the worker's HTTP listener (`/metrics`, `/livez`, `/readyz`); empty = none.
    pub listen: String,
    /// Threads of the process's async runtime; 0 = one per core the process may use. A fleet
    /// scales by processes, each of which mostly waits on PostgreSQL and Redis.
    #[serde(default)]
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerConfig {
    /// Admin API listen address.
    pub listen: String,
    /// Period of the dispatch + reconcile loop.
    pub reconcile_interval_ms: u64,
    /// At most this many due jobs sit in one Redis queue; PostgreSQL keeps the rest.
    pub dispatch_cap: usize,
    /// A running step whose heartbeat is older than this is treated as lost.
    pub stale_after_secs: u64,
    /// A dispatched ready step missing from Redis for this long is pushed again.
    pub redeliver_after_secs: u64,
    /// Fire every configured schedule once at start-up.
    pub startup_trigger: bool,
    /// Run the scheduler loop.
    pub scheduler_enabled: bool,
    /// A client must send its request headers within this many seconds.
    #[serde(default = "default_header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
    /// A request (body read and handler) must be answered within this many seconds, else 408/503.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Connections the API serves at once; more wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// On shutdown, in-flight requests get this many seconds before the server stops anyway.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
}

fn default_header_read_timeout_secs() -> u64 {
    10
}
fn default_request_timeout_secs() -> u64 {
    30
}
fn default_max_connections() -> usize {
    512
}
fn default_shutdown_timeout_secs() -> u64 {
    20
}

impl Default for Config {
    fn default() -> Self {
        Config {
            environment: Environment::Development,
            database: DatabaseConfig {
                url: Secret::new(DEFAULT_DATABASE_URL),
                url_file: None,
                owner_url: None,
                owner_url_file: None,
                max_connections: 16,
                statement_timeout_ms: default_statement_timeout_ms(),
                lock_timeout_ms: default_lock_timeout_ms(),
                idle_in_transaction_ms: default_idle_in_transaction_ms(),
            },
            redis: RedisConfig {
                url: Secret::new(DEFAULT_REDIS_URL),
                url_file: None,
                ca_file: None,
                namespace: "syncfleet".into(),
            },
            worker: WorkerConfig {
                concurrency: 4,
                poll_interval_ms: 50,
                heartbeat_secs: 2,
                lease_ttl_secs: 10,
                lease_retry_ms: 250,
                drain_timeout_secs: 60,
                name: None,
                listen: "0.0.0.0:9464".into(),
                threads: 0,
            },
            producer: ProducerConfig {
                listen: "127.0.0.1:8080".into(),
                reconcile_interval_ms: 250,
                dispatch_cap: 2_000,
                stale_after_secs: 10,
                redeliver_after_secs: 3,
                startup_trigger: false,
                scheduler_enabled: true,
                header_read_timeout_secs: default_header_read_timeout_secs(),
                request_timeout_secs: default_request_timeout_secs(),
                max_connections: default_max_connections(),
                shutdown_timeout_secs: default_shutdown_timeout_secs(),
            },
            min_interval_secs: None,
            schedules: BTreeMap::new(),
            chains: BTreeMap::new(),
            integrations: BTreeMap::new(),
            alerts: AlertsConfig::default(),
            packs: BTreeMap::new(),
            secrets: SecretsConfig::default(),
            upstream: UpstreamConfig::default(),
            hooks: HooksConfig::default(),
        }
    }
}

impl Config {
    /// Defaults, then the file (if given), then `SYNCFLEET__…` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_aliases(file, &[])
    }

    /// [`Config::load`], plus plain environment variables that set a pack's key:
    /// `(variable, pack, key)` puts `MOODLE_SYNC_INTERVAL_MINUTES` at
    /// `packs.moodle.sync_interval_minutes`. They win over the file. The packs declare them
    /// (`Pack::env_aliases`); the registry passes them in.
    pub fn load_with_aliases(
        file: Option<&Path>,
        aliases: &[(&'static str, &'static str, &'static str)],
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid("config file", format!("{} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("SYNCFLEET__").split("__"));
        if !aliases.is_empty() {
            let vars: Vec<&str> = aliases.iter().map(|(var, _, _)| *var).collect();
            let aliases = aliases.to_vec();
            figment = figment.merge(Env::raw().only(&vars).map(move |var| {
                let (_, pack, key) = aliases
                    .iter()
                    .find(|(v, _, _)| var.as_str().eq_ignore_ascii_case(v))
                    .expect("only aliased variables are read");
                format!("packs.{pack}.{key}").into()
            }));
        }
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.read_url_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Replaces each connection URL whose `*_file` key is set with the file's contents (trailing
    /// white space dropped). The error names the key and the file, never what the file holds.
    pub fn read_url_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.database.url_file {
            self.database.url = read_secret_file("database.url_file", path)?;
        }
        if let Some(path) = &self.database.owner_url_file {
            self.database.owner_url = Some(read_secret_file("database.owner_url_file", path)?);
        }
        if let Some(path) = &self.redis.url_file {
            self.redis.url = read_secret_file("redis.url_file", path)?;
        }
        if let Some(path) = &self.redis.ca_file {
            let meta = std::fs::metadata(path)
                .map_err(|e| invalid("redis.ca_file", format!("cannot read {}: {}", path.display(), e.kind())))?;
            if !meta.is_file() {
                return Err(invalid("redis.ca_file", format!("{} is not a regular file", path.display())));
            }
        }
        Ok(())
    }

    /// Parses a TOML document over the defaults (tests and embedded use).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        config.read_url_files()?;
        config.validate()?;
        Ok(config)
    }

    pub fn min_interval(&self) -> Duration {
        Duration::from_secs(self.min_interval_secs.unwrap_or_else(|| self.environment.default_min_interval_secs()))
    }

    /// The section `[packs.<pack>]`, `null` when the file has none.
    pub fn pack_section(&self, pack: &str) -> &serde_json::Value {
        self.packs.get(pack).unwrap_or(&serde_json::Value::Null)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        if w.concurrency == 0 || w.concurrency > 256 {
            return Err(invalid("worker.concurrency", "must be between 1 and 256"));
        }
        if w.threads > 256 {
            return Err(invalid("worker.threads", "must be between 0 (one per core) and 256"));
        }
        if w.poll_interval_ms == 0 || w.poll_interval_ms > 60_000 {
            return Err(invalid("worker.poll_interval_ms", "must be between 1 and 60000"));
        }
        if w.heartbeat_secs == 0 {
            return Err(invalid("worker.heartbeat_secs", "must be at least 1"));
        }
        if w.lease_ttl_secs < w.heartbeat_secs * 2 {
            return Err(invalid("worker.lease_ttl_secs", "must be at least twice worker.heartbeat_secs"));
        }
        if !w.listen.is_empty() && w.listen.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err()) {
            return Err(invalid("worker.listen", "must be host:port, or empty for no listener"));
        }
        let p = &self.producer;
        if p.dispatch_cap == 0 || p.dispatch_cap > MAX_DISPATCH_CAP {
            return Err(invalid(
                "producer.dispatch_cap",
                format!("must be between 1 and {MAX_DISPATCH_CAP} (apalis-redis stalls near 8,000 due tasks)"),
            ));
        }
        if p.stale_after_secs < w.heartbeat_secs * 2 {
            return Err(invalid("producer.stale_after_secs", "must be at least twice worker.heartbeat_secs"));
        }
        if p.reconcile_interval_ms == 0 {
            return Err(invalid("producer.reconcile_interval_ms", "must be at least 1"));
        }
        if self.redis.namespace.is_empty() || self.redis.namespace.contains(char::is_whitespace) {
            return Err(invalid("redis.namespace", "must be non-empty without whitespace"));
        }
        for (name, spec) in &self.integrations {
            let key = format!("integrations.{name}");
            if crate::ids::IntegrationName::parse(name).is_err() {
                return Err(invalid(&key, "names are 1-63 of a-z, 0-9, `_` and `-`, starting with a letter or digit"));
            }
            let policy = self.secrets.policy();
            if let Some(r) = &spec.webhook_secret_ref {
                crate::secret::check_secret_ref(r, &policy)
                    .map_err(|m| invalid(&format!("{key}.webhook_secret_ref"), m))?;
            }
            if let Some(url) = &spec.hooks_url {
                check_hook_url(&format!("{key}.hooks_url"), url)?;
                let Some(r) = &spec.hooks_secret_ref else {
                    return Err(invalid(&format!("{key}.hooks_secret_ref"), "name the HMAC key of hooks_url"));
                };
                crate::secret::check_secret_ref(r, &policy)
                    .map_err(|m| invalid(&format!("{key}.hooks_secret_ref"), m))?;
            }
            crate::secret::check_settings_secrets(&serde_json::Value::Object(spec.settings.clone()), &policy)
                .map_err(|(k, m)| invalid(&format!("{key}.{k}"), m))?;
        }
        self.alerts.validate(&self.secrets.policy())?;
        self.hooks.validate(&self.secrets.policy())?;
        self.secrets.validate()?;
        self.upstream.validate()?;
        let d = &self.database;
        for (key, ms) in [
            ("database.statement_timeout_ms", d.statement_timeout_ms),
            ("database.lock_timeout_ms", d.lock_timeout_ms),
            ("database.idle_in_transaction_ms", d.idle_in_transaction_ms),
        ] {
            if ms == 0 || ms > i32::MAX as u64 {
                return Err(invalid(key, "must be between 1 and 2147483647 (0 would mean no limit)"));
            }
        }
        for (key, v) in [
            ("producer.header_read_timeout_secs", p.header_read_timeout_secs),
            ("producer.request_timeout_secs", p.request_timeout_secs),
            ("producer.shutdown_timeout_secs", p.shutdown_timeout_secs),
            ("producer.max_connections", p.max_connections as u64),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (chain, by_integration) in &self.schedules {
            for (integration, specs) in by_integration {
                let key = format!("schedules.{chain}.{integration}");
                check_specs(specs, self.min_interval()).map_err(|m| invalid(&key, m))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn bad_value_names_its_key() {
        let err = Config::from_toml("[worker]\nconcurrency = 0\n").unwrap_err().to_string();
        assert!(err.contains("worker.concurrency"), "{err}");
        let err = Config::from_toml("[producer]\ndispatch_cap = 9000\n").unwrap_err().to_string();
        assert!(err.contains("producer.dispatch_cap"), "{err}");
        let err = Config::from_toml("[worker]\nthreads = 1000\n").unwrap_err().to_string();
        assert!(err.contains("worker.threads"), "{err}");
        assert_eq!(Config::from_toml("[worker]\nthreads = 1\n").unwrap().worker.threads, 1);
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let err = Config::from_toml("[worker]\nconcurency = 3\n").unwrap_err().to_string();
        assert!(err.contains("concurency"), "{err}");
    }

    #[test]
    fn schedule_below_minimum_is_refused() {
        let text = "environment = \"production\"\n[schedules.daily.acme]\ninterval_secs = 10\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("schedules.daily.acme") && err.contains("minimum of 60s"), "{err}");
        let ok = "environment = \"production\"\n[schedules.daily.acme]\ninterval_secs = 3600\n";
        Config::from_toml(ok).unwrap();
    }

    #[test]
    fn alerts_are_validated_by_key() {
        let err = Config::from_toml("[alerts]\nwebhook_url = \"ftp://x\"\n").unwrap_err().to_string();
        assert!(err.contains("alerts.webhook_url"), "{err}");
        let err = Config::from_toml("[alerts]\nto = [\"a@example.com\"]\nsmtp = { host = \"h\", from = \"nope\" }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("alerts.smtp.from"), "{err}");
        let err = Config::from_toml("[alerts]\nsmtp = { host = \"h\", from = \"sf@example.com\" }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("alerts.to"), "{err}");
        let ok = "[alerts]\nwebhook_url = \"http://127.0.0.1:9/x\"\nto = [\"a@example.com\"]\nsmtp = { host = \"127.0.0.1\", port = 2525, from = \"sf@example.com\" }\n";
        let c = Config::from_toml(ok).unwrap();
        assert_eq!(c.alerts.smtp.unwrap().port(), 2525);
        let auth = "[alerts]\nto = [\"a@example.com\"]\nsmtp = { host = \"h\", tls = \"starttls\", username = \"u\", secret_env = \"OTHER_PASSWORD\", from = \"sf@example.com\" }\n";
        let err = Config::from_toml(auth).unwrap_err().to_string();
        assert!(err.contains("alerts.smtp.secret_env") && err.contains("SYNCFLEET_SECRET_"), "{err}");
        let clear = auth.replace("starttls", "none").replace("OTHER_PASSWORD", "SYNCFLEET_SECRET_SMTP");
        let err = Config::from_toml(&clear).unwrap_err().to_string();
        assert!(err.contains("alerts.smtp.tls"), "{err}");
        Config::from_toml(&auth.replace("OTHER_PASSWORD", "SYNCFLEET_SECRET_SMTP")).unwrap();
    }

    #[test]
    fn connection_urls_come_from_files() {
        let dir = std::env::temp_dir().join(format!("syncfleet-url-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (db, owner, redis) = (dir.join("db-url"), dir.join("owner-url"), dir.join("redis-url"));
        std::fs::write(&db, "postgres://app:s3cret-db@db.internal/sf\n").unwrap();
        std::fs::write(&owner, "postgres://owner:s3cret-owner@db.internal/sf").unwrap();
        std::fs::write(&redis, "rediss://:s3cret-redis@redis.internal:6380\r\n").unwrap();
        let text = format!(
            "[database]\nurl_file = \"{}\"\nowner_url_file = \"{}\"\n[redis]\nurl_file = \"{}\"\n",
            db.display(),
            owner.display(),
            redis.display()
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.database.url.expose(), "postgres://app:s3cret-db@db.internal/sf");
        assert_eq!(c.database.owner_url.as_ref().unwrap().expose(), "postgres://owner:s3cret-owner@db.internal/sf");
        assert_eq!(c.redis.url.expose(), "rediss://:s3cret-redis@redis.internal:6380");
        assert!(!format!("{c:?}").contains("s3cret"));

        // A missing, empty or non-regular file fails naming the key and the file, never the value.
        let missing = text.replace("redis-url", "no-such-file");
        let err = Config::from_toml(&missing).unwrap_err().to_string();
        assert!(err.contains("redis.url_file") && err.contains("no-such-file") && err.contains("not found"), "{err}");
        std::fs::write(&db, "\n").unwrap();
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("database.url_file") && err.contains("is empty"), "{err}");
        let err = Config::from_toml(&text.replace("owner-url", "")).unwrap_err().to_string();
        assert!(err.contains("database.url_file"), "the first bad key is named: {err}");
        std::fs::write(&db, "postgres://app:s3cret-db@db.internal/sf").unwrap();
        let err = Config::from_toml(&text.replace("owner-url\"", "\"")).unwrap_err().to_string();
        assert!(err.contains("database.owner_url_file") && err.contains("not a regular file"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = Config::from_toml("[redis]\nca_file = \"/no/such/ca.pem\"\n").unwrap_err().to_string();
        assert!(err.contains("redis.ca_file"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config::default();
        assert!(!format!("{c:?}").contains("postgres://"));
    }

    #[test]
    fn interval_ticks_align_across_producers() {
        let s = Schedule::Interval(Duration::from_secs(60));
        let t = chrono::DateTime::from_timestamp(1_000_030, 0).unwrap();
        assert_eq!(s.tick_at_or_before(t), Some(1_000_020));
        assert_eq!(s.next_after(t).unwrap().timestamp(), 1_000_080);
    }

    #[test]
    fn intervals_show_their_cron() {
        let cron = |m: u64| Schedule::Interval(Duration::from_secs(m * 60)).as_cron();
        assert_eq!(cron(60).as_deref(), Some("0 0 * * * *"));
        assert_eq!(cron(30).as_deref(), Some("0 */30 * * * *"));
        assert_eq!(cron(180).as_deref(), Some("0 0 */3 * * *"));
        assert_eq!(cron(360).as_deref(), Some("0 0 */6 * * *"));
        assert_eq!(cron(45), None);
    }

    #[test]
    fn cron_ticks() {
        let s = Schedule::from_spec(
            &ScheduleSpec { cron: Some("0 */5 * * * *".into()), ..Default::default() },
            Duration::from_secs(60),
        )
        .unwrap();
        let t = chrono::DateTime::from_timestamp(1_000_030, 0).unwrap(); // 13:47:10 UTC
        let tick = s.tick_at_or_before(t).unwrap();
        assert_eq!(tick % 300, 0);
        assert!(tick <= 1_000_030 && 1_000_030 - tick < 300);
    }

    #[test]
    fn crontab_fields_and_time_zones() {
        let spec = |cron: &str, tz: Option<&str>| ScheduleSpec {
            cron: Some(cron.into()),
            tz: tz.map(str::to_owned),
            ..Default::default()
        };
        let min = Duration::from_secs(60);
        // 5 fields, read in Berlin: 02:00 local is 01:00 UTC in winter, 00:00 UTC in summer.
        let berlin = Schedule::from_spec(&spec("0 2 * * *", Some("Europe/Berlin")), min).unwrap();
        let winter = chrono::DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z").unwrap().to_utc();
        assert_eq!(berlin.next_after(winter).unwrap().to_rfc3339(), "2026-12-06T01:00:00+00:00");
        let summer = chrono::DateTime::parse_from_rfc3339("2026-07-05T12:00:00Z").unwrap().to_utc();
        assert_eq!(berlin.next_after(summer).unwrap().to_rfc3339(), "2026-07-06T00:00:00+00:00");
        let tick = chrono::DateTime::parse_from_rfc3339("2026-12-05T01:00:00Z").unwrap().timestamp();
        assert_eq!(berlin.tick_at_or_before(winter), Some(tick));
        // 0 and 7 are Sunday; 2026-12-06 is a Sunday.
        for dow in ["0", "7", "SUN"] {
            let s = Schedule::from_spec(&spec(&format!("30 4 * * {dow}"), None), min).unwrap();
            assert_eq!(s.next_after(winter).unwrap().to_rfc3339(), "2026-12-06T04:30:00+00:00", "{dow}");
        }
        // Six fields: seconds first.
        let s = Schedule::from_spec(&spec("15 30 4 * * *", None), min).unwrap();
        assert_eq!(s.next_after(winter).unwrap().to_rfc3339(), "2026-12-06T04:30:15+00:00");
        let err = Schedule::from_spec(&spec("0 2 * * *", Some("Mars/Olympus")), min).unwrap_err();
        assert!(err.contains("unknown time zone"), "{err}");
        let err = Schedule::from_spec(&spec("*/10 * * * * *", None), min).unwrap_err();
        assert!(err.contains("fires every 10s"), "{err}");
    }

    #[test]
    fn several_schedules_per_chain_and_integration() {
        let text = "[[schedules.daily.acme]]\ninterval_secs = 3600\n\n[[schedules.daily.acme]]\ncron = \"0 2 * * *\"\nmode = \"full\"\ntz = \"Europe/Berlin\"\nstep_modes = { push = \"incremental\" }\n\n[schedules.weekly.acme]\ncron = \"0 3 * * 0\"\n";
        let c = Config::from_toml(text).unwrap();
        let daily: Vec<&ScheduleSpec> = c.schedules["daily"]["acme"].iter().collect();
        assert_eq!(daily.len(), 2);
        assert_eq!(
            (daily[0].run_mode(), daily[1].run_mode()),
            (crate::chain::Mode::Incremental, crate::chain::Mode::Full)
        );
        assert_eq!(daily[1].step_modes["push"], crate::chain::Mode::Incremental);
        assert_eq!(c.schedules["weekly"]["acme"].iter().count(), 1);
        let twice = "[[schedules.daily.acme]]\ninterval_secs = 3600\n[[schedules.daily.acme]]\ninterval_secs = 7200\n";
        let err = Config::from_toml(twice).unwrap_err().to_string();
        assert!(err.contains("schedules.daily.acme") && err.contains("two schedules of mode"), "{err}");
        let err = Config::from_toml("[schedules.daily.acme]\ncron = \"0 2 * * *\"\nmode = \"often\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("often"), "{err}");
    }
}
