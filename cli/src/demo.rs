//! `syncfleet demo`: the sandbox, a producer and workers in one process, and the main jobs run on them.

use std::{process::ExitCode, sync::Arc, time::Duration};

use syncfleet_producer::ops::{Ops, Trigger};
use syncfleet_sdk::Registry;
use syncfleet_shared::{chain::Mode, config::Config};
use syncfleet_store::{self as store, StoreError, runs::TriggerKind, views};
use syncfleet_worker::{Engine, worker_name};
use tokio_util::sync::CancellationToken;

use crate::{
    exit::for_status as exit_for,
    output::{print_run, wait_for},
};

/// The packs and chain the demo drives by name: the demo shows this build's sandbox upstreams, so
/// it knows which packs sync them.
const DEMO_PACK: &str = "demo";
const MOODLE_PACK: &str = "moodle";
const MOODLE_INSTITUTIONAL: &str = "moodle_institutional";

/// `syncfleet demo`: everything in one process against the configured PostgreSQL and Redis.
pub(super) async fn demo(
    config: Config,
    registry: &Registry,
    json: bool,
    workers: usize,
    chain: &str,
    scale: &str,
) -> anyhow::Result<ExitCode> {
    let erp = chain == "erp";
    let partner = chain == "partner";
    let moodle = chain == "moodle";
    let mut config = config;
    // The demo triggers its own runs, one after the other. A schedule firing meanwhile (the partner
    // pack's hourly `partner_leads` shares `partner_daily`'s exclusion group) refused the next one.
    config.producer.scheduler_enabled = false;
    if moodle {
        // The demo triggers its own runs; no start-up run of the demo integration gets in their way.
        let section = config.packs.entry(MOODLE_PACK.into()).or_insert_with(|| serde_json::json!({}));
        section["sync_on_startup"] = false.into();
        section["disable_sync_category_on_startup"] = true.into();
    }
    let mut demo_integrations = std::collections::BTreeMap::new();
    let sandbox = if erp || partner || moodle {
        let scale: syncfleet_sandbox::Scale = scale.parse()?;
        // The partner demo lifts the sandbox's Northpass limit (10 requests per second, as upstream)
        // so a seed-scale run takes a minute rather than half an hour; the bench measures the run
        // at the real limit.
        let northpass_rate_per_sec =
            if partner { None } else { syncfleet_sandbox::SandboxConfig::default().northpass_rate_per_sec };
        let sb = syncfleet_sandbox::spawn(syncfleet_sandbox::SandboxConfig {
            scale,
            northpass_rate_per_sec,
            ..Default::default()
        })
        .await?;
        // The demo integrations read the sandbox's keys from files, as a deployment's do.
        let secrets_dir = std::env::temp_dir().join(format!("syncfleet-demo-secrets-{}", std::process::id()));
        syncfleet_sandbox::write_secret_files(&secrets_dir, &sb.config)?;
        config.secrets.dir = Some(secrets_dir);
        let toml = if erp {
            syncfleet_sandbox::erp_integration_toml("demo-erp", &sb.erp_url(), "erp_items", 1000, "")
        } else if moodle {
            syncfleet_sandbox::moodle_integration_toml(MOODLE_INTEGRATION, &sb.moodle_url(), "")
        } else {
            // The fleet's budget for the local sandbox is raised from Northpass's 10 requests per
            // second to match.
            syncfleet_sandbox::partner_integration_toml(
                "demo-partner",
                &sb.northpass_url(),
                &sb.impartner_url(),
                100,
                ", limits = { rate_per_sec = 400.0, burst = 50, concurrency = 16 }",
                "",
            )
        };
        let parsed = Config::from_toml(&toml).expect("the demo integration is valid");
        demo_integrations = parsed.integrations.clone();
        config.integrations.extend(parsed.integrations);
        // The sandbox listens on loopback, which the upstream policy refuses unless allowed.
        config.upstream.allow_networks.extend(["127.0.0.0/8".to_owned(), "::1/128".to_owned()]);
        Some(sb)
    } else {
        None
    };
    if config.database.owner_url.is_none()
        && let Some((owner, runtime)) = store::roles::setup_local_roles(config.database.url.expose()).await?
    {
        // A superuser on a local server: the demo runs as the deployment does, migrating as the
        // owner role and syncing as the runtime role.
        config.database.owner_url = Some(syncfleet_shared::config::Secret::new(owner));
        config.database.url = syncfleet_shared::config::Secret::new(runtime);
    }
    let ops = syncfleet_producer::connect(&config, registry.clone()).await?;
    // The sandbox integration is the demo's own: registered here too when no owner path ran (its
    // tables come from the migrations, so the runtime role only checks them).
    store::register_integrations(&ops.pool, ops.registry.as_ref(), &demo_integrations).await?;
    if sandbox.is_none() {
        if ops.chains.get(chain).map(|c| c.pack.as_str()) != Some(DEMO_PACK) {
            anyhow::bail!(
                "unknown demo `{chain}`: use partner, moodle, erp, or a demo chain (demo_diamond, demo_fanout, \
                 demo_contention)"
            );
        }
        store::upsert_integration(&ops.pool, "demo", DEMO_PACK, &serde_json::json!({ "step_ms": 300 })).await?;
    }
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let producer = tokio::spawn(syncfleet_producer::run_with(listener, ops.clone(), shutdown.clone()));
    let (chains, handlers) = registry.build(&config)?;
    let mut engines = Vec::new();
    for i in 1..=workers.max(1) {
        let name = worker_name(Some(&format!("demo-worker-{i}")));
        let engine = Arc::new(Engine::new(
            config.clone(),
            ops.pool.clone(),
            ops.queues.clone(),
            chains.clone(),
            handlers.clone(),
            name,
        ));
        engines.push(tokio::spawn(syncfleet_worker::run_engine(engine, chains.queues(), shutdown.clone())));
    }
    let say = |line: String| say(json, line);
    say(format!("producer on http://{addr}, {} workers", workers.max(1)));
    let result = async {
        let Some(sb) = &sandbox else {
            say(format!("triggering {chain} for integration `demo`"));
            return Ok(vec![demo_run(&ops, chain, "demo", Mode::Full, &[], !json).await?]);
        };
        if partner {
            return demo_partner(&ops, sb, json).await;
        }
        if moodle {
            return demo_moodle(&ops, sb, json).await;
        }
        let items = count(sb, "/counts/erp/items");
        say(format!(
            "sandbox ERP at {} with {items} items; full sync of `demo-erp` into table erp_items",
            sb.erp_url()
        ));
        let full = demo_run(&ops, "http_json_sync", "demo-erp", Mode::Full, &[], !json).await?;
        let changed = sb.mutate_json(serde_json::json!({ "api": "erp", "resource": "items", "change_percent": 1 }))?;
        let n = changed["changed"].as_array().map_or(0, Vec::len);
        say(format!("\nthe sandbox changed {n} items (1 %); incremental sync"));
        let incremental = demo_run(&ops, "http_json_sync", "demo-erp", Mode::Incremental, &[], !json).await?;
        Ok::<_, anyhow::Error>(vec![full, incremental])
    }
    .await;
    shutdown.cancel();
    producer.await.ok();
    for e in engines {
        e.await.ok();
    }
    let runs = result?;
    if json {
        // One JSON document: the runs in the order they ran.
        println!("{}", serde_json::to_string_pretty(&runs).expect("serializable"));
    } else {
        for run in &runs {
            println!();
            print_run(run, false);
        }
    }
    let last = runs.last().expect("at least one run");
    if partner {
        let calls = |r: &views::RunView| r.steps.iter().map(|s| s.api_calls).sum::<i64>();
        let (full, incremental) = (calls(&runs[0]), calls(&runs[1]));
        say(format!(
            "\nAPI calls: full {full}, incremental {incremental} ({:.1} % of full); the incremental run saved {} calls.",
            100.0 * incremental as f64 / full.max(1) as f64,
            full - incremental
        ));
    }
    say(if partner {
        format!(
            "\nThe partner data is in the `partner_*` tables of the configured database. Look again with \
             `syncfleet runs show {}`.",
            runs.last().map(|r| r.id.as_str()).unwrap_or_default()
        )
    } else if moodle {
        format!(
            "\nThe institution is in the `moodle_*` tables of the configured database. Look again with \
             `syncfleet runs show {}`.",
            last.id
        )
    } else if erp {
        format!(
            "\nThe items are in table `erp_items` of the configured database. Look again with \
             `syncfleet runs` or `syncfleet runs show {}`.",
            last.id
        )
    } else {
        format!(
            "\nEach step wrote one row to `demo_effects`. Look again with `syncfleet runs show {}` or \
             `syncfleet queues`; run the pieces with `syncfleet-producer` and `syncfleet-worker`.",
            last.id
        )
    });
    let worst = runs.iter().map(|r| exit_for(&r.status)).find(|c| *c != ExitCode::SUCCESS);
    Ok(worst.unwrap_or(ExitCode::SUCCESS))
}

/// The partner program sync: `partner_daily` in full, then 1 % of people and enrollments change in
/// the sandbox's Northpass, then an incremental run.
async fn demo_partner(
    ops: &Ops,
    sb: &syncfleet_sandbox::SandboxHandle,
    json: bool,
) -> anyhow::Result<Vec<views::RunView>> {
    let say = |line: String| say(json, line);
    let count = |p: &str| count(sb, p);
    say(format!(
        "sandbox Northpass at {} ({} people, {} groups, {} courses) and Impartner at {} ({} accounts, {} contacts); \
         full partner_daily of `demo-partner`",
        sb.northpass_url(),
        count("/counts/northpass/people"),
        count("/counts/northpass/groups"),
        count("/counts/northpass/courses"),
        sb.impartner_url(),
        count("/counts/impartner/Account"),
        count("/counts/impartner/User"),
    ));
    let full = demo_run(ops, "partner_daily", "demo-partner", Mode::Full, &[], !json).await?;
    let mut changed = 0;
    for resource in ["people", "enrollments"] {
        let out =
            sb.mutate_json(serde_json::json!({ "api": "northpass", "resource": resource, "change_percent": 1 }))?;
        changed += out["changed"].as_array().map_or(0, Vec::len);
    }
    say(format!(
        "\nthe sandbox changed {changed} people and enrollments (1 % of each); incremental partner_daily \
         (every step incremental: --step-mode impartner_sync=incremental replaces the chain's nightly full read)"
    ));
    let incremental = demo_run(
        ops,
        "partner_daily",
        "demo-partner",
        Mode::Incremental,
        &[("impartner_sync", Mode::Incremental)],
        !json,
    )
    .await?;
    // The pack's nightly schedule reads in full, so its sweep finds what Northpass deleted.
    let nightly = ops
        .schedules()
        .await?
        .into_iter()
        .find(|s| s.chain == "partner_daily" && s.integration == "demo-partner" && s.mode == "full" && s.enabled);
    let deleted = sb.mutate_json(serde_json::json!({ "api": "northpass", "resource": "people", "delete": 1 }))?;
    let deleted = deleted["deleted"].as_array().map_or(0, Vec::len);
    let Some(nightly) = nightly else {
        return Ok(vec![full, incremental]);
    };
    let when = nightly
        .cron
        .clone()
        .map_or_else(|| format!("every {}s", nightly.interval_secs.unwrap_or(0)), |c| format!("`{c}` {}", nightly.tz));
    let whose = match nightly.source.as_str() {
        "pack" => "the pack's default schedule",
        "config" => "the configured schedule",
        _ => "the stored schedule",
    };
    say(format!(
        "\nthe sandbox's Northpass deleted {deleted} person; the nightly full partner_daily ({whose}, {when})"
    ));
    let step_modes: Vec<(String, Mode)> =
        nightly.step_modes.iter().filter_map(|(s, m)| Some((s.clone(), Mode::parse(m)?))).collect();
    let step_modes: Vec<(&str, Mode)> = step_modes.iter().map(|(s, m)| (s.as_str(), *m)).collect();
    let night = demo_run(ops, "partner_daily", "demo-partner", Mode::Full, &step_modes, !json).await?;
    let swept = night.steps.iter().find(|s| s.step == "sync_users").map_or(0, |s| s.deactivated);
    say(format!(
        "the nightly run found the deletion: sync_users deactivated {swept} of the people Northpass no longer lists"
    ));
    Ok(vec![full, incremental, night])
}

const MOODLE_INTEGRATION: &str = "demo-moodle";

/// A line of the demo's story, on stderr, unless the output is JSON.
fn say(json: bool, line: String) {
    if !json {
        eprintln!("{line}");
    }
}

/// A count the sandbox reports (`/counts/<api>/<resource>`).
fn count(sb: &syncfleet_sandbox::SandboxHandle, pointer: &str) -> i64 {
    sb.info().pointer(pointer).and_then(|v| v.as_i64()).unwrap_or_default()
}

/// The Moodle institutional sync: `moodle_institutional` in full, then the sandbox's Moodle drops
/// some enrollments and changes 1 % of courses, then the chain again: the dropped enrollments are
/// deactivated, the changed courses updated, the rest left as it was.
async fn demo_moodle(
    ops: &Ops,
    sb: &syncfleet_sandbox::SandboxHandle,
    json: bool,
) -> anyhow::Result<Vec<views::RunView>> {
    let say = |line: String| say(json, line);
    let count = |p: &str| count(sb, p);
    say(format!(
        "sandbox Moodle at {} ({} categories, {} programs, {} courses, {} users, {} enrolments); \
         moodle_institutional of `{MOODLE_INTEGRATION}`",
        sb.moodle_url(),
        count("/counts/moodle/categories"),
        count("/counts/moodle/programs"),
        count("/counts/moodle/courses"),
        count("/counts/moodle/users"),
        count("/counts/moodle/enrolments"),
    ));
    let first = demo_run(ops, MOODLE_INSTITUTIONAL, MOODLE_INTEGRATION, Mode::Full, &[], !json).await?;
    let dropped = sb.mutate_json(serde_json::json!({ "api": "moodle", "resource": "enrolments", "delete": 20 }))?;
    let changed = sb.mutate_json(serde_json::json!({ "api": "moodle", "resource": "courses", "change_percent": 1 }))?;
    say(format!(
        "\nthe sandbox dropped {} enrolments and changed {} courses; moodle_institutional again",
        dropped["deleted"].as_array().map_or(0, Vec::len),
        changed["changed"].as_array().map_or(0, Vec::len),
    ));
    let second = demo_run(ops, MOODLE_INSTITUTIONAL, MOODLE_INTEGRATION, Mode::Full, &[], !json).await?;
    Ok(vec![first, second])
}

/// Triggers one run (cancelling one an interrupted demo left active) and waits for it.
async fn demo_run(
    ops: &Ops,
    chain: &str,
    integration: &str,
    mode: Mode,
    step_modes: &[(&str, Mode)],
    progress: bool,
) -> anyhow::Result<views::RunView> {
    let trigger = Trigger {
        chain: chain.into(),
        integration: integration.into(),
        mode,
        kind: TriggerKind::Manual,
        triggered_by: "demo".into(),
        tick_key: None,
        force_sweep: false,
        step: None,
        step_modes: step_modes.iter().map(|(s, m)| (s.to_string(), *m)).collect(),
    };
    let run_id = match ops.trigger(trigger.clone()).await {
        Err(StoreError::ActiveRun { run_id, .. }) => {
            if progress {
                eprintln!("cancelling the earlier demo run {run_id} that is still active");
            }
            ops.cancel(run_id.parse()?, "demo").await?;
            ops.trigger(trigger).await?
        }
        other => other?,
    };
    wait_for(ops, run_id, progress, Duration::from_secs(300)).await
}
