//! A run's settles after finishes that commit a step's writes, taken in turn across the fleet.
//!
//! After a finish commits, its run is settled: the steps the ended ones made ready are promoted,
//! and a run with nothing open is ended (`runs::settle`). A finish with no writes of its step's
//! finishes and settles in one round trip (`runs::finish_step_alone`, or with other successes,
//! [`crate::together`]) and takes no turn; the success of a shard whose step has other rows still
//! open settles nothing (`0028`). A finish with writes
//! commits them, and then needs a round trip of its own to settle; when many such steps of one run
//! end at once (the shards of a fan-out, on every worker process), their finishes need not each
//! settle. The run's settle turn is a Redis key (`QueueClient::settle_follow`): a finish that commits while
//! another caller holds the turn only marks it; the holder, once its settle is done, settles again
//! while the turn is marked (clearing the marks in the same script that reads them), and pushes
//! what each settle made ready. A burst of finishes costs about two settles, not one each. A
//! success marks the turn with its step row: when every mark since the last settle is a success
//! whose step still has another row open (a fan-out's shards), the holder settles nothing
//! (`runs::settle_after_successes`, `0031`), as each of them alone would have (`0028`).
//!
//! Nothing is missed: a finish marks the turn only after its commit, and the holder reads and
//! clears the marks before the settle (or the check of the successes' steps) that follows, so it
//! reads after every marked commit.
//! A finish that finds no turn held takes it and settles itself. The rest falls back to what a
//! worker killed between its commit and its settle leaves, which the reconciler settles
//! (`runs::settle_stranded`, every `producer.reconcile_interval_ms`): a holder that dies (its
//! turn lapses after [`TURN_TTL`]), a settle that fails, a holder of an earlier version during a
//! rolling upgrade (it reads only the `1` mark, not the successes'). A turn that lapsed under a
//! slow holder only lets two callers settle at once, which is correct (`step_settle`, `0026`).
//! When Redis cannot be reached, every finish settles, as it would alone.

use std::time::Duration;

use syncfleet_shared::ids::RunId;
use syncfleet_store::queue::{QueueClient, SettleMarks};

/// How long a settle turn outlives a holder that died.
pub(crate) const TURN_TTL: Duration = Duration::from_secs(10);

/// The runs' settle turns, in the namespace's Redis.
#[derive(Clone)]
pub(crate) struct Settles {
    queues: QueueClient,
}

/// A run's settle turn: its holder settles, then asks [`Settles::again`].
#[derive(Debug)]
pub(crate) struct Lead {
    run: RunId,
    /// The turn is a Redis key (false when Redis could not be asked: settle once, alone).
    held: bool,
}

impl Settles {
    pub(crate) fn new(queues: QueueClient) -> Settles {
        Settles { queues }
    }

    /// For a finish that has committed: the run's turn if nobody holds it; otherwise the turn is
    /// marked, and its holder settles once more (for the success of step row `succeeded`, only if
    /// its step has no other row still open then).
    pub(crate) async fn follow(&self, run: RunId, succeeded: Option<i64>) -> Option<Lead> {
        match self.queues.settle_follow(&run.to_string(), succeeded, TURN_TTL).await {
            Ok(true) => Some(Lead { run, held: true }),
            Ok(false) => None,
            Err(error) => Some(unheld(run, &error)),
        }
    }

    /// What committed during the holder's last settle, for it to settle once more
    /// ([`SettleMarks::Any`], or [`SettleMarks::Successes`] unless their steps are still open).
    /// When nothing did ([`SettleMarks::None`]), the turn is given up, in the same script, so a
    /// finish committing from now on takes it.
    pub(crate) async fn again(&self, lead: &mut Lead) -> SettleMarks {
        if !lead.held {
            return SettleMarks::None;
        }
        let marks = self.queues.settle_again(&lead.run.to_string(), TURN_TTL).await.unwrap_or_else(|error| {
            tracing::warn!(%error, run = %lead.run, "Settle turn unreadable; the reconciler settles what it marked.");
            SettleMarks::None
        });
        lead.held = marks != SettleMarks::None;
        marks
    }
}

fn unheld(run: RunId, error: &impl std::fmt::Display) -> Lead {
    tracing::debug!(%error, %run, "Settle turn not reachable; settling alone.");
    Lead { run, held: false }
}

impl Lead {
    /// The run whose turn this is.
    pub(crate) fn run(&self) -> RunId {
        self.run
    }
}
