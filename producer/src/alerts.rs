//! Alerts on a required step's failure: a JSON `POST` to `alerts.webhook_url` and/or a mail to
//! `alerts.to`, naming the chain, the integration, the run, the step and the error.
//!
//! Run by the reconciler on every pass, so failures no worker reported (a lost worker reaped by the
//! reconciler) are alerted too. Each failure is alerted once across the fleet: a producer claims it
//! with `UPDATE step_runs SET alerted_at = now() … RETURNING` (`SKIP LOCKED`, so producers never
//! claim the same row), then sends. A channel (webhook, mail) that fails is kept in `alert_pending`
//! and claimed again from `alert_retry_at` (`alerts.retry_secs`, doubling), until it succeeds or
//! `alerts.max_attempts` deliveries were tried; the channel that succeeded is not sent again.

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
    #[serde(skip)]
    pub id: i64,
    /// Deliveries tried, this one included.
    #[serde(skip)]
    pub alert_attempts: i32,
    /// Channels still to deliver (`None`: every configured one).
    #[serde(skip)]
    pub alert_pending: Option<Vec<String>>,
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
             UNION
             SELECT id FROM step_runs WHERE alert_retry_at <= now()
         ), locked AS (
             SELECT s.id, (s.alerted_at IS NULL OR s.alerted_at < s.finished_at) AS fresh FROM step_runs s
             WHERE s.id IN (SELECT id FROM due) AND s.status = 'failed'
             ORDER BY s.id LIMIT $1 FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE step_runs s SET alerted_at = now(), alert_retry_at = NULL,
                    alert_attempts = CASE WHEN l.fresh THEN 1 ELSE s.alert_attempts + 1 END,
                    alert_pending = CASE WHEN l.fresh THEN NULL ELSE s.alert_pending END
             FROM locked l WHERE s.id = l.id
             RETURNING s.id, s.alert_attempts, s.alert_pending, s.run_id, s.step, s.shard, s.attempts, s.error,
                       s.finished_at
         )
         SELECT c.id, c.alert_attempts, c.alert_pending, r.chain, i.name AS integration, c.run_id, c.step, c.shard,
                c.attempts, c.error, c.finished_at
         FROM claimed c JOIN chain_runs r ON r.id = c.run_id JOIN integrations i ON i.id = r.integration_id
         ORDER BY c.finished_at",
    )
    .bind(BATCH)
    .fetch_all(&ops.pool)
    .await?;
    for alert in &alerts {
        let failed = deliver(config, alert).await;
        if failed.is_empty() {
            continue;
        }
        let attempts = alert.alert_attempts.max(1) as u32;
        if attempts >= config.attempts() {
            tracing::error!(run_id = %alert.run_id, step = %alert.step, attempts, channels = ?failed,
                "Alert not delivered; giving up.");
            continue;
        }
        let delay = config.retry_delay() * 2u32.saturating_pow(attempts - 1);
        sqlx::query(
            "UPDATE step_runs SET alert_retry_at = now() + $2, alert_pending = $3
             WHERE id = $1 AND alert_attempts = $4",
        )
        .bind(alert.id)
        .bind(delay)
        .bind(&failed)
        .bind(alert.alert_attempts)
        .execute(&ops.pool)
        .await?;
        tracing::warn!(run_id = %alert.run_id, step = %alert.step, attempts, channels = ?failed,
            retry_in_secs = delay.as_secs(), "Alert delivery failed; retrying later.");
    }
    Ok(alerts.len())
}

/// Sends the alert on its pending channels; returns the channels that failed.
async fn deliver(config: &AlertsConfig, alert: &Alert) -> Vec<String> {
    let wanted = |channel: &str| alert.alert_pending.as_ref().is_none_or(|p| p.iter().any(|c| c == channel));
    if alert.alert_attempts <= 1 {
        tracing::warn!(chain = %alert.chain, integration = %alert.integration, run_id = %alert.run_id,
            step = %alert.step, error = alert.error.as_deref().unwrap_or(""), "Required step failed; alerting.");
    }
    let mut failed = vec![];
    if let Some(url) = &config.webhook_url
        && wanted("webhook")
    {
        let sent = reqwest::Client::new().post(url).timeout(WEBHOOK_TIMEOUT).json(alert).send().await;
        if let Err(error) = sent.and_then(|r| r.error_for_status()) {
            tracing::error!(%error, run_id = %alert.run_id, step = %alert.step, "Alert webhook failed.");
            failed.push("webhook".to_owned());
        }
    }
    if let Some(smtp) = &config.smtp
        && wanted("mail")
        && let Err(error) = syncfleet_sdk::mail::send(smtp, &config.to, &alert.subject(), alert.text(), false).await
    {
        tracing::error!(%error, run_id = %alert.run_id, step = %alert.step, "Alert mail failed.");
        failed.push("mail".to_owned());
    }
    failed
}
