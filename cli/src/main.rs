//! `syncfleet`: the ops CLI (`demo`, `trigger`, `runs`, `queues`, `resume`, `cancel`, `migrate`,
//! `healthcheck`).

fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`syncfleet runs | head -1`) would
    // panic with "Broken pipe"; with the default disposition the CLI ends quietly, as other
    // command line tools do.
    sigpipe::reset();
    // The one place that names the packs this binary knows.
    syncfleet_cli::main(syncfleet_registry::builtin())
}
