//! The sync contract (DESIGN §3): connectors know their API; the engine here does the rest the same
//! way for every source.
//!
//! - A [`Source`] streams pages of [`Item`]s: records (external id, cursor value, mapped fields, raw
//!   payload) or items it could not read.
//! - [`pull::pull`] upserts them in batches, marks them seen, keeps the cursor, runs the sweep behind the
//!   deletion guard, and records item errors.
//! - [`sweep`] holds the deletion guard's rules and every deactivation: the full sweep's rules,
//!   scoped sweeps ([`sweep::ScopedSweep`]: one program's courses, one user's transcript) decided
//!   per scope by the same rules, and deactivation by id of what the upstream reports deleted.
//! - [`pull::sync_one`] is the single-item path (webhooks) through the same mapping and upsert.
//! - [`offset::OffsetPaging`] is offset paging's rule for every connector: the next page starts
//!   after the records received.
//! - [`pointer`] reads JSON pointers into records without allocating.
//! - A [`push::Sink`] takes changes; [`push::push`] diffs against what was last pushed and sends only
//!   changed values, in bulk, recording each item's outcome.

pub mod analyze;
pub mod column;
pub mod item_errors;
pub mod offset;
mod page;
pub mod pointer;
pub mod pull;
pub mod push;
pub mod sweep;
pub mod table;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::http::HttpError;

/// One upstream record, mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub external_id: String,
    /// The record's change time, for the incremental cursor.
    pub cursor: Option<chrono::DateTime<chrono::Utc>>,
    /// Mapped values by column name (columns not present are written as NULL).
    pub fields: Map<String, Value>,
    /// The upstream payload as received.
    pub raw: Value,
}

/// What a source read from one position of a page.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Record(Record),
    /// The item could not be read (no id, a field the connector cannot map). `external_id` is `None`
    /// when even the id was unreadable; that blocks the sweep.
    Bad {
        external_id: Option<String>,
        cursor: Option<chrono::DateTime<chrono::Utc>>,
        message: String,
    },
}

/// One page from the upstream.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub items: Vec<Item>,
    /// The total the upstream reports for the whole selection, when it reports one.
    pub total: Option<i64>,
    /// The page held fewer items than the upstream promised (short page before the end).
    pub short: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The answer was not what the connector expects (no records array, bad paging fields).
    #[error("{0}")]
    Shape(String),
}

/// A connector's reading side: pages of one entity, from the start or changed since a time.
pub trait Source: Send {
    /// The next page, `None` after the last. `since` is the same on every call of one fetch.
    fn next_page(
        &mut self,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> BoxFuture<'_, Result<Option<Page>, SourceError>>;
}
