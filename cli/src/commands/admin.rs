//! `migrate`, `healthcheck`, `tokens`, and the data repair commands (`sweep preview`,
//! `cursor reset`).

use std::process::ExitCode;

use syncfleet_sdk::Registry;
use syncfleet_shared::config::Config;
use syncfleet_store::{self as store, tokens};

use super::print_json;
use crate::{
    Session,
    args::{CursorCommand, SweepCommand, TokensCommand},
    backend::Backend,
    exit, table,
};

/// `syncfleet migrate`: the owner path, and what it did.
pub(crate) async fn migrate(config: &Config, registry: &Registry, json: bool) -> anyhow::Result<ExitCode> {
    let registry = registry.clone().with_secrets(config.secrets.policy());
    let report = store::roles::migrate_as_owner(&config.database, &registry, &config.integrations).await?;
    if json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let created = if report.database_created { "created" } else { "exists" };
    println!("database {} ({created}), owner role {}", report.database, report.owner_role);
    if report.applied.is_empty() {
        println!("migrations: up to date");
    } else {
        println!("migrations applied: {}", report.applied.join(", "));
    }
    match &report.runtime_role {
        Some(role) => println!("runtime role {role} granted (database.url)"),
        None => println!("runtime role: database.url logs in as the owner role; nothing granted"),
    }
    if !report.integrations.is_empty() {
        println!("integrations registered: {}", report.integrations.join(", "));
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

/// PostgreSQL and Redis each answer or not; exit 0 when both do, else 5.
pub(crate) async fn healthcheck(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let pg = async {
        let pool = store::connect(&config.database).await?;
        store::health::ping(&pool).await?;
        anyhow::Ok(())
    }
    .await;
    let redis = async {
        let q = store::queue::QueueClient::connect_to(&config.redis).await?;
        q.ping().await?;
        anyhow::Ok(())
    }
    .await;
    let status = |r: &anyhow::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {e:#}"),
    };
    if json {
        println!("{}", serde_json::json!({ "postgres": status(&pg), "redis": status(&redis) }));
    } else {
        println!("postgres: {}\nredis:    {}", status(&pg), status(&redis));
    }
    Ok(if pg.is_ok() && redis.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(exit::UNREACHABLE) })
}

/// How long `healthcheck --url` waits for an answer (a container health check's own timeout is
/// longer, so the CLI's message is the one that shows).
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `healthcheck --url`: asks only the process behind `url` (its `/readyz`), reading no config;
/// exit 0 on a 2xx answer, 1 on another answer (its status and body shown), 5 when nothing
/// answers.
pub(crate) async fn probe(url: &str, json: bool) -> anyhow::Result<ExitCode> {
    let target = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("--url `{url}`: {e}"))?;
    if !matches!(target.scheme(), "http" | "https") {
        anyhow::bail!("--url `{url}`: the scheme must be http or https");
    }
    // The probe asks the process itself: no proxy in between.
    let http = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .no_proxy()
        .user_agent(concat!("syncfleet-healthcheck/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let response = match http.get(target).send().await {
        Ok(response) => response,
        Err(e) => {
            let error = anyhow::Error::from(e).context(exit::CliError::Unreachable(format!("{url} did not answer")));
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "url": url, "ok": false, "status": null, "error": format!("{error:#}") })
                );
                return Ok(ExitCode::from(exit::UNREACHABLE));
            }
            return Err(error);
        }
    };
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.trim().chars().take(500).collect();
    let ok = status.is_success();
    if json {
        println!("{}", serde_json::json!({ "url": url, "ok": ok, "status": status.as_u16(), "body": body }));
    } else if ok {
        println!("{url}: {status}");
    } else if body.is_empty() {
        eprintln!("error: {url} answered {status}: not ready");
    } else {
        eprintln!("error: {url} answered {status}: {body}");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(exit::FAILED) })
}

/// `tokens create`: always on PostgreSQL directly (the first token is made before the API can be
/// used), as the runtime role, recorded as the session's actor.
pub(crate) async fn create_token(
    session: &Session<'_>,
    name: &str,
    role: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let role: tokens::Role = role.parse().map_err(anyhow::Error::msg)?;
    let mut config = session.config()?;
    config.database.owner_url = None;
    let pool = store::roles::start(&config, session.registry()).await.map_err(|e| crate::name_the_service(e.into()))?;
    let actor = session.actor();
    // The token commits with its audit row.
    let mut tx = store::audit::Audited::begin(&pool).await?;
    let (info, token) = tokens::create(tx.conn(), name, role, &actor).await?;
    tx.commit(&actor, "token.create", name, serde_json::json!({ "role": role })).await?;
    if json {
        println!("{}", serde_json::json!({ "name": info.name, "role": info.role, "key": info.key, "token": token }));
    } else {
        println!("{token}");
        eprintln!("token `{}` ({}) created; it is shown only now.", info.name, info.role);
    }
    Ok(ExitCode::SUCCESS)
}

/// `tokens list` and `tokens revoke` (`tokens create` is [`create_token`]).
pub(crate) async fn tokens(backend: &Backend, action: TokensCommand) -> anyhow::Result<ExitCode> {
    match action {
        TokensCommand::Create { .. } => unreachable!("`tokens create` connects directly"),
        TokensCommand::Revoke { name, json } => {
            let info = backend.revoke_token(&name).await?;
            if json {
                print_json(&info)?;
            } else {
                println!("token {name} revoked");
            }
        }
        TokensCommand::List { json } => {
            let list = backend.tokens().await?;
            if json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut t =
                table::table(&["name", "role", "key", "created_by", "created_at", "last_used_at", "revoked_at"]);
            let ts =
                |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.format("%F %T").to_string()).unwrap_or_default();
            for k in list {
                t.add_row(vec![
                    k.name,
                    k.role.to_string(),
                    k.key,
                    k.created_by,
                    k.created_at.format("%F %T").to_string(),
                    ts(k.last_used_at),
                    ts(k.revoked_at),
                ]);
            }
            table::print(&t);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn sweep(backend: &Backend, action: SweepCommand) -> anyhow::Result<ExitCode> {
    let SweepCommand::Preview { chain, integration, entity, limit, json } = action;
    if !(1..=100_000).contains(&limit) {
        anyhow::bail!("--limit must be between 1 and 100000");
    }
    let p = backend.sweep_preview(&chain, &integration, entity.as_deref(), limit).await?;
    if json {
        print_json(&p)?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = table::width();
    if let Some(read) = &p.last_full_read {
        println!(
            "last full read: run {} ({}), guard: {}",
            read["run_id"].as_str().unwrap_or("?"),
            read["status"].as_str().unwrap_or("?"),
            read["guard"].as_str().unwrap_or("–")
        );
    }
    for t in &p.tables {
        let decision = match &t.reason {
            Some(reason) => format!("{} ({reason})", t.decision),
            None => t.decision.clone(),
        };
        let line = format!(
            "{}: {} of {} active rows would be deactivated; guard: {decision}",
            t.table, t.would_deactivate, t.active
        );
        println!("{}", table::wrap(&line, width, 2));
        if !t.external_ids.is_empty() {
            let more = t.would_deactivate - t.external_ids.len() as i64;
            let tail = if more > 0 { format!(" … and {more} more") } else { String::new() };
            println!(
                "  {}",
                table::wrap(&format!("{}{tail}", t.external_ids.join(" ")), width.map(|w| w.saturating_sub(2)), 0)
            );
        }
    }
    println!("{}", table::wrap(&p.note, width, 0));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn cursor(backend: &Backend, action: CursorCommand) -> anyhow::Result<ExitCode> {
    let CursorCommand::Reset { integration, entity, since, json } = action;
    let r = backend.reset_cursor(&integration, &entity, since).await?;
    if json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    match &r.value {
        Some(v) => println!("cursor of {integration}/{entity}: {} → {v}", r.previous),
        None => {
            println!("cursor of {integration}/{entity} removed (was {}): the next run reads everything", r.previous)
        }
    }
    Ok(ExitCode::SUCCESS)
}
