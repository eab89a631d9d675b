//! The commands by area: `runs.rs` (trigger, runs, resume, cancel, status), `fleet.rs` (queues,
//! workers, schedules, integrations), `admin.rs` (migrate, healthcheck, tokens, data repair).

pub(crate) mod admin;
pub(crate) mod fleet;
pub(crate) mod runs;

/// Prints `value` as pretty JSON.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
