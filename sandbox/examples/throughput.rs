//! Runs the sandbox throughput benchmark of `bench/` (the same code, `bench/src/sandbox.rs`) without
//! building the rest of the bench harness: `cargo run --release -p syncfleet-sandbox --example throughput`.

#[path = "../../bench/src/report.rs"]
#[allow(dead_code)]
mod report;
#[path = "../../bench/src/sandbox.rs"]
mod sandbox;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let s = sandbox::run(1).await?;
    println!("{}", serde_json::to_string_pretty(&s.to_json())?);
    Ok(())
}
