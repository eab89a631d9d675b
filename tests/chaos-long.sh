#!/usr/bin/env bash
# The chaos suite's long form (tests/CHAOS.md): the same tests with more runs, kills and
# integrations (CHAOS_LONG=1). Needs PostgreSQL on 5432 and Redis on 6379, as the CI does; the
# tests start their own private redis-server and PostgreSQL cluster where they kill one.
# Extra arguments go to nextest, e.g. `tests/chaos-long.sh -E 'test(sigkill)'`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
CHAOS_LONG=1 cargo nextest run -p syncfleet-tests --test chaos --test chaos_load --no-fail-fast --no-capture "$@"
