//! syncfleet-sandbox: faithful local fakes of the upstream APIs syncfleet syncs with — Northpass LMS
//! v2 (JSON:API), Impartner PRM objects v1, Moodle web services and a plain ERP inventory API — served
//! by one HTTP server, each API under its own prefix:
//!
//! | API | base | credential |
//! |---|---|---|
//! | Northpass | `{base}/northpass/v2` | `X-Api-Key: np-key` |
//! | Impartner | `{base}/impartner/api/objects/v1` | `Authorization: prm-key prm-key` (+ optional `X-PRM-TenantId: 1`) |
//! | Moodle | `{base}/moodle/webservice/rest/server.php` | `wstoken=moodle-token` |
//! | ERP | `{base}/erp/api` | `Authorization: Bearer erp-token` |
//! | control | `{base}/_sandbox` | `Authorization: Bearer sandbox-control` |
//!
//! The data is generated deterministically from `(seed, scale)` and held in memory; the control API
//! mutates it, injects faults, and reports request counters and what clients wrote.
//! Tests start it in-process with [`spawn`]; the binary calls [`run`].
#![recursion_limit = "256"]

mod api;
mod config;
mod data;
mod error;
mod mutate;
mod odd;
mod state;
mod util;

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use config::{Api, FaultSettings, SandboxConfig, Scale};
pub use data::Sizes;
pub use error::SandboxError;

use crate::data::Dataset;
use crate::state::AppState;

/// Generates the data (off the async threads) and builds the shared state.
async fn build_state(
    config: SandboxConfig,
    base_url: String,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<AppState>> {
    let (seed, sizes) = (config.seed, Sizes::for_config(&config));
    let data = tokio::task::spawn_blocking(move || Dataset::generate(seed, &sizes)).await?;
    Ok(Arc::new(AppState::new(config, data, base_url, shutdown)))
}

async fn serve(listener: TcpListener, state: Arc<AppState>, token: CancellationToken) -> anyhow::Result<()> {
    let app = api::router(state);
    axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await.map_err(SandboxError::Serve)?;
    Ok(())
}

/// Serves the sandbox on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: SandboxConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().map_err(SandboxError::Bind)?;
    let token = CancellationToken::new();
    let state = build_state(config, format!("http://{addr}"), token.clone()).await?;
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    tracing::info!(%addr, "Sandbox listening.");
    serve(listener, state, token).await?;
    tracing::info!(%addr, "Sandbox stopped.");
    Ok(())
}

/// A sandbox running in-process (tests, benchmarks). Dropping it stops the server.
pub struct SandboxHandle {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    pub config: SandboxConfig,
    state: Arc<AppState>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _stop: DropGuard,
    token: CancellationToken,
}

impl SandboxHandle {
    /// `{base}/northpass/v2`
    pub fn northpass_url(&self) -> String {
        format!("{}/northpass/v2", self.base_url)
    }
    /// `{base}/impartner/api/objects/v1`
    pub fn impartner_url(&self) -> String {
        format!("{}/impartner/api/objects/v1", self.base_url)
    }
    /// `{base}/moodle/webservice/rest/server.php`
    pub fn moodle_url(&self) -> String {
        format!("{}/moodle/webservice/rest/server.php", self.base_url)
    }
    /// `{base}/erp/api`
    pub fn erp_url(&self) -> String {
        format!("{}/erp/api", self.base_url)
    }
    /// `{base}/_sandbox`
    pub fn control_url(&self) -> String {
        format!("{}/_sandbox", self.base_url)
    }
    /// The same document as `GET /_sandbox/info` (URLs, tokens, counts), read directly.
    pub fn info(&self) -> Value {
        api::control::info_value(&self.state)
    }
    /// The same document as `GET /_sandbox/counters`.
    pub fn counters(&self) -> Value {
        api::control::counters_value(&self.state)
    }
    /// The same as `POST /_sandbox/mutate` with `request` as the body, applied directly.
    pub fn mutate_json(&self, request: Value) -> anyhow::Result<Value> {
        api::control::mutate_value(&self.state, request.to_string().as_bytes()).map_err(anyhow::Error::msg)
    }
    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.token.cancel();
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

/// Starts a sandbox on `127.0.0.1:0` in the current runtime.
pub async fn spawn(config: SandboxConfig) -> anyhow::Result<SandboxHandle> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(SandboxError::Bind)?;
    let addr = listener.local_addr().map_err(SandboxError::Bind)?;
    let base_url = format!("http://{addr}");
    let token = CancellationToken::new();
    let state = build_state(config.clone(), base_url.clone(), token.clone()).await?;
    let task = tokio::spawn(serve(listener, state.clone(), token.clone()));
    Ok(SandboxHandle { base_url, config, state, task: Some(task), _stop: token.clone().drop_guard(), token })
}

/// The file (under the deployment's `[secrets] dir`) holding the sandbox's Northpass key, as the
/// integrations below name it (`secret_file`); [`write_secret_files`] writes it and the others.
pub const NORTHPASS_KEY_FILE: &str = "np-key";
/// The file holding the sandbox's Impartner key.
pub const IMPARTNER_KEY_FILE: &str = "prm-key";
/// The file holding the sandbox's Moodle `wstoken`.
pub const MOODLE_TOKEN_FILE: &str = "moodle-token";
/// The file holding the sandbox's ERP bearer token.
pub const ERP_TOKEN_FILE: &str = "erp-token";

/// Writes the secret files the integrations below name (`secret_file = "np-key"`, …) into `dir`
/// (the deployment's `[secrets] dir`), holding `config`'s keys; creates `dir` when missing.
pub fn write_secret_files(dir: &std::path::Path, config: &SandboxConfig) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (file, value) in [
        (NORTHPASS_KEY_FILE, &config.northpass_key),
        (IMPARTNER_KEY_FILE, &config.impartner_key),
        (MOODLE_TOKEN_FILE, &config.moodle_token),
        (ERP_TOKEN_FILE, &config.erp_token),
    ] {
        std::fs::write(dir.join(file), format!("{value}\n"))?;
    }
    Ok(())
}

/// The `partner` integration `name` on a sandbox: Northpass and Impartner with the sandbox's keys
/// (read from the files [`write_secret_files`] writes).
/// `northpass_extra` goes inside the `northpass` table (e.g. `, limits = { rate_per_sec = 10.0 }`);
/// `settings` are further lines of the integration (e.g. `lookback_secs = 0`).
pub fn partner_integration_toml(
    name: &str,
    northpass_url: &str,
    impartner_url: &str,
    impartner_page_size: u32,
    northpass_extra: &str,
    settings: &str,
) -> String {
    format!(
        r#"
[integrations.{name}]
pack = "partner"
northpass = {{ base_url = "{northpass_url}", secret_file = "{NORTHPASS_KEY_FILE}"{northpass_extra} }}
impartner = {{ base_url = "{impartner_url}", secret_file = "{IMPARTNER_KEY_FILE}", tenant_id = "1", page_size = {impartner_page_size} }}
{settings}
"#
    )
}

/// The `moodle` integration `name` on a sandbox (its web services token, from the file
/// [`MOODLE_TOKEN_FILE`]); `settings` are further
/// lines of the integration (e.g. `shards` are per chain, `concurrency = 5` is per integration).
pub fn moodle_integration_toml(name: &str, moodle_url: &str, settings: &str) -> String {
    format!(
        r#"
[integrations.{name}]
pack = "moodle"
moodle = {{ base_url = "{moodle_url}", secret_file = "{MOODLE_TOKEN_FILE}" }}
{settings}
"#
    )
}

/// syncfleet config of an `http-json` integration `name` reading the sandbox ERP items into `table`
/// (its bearer token from the file [`ERP_TOKEN_FILE`]).
/// `extra` lines go into the integration's table (e.g. `upstream = "x"`). Used by `syncfleet demo`
/// and the tests, so both sync the same declaration.
pub fn erp_integration_toml(name: &str, erp_url: &str, table: &str, page_size: u32, extra: &str) -> String {
    format!(
        r#"
[integrations.{name}]
pack = "http-json"
base_url = "{erp_url}"
auth = {{ style = "bearer", secret_file = "{ERP_TOKEN_FILE}" }}
{extra}

[integrations.{name}.entities.items]
path = "/items"
item_path = "/items/{{id}}"
paging = {{ style = "offset", limit = {page_size}, total = "/total" }}
records = "/items"
id = "/id"
updated_at = "/updated_at"
since_param = "updated_since"
table = "{table}"
create_table = true

[integrations.{name}.entities.items.columns]
sku = {{ path = "/sku", type = "text" }}
name = {{ path = "/name", type = "text" }}
quantity = {{ path = "/quantity", type = "bigint" }}
warehouse = {{ path = "/warehouse", type = "text" }}
source_updated_at = {{ path = "/updated_at", type = "timestamptz" }}
"#
    )
}
