//! The [`Pack`] trait: everything the engine, the scheduler and the admin API ask of a pack.
//!
//! Only [`Pack::name`], [`Pack::chains`] and [`Pack::handlers`] are required. Every other method
//! has a default that means "this pack has none", so the worker, the producer and the CLI never
//! match on a pack's name: they ask the [`Registry`](crate::Registry), which asks each pack.

use std::{borrow::Cow, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use utoipa::openapi::{RefOr, schema::Schema};

pub use syncfleet_store::Origin;

use crate::{
    Integration,
    chain::{ChainDef, Mode},
    config::Environment,
    http::HttpClients,
    step::StepHandler,
    sync::table::RowOutcome,
};

/// One plug-in: a kind of system syncfleet keeps in step (`partner`, `moodle`, `http-json`, …).
pub trait Pack: Send + Sync + 'static {
    /// The name integrations give as their `pack`.
    fn name(&self) -> &'static str;

    /// The chains the pack declares (a deployment may override their steps in `[chains.…]`).
    fn chains(&self) -> Vec<ChainDef>;

    /// The handler of each step its chains name, by step name.
    fn handlers(&self) -> Vec<(&'static str, Arc<dyn StepHandler>)>;

    /// Checks an integration's settings; the error is `(key relative to the integration,
    /// message)`. Runs at start-up for the config file's integrations and on every API change.
    fn check_settings(&self, _settings: &Value) -> Result<(), (String, String)> {
        Ok(())
    }

    /// Refuses what the pack accepts from the config file only (raw SQL, table creation) when
    /// settings come through the admin API or the CLI ([`Origin::Api`]); runs after
    /// [`Pack::check_settings`], with the same error form. The config file is the deployment's own:
    /// its author holds the database credentials already; an admin token holder need not.
    fn check_api_settings(&self, _settings: &Value) -> Result<(), (String, String)> {
        Ok(())
    }

    /// Checks the pack's own section of the configuration (`[packs.<name>]`); the error is
    /// `(key relative to the section, message)`.
    fn check_config(&self, _config: &PackConfig<'_>) -> Result<(), (String, String)> {
        Ok(())
    }

    /// Plain environment variables that set a key of `[packs.<name>]`: `(variable, key)`, e.g.
    /// `("MOODLE_SYNC_INTERVAL_MINUTES", "sync_interval_minutes")`. Read once, at load.
    fn env_aliases(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// Cron schedules run for every enabled integration of the pack unless a configured or
    /// stored schedule of the same chain and mode replaces them (or switches them off).
    fn default_schedules(&self) -> Vec<DefaultSchedule> {
        Vec::new()
    }

    /// Interval schedules the pack derives from the deployment's configuration, under the config
    /// file's and the stored schedules like [`Pack::default_schedules`].
    fn interval_schedules(&self, _config: &PackConfig<'_>) -> Vec<IntervalSchedule> {
        Vec::new()
    }

    /// The shortest schedule interval the pack allows for `chain`, above the deployment's.
    fn min_interval(&self, _chain: &str) -> Option<Duration> {
        None
    }

    /// Groups of the pack's chains that must not run at the same time for one integration (e.g.
    /// every chain that writes the same tables). A scheduled run of a group waits, queued, while
    /// another run of the group is active for its integration, and starts when that one ends; a
    /// manual trigger is refused (409) unless it asks to queue. A chain is in at most one group.
    fn exclusive_chains(&self) -> Vec<Vec<&'static str>> {
        Vec::new()
    }

    /// Prepares what an integration needs in the database (its tables, or a check that the
    /// migrations created them). Runs when an integration is registered, created or changed, on
    /// `conn`: the transaction that writes the integration's row, so a failure leaves neither.
    fn prepare<'a>(
        &'a self,
        _conn: &'a mut PgConnection,
        _integration: &'a str,
        _settings: &'a Value,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Runs the producer starts for every enabled integration of the pack when it starts.
    fn startup_runs(&self, _config: &PackConfig<'_>) -> Vec<StartupRun> {
        Vec::new()
    }

    /// Single-item sync (webhooks): `None` when the pack has none.
    fn item_sync(&self) -> Option<&dyn ItemSync> {
        None
    }

    /// Extra admin API routes, mounted below `/api/integrations/{integration}/`.
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }
}

/// The deployment's configuration as one pack sees it.
#[derive(Debug, Clone, Copy)]
pub struct PackConfig<'a> {
    pub environment: Environment,
    /// `[packs.<name>]`, `null` when absent.
    pub section: &'a Value,
}

impl PackConfig<'_> {
    /// The section as the pack's typed config (its `Default` when absent); the error names the
    /// key at fault, relative to the section.
    pub fn parse<T: DeserializeOwned + Default>(&self) -> Result<T, (String, String)> {
        if self.section.is_null() {
            return Ok(T::default());
        }
        serde_path_to_error::deserialize(self.section).map_err(|e| {
            let path = e.path().to_string();
            (if path == "." { String::new() } else { path }, e.into_inner().to_string())
        })
    }
}

/// A cron schedule a pack runs for each of its enabled integrations: the chain in `mode`, with
/// `step_modes` over the chain's pinned modes, at the times of `cron` read in `tz`. A chain may have
/// one default per mode (e.g. incremental through the day, full every night).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultSchedule {
    pub chain: &'static str,
    /// Crontab expression, 5 fields (`0 2 * * *`; 0 or 7 is Sunday), or 6 with seconds first.
    pub cron: &'static str,
    pub mode: Mode,
    /// IANA time zone of `cron` (`UTC` unless [`DefaultSchedule::in_tz`]).
    pub tz: &'static str,
    /// Per-step modes of the runs it fires.
    pub step_modes: &'static [(&'static str, Mode)],
}

impl DefaultSchedule {
    /// `chain` in `mode` at the times of `cron`, in UTC, with no step modes.
    pub const fn new(chain: &'static str, cron: &'static str, mode: Mode) -> DefaultSchedule {
        DefaultSchedule { chain, cron, mode, tz: "UTC", step_modes: &[] }
    }

    /// The same, with `cron` read in the IANA time zone `tz`.
    pub const fn in_tz(self, tz: &'static str) -> DefaultSchedule {
        DefaultSchedule { tz, ..self }
    }

    /// The same, with these steps run in their own mode.
    pub const fn with_step_modes(self, step_modes: &'static [(&'static str, Mode)]) -> DefaultSchedule {
        DefaultSchedule { step_modes, ..self }
    }
}

/// An interval schedule a pack derives from the configuration; it runs incremental (intervals are
/// counted in UTC, from the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalSchedule {
    pub chain: &'static str,
    pub every: Duration,
    /// `config` (the deployment set it) or `pack` (the pack's default).
    pub source: &'static str,
}

/// A run the producer starts at start-up: the chain, or one step of it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupRun {
    pub chain: &'static str,
    pub step: Option<&'static str>,
    pub mode: Mode,
}

/// A record for single-item sync: given (webhook body) or fetched by id.
pub enum ItemInput {
    Record(Value),
    FetchId(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ItemSyncError {
    #[error("integration `{0}` has no entity `{1}`")]
    UnknownEntity(String, String),
    #[error("entity `{0}` has no item_path, so it cannot be fetched by id")]
    NoItemPath(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Upstream(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Single-item sync: one record through the entity's mapping and the pull path's upsert.
pub trait ItemSync: Send + Sync {
    /// Returns the record's external id and what the upsert did.
    fn sync_item<'a>(
        &'a self,
        pool: &'a PgPool,
        http: &'a HttpClients,
        integration: &'a Integration,
        entity: &'a str,
        input: ItemInput,
    ) -> BoxFuture<'a, Result<(String, RowOutcome), ItemSyncError>>;
}

/// The role a route needs (the admin API's bearer-token roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
}

/// A named schema for the OpenAPI document, with the schemas it refers to.
#[derive(Clone)]
pub struct NamedSchema {
    pub name: Cow<'static, str>,
    pub schema: RefOr<Schema>,
    /// The named schemas `schema` refers to (`#/components/schemas/…`), to add beside it.
    pub dependencies: Vec<(String, RefOr<Schema>)>,
}

/// The OpenAPI name and schema of `T`, with the schemas it refers to.
pub fn schema_of<T: utoipa::ToSchema>() -> NamedSchema {
    let mut dependencies = Vec::new();
    T::schemas(&mut dependencies);
    NamedSchema { name: T::name(), schema: T::schema(), dependencies }
}

/// An extra admin API route of a pack: `{method} /api/integrations/{integration}/{path}`. The
/// producer authenticates the caller for `role` (401 / 403 before anything else is read), checks
/// that the integration exists, is enabled and belongs to the pack (404 / 409 / 422), calls the
/// handler, and records an audit row when `audit` names the action.
///
/// A route that changes anything (every method but `GET`) needs at least [`Role::Operator`] and
/// names its audit action; one that changes what an integration holds by hand (a user's scope, a
/// setting) needs [`Role::Admin`], as the API's own integration changes do. The producer refuses
/// to mount a route that breaks the first rule ([`Route::check`]).
#[derive(Clone)]
pub struct Route {
    pub method: Method,
    /// Below `/api/integrations/{integration}/`, with exactly one `{param}`:
    /// `users/{username}/hydrate`.
    pub path: &'static str,
    pub role: Role,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
    pub description: &'static str,
    /// The JSON body it takes, if any.
    pub request: Option<NamedSchema>,
    /// The JSON body it answers with 200.
    pub response: NamedSchema,
    /// The audit action (`user.scope`); `None` (a `GET` route only) leaves it out of the audit log.
    pub audit: Option<&'static str>,
    pub handler: Arc<dyn RouteHandler>,
}

impl Route {
    /// Whether the route changes anything: every method but `GET`.
    pub fn mutates(&self) -> bool {
        self.method != Method::Get
    }

    /// A route that changes anything needs at least the operator role and an audit action.
    pub fn check(&self) -> Result<(), String> {
        if self.mutates() && self.role < Role::Operator {
            return Err(format!("changes data, so needs at least the operator role, not {:?}", self.role));
        }
        if self.mutates() && self.audit.is_none() {
            return Err("changes data, so must name its audit action".into());
        }
        Ok(())
    }

    /// The name of the path's one parameter (`username`).
    pub fn param(&self) -> &'static str {
        let start = self.path.find('{').map_or(0, |i| i + 1);
        let end = self.path[start..].find('}').map_or(self.path.len(), |i| start + i);
        &self.path[start..end]
    }
}

/// What a route handler gets.
pub struct RouteContext<'a> {
    pub pool: &'a PgPool,
    pub http: &'a HttpClients,
    pub integration: &'a Integration,
    /// The deployment's `[packs.<pack>]` section, as a step gets it.
    pub pack_section: &'a Value,
}

/// A route's answer: the body, and what the audit row records (when the route is audited).
pub struct RouteAnswer {
    pub body: Value,
    pub audit: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 400.
    #[error("{0}")]
    Invalid(String),
    /// 502.
    #[error("{0}")]
    Upstream(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

pub trait RouteHandler: Send + Sync {
    /// `param` is the path's parameter, `body` the request's JSON body (`None` for a route that
    /// takes none).
    fn call<'a>(
        &'a self,
        cx: RouteContext<'a>,
        param: String,
        body: Option<Value>,
    ) -> BoxFuture<'a, Result<RouteAnswer, RouteError>>;
}
