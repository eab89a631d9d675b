//! The `syncfleet` CLI. Table output by default, `--json` for scripts. The JSON shapes of
//! `runs show --json` ([`views::RunView`]) and `queues --json` (`QueueDepth`) are a contract.
//!
//! - `args.rs` the command line and its help (exit codes, environment);
//! - `backend.rs` where commands go: the admin API (`api.rs`; `SYNCFLEET_API_URL` and
//!   `SYNCFLEET_TOKEN`) or PostgreSQL and Redis directly;
//! - `commands/` the commands by area; `output.rs` runs and queues as printed, progress;
//!   `table.rs` tables that fit the terminal; `exit.rs` exit codes;
//! - `demo.rs` `syncfleet demo` (the `demo` feature).
//!
//! Only `migrate` creates or migrates the database: every other command connects as the runtime
//! role and stops with "run `syncfleet migrate`" when the database is missing or behind.

use std::process::ExitCode;

use clap::Parser;
use syncfleet_runtime::telemetry;
use syncfleet_sdk::Registry;
use syncfleet_shared::config::Config;
use syncfleet_store::views;

mod api;
mod args;
mod backend;
mod commands;
#[cfg(feature = "demo")]
mod demo;
mod exit;
mod output;
mod table;

use args::{Cli, Command, TokensCommand};
use backend::Backend;
pub use output::wait_for;

/// The CLI over the packs of `registry` (the binary passes `syncfleet_registry::builtin()`).
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    // Quiet by default: the CLI's own output is the interface; `-v` shows the services' logs.
    telemetry::init(false, if cli.verbose { telemetry::SERVICE_FILTER } else { "error" });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli, &registry)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(exit::for_error(&e))
        }
    }
}

/// How the command line connects, before a command asks for it.
pub(crate) struct Session<'a> {
    cli_config: Option<std::path::PathBuf>,
    api_url: Option<String>,
    token: Option<String>,
    direct: bool,
    actor: Option<String>,
    registry: &'a Registry,
}

impl Session<'_> {
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        Ok(self.registry.load_config(self.cli_config.as_deref())?)
    }

    /// The admin API when `SYNCFLEET_API_URL` is set (and `--direct` is not), else PostgreSQL and
    /// Redis as the runtime role.
    pub(crate) async fn backend(&self) -> anyhow::Result<Backend> {
        if let Some(api) = self.api()? {
            return Ok(Backend::Api(api));
        }
        let config = self.config()?;
        Ok(Backend::Direct { ops: Box::new(connect(&config, self.registry).await?), actor: self.actor() })
    }

    fn api(&self) -> anyhow::Result<Option<api::ApiClient>> {
        match (&self.api_url, &self.token) {
            (Some(url), _) if self.direct || url.trim().is_empty() => Ok(None),
            (Some(url), Some(token)) => Ok(Some(api::ApiClient::new(url, token)?)),
            (Some(_), None) => Err(exit::CliError::NotAllowed(
                "SYNCFLEET_API_URL is set but SYNCFLEET_TOKEN is not: set the API token, or pass --direct to connect \
                 to PostgreSQL and Redis"
                    .into(),
            )
            .into()),
            (None, _) => Ok(None),
        }
    }

    /// The audit actor of direct-mode changes: `SYNCFLEET_ACTOR` (`--actor`), else `cli:<user>`.
    pub(crate) fn actor(&self) -> String {
        if let Some(actor) = self.actor.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            return actor.to_owned();
        }
        let user = ["USER", "LOGNAME", "USERNAME"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
        format!("cli:{}", user.unwrap_or_else(|| "unknown".into()))
    }

    pub(crate) fn registry(&self) -> &Registry {
        self.registry
    }
}

/// Connects to PostgreSQL and Redis as the producer does (the config file's integrations
/// registered with `registry`'s packs), as the runtime role only: the owner path
/// (`database.owner_url`) is `syncfleet migrate`'s alone, so no other command creates or migrates
/// the database.
pub(crate) async fn connect(config: &Config, registry: &Registry) -> anyhow::Result<syncfleet_producer::Ops> {
    let mut config = config.clone();
    config.database.owner_url = None;
    syncfleet_producer::connect(&config, registry.clone()).await.map_err(name_the_service)
}

/// An unreachable service named with the config key that points at it.
pub(crate) fn name_the_service(e: anyhow::Error) -> anyhow::Error {
    if exit::for_error(&e) != exit::UNREACHABLE {
        return e;
    }
    let redis = e.chain().any(|c| c.downcast_ref::<syncfleet_store::queue::QueueError>().is_some());
    let what = if redis { "Redis (redis.url)" } else { "PostgreSQL (database.url)" };
    e.context(exit::CliError::Unreachable(format!("{what} could not be reached")))
}

async fn run(cli: Cli, registry: &Registry) -> anyhow::Result<ExitCode> {
    let session = Session {
        cli_config: cli.config,
        api_url: cli.api_url,
        token: cli.token,
        direct: cli.direct,
        actor: cli.actor,
        registry,
    };
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "syncfleet", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { json } => commands::admin::migrate(&session.config()?, registry, json).await,
        Command::Healthcheck { url: Some(url), json } => commands::admin::probe(&url, json).await,
        Command::Healthcheck { url: None, json } => commands::admin::healthcheck(&session.config()?, json).await,
        #[cfg(feature = "demo")]
        Command::Demo { json, workers, chain, scale } => {
            let config = session.config()?;
            if config.environment == syncfleet_shared::config::Environment::Production {
                anyhow::bail!(
                    "`syncfleet demo` refuses to run with environment = \"production\": it registers sandbox \
                     integrations and runs chains in the configured database and Redis; run it with a development config"
                );
            }
            demo::demo(config, registry, json, workers, &chain, &scale).await
        }
        Command::Tokens { action: TokensCommand::Create { name, role, json } } => {
            commands::admin::create_token(&session, &name, &role, json).await
        }
        Command::Trigger { chain, integration, mode, force_sweep, step, step_mode, queue, wait, json } => {
            let request = backend::TriggerRequest {
                chain,
                integration,
                mode: syncfleet_shared::chain::Mode::parse(&mode).unwrap_or_default(),
                force_sweep,
                step,
                step_modes: step_mode.into_iter().collect(),
                queue,
            };
            commands::runs::trigger(&session.backend().await?, request, wait, json).await
        }
        Command::Runs { show: Some(args::RunsCommand::Show { run_id, json, watch }), .. } => {
            commands::runs::show(&session.backend().await?, &run_id, json, watch).await
        }
        Command::Runs { show: None, chain, integration, status, limit, json } => {
            let filter = views::RunFilter { chain, integration, status, limit: Some(limit), offset: None };
            commands::runs::list(&session.backend().await?, &filter, json).await
        }
        Command::Resume { run_id, wait, json } => {
            commands::runs::resume(&session.backend().await?, &run_id, wait, json).await
        }
        Command::Cancel { run_id, json } => commands::runs::cancel(&session.backend().await?, &run_id, json).await,
        Command::Status { chain, integration, json } => {
            commands::runs::status(&session.backend().await?, &chain, &integration, json).await
        }
        Command::Queues { json, watch } => commands::fleet::queues(&session.backend().await?, json, watch).await,
        Command::Queue { action } => commands::fleet::queue(&session.backend().await?, action).await,
        Command::Schedule { action } => commands::fleet::schedule(&session.backend().await?, action).await,
        Command::Integrations { json } => commands::fleet::integrations(&session.backend().await?, json).await,
        Command::Workers { json } => commands::fleet::workers(&session.backend().await?, json).await,
        Command::Tokens { action } => commands::admin::tokens(&session.backend().await?, action).await,
        Command::Sweep { action } => commands::admin::sweep(&session.backend().await?, action).await,
        Command::Cursor { action } => commands::admin::cursor(&session.backend().await?, action).await,
    }
}

/// The error and its causes on one line, leaving out a cause whose text the previous one already
/// contains (wrapped errors often repeat their source in their own message).
fn describe(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|prev| prev.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, describe, exit};

    #[test]
    fn a_usage_error_exits_with_the_documented_code() {
        let e = Cli::try_parse_from(["syncfleet", "no-such-command"]).err().expect("refused");
        assert_eq!(e.exit_code(), i32::from(exit::USAGE));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("invalid configuration: {0}")]
    struct Wrapper(#[source] std::io::Error);

    #[test]
    fn repeated_causes_are_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(Wrapper(io)).context("loading");
        assert_eq!(describe(&e), "loading: invalid configuration: Connection refused");
    }
}
