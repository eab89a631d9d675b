//! Writing one page of a pull: its rows (a `COPY` of new rows during a first load, the upsert
//! otherwise), its item errors and the seen-marks of its failed items, in one fenced transaction.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{PgConnection, PgPool};

use super::item_errors::{record_errors, resolve};
use super::table::{Table, UpsertCounts};
use crate::{
    ids::RunId,
    step::{AttemptFence, StepError},
};

pub(super) struct Writer {
    pub(super) pool: PgPool,
    /// Integration name, for the record counters.
    pub(super) integration: String,
    pub(super) integration_id: i64,
    pub(super) run: RunId,
    pub(super) step: String,
    pub(super) entity: String,
    pub(super) table: Table,
    /// Pages commit only while the attempt holds.
    pub(super) fence: Option<AttemptFence>,
    /// The table held no row of the integration when the read began, and no page has met one
    /// since: pages are written as new rows ([`Table::copy_new`]).
    pub(super) first_load: AtomicBool,
}

/// A page written ([`Writer::write`]) and its counts.
pub(super) type Written = Result<(Prepared, UpsertCounts), StepError>;

/// A page split into what can be written and what failed.
#[derive(Default)]
pub(super) struct Prepared {
    pub(super) ids: Vec<String>,
    pub(super) columns: Vec<Vec<Option<String>>>,
    pub(super) failed: Vec<(String, String)>,
    /// Of `failed`, the ids that are real external ids (not `?position`): still upstream, so their
    /// rows are marked seen and spared by the sweep.
    pub(super) spared: Vec<String>,
    /// Item errors of the page (failed items, before duplicates within the page merged).
    pub(super) errors: i64,
    /// Whether the page lists an id listed before (by an earlier page or within itself).
    pub(super) repeats: bool,
}

impl Writer {
    pub(super) async fn has_open_errors(&self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM item_errors
             WHERE integration_id = $1 AND entity = $2 AND resolved_at IS NULL)",
        )
        .bind(self.integration_id)
        .bind(&self.entity)
        .fetch_one(conn)
        .await
    }

    /// Writes one prepared page in one transaction: its rows, the page's item errors, and the
    /// resolution of earlier errors of items that now synced (when `open_errors`). During a first
    /// load the rows are new: one `COPY` writes them. A page that meets a row already there (written
    /// meanwhile by a webhook, or listed by an earlier page) rolls back and is written again with the
    /// upsert, as is every page after it.
    pub(super) async fn write(&self, open_errors: bool, page: &Prepared) -> Result<UpsertCounts, StepError> {
        if !page.ids.is_empty() && !page.repeats && self.first_load.load(Ordering::Relaxed) {
            if let Some(counts) = self.write_rows(open_errors, page, true).await? {
                return Ok(counts);
            }
            self.first_load.store(false, Ordering::Relaxed);
            tracing::debug!(entity = self.entity, "A page met rows already written: upserting from here on.");
        }
        let counts = self.write_rows(open_errors, page, false).await?;
        Ok(counts.expect("an upsert meets no conflict"))
    }

    /// [`Writer::write`] with the rows copied as new (`copy`) or upserted; `None` when a copied row
    /// was already there (the transaction rolled back).
    async fn write_rows(
        &self,
        open_errors: bool,
        page: &Prepared,
        copy: bool,
    ) -> Result<Option<UpsertCounts>, StepError> {
        let mut tx = AttemptFence::begin(self.fence.as_ref(), &self.pool).await?;
        let mut counts = UpsertCounts::default();
        if !page.ids.is_empty() {
            counts = if copy {
                match self.table.copy_new(&mut tx, self.integration_id, self.run, &page.ids, &page.columns).await {
                    Ok(written) => UpsertCounts { inserted: written as i64, ..UpsertCounts::default() },
                    Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                        tx.rollback().await?;
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                self.table.upsert(&mut tx, self.integration_id, Some(self.run), &page.ids, &page.columns).await?
            };
            if open_errors {
                resolve(&mut tx, self.integration_id, &self.entity, &page.ids).await?;
            }
        }
        if !page.failed.is_empty() {
            record_errors(&mut tx, Some(self.run), &self.step, self.integration_id, &self.entity, &page.failed).await?;
        }
        if !page.spared.is_empty() {
            self.table.mark_seen(&mut tx, self.integration_id, self.run, &page.spared).await?;
        }
        tx.commit().await?;
        Ok(Some(counts))
    }
}

/// Pages a pull writes at once, each in its own transaction ([`super::pull::fetch`]).
pub const PAGE_WRITERS: usize = 2;
