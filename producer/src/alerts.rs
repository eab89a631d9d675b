//! Alerts on a required step's failure: a JSON `POST` to `alerts.webhook_url` and/or a mail to
//! `alerts.to`, naming the chain, the integration, the run, the step and the error.
//!
//! Run by the reconciler on every pass, so failures no worker reported (a lost worker reaped by the
//! reconciler) are alerted too. Each failure is alerted once across the fleet: a producer claims it
//! with `UPDATE step_runs SET alerted_at = now() … RETURNING` (`SKIP LOCKED`, so producers never
//! claim the same row; `syncfleet_store::alerts`), then sends. A channel (webhook, mail) that fails is kept in `alert_pending`
//! and claimed again from `alert_retry_at` (`alerts.retry_secs` to twice it at random, doubling: `Backoff::ALERT_CHANNEL`), until it succeeds or
//! `alerts.max_attempts` deliveries were tried; the channel that succeeded is not sent again.

use syncfleet_shared::{config::AlertsConfig, retry::Backoff};
use syncfleet_store as store;
pub use syncfleet_store::alerts::Alert;

use crate::ops::Ops;

/// At most this many failures are alerted per pass.
const BATCH: i64 = 100;

/// How long the webhook receiver may take to answer.
const WEBHOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The subject of an alert mail.
fn subject(alert: &Alert) -> String {
    format!("[syncfleet] {} failed: step {} for {}", alert.chain, alert.step, alert.integration)
}

/// The text of an alert mail.
fn text(alert: &Alert) -> String {
    format!(
        "A required step failed.\n\nchain:       {}\nintegration: {}\nrun:         {}\nstep:        {}{}\nattempts:    {}\nerror:       {}\n",
        alert.chain,
        alert.integration,
        alert.run_id,
        alert.step,
        if alert.shard > 0 { format!(" (shard {})", alert.shard) } else { String::new() },
        alert.attempts,
        alert.error.as_deref().unwrap_or("(no message)"),
    )
}

/// Claims the failures not yet alerted (none when no channel is configured) and sends them.
/// Returns how many were claimed.
pub async fn send_new(ops: &Ops) -> anyhow::Result<usize> {
    let config = &ops.config.alerts;
    if config.webhook_url.is_none() && config.smtp.is_none() {
        return Ok(0);
    }
    let alerts = store::alerts::claim_due(&ops.pool, BATCH).await?;
    let secrets = ops.config.secrets.policy();
    for alert in &alerts {
        let failed = deliver(config, &secrets, alert).await;
        if failed.is_empty() {
            continue;
        }
        let attempts = alert.alert_attempts.max(1) as u32;
        if attempts >= config.attempts() {
            tracing::error!(run_id = %alert.run_id, step = %alert.step, attempts, channels = ?failed,
                "Alert not delivered; giving up.");
            continue;
        }
        let backoff =
            Backoff::from_low(config.retry_delay(), Backoff::ALERT_CHANNEL.max, Backoff::ALERT_CHANNEL.factor);
        // Whole milliseconds: a PostgreSQL interval holds no nanoseconds.
        let delay = std::time::Duration::from_millis(backoff.delay(attempts).as_millis() as u64);
        store::alerts::retry_later(&ops.pool, alert, delay, &failed).await?;
        tracing::warn!(run_id = %alert.run_id, step = %alert.step, attempts, channels = ?failed,
            retry_in_secs = delay.as_secs(), "Alert delivery failed; retrying later.");
    }
    Ok(alerts.len())
}

/// Sends the alert on its pending channels; returns the channels that failed.
async fn deliver(config: &AlertsConfig, secrets: &syncfleet_sdk::secrets::SecretPolicy, alert: &Alert) -> Vec<String> {
    let wanted = |channel: &str| alert.alert_pending.as_ref().is_none_or(|p| p.iter().any(|c| c == channel));
    if alert.alert_attempts <= 1 {
        tracing::warn!(chain = %alert.chain, integration = %alert.integration, run_id = %alert.run_id,
            step = %alert.step, error = alert.error.as_deref().unwrap_or(""), "Required step failed; alerting.");
    }
    let mut failed = vec![];
    if let Some(url) = &config.webhook_url
        && wanted("webhook")
    {
        let sent = reqwest::Client::new().post(url.expose()).timeout(WEBHOOK_TIMEOUT).json(alert).send().await;
        if let Err(error) = sent.and_then(|r| r.error_for_status()) {
            // The webhook URL holds its own secret (often in its path): never in the log.
            let error = error.without_url();
            tracing::error!(%error, run_id = %alert.run_id, step = %alert.step, "Alert webhook failed.");
            failed.push("webhook".to_owned());
        }
    }
    if let Some(smtp) = &config.smtp
        && wanted("mail")
        && let Err(error) =
            syncfleet_sdk::mail::send(smtp, Some(secrets), &config.to, &subject(alert), text(alert), false).await
    {
        tracing::error!(%error, run_id = %alert.run_id, step = %alert.step, "Alert mail failed.");
        failed.push("mail".to_owned());
    }
    failed
}
