//! The push step engine (write-back): compare what should be upstream with what was last accepted
//! there (`push_state`), send only the changed fields, in the sink's bulk form, and record each
//! item's outcome. Accepted values are committed per batch, so a retried step does not send them
//! again.

use std::collections::HashMap;

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use sqlx::PgPool;

use super::SourceError;
use crate::{
    ids::RunId,
    step::{AttemptFence, PhaseResult, StepError},
};

/// The changed fields of one item.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub external_id: String,
    pub fields: Map<String, Value>,
}

/// Each item's outcome: `Err(message)` when the upstream refused it.
pub type Outcomes = Vec<(String, Result<(), String>)>;

/// A connector's writing side.
pub trait Sink: Send + Sync {
    /// Most changes one call may carry (1 when the upstream has no bulk form).
    fn max_batch(&self) -> usize;
    /// Sends changes; returns each item's outcome (`Err(message)` for an item the upstream refused).
    /// `Err` for the whole call means nothing is known to be applied.
    fn send<'a>(&'a self, changes: &'a [Change]) -> BoxFuture<'a, Result<Outcomes, SourceError>>;
}

/// Pushes one entity of one integration, chunk by chunk.
pub struct Pusher<'a> {
    pub pool: &'a PgPool,
    /// Each batch's outcomes commit only while the attempt holds ([`AttemptFence::begin`]).
    pub fence: Option<&'a AttemptFence>,
    pub integration_id: i64,
    pub run: RunId,
    pub step: &'a str,
    pub entity: &'a str,
    pub sink: &'a dyn Sink,
}

impl Pusher<'_> {
    /// Diffs one chunk of desired values against `push_state` and sends the changes. Counts go to
    /// `result`: `updated` = accepted, `unchanged` = nothing to send, `errors` = refused.
    pub async fn push_chunk(
        &self,
        desired: Vec<(String, Map<String, Value>)>,
        result: &mut PhaseResult,
    ) -> Result<(), StepError> {
        let ids: Vec<&str> = desired.iter().map(|(id, _)| id.as_str()).collect();
        let last: HashMap<String, (Value, String)> = sqlx::query_as::<_, (String, Value, String)>(
            "SELECT external_id, pushed, outcome FROM push_state
             WHERE integration_id = $1 AND entity = $2 AND external_id = ANY($3)",
        )
        .bind(self.integration_id)
        .bind(self.entity)
        .bind(&ids)
        .fetch_all(self.pool)
        .await?
        .into_iter()
        .map(|(id, pushed, outcome)| (id, (pushed, outcome)))
        .collect();

        let mut changes = Vec::new();
        for (external_id, fields) in desired {
            result.fetched += 1;
            let pushed = last.get(&external_id).and_then(|(p, _)| p.as_object());
            let changed: Map<String, Value> =
                fields.into_iter().filter(|(k, v)| pushed.and_then(|p| p.get(k)) != Some(v)).collect();
            if changed.is_empty() {
                result.unchanged += 1;
            } else {
                changes.push(Change { external_id, fields: changed });
            }
        }
        for batch in changes.chunks(self.sink.max_batch().max(1)) {
            let outcomes = self.sink.send(batch).await?;
            self.record(batch, outcomes, result).await?;
        }
        Ok(())
    }

    async fn record(&self, batch: &[Change], outcomes: Outcomes, result: &mut PhaseResult) -> Result<(), StepError> {
        let mut by_id: HashMap<String, Result<(), String>> = outcomes.into_iter().collect();
        let (mut ok_ids, mut ok_fields, mut bad_ids, mut bad_messages) = (vec![], vec![], vec![], vec![]);
        for change in batch {
            match by_id.remove(&change.external_id) {
                Some(Ok(())) => {
                    ok_ids.push(change.external_id.as_str());
                    ok_fields.push(Value::Object(change.fields.clone()));
                }
                outcome => {
                    let message = match outcome {
                        Some(Err(m)) => m,
                        _ => "the upstream reported no outcome for this item".into(),
                    };
                    bad_ids.push(change.external_id.as_str());
                    bad_messages.push(message);
                }
            }
        }
        result.updated += ok_ids.len() as i64;
        result.errors += bad_ids.len() as i64;
        let mut tx = AttemptFence::begin(self.fence, self.pool).await?;
        sqlx::query(
            "INSERT INTO push_state (integration_id, entity, external_id, pushed, pushed_at, outcome, error)
             SELECT $1, $2, e, f, now(), 'ok', NULL FROM UNNEST($3::text[], $4::jsonb[]) AS x(e, f)
             ON CONFLICT (integration_id, entity, external_id) DO UPDATE SET
                 pushed = push_state.pushed || EXCLUDED.pushed, pushed_at = now(), outcome = 'ok', error = NULL,
                 attempted_at = now()",
        )
        .bind(self.integration_id)
        .bind(self.entity)
        .bind(&ok_ids)
        .bind(&ok_fields)
        .execute(&mut *tx)
        .await?;
        let ok_owned: Vec<String> = ok_ids.iter().map(|s| s.to_string()).collect();
        super::pull::resolve(&mut tx, self.integration_id, self.entity, &ok_owned).await?;
        if !bad_ids.is_empty() {
            sqlx::query(
                "INSERT INTO push_state (integration_id, entity, external_id, outcome, error)
                 SELECT $1, $2, e, 'error', m FROM UNNEST($3::text[], $4::text[]) AS x(e, m)
                 ON CONFLICT (integration_id, entity, external_id) DO UPDATE SET
                     outcome = 'error', error = EXCLUDED.error, attempted_at = now()",
            )
            .bind(self.integration_id)
            .bind(self.entity)
            .bind(&bad_ids)
            .bind(&bad_messages)
            .execute(&mut *tx)
            .await?;
            let failed: Vec<(String, String)> =
                bad_ids.iter().zip(&bad_messages).map(|(i, m)| (i.to_string(), m.clone())).collect();
            super::pull::record_errors(&mut tx, Some(self.run), self.step, self.integration_id, self.entity, &failed)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
