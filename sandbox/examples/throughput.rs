//! Runs the sandbox throughput benchmark of `bench/` (the same code, `bench/src/sandbox.rs`) without
//! building the rest of the bench harness: `cargo run --release -p syncfleet-sandbox --example throughput`.

#[path = "../../bench/src/sandbox.rs"]
mod sandbox;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let figures = sandbox::run().await?;
    println!("{}", serde_json::to_string_pretty(&figures)?);
    Ok(())
}
