//! The packs this build includes, one cargo feature each (all on by default). The production
//! binaries' `main.rs` call [`builtin`]; nothing else names a pack.

use syncfleet_sdk::Registry;

/// Every pack this build was compiled with, in a fixed order.
pub fn builtin() -> Registry {
    #[allow(unused_mut)]
    let mut registry = Registry::new();
    #[cfg(feature = "demo")]
    {
        registry = registry.with(syncfleet_pack_demo::DemoPack);
    }
    #[cfg(feature = "http-json")]
    {
        registry = registry.with(syncfleet_pack_http_json::HttpJsonPack);
    }
    #[cfg(feature = "partner")]
    {
        registry = registry.with(syncfleet_pack_partner::PartnerPack);
    }
    #[cfg(feature = "moodle")]
    {
        registry = registry.with(syncfleet_pack_moodle::MoodlePack);
    }
    registry
}

#[cfg(all(test, feature = "http-json", feature = "moodle", feature = "partner"))]
mod tests {
    //! The configuration as the production binaries load it: the packs' own checks included.

    use std::time::Duration;

    use syncfleet_sdk::config::{Config, ConfigError, Environment};

    use super::builtin;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        builtin().config_from_toml(text)
    }

    #[test]
    fn moodle_keeps_its_minimum() {
        let err = from_toml("[packs.moodle]\nsync_interval_minutes = 20\n").unwrap_err().to_string();
        assert!(err.contains("moodle.sync_interval_minutes") && err.contains("30 minutes"), "{err}");
        let text = "[schedules.moodle_institutional.uni]\ninterval_secs = 600\n";
        let err = from_toml(text).unwrap_err().to_string();
        assert!(err.contains("schedules.moodle_institutional.uni") && err.contains("1800s"), "{err}");
        let c = from_toml("environment = \"staging\"\n[packs.moodle]\nsync_on_startup = true\n").unwrap();
        assert_eq!(c.environment, Environment::Staging);
        assert_eq!(c.packs["moodle"]["sync_on_startup"], true);
        assert_eq!(builtin().min_interval_for(&c, "moodle_institutional"), Duration::from_secs(1800));
        assert_eq!(builtin().min_interval_for(&c, "partner_daily"), Duration::from_secs(60));
    }

    const ERP: &str = r#"
[integrations.erp]
pack = "http-json"
base_url = "http://127.0.0.1:1/erp/api"
auth = { style = "bearer", secret_file = "t" }
[integrations.erp.entities.items]
path = "/items"
paging = { style = "offset", total = "/total" }
records = "/items"
id = "/id"
table = "erp_items"
[integrations.erp.entities.items.columns]
quantity = { path = "/quantity", type = "bigint" }
"#;

    #[test]
    fn an_http_json_integration_validates() {
        let c = from_toml(ERP).unwrap();
        assert_eq!(c.integrations["erp"].pack, "http-json");
    }

    #[test]
    fn bad_integration_settings_name_their_key() {
        let cases = [
            ("style = \"offset\"", "style = \"pages\"", "integrations.erp.entities.items.paging"),
            ("type = \"bigint\"", "type = \"bignum\"", "integrations.erp.entities.items.columns.quantity.type"),
            ("path = \"/quantity\"", "path = \"quantity\"", "integrations.erp.entities.items.columns.quantity.path"),
            ("base_url = \"http://127.0.0.1:1/erp/api\"", "base_url = \"ftp://x\"", "integrations.erp.base_url"),
            ("secret_file = \"t\"", "secret = \"t\"", "integrations.erp.auth.secret"),
            ("secret_file = \"t\"", "secret_env = \"SYNCFLEET__DATABASE__URL\"", "integrations.erp.auth.secret_env"),
            ("secret_file = \"t\"", "secret_file = \"/dev/zero\"", "integrations.erp.auth.secret_file"),
            ("secret_file = \"t\"", "secret_file = \"../t\"", "integrations.erp.auth.secret_file"),
            (", secret_file = \"t\"", "", "integrations.erp.auth"),
            ("table = \"erp_items\"", "table = \"erp items\"", "integrations.erp.entities.items.table"),
            ("pack = \"http-json\"", "pack = \"nope\"", "integrations.erp.pack"),
            ("records = \"/items\"", "records = \"/items\"\nrate = 3", "integrations.erp.entities.items"),
        ];
        for (from, to, key) in cases {
            let text = ERP.replace(from, to);
            assert_ne!(text, ERP, "{from}");
            let err = from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}")), "{to}: {err}");
        }
    }

    #[test]
    fn an_unknown_pack_section_is_refused_by_name() {
        let err = from_toml("[packs.nope]\nx = 1\n").unwrap_err().to_string();
        assert!(err.contains("`packs.nope`") && err.contains("unknown pack"), "{err}");
    }

    #[test]
    fn every_step_of_every_chain_has_a_handler() {
        let registry = builtin();
        let handlers = registry.handlers();
        for pack in registry.packs() {
            for chain in pack.chains() {
                for step in &chain.steps {
                    assert!(
                        handlers.get(pack.name(), step.name.as_str()).is_some(),
                        "{}: {} has no handler",
                        chain.name.as_str(),
                        step.name.as_str()
                    );
                }
            }
        }
    }
}
