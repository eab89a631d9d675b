//! A run's settles, taken in turn within this worker process.
//!
//! After a finish commits, its run is settled: the steps the ended ones made ready are promoted,
//! and a run with nothing open is ended (`runs::settle`). When several steps of one run end at
//! once on this process (the shards of a fan-out), their finishes need not each settle. While one
//! caller is settling the run, a finish that commits only marks the run; the settling caller,
//! once its settle is done, settles again while the mark is set, and pushes what each settle made
//! ready. A burst of finishes costs about two settles, not one each.
//!
//! Nothing is missed: a finish marks the run only after its commit, and the caller that leads
//! checks the mark after each settle and clears it in the same step as it decides to settle again,
//! so a settle starts after every marked commit. A finish that finds no settle of its run going on
//! leads one itself. A settle that fails, or a process that dies while leading, leaves what a
//! worker killed between its commit and its settle leaves; the reconciler settles such runs
//! (`runs::settle_stranded`). Settles on other processes are not coordinated here: each settle is
//! correct alone (`step_settle`, `0026`).

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::Mutex,
};

use syncfleet_shared::ids::RunId;

/// The runs being settled by this process, each with whether a finish committed since its
/// current settle began.
#[derive(Debug, Default)]
pub(crate) struct Settles {
    runs: Mutex<HashMap<RunId, bool>>,
}

/// The lead of a run's settles: the holder settles, then asks [`Lead::again`].
#[derive(Debug)]
pub(crate) struct Lead<'a> {
    settles: &'a Settles,
    run: RunId,
    /// [`Lead::again`] said no and gave the lead up.
    given_up: bool,
}

impl Settles {
    /// The lead of the run's settles if no settle of it is going on here; `None` leaves nothing
    /// marked (the caller's finish has not committed yet).
    pub(crate) fn lead(&self, run: RunId) -> Option<Lead<'_>> {
        match self.lock().entry(run) {
            Entry::Occupied(_) => None,
            Entry::Vacant(v) => {
                v.insert(false);
                Some(Lead { settles: self, run, given_up: false })
            }
        }
    }

    /// For a finish that has committed: the lead if no settle of its run is going on here;
    /// otherwise the run is marked, and the settle going on is followed by another.
    pub(crate) fn follow(&self, run: RunId) -> Option<Lead<'_>> {
        match self.lock().entry(run) {
            Entry::Occupied(mut o) => {
                *o.get_mut() = true;
                None
            }
            Entry::Vacant(v) => {
                v.insert(false);
                Some(Lead { settles: self, run, given_up: false })
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, bool>> {
        self.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn marked(&self, run: RunId) -> Option<bool> {
        self.lock().get(&run).copied()
    }
}

impl Lead<'_> {
    /// The run led.
    pub(crate) fn run(&self) -> RunId {
        self.run
    }

    /// Whether a finish committed during the settle just done: then the holder settles once more.
    /// Otherwise the lead is given up, in the same step, so a finish committing from now on leads.
    pub(crate) fn again(&mut self) -> bool {
        let mut runs = self.settles.lock();
        match runs.get_mut(&self.run) {
            Some(marked) if *marked => {
                *marked = false;
                true
            }
            _ => {
                runs.remove(&self.run);
                self.given_up = true;
                false
            }
        }
    }
}

impl Drop for Lead<'_> {
    /// A lead dropped before [`Lead::again`] gave it up (its settle failed) lets the next finish
    /// lead; a mark it held is left to the reconciler, as a failed settle is.
    fn drop(&mut self) {
        if !self.given_up {
            self.settles.lock().remove(&self.run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunId {
        RunId::new()
    }

    #[test]
    fn a_finish_during_a_settle_makes_the_lead_settle_again() {
        let settles = Settles::default();
        let r = run();
        let mut lead = settles.lead(r).expect("nothing going on");
        assert!(settles.lead(r).is_none(), "one lead per run");
        assert!(settles.follow(r).is_none(), "a finish committing meanwhile follows");
        assert!(settles.follow(r).is_none());
        assert!(lead.again(), "the marks call for one more settle");
        assert!(!lead.again(), "no finish since: the lead is given up");
        assert_eq!(settles.marked(r), None);
        let next = settles.follow(r);
        assert!(next.is_some(), "a finish after the lead was given up leads");
        drop(lead);
        assert_eq!(settles.marked(r), Some(false), "an old lead's drop leaves the new one in place");
    }

    #[test]
    fn a_failed_settle_lets_the_next_finish_lead() {
        let settles = Settles::default();
        let r = run();
        let lead = settles.lead(r).expect("nothing going on");
        assert!(settles.follow(r).is_none());
        drop(lead);
        assert!(settles.follow(r).is_some());
    }

    #[test]
    fn runs_are_settled_apart() {
        let settles = Settles::default();
        let (a, b) = (run(), run());
        let _a = settles.lead(a).expect("a");
        assert!(settles.lead(b).is_some(), "another run's settle is not held up");
    }
}
