//! `syncfleet`: the ops CLI (`demo`, `trigger`, `runs`, `queues`, `resume`, `cancel`, `migrate`,
//! `healthcheck`).

fn main() -> std::process::ExitCode {
    syncfleet_producer::cli::main()
}
