//! Sandbox throughput: list pages served per second (owned by the sandbox work).

pub async fn run() -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({}))
}
