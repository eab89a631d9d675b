//! Sandbox throughput: list pages served per second, with the sandbox on one core.
//!
//! The sandbox runs at `seed` scale, rate limits off, on its own single-threaded runtime (one core);
//! a few concurrent clients on the main runtime page through Northpass people (`limit=100`),
//! Impartner contacts (`take=500`) and ERP items (`limit=500`) to the end, `ROUNDS` times each.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use serde_json::Value;
use syncfleet_sandbox::{SandboxConfig, Scale};

use crate::report::Scenario;

const CLIENTS: usize = 4;
/// Each list is paged through this many times, so each figure covers a few seconds of work.
const ROUNDS: usize = 5;

/// What one API's pass measured.
struct Pass {
    records: usize,
    pages: usize,
    bytes: usize,
    secs: f64,
}

/// Fetches pages `0..pages`, `ROUNDS` times, with `CLIENTS` concurrent clients; `build(page)` makes the request and
/// `count(body)` counts its records.
async fn pass(
    http: &reqwest::Client,
    pages: usize,
    build: impl Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
    count: fn(&Value) -> usize,
) -> anyhow::Result<Pass> {
    let next = Arc::new(AtomicUsize::new(0));
    let build = Arc::new(build);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (http, next, build) = (http.clone(), next.clone(), build.clone());
        tasks.push(tokio::spawn(async move {
            let (mut records, mut pages_done, mut bytes) = (0, 0, 0);
            loop {
                let fetch = next.fetch_add(1, Ordering::Relaxed);
                if fetch >= pages * ROUNDS {
                    break;
                }
                let page = fetch % pages;
                let resp = build(&http, page).send().await?.error_for_status()?;
                let body = resp.bytes().await?;
                bytes += body.len();
                records += count(&serde_json::from_slice(&body)?);
                pages_done += 1;
            }
            anyhow::Ok((records, pages_done, bytes))
        }));
    }
    let (mut records, mut pages_done, mut bytes) = (0, 0, 0);
    for t in tasks {
        let (r, p, b) = t.await??;
        records += r;
        pages_done += p;
        bytes += b;
    }
    Ok(Pass { records, pages: pages_done, bytes, secs: start.elapsed().as_secs_f64() })
}

/// One run: serves the seed data set, pages through the three lists and records the figures.
async fn once(s: &mut Scenario) -> anyhow::Result<()> {
    let config = SandboxConfig { scale: Scale::Seed, ..SandboxConfig::default().unlimited() };
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let base = format!("http://{}", std_listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_config = config.clone();
    let t0 = Instant::now();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            syncfleet_sandbox::run(listener, server_config, async move {
                let _ = stop_rx.await;
            })
            .await
        })
    });

    let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
    let info: Value = loop {
        match http.get(format!("{base}/_sandbox/info")).bearer_auth(&config.control_token).send().await {
            Ok(r) if r.status().is_success() => break r.json().await?,
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let ready_ms = t0.elapsed().as_millis();
    let counts = &info["counts"];
    let people = counts["northpass"]["people"].as_u64().context("people count")? as usize;
    let users = counts["impartner"]["User"].as_u64().context("user count")? as usize;
    let items = counts["erp"]["items"].as_u64().context("item count")? as usize;

    let (np_url, np_key) = (format!("{base}/northpass/v2/people"), config.northpass_key.clone());
    let northpass = pass(
        &http,
        people.div_ceil(100),
        move |c, p| {
            c.get(&np_url).header("X-Api-Key", &np_key).query(&[("limit", "100"), ("page", &(p + 1).to_string())])
        },
        |v| v["data"].as_array().map_or(0, Vec::len),
    )
    .await?;
    let (ip_url, ip_key) =
        (format!("{base}/impartner/api/objects/v1/User"), format!("prm-key {}", config.impartner_key));
    let impartner = pass(
        &http,
        users.div_ceil(500),
        move |c, p| {
            c.get(&ip_url).header("Authorization", &ip_key).query(&[("take", "500"), ("skip", &(p * 500).to_string())])
        },
        |v| v["data"]["results"].as_array().map_or(0, Vec::len),
    )
    .await?;
    let (erp_url, erp_token) = (format!("{base}/erp/api/items"), config.erp_token.clone());
    let erp = pass(
        &http,
        items.div_ceil(500),
        move |c, p| {
            c.get(&erp_url).bearer_auth(&erp_token).query(&[("limit", "500"), ("offset", &(p * 500).to_string())])
        },
        |v| v["items"].as_array().map_or(0, Vec::len),
    )
    .await?;

    let _ = stop_tx.send(());
    server.join().map_err(|_| anyhow::anyhow!("sandbox thread panicked"))??;

    anyhow::ensure!(northpass.records == people * ROUNDS, "northpass paged {} of {people}", northpass.records);
    anyhow::ensure!(impartner.records == users * ROUNDS, "impartner paged {} of {users}", impartner.records);
    anyhow::ensure!(erp.records == items * ROUNDS, "erp paged {} of {items}", erp.records);
    let all = [&northpass, &impartner, &erp];
    let secs: f64 = all.iter().map(|p| p.secs).sum();
    let records: usize = all.iter().map(|p| p.records).sum();
    let pages: usize = all.iter().map(|p| p.pages).sum();
    let rate = |p: &Pass| p.records as f64 / p.secs;
    let pages_rate = |p: &Pass| p.pages as f64 / p.secs;
    s.figure("sandbox_records_per_s", records as f64 / secs);
    s.figure("sandbox_pages_per_s", pages as f64 / secs);
    s.figure("sandbox_mib_per_s", all.iter().map(|p| p.bytes).sum::<usize>() as f64 / secs / 1_048_576.0);
    s.figure("northpass_people_records_per_s", rate(&northpass));
    s.figure("northpass_people_pages_per_s", pages_rate(&northpass));
    s.figure("impartner_users_records_per_s", rate(&impartner));
    s.figure("impartner_users_pages_per_s", pages_rate(&impartner));
    s.figure("erp_items_records_per_s", rate(&erp));
    s.figure("erp_items_pages_per_s", pages_rate(&erp));
    s.figure("records", records as f64);
    s.figure("pages", pages as f64);
    s.figure("startup_ms_incl_generation", ready_ms as f64);
    eprintln!("sandbox: {:.0} records/s", records as f64 / secs);
    Ok(())
}

pub async fn run(runs: usize) -> anyhow::Result<Scenario> {
    let mut s = Scenario::new("sandbox", runs);
    for _ in 0..runs {
        once(&mut s).await?;
    }
    s.goal("sandbox_records_per_s", ">= 50000");
    s.note(format!(
        "seed scale, rate limits off, the sandbox on one single-threaded runtime; {CLIENTS} concurrent clients \
         page through each list {ROUNDS} times"
    ));
    Ok(s)
}
