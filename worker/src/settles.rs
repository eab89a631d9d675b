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
//! while the mark is set (clearing it in the same script that reads it), and pushes what each
//! settle made ready. A burst of finishes costs about two settles, not one each.
//!
//! Nothing is missed: a finish marks the turn only after its commit, and the holder reads and
//! clears the mark before the settle that follows, so a settle starts after every marked commit.
//! A finish that finds no turn held takes it and settles itself. The rest falls back to what a
//! worker killed between its commit and its settle leaves, which the reconciler settles
//! (`runs::settle_stranded`, every `producer.reconcile_interval_ms`): a holder that dies (its
//! turn lapses after [`TURN_TTL`]), a settle that fails. A turn that lapsed under a slow holder
//! only lets two callers settle at once, which is correct (`step_settle`, `0026`). When Redis
//! cannot be reached, every finish settles, as it would alone.

use std::time::Duration;

use syncfleet_shared::ids::RunId;
use syncfleet_store::queue::QueueClient;

/// How long a settle turn outlives a holder that died.
pub(crate) const TURN_TTL: Duration = Duration::from_secs(10);

/// The runs' settle turns, in the namespace's Redis.
#[derive(Clone)]
pub(crate) struct Settles {
    queues: QueueClient,
}

/// A run's settle turn: its holder settles, then asks [`Lead::again`].
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
    /// marked, and its holder settles once more.
    pub(crate) async fn follow(&self, run: RunId) -> Option<Lead> {
        match self.queues.settle_follow(&run.to_string(), TURN_TTL).await {
            Ok(true) => Some(Lead { run, held: true }),
            Ok(false) => None,
            Err(error) => Some(unheld(run, &error)),
        }
    }

    /// Whether a finish committed during the holder's last settle: then it settles once more.
    /// Otherwise the turn is given up, in the same script, so a finish committing from now on
    /// takes it.
    pub(crate) async fn again(&self, lead: &mut Lead) -> bool {
        if !lead.held {
            return false;
        }
        match self.queues.settle_again(&lead.run.to_string(), TURN_TTL).await {
            Ok(again) => {
                lead.held = again;
                again
            }
            Err(error) => {
                tracing::warn!(%error, run = %lead.run, "Settle turn unreadable; the reconciler settles what it marked.");
                lead.held = false;
                false
            }
        }
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
