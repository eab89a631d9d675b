//! Retries, in one place: the backoff (exponential, capped, with random jitter) every retrying
//! part of syncfleet waits by, the step's [`RetryPolicy`], and [`decide`], the one decision "retry
//! now, later, or fail for good" the worker engine and the producer's reconciler both make.
//!
//! The jitter comes from [`rand::rng`] (seeded from the operating system per thread), so two
//! workers that failed at the same instant do not retry at the same instant.
//!
//! An attempt can end three ways short of success ([`Failure`]): the step's error is permanent
//! (retrying gives the same answer), transient (it may work later), or the attempt was lost to the
//! infrastructure (its worker was killed, its entity lease went with a Redis flush). Only the first
//! two are the step's fault and spend its error budget (`max_attempts`); a lost attempt is retried
//! at once and counted apart, against a larger cap (`max_lost_attempts`) that still stops a step
//! that keeps killing its workers.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Exponential backoff with "equal" jitter: before retry `n` (1 for the first), the pause is
/// `base · factor^(n−1)`, capped at `max`, of which the first half is always waited and the
/// second half is random. So a pause lies in `[d/2, d)`: never shorter than half the nominal
/// pause, never longer than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The nominal first pause (the first retry waits between half of it and all of it).
    pub base: Duration,
    /// The longest pause.
    pub max: Duration,
    /// Growth per retry (1: every pause is drawn from the same range).
    pub factor: u32,
}

/// Tries of a busy entity lease in one delivery ([`Backoff::LEASE_TRY`] between them).
pub const LEASE_TRIES: u32 = 4;

impl Backoff {
    /// A step's retry after a transient error ([`RetryPolicy::DEFAULT`]): 1–2 s, doubling, at most
    /// 5 minutes. A chain or the config sets `base` and `max` per step.
    pub const STEP: Backoff = Backoff { base: Duration::from_secs(2), max: Duration::from_secs(300), factor: 2 };
    /// An HTTP request's next try (`Limits`, `sdk/src/http`): the first between 0.5 s and 1 s
    /// (`backoff_base_ms` and twice it), doubling, at most 30 s. An integration's `limits` set
    /// `base` (twice `backoff_base_ms`) and `max`.
    pub const HTTP: Backoff = Backoff { base: Duration::from_millis(1_000), max: Duration::from_secs(30), factor: 2 };
    /// A step whose entity lease was busy, delivered again (the worker engine): between
    /// `worker.lease_retry_ms` and twice it, every time. `base` and `max` come from the config.
    pub const LEASE_BUSY: Backoff =
        Backoff { base: Duration::from_millis(500), max: Duration::from_millis(500), factor: 1 };
    /// A busy entity lease tried again in the same delivery before the step is delivered again
    /// (the worker engine): 1–2 ms, doubling, at most 8 ms, [`LEASE_TRIES`] tries in all. A
    /// stale delivery of another job of the entity holds its lease for one fenced claim only.
    pub const LEASE_TRY: Backoff = Backoff { base: Duration::from_millis(2), max: Duration::from_millis(8), factor: 2 };
    /// A queue's apalis worker that stopped on its own, restarted by the worker's supervisor:
    /// 0.4–0.8 s, doubling, at most 10 s.
    pub const WORKER_RESTART: Backoff =
        Backoff { base: Duration::from_millis(800), max: Duration::from_secs(10), factor: 2 };
    /// An alert channel (webhook, mail) that failed, claimed again: between `alerts.retry_secs`
    /// (default 30 s) and twice it, doubling, at most an hour. `base` comes from the config.
    pub const ALERT_CHANNEL: Backoff =
        Backoff { base: Duration::from_secs(60), max: Duration::from_secs(3_600), factor: 2 };

    /// A backoff whose first pause lies between `low` and `2 · low` (`base = 2 · low`: the form
    /// the config's `…_ms` settings take, "a pause plus jitter of up to the same again"). A `max`
    /// below `2 · low` is raised to it, so no pause is shorter than `low`.
    pub fn from_low(low: Duration, max: Duration, factor: u32) -> Backoff {
        let base = low.saturating_mul(2);
        Backoff { base, max: max.max(base), factor }
    }

    /// The nominal pause before retry `retry` (1-based; 0 counts as 1), capped, without jitter.
    pub fn nominal(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(30);
        let growth = self.factor.max(1).saturating_pow(exponent);
        self.base.saturating_mul(growth).min(self.max)
    }

    /// The pause before retry `retry` (1-based): [`Backoff::nominal`] `d`, drawn uniformly from
    /// `[d/2, d)` with the thread's random generator.
    pub fn delay(&self, retry: u32) -> Duration {
        let nominal = self.nominal(retry);
        let half = nominal / 2;
        let spread = (nominal - half).as_nanos().min(u64::MAX as u128) as u64;
        if spread == 0 {
            return nominal;
        }
        half + Duration::from_nanos(rand::rng().random_range(0..spread))
    }
}

/// A step's retries: at most `max_attempts` attempts that fail by the step's own error, with
/// [`Backoff`] pauses from `base` up to `max` between them; beside that, at most
/// `max_lost_attempts` attempts lost to the infrastructure, each retried at once.
///
/// Config overrides: `max_attempts`, `backoff_base_ms`, `backoff_max_ms`, `max_lost_attempts` in
/// `[chains.<chain>.steps.<step>]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
    /// Attempts lost to the infrastructure (worker killed, entity lease lost) before the step
    /// fails for good; they do not spend `max_attempts`.
    #[serde(default = "RetryPolicy::default_max_lost_attempts")]
    pub max_lost_attempts: u32,
}

impl RetryPolicy {
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base: Backoff::STEP.base,
        max: Backoff::STEP.max,
        max_lost_attempts: RetryPolicy::DEFAULT_MAX_LOST_ATTEMPTS,
    };

    /// Lost attempts a step may have by default: more than `max_attempts`, since one killed worker
    /// costs every step it held an attempt.
    pub const DEFAULT_MAX_LOST_ATTEMPTS: u32 = 10;

    fn default_max_lost_attempts() -> u32 {
        Self::DEFAULT_MAX_LOST_ATTEMPTS
    }

    /// The pauses between this step's attempts.
    pub fn backoff(&self) -> Backoff {
        Backoff { base: self.base, max: self.max, factor: Backoff::STEP.factor }
    }

    /// Delay before attempt `attempt + 1`, after `attempt` failed: base·2^(attempt−1), capped,
    /// then a uniformly random share between 50 % and 100 % of it ([`Backoff::delay`]).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        self.backoff().delay(attempt)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::DEFAULT
    }
}

/// How an attempt ended short of success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The step's error will not go away by trying again (a refused request, a constraint or data
    /// error, a precondition not met).
    Permanent,
    /// The step's error may go away (a lost connection, a timeout, a serialization failure);
    /// `hint` is the wait the upstream asked for.
    Transient { hint: Option<Duration> },
    /// Not the step's fault: its worker was killed or stopped, or its entity lease was lost.
    Lost,
}

/// A step's attempt counters, as PostgreSQL holds them while one of its attempts runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Attempts claimed so far, the one that just ended included.
    pub attempts: u32,
    /// Attempts lost to the infrastructure before the one that just ended.
    pub lost: u32,
    /// The error budget: attempts that may fail by the step's own error (a resume raises it).
    pub max_attempts: u32,
    /// Attempts that may be lost before the step fails for good (a resume raises it).
    pub max_lost: u32,
}

impl Tally {
    /// Attempts that failed by the step's error, or are running now: every attempt not lost.
    pub fn spent(&self) -> u32 {
        self.attempts.saturating_sub(self.lost)
    }
}

/// Why a step fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Its error is permanent: it was not retried.
    Permanent,
    /// It failed by its own error on every attempt of its budget.
    AttemptsSpent,
    /// Its workers kept dying: `max_lost_attempts` attempts were lost to the infrastructure.
    WorkersKeptDying,
}

/// What happens after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A new attempt, due at once.
    RetryNow,
    /// A new attempt, due after the pause.
    RetryAfter(Duration),
    /// The step fails; its run goes on only after a resume.
    FailForGood(Stop),
}

impl Decision {
    /// The pause before the next attempt; `None` when there is none.
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            Decision::RetryNow => Some(Duration::ZERO),
            Decision::RetryAfter(d) => Some(*d),
            Decision::FailForGood(_) => None,
        }
    }
}

/// The one retry decision, made by the worker engine after a failed attempt and by the reconciler
/// after a lost one.
///
/// - [`Failure::Permanent`]: fail for good, whatever the budget.
/// - [`Failure::Transient`]: retry after the upstream's hint or the backoff's pause for the
///   attempts spent, while the error budget lasts (`spent < max_attempts`).
/// - [`Failure::Lost`]: the attempt spends nothing of the error budget; retry at once while fewer
///   than `max_lost` attempts were lost, this one included.
pub fn decide(failure: Failure, tally: Tally, backoff: &Backoff) -> Decision {
    match failure {
        Failure::Permanent => Decision::FailForGood(Stop::Permanent),
        Failure::Transient { hint } => {
            let spent = tally.spent();
            if spent < tally.max_attempts {
                Decision::RetryAfter(hint.unwrap_or_else(|| backoff.delay(spent)))
            } else {
                Decision::FailForGood(Stop::AttemptsSpent)
            }
        }
        Failure::Lost => {
            if tally.lost + 1 < tally.max_lost {
                Decision::RetryNow
            } else {
                Decision::FailForGood(Stop::WorkersKeptDying)
            }
        }
    }
}

/// The step's error as recorded when it fails for good: its last error, and for a step whose
/// workers kept dying, that first. `lost` counts the lost attempts, the last one included.
pub fn step_error(stop: Stop, message: &str, lost: u32) -> String {
    match stop {
        Stop::WorkersKeptDying => {
            format!(
                "the workers running this step kept dying: {lost} attempts lost to the infrastructure; last: {message}"
            )
        }
        Stop::Permanent | Stop::AttemptsSpent => message.to_owned(),
    }
}

/// The run's error when step `step` failed for good: the step's error, how many attempts it spent
/// (and lost), and that `syncfleet resume <run>` continues the run. Counts are the step row's
/// after the failed attempt.
pub fn run_error(step: &str, run_id: &str, stop: Stop, message: &str, attempts: u32, lost: u32) -> String {
    let spent = attempts.saturating_sub(lost);
    let lost_note = match lost {
        0 => String::new(),
        n => format!(", {n} more lost to the infrastructure"),
    };
    let why = match stop {
        Stop::Permanent => format!("not retried, the error is permanent; {}{lost_note}", spent_attempts(spent)),
        Stop::AttemptsSpent => format!("{}, all it had{lost_note}", spent_attempts(spent)),
        Stop::WorkersKeptDying => {
            format!("{lost} attempts lost to the infrastructure; {} by its own errors", spent_attempts(spent))
        }
    };
    format!("step `{step}` failed: {message} ({why}; `syncfleet resume {run_id}` continues the run)")
}

/// "1 attempt spent", "3 attempts spent".
fn spent_attempts(n: u32) -> String {
    if n == 1 { "1 attempt spent".to_owned() } else { format!("{n} attempts spent") }
}

/// Whether a PostgreSQL error (by its SQLSTATE) would be the same on every try: a data exception
/// (class `22`) or an integrity constraint violation (class `23`, e.g. `23505` unique violation).
/// Everything else (serialization failure `40001`, deadlock `40P01`, connection exceptions `08`,
/// an administrator's shutdown `57P01`, …) may pass on a retry.
pub fn sqlstate_is_permanent(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn jitter_is_random() {
        for backoff in
            [Backoff::STEP, Backoff::HTTP, Backoff::LEASE_BUSY, Backoff::WORKER_RESTART, Backoff::ALERT_CHANNEL]
        {
            let delays: Vec<Duration> = (0..50).map(|_| backoff.delay(1)).collect();
            let first = delays[0];
            assert!(delays.iter().any(|d| *d != first), "{backoff:?}: 50 equal delays {first:?}");
            let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
            assert!(distinct.len() > 40, "{backoff:?}: only {} distinct delays of 50", distinct.len());
        }
    }

    #[test]
    fn pauses_grow_within_their_range_and_the_cap_holds() {
        let b = Backoff { base: ms(100), max: ms(1_000), factor: 2 };
        for _ in 0..200 {
            let d1 = b.delay(1);
            assert!(d1 >= ms(50) && d1 < ms(100), "{d1:?}");
            let d3 = b.delay(3);
            assert!(d3 >= ms(200) && d3 < ms(400), "{d3:?}");
            let d30 = b.delay(30);
            assert!(d30 >= ms(500) && d30 < ms(1_000), "{d30:?}");
            assert!(b.delay(u32::MAX) < ms(1_000));
            assert!(b.delay(0) < ms(100), "0 counts as the first retry");
        }
        let flat = Backoff::from_low(ms(250), ms(250), 1);
        for n in [1, 2, 10] {
            let d = flat.delay(n);
            assert!(d >= ms(250) && d < ms(500), "{d:?}");
        }
        let zero = Backoff { base: Duration::ZERO, max: Duration::ZERO, factor: 2 };
        assert_eq!(zero.delay(3), Duration::ZERO);
    }

    #[test]
    fn each_use_keeps_its_range() {
        let first = |b: Backoff| (b.nominal(1) / 2, b.nominal(1));
        assert_eq!(first(Backoff::STEP), (ms(1_000), ms(2_000)));
        assert_eq!(first(Backoff::HTTP), (ms(500), ms(1_000)));
        assert_eq!(first(Backoff::LEASE_BUSY), (ms(250), ms(500)));
        assert_eq!(first(Backoff::WORKER_RESTART), (ms(400), ms(800)));
        assert_eq!(Backoff::WORKER_RESTART.nominal(10), Duration::from_secs(10));
        assert_eq!(Backoff::ALERT_CHANNEL.nominal(20), Duration::from_secs(3_600));
        assert_eq!(RetryPolicy::DEFAULT.backoff(), Backoff::STEP);
    }

    fn tally(attempts: u32, lost: u32) -> Tally {
        Tally { attempts, lost, max_attempts: 3, max_lost: 10 }
    }

    #[test]
    fn decisions_per_kind() {
        let b = Backoff { base: ms(100), max: ms(1_000), factor: 2 };
        // Permanent: at once, whatever is left.
        assert_eq!(decide(Failure::Permanent, tally(1, 0), &b), Decision::FailForGood(Stop::Permanent));
        // Transient: backoff for the attempts spent, then the budget runs out.
        match decide(Failure::Transient { hint: None }, tally(2, 0), &b) {
            Decision::RetryAfter(d) => assert!(d >= ms(100) && d < ms(200), "{d:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(Failure::Transient { hint: Some(ms(7_000)) }, tally(1, 0), &b),
            Decision::RetryAfter(ms(7_000)),
            "the upstream's hint wins"
        );
        assert_eq!(
            decide(Failure::Transient { hint: None }, tally(3, 0), &b),
            Decision::FailForGood(Stop::AttemptsSpent)
        );
        // Lost attempts do not spend the budget: 3 errors remain after 5 kills.
        assert!(matches!(decide(Failure::Transient { hint: None }, tally(7, 5), &b), Decision::RetryAfter(_)));
        assert_eq!(
            decide(Failure::Transient { hint: None }, tally(8, 5), &b),
            Decision::FailForGood(Stop::AttemptsSpent)
        );
        // Lost: at once, also with the error budget spent, until the larger cap.
        assert_eq!(decide(Failure::Lost, tally(1, 0), &b), Decision::RetryNow);
        assert_eq!(decide(Failure::Lost, tally(5, 2), &b), Decision::RetryNow, "2 errors and 2 lost before");
        assert_eq!(decide(Failure::Lost, tally(9, 8), &b), Decision::RetryNow, "the ninth lost attempt");
        assert_eq!(decide(Failure::Lost, tally(10, 9), &b), Decision::FailForGood(Stop::WorkersKeptDying));
        assert_eq!(Decision::RetryNow.retry_in(), Some(Duration::ZERO));
        assert_eq!(Decision::FailForGood(Stop::Permanent).retry_in(), None);
    }

    #[test]
    fn errors_say_what_was_spent_and_how_to_go_on() {
        let e = run_error("left", "R", Stop::AttemptsSpent, "boom", 5, 2);
        assert_eq!(
            e,
            "step `left` failed: boom (3 attempts spent, all it had, 2 more lost to the infrastructure; \
             `syncfleet resume R` continues the run)"
        );
        let e = run_error("left", "R", Stop::Permanent, "duplicate key", 1, 0);
        assert!(e.contains("not retried") && e.contains("syncfleet resume R"), "{e}");
        let e = run_error("ping", "R", Stop::WorkersKeptDying, "worker w lost", 10, 10);
        assert!(e.contains("10 attempts lost") && e.contains("syncfleet resume R"), "{e}");
        assert!(step_error(Stop::WorkersKeptDying, "worker w lost", 10).contains("kept dying"));
        assert_eq!(step_error(Stop::AttemptsSpent, "boom", 0), "boom");
    }

    #[test]
    fn sqlstates() {
        for permanent in ["23505", "23503", "23502", "23514", "22001", "22012", "22P02"] {
            assert!(sqlstate_is_permanent(permanent), "{permanent}");
        }
        for transient in ["40001", "40P01", "08006", "57P01", "53300", "55P03"] {
            assert!(!sqlstate_is_permanent(transient), "{transient}");
        }
    }

    #[test]
    fn the_policy_reads_as_before() {
        let old = r#"{"max_attempts":3,"base":{"secs":2,"nanos":0},"max":{"secs":300,"nanos":0}}"#;
        let p: RetryPolicy = serde_json::from_str(old).unwrap();
        assert_eq!(p, RetryPolicy::DEFAULT);
    }
}
