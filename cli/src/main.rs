//! `syncfleet`: the ops CLI (`demo`, `trigger`, `runs`, `queues`, `resume`, `cancel`, `migrate`,
//! `healthcheck`).

fn main() -> std::process::ExitCode {
    // The one place that names the packs this binary knows.
    syncfleet_cli::main(syncfleet_registry::builtin())
}
