"""Checks of the rendered Kubernetes manifests that kubernetes-validate cannot make.

Usage: check_manifests.py OVERLAY.yaml... (the output of `kubectl kustomize deploy/k8s/overlays/X`,
named after the overlay). Exits 1 naming every problem found.

- Custom resources are validated against the JSON schemas in schemas/ (KEDA's ScaledObject and the
  Prometheus Operator's ServiceMonitor, PodMonitor and PrometheusRule, written from their CRDs'
  openAPIV3Schema, strict: unknown fields are errors). A kind that neither kubernetes-validate
  (built-in API groups) nor this script has a schema for is an error.
- Every PromQL expression (alert rules, the KEDA trigger's query, the Grafana dashboard's panels)
  must parse, and names only syncfleet_* metrics that runtime/src/metrics.rs declares.
- The deployment rules of deploy/README.md: probes on /readyz and /livez, non-root read-only
  containers without capabilities, requests and memory limits, a worker grace period above its
  drain bound, worker replicas owned by the autoscaler, ready-depth-only scaling, no Secret, the
  owner role's database URL on the migration Job only.
"""

import copy
import json
import pathlib
import re
import sys

import jsonschema
import promql_parser
import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.schema.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator-servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "prometheus-operator-podmonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheus-operator-prometheusrule.schema.json",
}
# API groups kubernetes-validate ships schemas for (the core group has no dot).
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io"}
REQUIRED_ALERTS = {
    "SyncfleetRunFailed",
    "SyncfleetRequiredStepFailed",
    "SyncfleetDeadJobsGrowing",
    "SyncfleetQueueDepthHigh",
    "SyncfleetNoWorkerHeartbeat",
    "SyncfleetUpstreamThrottled",
}
# Grafana's template variables, replaced before a dashboard query is parsed.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*", "$queue": ".*"}

errors: list[str] = []


def fail(where: str, message: str) -> None:
    errors.append(f"{where}: {message}")


def declared_metrics() -> set[str]:
    """The metric names runtime/src/metrics.rs declares (its `pub const X: &str = "syncfleet_…"`)."""
    text = (ROOT / "runtime/src/metrics.rs").read_text()
    names = set(re.findall(r'pub const [A-Z_]+: &str = "(syncfleet_[a-z0-9_]+)";', text))
    if not names:
        fail("runtime/src/metrics.rs", "no metric constants found")
    return names


METRICS = declared_metrics()
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def selectors(node):
    """Every vector selector of a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
        return
    for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield from selectors(child)
    for arg in getattr(node, "args", None) or []:
        yield from selectors(arg)


def check_promql(where: str, expr: str) -> list:
    """Parses `expr`; checks the syncfleet_* names it selects exist. Returns its selectors."""
    try:
        parsed = promql_parser.parse(expr)
    except Exception as e:  # the parser raises a plain ValueError/RuntimeError with the reason
        fail(where, f"PromQL does not parse: {e}: {expr}")
        return []
    found = list(selectors(parsed))
    for sel in found:
        name = sel.name or ""
        if not name.startswith("syncfleet_"):
            continue
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in METRICS:
                base = name[: -len(suffix)]
        if base not in METRICS:
            fail(where, f"metric {name} is not declared in runtime/src/metrics.rs")
    return found


def matchers(sel) -> dict:
    return {m.name: (str(m.op), m.value) for m in sel.matchers.matchers}


def containers(obj) -> list:
    return obj["spec"]["template"]["spec"].get("containers", [])


def env_value(config: dict, container: dict, name: str):
    """The value of `name` in a container: its env list first, then the ConfigMaps of envFrom."""
    for e in container.get("env", []):
        if e["name"] == name and "value" in e:
            return e["value"]
    for ef in container.get("envFrom", []):
        ref = ef.get("configMapRef")
        if ref and name in config.get(ref["name"], {}):
            return config[ref["name"]][name]
    return None


def check_workload(where: str, obj: dict, config: dict) -> None:
    pod = obj["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        fail(where, "pod securityContext.runAsNonRoot must be true")
    if pod.get("automountServiceAccountToken") is not False:
        fail(where, "automountServiceAccountToken must be false")
    for c in containers(obj):
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(cw, "readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(cw, "allowPrivilegeEscalation must be false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(cw, "capabilities.drop must be [ALL]")
        res = c.get("resources", {})
        for r in ("cpu", "memory"):
            if r not in res.get("requests", {}):
                fail(cw, f"resources.requests.{r} missing")
        if "memory" not in res.get("limits", {}):
            fail(cw, "resources.limits.memory missing")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref.get("name") != "syncfleet-secrets":
                fail(cw, f"env {e['name']} references Secret {ref.get('name')}, expected syncfleet-secrets")
        for key in ("SYNCFLEET__DATABASE__URL", "SYNCFLEET__REDIS__URL"):
            if not any(e["name"] == key and "secretKeyRef" in e.get("valueFrom", {}) for e in c.get("env", [])):
                fail(cw, f"{key} must come from a secretKeyRef")
        # The owner role's URL goes to the migration Job only; producers and workers run as the
        # runtime role.
        owner = [e for e in c.get("env", []) if e["name"] == "SYNCFLEET__DATABASE__OWNER_URL"]
        if obj["kind"] == "Job" and not (owner and "secretKeyRef" in owner[0].get("valueFrom", {})):
            fail(cw, "SYNCFLEET__DATABASE__OWNER_URL must come from a secretKeyRef")
        if obj["kind"] == "Deployment" and owner:
            fail(cw, "SYNCFLEET__DATABASE__OWNER_URL is the migration Job's only")
        if obj["kind"] != "Deployment":
            continue
        probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in ("startupProbe", "readinessProbe", "livenessProbe")}
        want = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
        if probes != want:
            fail(cw, f"probes must be {want}, found {probes}")
        if c.get("command", [""])[0] not in ("syncfleet-producer", "syncfleet-worker"):
            fail(cw, f"command must name the binary, found {c.get('command')}")
    if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "syncfleet-worker":
        if "replicas" in obj["spec"]:
            fail(where, "spec.replicas must be left to the autoscaler")
        drain = env_value(config, containers(obj)[0], "SYNCFLEET__WORKER__DRAIN_TIMEOUT_SECS")
        drain = int(drain) if drain is not None else 60  # the compiled-in default
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < drain + 15:
            fail(where, f"terminationGracePeriodSeconds {grace} must exceed the drain bound {drain} s (by 15 s at least)")


def check_scaled_object(where: str, obj: dict, deployments: set) -> None:
    spec = obj["spec"]
    if spec["scaleTargetRef"]["name"] not in deployments:
        fail(where, f"scaleTargetRef {spec['scaleTargetRef']['name']} is not a rendered Deployment")
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        fail(where, "minReplicaCount above maxReplicaCount")
    prom = [t for t in spec["triggers"] if t["type"] == "prometheus"]
    if not prom:
        fail(where, "no prometheus trigger")
    for t in prom:
        query = t["metadata"]["query"]
        sels = check_promql(f"{where} trigger {t.get('name', '')}", query)
        depth = [s for s in sels if s.name == "syncfleet_queue_depth"]
        if not depth or len(depth) != len(sels):
            fail(where, f"the trigger must read syncfleet_queue_depth only: {query}")
        for s in depth:
            m = matchers(s)
            if m.get("state") != ("MatchOp.Equal", "ready"):
                fail(where, f'the trigger must select state="ready" exactly (ready work only): {query}')
            ns = obj["metadata"].get("namespace")
            if m.get("namespace") != ("MatchOp.Equal", ns):
                fail(where, f'the trigger must select namespace="{ns}" (the ScaledObject\'s own): {query}')


def check_rules(where: str, obj: dict) -> None:
    readme = (ROOT / "deploy/README.md").read_text().lower()
    alerts = set()
    for group in obj["spec"]["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            alerts.add(name)
            check_promql(f"{where} rule {name}", str(rule["expr"]))
            runbook = rule.get("annotations", {}).get("runbook", "")
            anchor = runbook.partition("#")[2]
            if rule.get("alert") and (not runbook.startswith("deploy/README.md#") or f"### {anchor}" not in readme):
                fail(f"{where} rule {name}", f"runbook {runbook!r} must point to a '### {name}' section of deploy/README.md")
    missing = REQUIRED_ALERTS - alerts
    if missing:
        fail(where, f"alerts missing: {sorted(missing)}")


def check_dashboard(where: str, obj: dict) -> None:
    for key, text in obj.get("data", {}).items():
        try:
            dash = json.loads(text)
        except json.JSONDecodeError as e:
            fail(f"{where} {key}", f"not JSON: {e}")
            continue
        panels = dash.get("panels", [])
        if not panels:
            fail(f"{where} {key}", "no panels")
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                check_promql(f"{where} panel {panel.get('title')!r}", expr)


def check_overlay(path: pathlib.Path) -> None:
    check_docs(path.stem, [d for d in yaml.safe_load_all(path.read_text()) if d])


def check_docs(overlay: str, docs: list) -> None:
    if not docs:
        fail(overlay, "renders nothing")
        return
    config = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    autoscalers = []
    for d in docs:
        api, kind, name = d["apiVersion"], d["kind"], d["metadata"]["name"]
        where = f"{overlay}: {kind}/{name}"
        group = api.rpartition("/")[0]
        schema = SCHEMAS.get((api, kind))
        if schema:
            validator = jsonschema.Draft202012Validator(json.loads((HERE / "schemas" / schema).read_text()))
            for e in sorted(validator.iter_errors(d), key=lambda e: list(e.absolute_path)):
                fail(where, f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}")
        elif group not in BUILTIN_GROUPS:
            fail(where, f"no schema for {api} {kind}: add one to deploy/check/schemas/")
        if kind == "Secret":
            fail(where, "Secrets must not be in the repository: reference them")
        if kind in ("Deployment", "Job"):
            check_workload(where, d, config)
        if kind == "Deployment" and name == "syncfleet-producer":
            want = 1 if overlay == "dev" else 2
            if d["spec"].get("replicas") != want:
                fail(where, f"replicas must be {want}")
        if kind == "ScaledObject":
            autoscalers.append(where)
            check_scaled_object(where, d, deployments)
        if kind == "HorizontalPodAutoscaler":
            autoscalers.append(where)
            metrics = d["spec"].get("metrics", [])
            names = [m.get("external", {}).get("metric", {}).get("name") for m in metrics]
            if names != ["syncfleet_queue_ready"]:
                fail(where, f"must scale on the external metric syncfleet_queue_ready only, found {names}")
        if kind == "PrometheusRule":
            check_rules(where, d)
        if kind == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            check_dashboard(where, d)
    if len(autoscalers) != 1:
        fail(overlay, f"exactly one autoscaler must own the workers, found {autoscalers}")


def mutated(docs: list, kind: str, name: str, change) -> list:
    out = copy.deepcopy(docs)
    for d in out:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            change(d)
    return out


def self_test() -> int:
    """Shows the checks are not vacuous: each broken copy of the prod render must be refused."""
    docs = [d for d in yaml.safe_load_all((ROOT / "target/deploy/prod.yaml").read_text()) if d]
    trigger = lambda d: d["spec"]["triggers"][0]["metadata"]  # noqa: E731
    worker = lambda d: d["spec"]["template"]["spec"]  # noqa: E731
    cases = {
        "scaling on scheduled jobs": mutated(docs, "ScaledObject", "syncfleet-worker", lambda d: trigger(d).update(
            query='sum(max by (queue) (syncfleet_queue_depth{namespace="syncfleet",state=~"ready|scheduled"}))')),
        "an unknown ScaledObject field": mutated(docs, "ScaledObject", "syncfleet-worker",
                                                 lambda d: d["spec"].update(maxReplicas=3)),
        "a threshold that is not a string": mutated(docs, "ScaledObject", "syncfleet-worker",
                                                    lambda d: trigger(d).update(threshold=8)),
        "a grace period below the drain bound": mutated(docs, "Deployment", "syncfleet-worker",
                                                        lambda d: worker(d).update(terminationGracePeriodSeconds=30)),
        "worker replicas in the manifest": mutated(docs, "Deployment", "syncfleet-worker",
                                                   lambda d: d["spec"].update(replicas=3)),
        "an alert on a metric nobody exports": mutated(docs, "PrometheusRule", "syncfleet", lambda d: d["spec"]["groups"][0][
            "rules"][0].update(expr="increase(syncfleet_runs_failed_total[5m]) > 0")),
        "an alert that does not parse": mutated(docs, "PrometheusRule", "syncfleet", lambda d: d["spec"]["groups"][0][
            "rules"][0].update(expr="sum(rate(syncfleet_runs_total[5m])")),
        "a writable root filesystem": mutated(docs, "Deployment", "syncfleet-producer", lambda d: worker(d)[
            "containers"][0]["securityContext"].update(readOnlyRootFilesystem=False)),
        "the owner role's URL on a worker": mutated(docs, "Deployment", "syncfleet-worker", lambda d: worker(d)[
            "containers"][0]["env"].append({"name": "SYNCFLEET__DATABASE__OWNER_URL", "valueFrom": {
                "secretKeyRef": {"name": "syncfleet-secrets", "key": "database-owner-url"}}})),
    }
    failed = 0
    for what, case in cases.items():
        errors.clear()
        check_docs("prod", case)
        if not errors:
            print(f"SELF-TEST FAILED: {what} was not refused")
            failed += 1
    errors.clear()
    if failed:
        return 1
    print(f"self-test ok: {len(cases)} broken manifests refused")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    paths = [pathlib.Path(p) for p in sys.argv[1:]]
    if not paths:
        print("usage: check_manifests.py OVERLAY.yaml...", file=sys.stderr)
        return 2
    for path in paths:
        check_overlay(path)
    for e in errors:
        print(f"ERROR {e}")
    if errors:
        return 1
    print(f"manifests ok: {', '.join(p.stem for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
