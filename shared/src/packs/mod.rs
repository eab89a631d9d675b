//! Packs: the chains and step handlers of each kind of source.

pub mod demo;
pub mod http_json;
pub mod moodle;
pub mod partner;

use crate::step::Pack;

/// Every pack built into this version.
pub fn all() -> Vec<Pack> {
    vec![demo::pack(), http_json::pack(), partner::pack(), moodle::pack()]
}

/// A schedule a pack runs for each of its enabled integrations unless the config or a stored
/// schedule overrides it (the producer's scheduler resolves them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultSchedule {
    pub chain: &'static str,
    /// Cron expression with seconds, UTC (`0 0 2 * * *`).
    pub cron: &'static str,
    pub mode: crate::chain::Mode,
}

/// The default schedules of a pack (none for an unknown pack).
pub fn default_schedules(pack: &str) -> Vec<DefaultSchedule> {
    match pack {
        partner::PACK => partner::schedules::defaults(),
        _ => vec![],
    }
}

/// Interval schedules a pack derives from the deployment's configuration (environment, environment
/// variables): `(chain, interval, source)` with source `config` or `pack`. The scheduler puts them
/// under the config file's and the stored schedules, like [`default_schedules`].
pub fn interval_schedules(
    pack: &str,
    config: &crate::config::Config,
) -> Vec<(&'static str, std::time::Duration, &'static str)> {
    match pack {
        moodle::PACK => {
            let (every, source) = moodle::schedules::interval(&config.moodle, config.environment);
            vec![(moodle::INSTITUTIONAL, every, source)]
        }
        _ => vec![],
    }
}

/// The shortest schedule interval a pack allows for `chain`, above the deployment's minimum.
pub fn chain_min_interval(chain: &str) -> Option<std::time::Duration> {
    [moodle::INSTITUTIONAL, moodle::ENROLLMENTS].contains(&chain).then_some(moodle::schedules::MIN_INTERVAL)
}

/// Checks an integration's settings for its pack; the error is `(key relative to the integration,
/// message)`.
pub fn check_settings(pack: &str, settings: &serde_json::Value) -> Result<(), (String, String)> {
    match pack {
        demo::PACK => Ok(()),
        http_json::PACK => http_json::Settings::parse(settings).map(|_| ()),
        partner::PACK => partner::Settings::parse(settings).map(|_| ()),
        moodle::PACK => moodle::Settings::parse(settings).map(|_| ()),
        other => Err((
            "pack".into(),
            format!(
                "unknown pack `{other}` (known: {}, {}, {}, {})",
                demo::PACK,
                http_json::PACK,
                partner::PACK,
                moodle::PACK
            ),
        )),
    }
}

/// Prepares what an integration needs in the database (the tables of `http-json` entities; the
/// `partner` and `moodle` tables are checked).
pub async fn prepare(pool: &sqlx::PgPool, name: &str, pack: &str, settings: &serde_json::Value) -> Result<(), String> {
    match pack {
        http_json::PACK => http_json::ensure_tables(pool, name, settings).await,
        partner::PACK => partner::prepare(pool).await,
        moodle::PACK => moodle::prepare(pool).await,
        _ => Ok(()),
    }
}
