#!/usr/bin/env bash
# The README's test command: every setup the suite needs, then the whole suite, exactly as CI runs
# it (.ci/run calls this script). Safe to run again: each step skips what is already there.
#   - PostgreSQL and Redis up (scripts/start-postgres-redis.sh);
#   - cargo-nextest; Debian's Chromium and tests/e2e's npm packages (the dashboard browser test);
#   - schemathesis in target/fuzz-venv (the API fuzz test), aiosmtpd in target/smtp-venv (mail over
#     STARTTLS with AUTH);
#   - the deploy tools in target/deploy-venv, and the offline deploy checks (deploy/check/run.sh);
#   - then the binaries and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/start-postgres-redis.sh

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

# The dashboard's end-to-end test drives Debian's Chromium with playwright-core (from npm).
command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
(cd tests/e2e && npm ci --no-audit --no-fund)
# The API fuzz test runs schemathesis (from PyPI) against the producer's OpenAPI document.
if [ ! -x target/fuzz-venv/bin/schemathesis ]; then
  python3 -m venv target/fuzz-venv
  target/fuzz-venv/bin/pip install -q "schemathesis==4.32.5"
fi
# The managed-services test delivers mail to aiosmtpd (from PyPI) with STARTTLS and AUTH.
if [ ! -x target/smtp-venv/bin/python ] || ! target/smtp-venv/bin/python -c 'import aiosmtpd' 2>/dev/null; then
  python3 -m venv target/smtp-venv
  target/smtp-venv/bin/pip install -q "aiosmtpd==1.4.6"
fi
export CI="${CI:-true}"

# The deployment material (Dockerfile, compose, Kubernetes manifests, alert rules), validated
# offline with pinned tools from PyPI in target/deploy-venv; tests/tests/deploy.rs uses them too.
bash deploy/check/run.sh

cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
