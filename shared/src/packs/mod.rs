//! Packs: the chains and step handlers of each kind of source.

pub mod demo;
pub mod http_json;
pub mod partner;

use crate::step::Pack;

/// Every pack built into this version.
pub fn all() -> Vec<Pack> {
    vec![demo::pack(), http_json::pack(), partner::pack()]
}

/// Checks an integration's settings for its pack; the error is `(key relative to the integration,
/// message)`.
pub fn check_settings(pack: &str, settings: &serde_json::Value) -> Result<(), (String, String)> {
    match pack {
        demo::PACK => Ok(()),
        http_json::PACK => http_json::Settings::parse(settings).map(|_| ()),
        partner::PACK => partner::Settings::parse(settings).map(|_| ()),
        other => Err((
            "pack".into(),
            format!("unknown pack `{other}` (known: {}, {}, {})", demo::PACK, http_json::PACK, partner::PACK),
        )),
    }
}

/// Prepares what an integration needs in the database (the tables of `http-json` entities; the `partner` tables are checked).
pub async fn prepare(pool: &sqlx::PgPool, name: &str, pack: &str, settings: &serde_json::Value) -> Result<(), String> {
    match pack {
        http_json::PACK => http_json::ensure_tables(pool, name, settings).await,
        partner::PACK => partner::prepare(pool).await,
        _ => Ok(()),
    }
}
