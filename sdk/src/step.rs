//! What a pack implements: a handler per step. The engine (worker crate) claims the step, runs the
//! handler inside a timeout, and records the phase result and the downstream transitions.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;

pub use syncfleet_shared::phase::PhaseResult;
pub use syncfleet_store::Integration;

use syncfleet_shared::retry::{Failure, sqlstate_is_permanent};

use crate::{
    chain::{ChainDef, Mode, StepDef},
    http::HttpClients,
    ids::RunId,
};

/// The error a step's failure came from, kept as its source.
pub type ErrorSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What should happen after a step failed. Either way the error it came from is kept as its
/// [`source`](std::error::Error::source) (`None` for a failure described only in words).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Transient: try again (after the hint, or the step's backoff) while attempts remain.
    #[error("{message}")]
    Retry { message: String, after: Option<Duration>, source: Option<ErrorSource> },
    /// Permanent: no retry; the step fails now.
    #[error("{message}")]
    Abort { message: String, source: Option<ErrorSource> },
}

impl StepError {
    pub fn retry(message: impl Into<String>) -> Self {
        StepError::Retry { message: message.into(), after: None, source: None }
    }
    pub fn abort(message: impl Into<String>) -> Self {
        StepError::Abort { message: message.into(), source: None }
    }
    /// Transient, caused by `source` (the message is its text).
    pub fn transient(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StepError::Retry { message: source.to_string(), after: None, source: Some(Box::new(source)) }
    }
    /// Permanent, caused by `source` (the message is its text).
    pub fn permanent(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StepError::Abort { message: source.to_string(), source: Some(Box::new(source)) }
    }
    /// The same error, not to be retried before `after` (an upstream's hint).
    pub fn after(self, after: Duration) -> Self {
        match self {
            StepError::Retry { message, source, .. } => StepError::Retry { message, after: Some(after), source },
            abort => abort,
        }
    }
    /// The same error, caused by `source`.
    pub fn with_source(self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        let source: Option<ErrorSource> = Some(Box::new(source));
        match self {
            StepError::Retry { message, after, .. } => StepError::Retry { message, after, source },
            StepError::Abort { message, .. } => StepError::Abort { message, source },
        }
    }
    /// What kind of failure this is, for the retry decision ([`syncfleet_shared::retry::decide`]).
    pub fn failure(&self) -> Failure {
        match self {
            StepError::Retry { after, .. } => Failure::Transient { hint: *after },
            StepError::Abort { .. } => Failure::Permanent,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            StepError::Retry { message, .. } | StepError::Abort { message, .. } => message,
        }
    }
}

impl StepError {
    /// The error for settings of `integration` that do not parse: `(key, message)` from a pack's
    /// `Settings::parse`, named as the config names it. Permanent.
    pub fn settings(integration: &Integration, (key, message): (String, String)) -> Self {
        let name = &integration.name;
        StepError::abort(format!("integration `{name}`: invalid `integrations.{name}.{key}`: {message}"))
    }
}

/// Whether a database error would come back on every try: a constraint or data error (SQLSTATE
/// class `23`, `22`), or a value the statement cannot encode or its answer cannot decode. A lost
/// connection, a pool timeout, a serialization failure (`40001`) or deadlock (`40P01`) and every
/// other error may pass on a retry.
pub fn sqlx_is_permanent(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| sqlstate_is_permanent(&code)),
        sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => true,
        _ => false,
    }
}

impl From<sqlx::Error> for StepError {
    /// Classified by [`sqlx_is_permanent`]; the message is `database: …`, the source the error.
    fn from(e: sqlx::Error) -> Self {
        let permanent = sqlx_is_permanent(&e);
        let message = format!("database: {e}");
        let source: Option<ErrorSource> = Some(Box::new(e));
        if permanent { StepError::Abort { message, source } } else { StepError::Retry { message, after: None, source } }
    }
}

/// The attempt a step context runs for: the step row and the task id PostgreSQL names as its
/// current job while the attempt holds.
#[derive(Debug, Clone)]
pub struct AttemptFence {
    pub step_run_id: i64,
    pub job_id: String,
}

impl AttemptFence {
    /// A transaction for writes that commit before the step completes (a pull's pages). It first
    /// locks the step row `FOR SHARE` while this attempt still holds it (running under this job
    /// id): the writes of an attempt that was taken away (reaped after its heartbeats stopped, as
    /// during a PostgreSQL outage longer than `stale_after_secs`) never commit, and a reap waits
    /// for the page being written. `None` (a context built without a fence) gives a plain
    /// transaction.
    pub async fn begin(
        fence: Option<&AttemptFence>,
        pool: &PgPool,
    ) -> Result<Transaction<'static, Postgres>, StepError> {
        let mut tx = pool.begin().await?;
        if let Some(f) = fence {
            let holds: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM step_runs WHERE id = $1 AND job_id = $2 AND status = 'running' FOR SHARE",
            )
            .bind(f.step_run_id)
            .bind(&f.job_id)
            .fetch_optional(&mut *tx)
            .await?;
            if holds.is_none() {
                return Err(StepError::retry("the step was taken away from this attempt; its page is not written"));
            }
        }
        Ok(tx)
    }
}

/// Everything a step handler may use. Writes that must be applied exactly once with the step's
/// completion go through [`StepContext::tx`]: the engine commits that transaction together with
/// the step's result, fenced on the step still being this worker's.
pub struct StepContext {
    pub pool: PgPool,
    pub run_id: RunId,
    pub chain: Arc<ChainDef>,
    pub step: StepDef,
    pub integration: Integration,
    pub mode: Mode,
    pub shard: i32,
    pub attempt: i32,
    pub worker: String,
    pub force_sweep: bool,
    /// HTTP clients of this worker process (shared rate budgets and concurrency caps).
    pub http: HttpClients,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub result: PhaseResult,
    /// Cancelled when the worker shuts down hard or the step is taken away.
    pub cancel: CancellationToken,
    /// The attempt, set by the engine; writes that commit before the completion check it
    /// ([`AttemptFence::begin`]).
    pub fence: Option<AttemptFence>,
    /// The deployment's `[packs.<pack>]` section (`null` when absent), environment variables the
    /// pack aliases included: read once at start-up, never from the environment while a step runs.
    pub pack_section: serde_json::Value,
    /// The integration's settings as the deployment's config file declares them
    /// (`[integrations.<name>]`), `None` when the file does not declare it. What a pack takes from
    /// the config file only (an `http-json` push's SQL) is read from here, never from the database,
    /// which the admin API writes.
    pub config_settings: Option<serde_json::Value>,
    tx: Option<Transaction<'static, Postgres>>,
}

impl StepContext {
    /// Copies the clients' call counts into the step's metrics (also when the step fails).
    pub fn record_calls(&mut self, clients: &[&crate::http::HttpClient]) {
        use std::sync::atomic::Ordering::Relaxed;
        self.result.api_calls = clients.iter().map(|c| c.stats().api_calls.load(Relaxed)).sum();
        self.result.throttled = clients.iter().map(|c| c.stats().throttled.load(Relaxed)).sum();
    }

    /// Adds a line of what the step found to its `guard` text.
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.result.guard = Some(match self.result.guard.take() {
            Some(g) => format!("{g}; {text}"),
            None => text,
        });
    }

    /// Marks the step partial: part of its work failed (recorded as item errors) while the rest was
    /// written. The step still succeeds, so the chain goes on, but the run ends `partial`, and resuming
    /// the run runs this step again. `text` joins the step's notes.
    pub fn partial(&mut self, text: impl Into<String>) {
        self.result.partial = true;
        self.note(text);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: PgPool,
        run_id: RunId,
        chain: Arc<ChainDef>,
        step: StepDef,
        integration: Integration,
        mode: Mode,
        shard: i32,
        attempt: i32,
        worker: String,
        force_sweep: bool,
        http: HttpClients,
    ) -> Self {
        StepContext {
            pool,
            run_id,
            chain,
            step,
            integration,
            mode,
            shard,
            attempt,
            worker,
            force_sweep,
            http,
            started_at: chrono::Utc::now(),
            result: PhaseResult::default(),
            cancel: CancellationToken::new(),
            fence: None,
            pack_section: serde_json::Value::Null,
            config_settings: None,
            tx: None,
        }
    }

    /// A transaction for writes that commit before the step completes, fenced on this attempt
    /// ([`AttemptFence::begin`]).
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, StepError> {
        AttemptFence::begin(self.fence.as_ref(), &self.pool).await
    }

    /// The same context with the deployment's `[packs.<pack>]` section.
    pub fn with_pack_section(mut self, section: serde_json::Value) -> Self {
        self.pack_section = section;
        self
    }

    /// The same context with the integration's settings from the config file.
    pub fn with_config_settings(mut self, settings: Option<serde_json::Value>) -> Self {
        self.config_settings = settings;
        self
    }

    /// The same context fenced on attempt `job_id` of step row `step_run_id`.
    pub fn fenced(mut self, step_run_id: i64, job_id: &str) -> Self {
        self.fence = Some(AttemptFence { step_run_id, job_id: job_id.to_owned() });
        self
    }

    /// The completion transaction, opened on first use.
    pub async fn tx(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if self.tx.is_none() {
            self.tx = Some(self.pool.begin().await?);
        }
        Ok(self.tx.as_mut().expect("just opened"))
    }

    /// Hands the completion transaction to the engine.
    pub fn take_tx(&mut self) -> Option<Transaction<'static, Postgres>> {
        self.tx.take()
    }
}

/// One step's behaviour. Connectors hold API knowledge; the engine does the rest.
pub trait StepHandler: Send + Sync {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>>;
}

/// Step handlers of every pack, looked up by `(pack, step)`.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<(String, String), Arc<dyn StepHandler>>,
}

impl HandlerRegistry {
    pub fn from_packs<'a>(packs: impl IntoIterator<Item = &'a Arc<dyn crate::Pack>>) -> Self {
        let mut handlers = HashMap::new();
        for p in packs {
            for (step, h) in p.handlers() {
                handlers.insert((p.name().to_owned(), step.to_owned()), h);
            }
        }
        HandlerRegistry { handlers }
    }

    pub fn get(&self, pack: &str, step: &str) -> Option<Arc<dyn StepHandler>> {
        self.handlers.get(&(pack.to_owned(), step.to_owned())).cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, error::Error as _};

    use super::*;

    /// A database error with a SQLSTATE, as PostgreSQL would answer it.
    #[derive(Debug)]
    struct Db(&'static str);

    impl std::fmt::Display for Db {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error {}", self.0)
        }
    }

    impl std::error::Error for Db {}

    impl sqlx::error::DatabaseError for Db {
        fn message(&self) -> &str {
            "error"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn db(code: &'static str) -> StepError {
        sqlx::Error::Database(Box::new(Db(code))).into()
    }

    #[test]
    fn database_errors_are_classified_and_keep_their_source() {
        for code in ["23505", "23503", "22001", "22P02"] {
            let e = db(code);
            assert!(matches!(e, StepError::Abort { .. }), "{code}: {e:?}");
            assert_eq!(e.failure(), Failure::Permanent);
            let source = e.source().expect("the sqlx error is kept");
            assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}");
            assert_eq!(e.to_string(), format!("database: error returned from database: error {code}"));
        }
        for code in ["40001", "40P01", "57P01", "08006"] {
            let e = db(code);
            assert_eq!(e.failure(), Failure::Transient { hint: None }, "{code}");
            assert!(e.source().is_some());
        }
        let lost: StepError = sqlx::Error::Io(std::io::Error::other("connection reset")).into();
        assert_eq!(lost.failure(), Failure::Transient { hint: None });
        let pool: StepError = sqlx::Error::PoolTimedOut.into();
        assert_eq!(pool.failure(), Failure::Transient { hint: None });
        let decode: StepError = sqlx::Error::Decode("not a number".into()).into();
        assert_eq!(decode.failure(), Failure::Permanent);
    }

    #[test]
    fn constructors_keep_working() {
        let e = StepError::retry("later");
        assert_eq!((e.to_string(), e.failure()), ("later".to_owned(), Failure::Transient { hint: None }));
        assert!(e.source().is_none());
        let e = StepError::retry("throttled").after(Duration::from_secs(3));
        assert_eq!(e.failure(), Failure::Transient { hint: Some(Duration::from_secs(3)) });
        let e = StepError::abort("never").with_source(std::io::Error::other("cause"));
        assert_eq!((e.message(), e.failure()), ("never", Failure::Permanent));
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("cause"));
        let e = StepError::permanent(std::io::Error::other("refused"));
        assert_eq!((e.to_string(), e.failure()), ("refused".to_owned(), Failure::Permanent));
        assert!(StepError::transient(std::io::Error::other("x")).source().is_some());
    }
}
