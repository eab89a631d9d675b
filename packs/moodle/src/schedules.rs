//! When `moodle_institutional` runs, and what start-up triggers (issue #6, "Triggers and schedule").
//!
//! Interval resolution, first found wins: the value stored through the API
//! (`PUT /api/chains/moodle_institutional/schedule`), then `MOODLE_SYNC_INTERVAL_MINUTES` (or
//! `[packs.moodle] sync_interval_minutes`), then the environment's default (development and test 60
//! minutes, staging 360, production 180). Every layer refuses less than [`MIN_INTERVAL`]: the API
//! with 400, the configuration at start-up.
//!
//! Start-up: categories always sync (`sync_categories` alone) unless
//! `DISABLE_SYNC_CATEGORY_ON_STARTUP=true`; with `SYNC_ON_STARTUP=true` courses and enrollments run
//! too (the whole `moodle_institutional`, or `moodle_enrollments` when categories are disabled).
//! [`startup_plan`] decides; the producer starts it for every enabled `moodle` integration (a run
//! already active is left alone).
//!
//! `[packs.moodle]` also holds `sync_concurrency` (`MOODLE_SYNC_CONCURRENCY`): programs and courses
//! read at once by integrations that do not set their own `concurrency`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use syncfleet_sdk::config::Environment;

use crate::{CATEGORIES_STEP, ENROLLMENTS, INSTITUTIONAL, settings::check_concurrency};

/// The shortest interval between scheduled runs of a Moodle chain, at every layer.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// The plain environment variables the pack reads (besides the token's `secret_env`), and the key of
/// `[packs.moodle]` each sets. Read once, when the configuration loads.
pub const ENV_KEYS: [(&str, &str); 4] = [
    ("MOODLE_SYNC_INTERVAL_MINUTES", "sync_interval_minutes"),
    ("SYNC_ON_STARTUP", "sync_on_startup"),
    ("DISABLE_SYNC_CATEGORY_ON_STARTUP", "disable_sync_category_on_startup"),
    ("MOODLE_SYNC_CONCURRENCY", "sync_concurrency"),
];

/// `[packs.moodle]` of the configuration; each key also comes from its plain environment variable
/// ([`ENV_KEYS`]), which wins over the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MoodleConfig {
    /// Minutes between scheduled `moodle_institutional` runs (at least 30).
    pub sync_interval_minutes: Option<u64>,
    /// Courses and enrollments sync at start-up too.
    pub sync_on_startup: bool,
    /// Categories do not sync at start-up (development restarts).
    pub disable_sync_category_on_startup: bool,
    /// Programs (courses step) and courses (enrollments step) read at once by integrations that
    /// do not set `concurrency` (default 3; 1-20).
    pub sync_concurrency: Option<u32>,
}

impl MoodleConfig {
    /// The error names the key (relative to `packs.moodle`) and the environment variable.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(m) = self.sync_interval_minutes
            && Duration::from_secs(m * 60) < MIN_INTERVAL
        {
            return Err((
                "sync_interval_minutes".into(),
                format!(
                    "{m} minutes (MOODLE_SYNC_INTERVAL_MINUTES) is below the minimum of {} minutes",
                    MIN_INTERVAL.as_secs() / 60
                ),
            ));
        }
        if let Some(c) = self.sync_concurrency {
            check_concurrency(c)
                .map_err(|m| ("sync_concurrency".to_owned(), format!("{m} (MOODLE_SYNC_CONCURRENCY)")))?;
        }
        Ok(())
    }
}

/// The environment's default interval.
pub fn default_interval(environment: Environment) -> Duration {
    let minutes = match environment {
        Environment::Development | Environment::Test => 60,
        Environment::Staging => 360,
        Environment::Production => 180,
    };
    Duration::from_secs(minutes * 60)
}

/// The interval below the stored layer, and its source: `config` (environment variable or file) or
/// `pack` (the environment's default).
pub fn interval(config: &MoodleConfig, environment: Environment) -> (Duration, &'static str) {
    match config.sync_interval_minutes {
        Some(m) => (Duration::from_secs(m * 60), "config"),
        None => (default_interval(environment), "pack"),
    }
}

/// What start-up runs for one integration: (chain, only this step).
pub fn startup_plan(config: &MoodleConfig) -> Option<(&'static str, Option<&'static str>)> {
    match (config.sync_on_startup, config.disable_sync_category_on_startup) {
        (true, false) => Some((INSTITUTIONAL, None)),
        (true, true) => Some((ENROLLMENTS, None)),
        (false, false) => Some((INSTITUTIONAL, Some(CATEGORIES_STEP))),
        (false, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{DEFAULT_CONCURRENCY, MAX_CONCURRENCY};

    #[test]
    fn environment_defaults_and_the_minimum() {
        let none = MoodleConfig::default();
        assert_eq!(interval(&none, Environment::Test), (Duration::from_secs(3600), "pack"));
        assert_eq!(interval(&none, Environment::Staging).0, Duration::from_secs(360 * 60));
        assert_eq!(interval(&none, Environment::Production).0, Duration::from_secs(180 * 60));
        let set = MoodleConfig { sync_interval_minutes: Some(45), ..MoodleConfig::default() };
        assert_eq!(interval(&set, Environment::Production), (Duration::from_secs(45 * 60), "config"));
        set.validate().unwrap();
        let low = MoodleConfig { sync_interval_minutes: Some(29), ..MoodleConfig::default() };
        assert_eq!(low.validate().unwrap_err().0, "sync_interval_minutes");
    }

    #[test]
    fn sync_concurrency_is_checked() {
        for ok in [1, DEFAULT_CONCURRENCY, MAX_CONCURRENCY] {
            MoodleConfig { sync_concurrency: Some(ok), ..MoodleConfig::default() }.validate().unwrap();
        }
        for bad in [0, MAX_CONCURRENCY + 1] {
            let (key, message) =
                MoodleConfig { sync_concurrency: Some(bad), ..MoodleConfig::default() }.validate().unwrap_err();
            assert_eq!(key, "sync_concurrency");
            assert!(message.contains("MOODLE_SYNC_CONCURRENCY"), "{message}");
        }
    }

    #[test]
    fn startup_follows_the_two_switches() {
        let c = |sync_on_startup, disable_sync_category_on_startup| MoodleConfig {
            sync_on_startup,
            disable_sync_category_on_startup,
            ..MoodleConfig::default()
        };
        assert_eq!(startup_plan(&c(false, false)), Some(("moodle_institutional", Some("sync_categories"))));
        assert_eq!(startup_plan(&c(true, false)), Some(("moodle_institutional", None)));
        assert_eq!(startup_plan(&c(true, true)), Some(("moodle_enrollments", None)));
        assert_eq!(startup_plan(&c(false, true)), None);
    }
}
