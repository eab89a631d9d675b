//! Phase 2 of `sync_enrollments` ([`crate::enrollments`]): the users of a batch of courses, upserted
//! in statements of at most [`USER_BATCH`] rows in id order, each its own fenced transaction. A
//! statement refused by a unique index runs again first (at most [`RACED_AGAIN`] times): two shards
//! inserting the same new user at the same moment both pass the key's check, and the second then
//! fails on the username index once the first commits (`ON CONFLICT` arbitrates only the key's
//! index); run again, it finds the user and updates it. A statement that still fails (a username
//! taken by another active row, say) has each of its rows written alone, so only the failing ones
//! are item errors.

use sqlx::PgPool;
use syncfleet_sdk::{
    ids::RunId,
    step::{AttemptFence, StepError},
    sync::table::{Table, UpsertCounts},
};

use super::Rows;

/// Phase 2 writes users in statements of at most this many rows (in id order), each its own
/// transaction: shards that read the same users wait for each other's statement, not for each
/// other's whole phase.
const USER_BATCH: usize = 5_000;

/// How many times a user batch refused by a unique violation is run again before its rows are
/// written alone: each time, the shard whose commit it met has committed, and the statement's key
/// check now finds that shard's users.
const RACED_AGAIN: usize = 2;

/// What phase 2 did.
#[derive(Default)]
pub(crate) struct UsersWritten {
    inserted: i64,
    updated: i64,
    /// Batch statements run.
    batches: usize,
    /// Batch statements run again after a unique violation ([`RACED_AGAIN`]) that then passed.
    again: usize,
    /// Rows refused when written alone.
    pub(crate) failed: Vec<(String, String)>,
    /// The error of the first batch that failed (its rows were then written one by one).
    batch_error: Option<String>,
}

impl UsersWritten {
    /// How the users were written, for the step's note: in how many statements, and the counts.
    pub(crate) fn describe(&self) -> String {
        let mut batch = match (&self.batch_error, self.batches) {
            (None, 0 | 1) => "in one batch".to_owned(),
            (None, n) => format!("in {n} batches (one per batch of courses)"),
            (Some(e), _) => format!("per row after the batch failed ({e}), {} row(s) refused", self.failed.len()),
        };
        if self.again > 0 {
            batch.push_str(&format!(
                ", {} of them run again after meeting another shard's commit on a unique index",
                self.again
            ));
        }
        format!("{batch} ({} inserted, {} updated)", self.inserted, self.updated)
    }

    fn count(&mut self, c: UpsertCounts) {
        self.inserted += c.inserted;
        self.updated += c.updated;
    }

    pub(crate) fn add(&mut self, other: UsersWritten) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.batches += other.batches;
        self.again += other.again;
        self.failed.extend(other.failed);
        if self.batch_error.is_none() {
            self.batch_error = other.batch_error;
        }
    }
}

/// Phase 2 for `rows` (each user once, in id order): statements of at most [`USER_BATCH`] rows, each
/// in its own transaction; a statement refused by a unique violation runs again (at most
/// [`RACED_AGAIN`] times), and one that still fails has each of its rows written alone.
pub(crate) async fn upsert_users(
    pool: &PgPool,
    fence: Option<&AttemptFence>,
    table: &Table,
    integration_id: i64,
    run: RunId,
    rows: &Rows<'_>,
) -> Result<UsersWritten, StepError> {
    let mut out = UsersWritten::default();
    let write = async |ids: &[String], columns: &[Vec<Option<String>>]| {
        upsert_fenced(pool, fence, table, integration_id, run, ids, columns).await
    };
    for start in (0..rows.ids.len()).step_by(USER_BATCH) {
        let end = (start + USER_BATCH).min(rows.ids.len());
        let ids = &rows.ids[start..end];
        let columns: Vec<Vec<Option<String>>> = rows.columns.iter().map(|c| c[start..end].to_vec()).collect();
        out.batches += 1;
        let mut written = write(ids, &columns).await?;
        for again in 1..=RACED_AGAIN {
            match &written {
                Err(refused) if refused.unique_violation => {
                    tracing::debug!(error = %refused.message, users = ids.len(), again,
                        "User batch met another writer's commit on a unique index; running it again.");
                    written = write(ids, &columns).await?;
                    if written.is_ok() {
                        out.again += 1;
                    }
                }
                _ => break,
            }
        }
        match written {
            Ok(c) => out.count(c),
            Err(refused) => {
                tracing::warn!(error = %refused.message, users = ids.len(), "User batch failed; writing each row alone.");
                out.batch_error.get_or_insert(refused.message);
                for i in start..end {
                    let id = &rows.ids[i];
                    match write(std::slice::from_ref(id), &rows.row(i)).await? {
                        Ok(c) => out.count(c),
                        Err(refused) => out.failed.push((id.clone(), refused.message)),
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Rows the database refused (nothing of them written): PostgreSQL's message, and whether a unique
/// index refused them.
struct Refused {
    message: String,
    unique_violation: bool,
}

/// One fenced transaction of [`Table::upsert`]: its counts, or why the database refused the rows.
async fn upsert_fenced(
    pool: &PgPool,
    fence: Option<&AttemptFence>,
    table: &Table,
    integration_id: i64,
    run: RunId,
    ids: &[String],
    columns: &[Vec<Option<String>>],
) -> Result<Result<UpsertCounts, Refused>, StepError> {
    let mut tx = AttemptFence::begin(fence, pool).await?;
    match table.upsert(&mut tx, integration_id, Some(run), ids, columns).await {
        Ok(c) => {
            tx.commit().await?;
            Ok(Ok(c))
        }
        Err(sqlx::Error::Database(e)) => {
            tx.rollback().await?;
            Ok(Err(Refused { message: e.message().to_owned(), unique_violation: e.is_unique_violation() }))
        }
        Err(e) => Err(e.into()),
    }
}
