//! Alerts on a required step's failure: a JSON `POST` to `alerts.webhook_url` and/or a mail to
//! `alerts.to`, naming the chain, the integration, the run, the step and the error.
//!
//! Run by the reconciler on every pass, so failures no worker reported (a lost worker reaped by the
//! reconciler) are alerted too. Each failure is alerted once across the fleet: a producer claims it
//! with `UPDATE step_runs SET alerted_at = now() … RETURNING` (`SKIP LOCKED`, so producers never
//! claim the same row), then sends. A claimed alert that cannot be delivered is logged, not retried.

use serde::Serialize;
use syncfleet_shared::config::AlertsConfig;
use uuid::Uuid;

use crate::ops::Ops;

/// At most this many failures are alerted per pass.
const BATCH: i64 = 100;

/// How long the webhook receiver may take to answer.
const WEBHOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One failed required step: the webhook's JSON body and the mail's content.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Alert {
    pub chain: String,
    pub integration: String,
    pub run_id: Uuid,
    pub step: String,
    pub shard: i32,
    pub attempts: i32,
    pub error: Option<String>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Alert {
    fn subject(&self) -> String {
        format!("[syncfleet] {} failed: step {} for {}", self.chain, self.step, self.integration)
    }

    fn text(&self) -> String {
        format!(
            "A required step failed.\n\nchain:       {}\nintegration: {}\nrun:         {}\nstep:        {}{}\nattempts:    {}\nerror:       {}\n",
            self.chain,
            self.integration,
            self.run_id,
            self.step,
            if self.shard > 0 { format!(" (shard {})", self.shard) } else { String::new() },
            self.attempts,
            self.error.as_deref().unwrap_or("(no message)"),
        )
    }
}

/// Claims the failures not yet alerted (none when no channel is configured) and sends them.
/// Returns how many were claimed.
pub async fn send_new(ops: &Ops) -> anyhow::Result<usize> {
    let config = &ops.config.alerts;
    if config.webhook_url.is_none() && config.smtp.is_none() {
        return Ok(0);
    }
    let alerts: Vec<Alert> = sqlx::query_as(
        "WITH due AS (
             SELECT id FROM step_runs
             WHERE status = 'failed' AND required AND (alerted_at IS NULL OR alerted_at < finished_at)
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE step_runs s SET alerted_at = now() FROM due WHERE s.id = due.id
             RETURNING s.run_id, s.step, s.shard, s.attempts, s.error, s.finished_at
         )
         SELECT r.chain, i.name AS integration, c.run_id, c.step, c.shard, c.attempts, c.error, c.finished_at
         FROM claimed c JOIN chain_runs r ON r.id = c.run_id JOIN integrations i ON i.id = r.integration_id
         ORDER BY c.finished_at",
    )
    .bind(BATCH)
    .fetch_all(&ops.pool)
    .await?;
    for alert in &alerts {
        deliver(config, alert).await;
    }
    Ok(alerts.len())
}

async fn deliver(config: &AlertsConfig, alert: &Alert) {
    tracing::warn!(chain = %alert.chain, integration = %alert.integration, run_id = %alert.run_id,
        step = %alert.step, error = alert.error.as_deref().unwrap_or(""), "Required step failed; alerting.");
    if let Some(url) = &config.webhook_url {
        let sent = reqwest::Client::new().post(url).timeout(WEBHOOK_TIMEOUT).json(alert).send().await;
        match sent.and_then(|r| r.error_for_status()) {
            Ok(_) => {}
            Err(error) => tracing::error!(%error, run_id = %alert.run_id, step = %alert.step, "Alert webhook failed."),
        }
    }
    if let Some(smtp) = &config.smtp
        && let Err(error) = smtp.send(&config.to, &alert.subject(), alert.text(), false).await
    {
        tracing::error!(%error, run_id = %alert.run_id, step = %alert.step, "Alert mail failed.");
    }
}
