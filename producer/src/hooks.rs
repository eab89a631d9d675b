//! Run lifecycle hooks: a signed `POST` of the run record (the API's `RunView`) when a run starts
//! (`run.started`) and when it ends (`run.ended`), to the integration's `hooks_url` or else the
//! fleet-wide `[hooks] url`.
//!
//! The run never waits for a hook: the transaction that starts or ends the run records the
//! pending delivery (`run_hooks`, `syncfleet_store::hooks`), and the reconciler delivers from a task
//! of its own ([`Deliverer::spawn_due`]), one pass at a time. Each delivery is claimed once across
//! the fleet (`SKIP LOCKED`), and its outcome recorded: delivered, or tried again after
//! `hooks.retry_secs` to twice it, doubling ([`Backoff`]), until `hooks.max_attempts`.
//!
//! Signed as our incoming webhooks are ([`crate::auth::sign`]): `X-Syncfleet-Timestamp` and
//! `X-Syncfleet-Signature: v2=<hex HMAC-SHA256(key, "{ts}\nPOST\n{path?query}\n" + body)>`, plus
//! `X-Syncfleet-Event`. The client is the upstream one (`[upstream]`: non-public addresses only
//! when `upstream.allow_networks` lists them, redirects only on the hook's origin, a timeout, one
//! try per delivery); the URL appears in logs and errors without its user info and query values.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use syncfleet_sdk::http::{HttpClients, Limits};
use syncfleet_shared::{config::Config, ids::RunId, retry::Backoff, secret::Secret};
use syncfleet_store::{
    self as store,
    hooks::{self, DueHook},
};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign},
    ops::Ops,
};

/// The header naming the event (`run.started`, `run.ended`).
pub const EVENT_HEADER: &str = "x-syncfleet-event";

/// At most this many deliveries per pass.
const BATCH: i64 = 50;

/// The longest pause between two deliveries of one hook.
const MAX_DELAY: Duration = Duration::from_secs(3_600);

/// Where one integration's hooks go: the URL and its HMAC key's reference.
struct Target<'a> {
    url: &'a Secret,
    /// `hooks_secret_ref` of the integration, or `[hooks]`'s `secret_env` / `secret_file`.
    key: Result<Secret, String>,
}

fn target<'a>(config: &'a Config, integration: &str) -> Option<Target<'a>> {
    let policy = config.secrets.policy();
    if let Some(spec) = config.integrations.get(integration)
        && let Some(url) = &spec.hooks_url
    {
        let key = match &spec.hooks_secret_ref {
            Some(r) => syncfleet_sdk::secrets::resolve_hmac_key(
                &format!("integrations.{integration}.hooks_secret_ref"),
                r,
                &policy,
            )
            .map_err(|e| e.to_string()),
            None => Err(format!("integrations.{integration}.hooks_secret_ref: not set")),
        };
        return Some(Target { url, key });
    }
    let fleet = &config.hooks;
    let url = fleet.url.as_ref()?;
    let key = syncfleet_sdk::secrets::resolve_setting(
        "hooks",
        fleet.secret_env.as_deref(),
        fleet.secret_file.as_deref(),
        &policy,
    )
    .map_err(|e| e.to_string())
    .and_then(|k| {
        if k.expose().len() < syncfleet_sdk::secrets::MIN_HMAC_KEY_BYTES {
            Err(format!("hooks: an HMAC key must be at least {} bytes", syncfleet_sdk::secrets::MIN_HMAC_KEY_BYTES))
        } else {
            Ok(k)
        }
    });
    Some(Target { url, key })
}

/// Delivers due hooks from a task of its own, one pass at a time (a pass still running when the
/// next is due is not doubled).
#[derive(Clone, Default)]
pub struct Deliverer {
    busy: Arc<AtomicBool>,
}

impl Deliverer {
    /// Starts a delivery pass in the background unless one is running.
    pub fn spawn_due(&self, ops: &Ops) {
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let (ops, busy) = (ops.clone(), self.busy.clone());
        tokio::spawn(async move {
            if let Err(error) = deliver_due(&ops).await {
                tracing::warn!(%error, "Run hooks could not be claimed.");
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// Claims the due hooks and delivers them, in order; returns how many were claimed.
pub async fn deliver_due(ops: &Ops) -> anyhow::Result<usize> {
    let due = hooks::claim_due(&ops.pool, BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let config = &ops.config.hooks;
    let limits = Limits { max_retries: 0, timeout_ms: config.timeout().as_millis() as u64, ..Limits::default() };
    let clients = HttpClients::new(None, &ops.config.upstream);
    for hook in &due {
        let Some(target) = target(&ops.config, &hook.integration) else {
            hooks::finish(&ops.pool, hook, "none", "no hook configured for the integration").await?;
            continue;
        };
        match deliver(ops, &clients, &limits, &target, hook).await {
            Ok(()) => hooks::delivered(&ops.pool, hook).await?,
            Err(error) => {
                let attempts = hook.attempts.max(1) as u32;
                if attempts >= config.attempts() {
                    tracing::error!(run_id = %hook.run_id, event = %hook.event, attempts, %error,
                        "Run hook not delivered; giving up.");
                    hooks::finish(&ops.pool, hook, "failed", &error).await?;
                    continue;
                }
                let backoff = Backoff::from_low(config.retry_delay(), MAX_DELAY, Backoff::ALERT_CHANNEL.factor);
                let delay = backoff.delay(attempts);
                tracing::warn!(run_id = %hook.run_id, event = %hook.event, attempts, %error,
                    retry_in_ms = delay.as_millis() as u64, "Run hook delivery failed; retrying later.");
                hooks::retry_later(&ops.pool, hook, delay, &error).await?;
            }
        }
    }
    Ok(due.len())
}

/// One delivery: the event and the run record, signed; `Err` says why it failed (URL redacted).
async fn deliver(
    ops: &Ops,
    clients: &HttpClients,
    limits: &Limits,
    target: &Target<'_>,
    hook: &DueHook,
) -> Result<(), String> {
    let key = target.key.as_ref().map_err(Clone::clone)?;
    let run = store::views::run(&ops.pool, RunId(hook.run_id)).await.map_err(|e| format!("reading the run: {e}"))?;
    let body = serde_json::to_vec(&json!({ "event": hook.event, "run": run })).map_err(|e| e.to_string())?;
    let url = reqwest::Url::parse(target.url.expose()).map_err(|_| "the hook URL does not parse".to_owned())?;
    let path_and_query = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let timestamp = chrono::Utc::now().timestamp();
    let signature = sign(key.expose().as_bytes(), timestamp, "POST", &path_and_query, &body);
    let client = clients.client("hooks", url.as_str(), limits);
    let sent = client
        .send(
            |c| {
                c.post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(TIMESTAMP_HEADER, timestamp.to_string())
                    .header(SIGNATURE_HEADER, &signature)
                    .header(EVENT_HEADER, &hook.event)
                    .body(body.clone())
            },
            &CancellationToken::new(),
        )
        .await;
    sent.map(|_| ()).map_err(|e| e.to_string())
}
