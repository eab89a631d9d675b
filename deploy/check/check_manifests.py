"""Checks of the rendered Kubernetes manifests that kubernetes-validate cannot make.

Usage: check_manifests.py OVERLAY.yaml... (the output of `kubectl kustomize deploy/k8s/overlays/X`,
named after the overlay), or --self-test. Exits 1 naming every problem found.

- Custom resources are validated against the JSON schemas in schemas/ (KEDA's ScaledObject and
  TriggerAuthentication, the Prometheus Operator's ServiceMonitor, PodMonitor and PrometheusRule,
  written from their CRDs' openAPIV3Schema, strict: unknown fields are errors). A kind that neither
  kubernetes-validate (built-in API groups) nor this script has a schema for is an error.
- Every PromQL expression (alert rules, the KEDA trigger's query, the Grafana dashboard's panels,
  the prometheus-adapter rule) must parse, and names only syncfleet_* metrics that
  runtime/src/metrics.rs declares.
- Autoscaling reads the runnable depth only: KEDA's Prometheus trigger selects
  syncfleet_queue_depth{state="runnable"} in its own namespace with ignoreNullValues "false"; its
  metrics-api triggers read the `runnable` field of the producer's `/api/queues` in its own
  namespace, one per queue of the production build, with a bearer token from a
  TriggerAuthentication; a ScaledObject has a fallback; the HPA's external metric is the
  prometheus-adapter rule's `syncfleet_queue_runnable`.
- No namespace or Prometheus address is written in the components or the base: the sources say
  NAMESPACE and set-by-the-overlay, which the overlays' kustomize replacements fill in.
- No PodDisruptionBudget blocks a node drain: at every replica count the overlay's Deployment or
  autoscaler allows, each budget lets at least one pod go.
- Alerts carry `runbook_url` (an absolute URL of their deploy/README.md section), the monitors and
  rules the `release` label a kube-prometheus-stack selects on.
- The deployment rules of deploy/README.md: probes on /readyz and /livez, non-root read-only
  containers without capabilities, requests and memory limits, a worker grace period above its
  drain bound, worker replicas owned by the autoscaler, no Secret, migrations in the producer's
  `migrate` init container (no Job), the owner role's database URL there only.
- The image (Dockerfile, Cargo.toml, docker-compose.yml): production binaries built with the
  `production` profile (LTO, one codegen unit, stripped) without default features, no sandbox in
  the runtime stage, OCI labels, compose health checks for producer and worker.
"""

import copy
import json
import math
import pathlib
import re
import sys
import tomllib
import urllib.parse

import jsonschema
import promql_parser
import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.schema.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.schema.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator-servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "prometheus-operator-podmonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheus-operator-prometheusrule.schema.json",
}
# API groups kubernetes-validate ships schemas for (the core group has no dot).
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io"}
REQUIRED_ALERTS = {
    "SyncfleetRunFailed",
    "SyncfleetRequiredStepFailed",
    "SyncfleetNoRecentSuccess",
    "SyncfleetDeadJobsGrowing",
    "SyncfleetQueueDepthHigh",
    "SyncfleetNoWorkerHeartbeat",
    "SyncfleetDependencyDown",
    "SyncfleetUpstreamThrottled",
}
# Placeholders of the sources that the overlays' replacements fill in.
NAMESPACE_PLACEHOLDER = "NAMESPACE"
SET_BY_OVERLAY = "set-by-the-overlay"
# Grafana's template variables, replaced before a dashboard query is parsed.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*", "$queue": ".*"}
PRODUCER_API_PORT = 8080
HPA_METRIC = "syncfleet_queue_runnable"

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


def production_queues() -> set[str]:
    """The queues of the packs the production image links: the registry features the producer
    depends on (producer/Cargo.toml) and each pack's `pub const QUEUE`."""
    manifest = tomllib.loads((ROOT / "producer/Cargo.toml").read_text())
    registry = manifest["dependencies"]["syncfleet-registry"]
    if not isinstance(registry, dict) or registry.get("default-features", True):
        fail("producer/Cargo.toml", "syncfleet-registry must be a dependency without default features")
        return set()
    queues = set()
    for pack in registry.get("features", []):
        text = (ROOT / "packs" / pack / "src/lib.rs").read_text()
        found = re.findall(r'pub const QUEUE: &str = "([a-z0-9_-]+)";', text)
        if len(found) != 1:
            fail(f"packs/{pack}/src/lib.rs", "expected one `pub const QUEUE: &str = \"…\";`")
        queues.update(found)
    return queues


METRICS = declared_metrics()
QUEUES = production_queues()
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


def init_containers(obj) -> list:
    return obj["spec"]["template"]["spec"].get("initContainers", [])


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


def is_migrate_init(obj: dict, c: dict) -> bool:
    """The producer's `migrate` init container: the one place migrations run."""
    return (
        obj["kind"] == "Deployment"
        and obj["metadata"]["name"] == "syncfleet-producer"
        and c in init_containers(obj)
        and c["name"] == "migrate"
        and c.get("command") == ["syncfleet", "migrate"]
    )


def check_workload(where: str, obj: dict, config: dict) -> None:
    pod = obj["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        fail(where, "pod securityContext.runAsNonRoot must be true")
    if pod.get("automountServiceAccountToken") is not False:
        fail(where, "automountServiceAccountToken must be false")
    for c in init_containers(obj) + containers(obj):
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
        # The owner role's URL goes to the migrate init container only; producers and workers
        # run as the runtime role.
        owner = [e for e in c.get("env", []) if e["name"] == "SYNCFLEET__DATABASE__OWNER_URL"]
        if is_migrate_init(obj, c):
            if not (owner and "secretKeyRef" in owner[0].get("valueFrom", {})):
                fail(cw, "SYNCFLEET__DATABASE__OWNER_URL must come from a secretKeyRef")
            continue
        if owner:
            fail(cw, "SYNCFLEET__DATABASE__OWNER_URL is the producer's migrate init container's only")
        if c in init_containers(obj):
            fail(cw, "the only init container is the producer's `migrate` (command [syncfleet, migrate])")
            continue
        probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in ("startupProbe", "readinessProbe", "livenessProbe")}
        want = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
        if probes != want:
            fail(cw, f"probes must be {want}, found {probes}")
        if c.get("command", [""])[0] not in ("syncfleet-producer", "syncfleet-worker"):
            fail(cw, f"command must name the binary, found {c.get('command')}")
    if obj["metadata"]["name"] == "syncfleet-producer" and not any(is_migrate_init(obj, c) for c in init_containers(obj)):
        fail(where, "the producer must run the migrations in an init container `migrate`: [syncfleet, migrate]")
    if obj["metadata"]["name"] == "syncfleet-worker":
        if "replicas" in obj["spec"]:
            fail(where, "spec.replicas must be left to the autoscaler")
        drain = env_value(config, containers(obj)[0], "SYNCFLEET__WORKER__DRAIN_TIMEOUT_SECS")
        drain = int(drain) if drain is not None else 60  # the compiled-in default
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < drain + 15:
            fail(where, f"terminationGracePeriodSeconds {grace} must exceed the drain bound {drain} s (by 15 s at least)")


def check_prometheus_trigger(where: str, obj: dict, t: dict) -> None:
    meta = t["metadata"]
    query = meta.get("query", "")
    sels = check_promql(f"{where} trigger {t.get('name', '')}", query)
    depth = [s for s in sels if s.name == "syncfleet_queue_depth"]
    if not depth or len(depth) != len(sels):
        fail(where, f"the trigger must read syncfleet_queue_depth only: {query}")
    ns = obj["metadata"].get("namespace")
    for s in depth:
        m = matchers(s)
        if m.get("state") != ("MatchOp.Equal", "runnable"):
            fail(where, f'the trigger must select state="runnable" exactly (ready minus lease-blocked): {query}')
        if m.get("namespace") != ("MatchOp.Equal", ns):
            fail(where, f'the trigger must select namespace="{ns}" (the ScaledObject\'s own): {query}')
    if meta.get("ignoreNullValues") != "false":
        fail(where, 'ignoreNullValues must be "false": a missing series is an error (then the fallback), not 0 jobs')


def check_metrics_api_trigger(where: str, obj: dict, t: dict, auths: dict) -> str | None:
    """Checks one metrics-api trigger; returns the queue it reads."""
    meta = t["metadata"]
    ns = obj["metadata"].get("namespace")
    url = urllib.parse.urlsplit(meta.get("url", ""))
    hosts = {f"syncfleet-producer.{ns}.svc", f"syncfleet-producer.{ns}.svc.cluster.local"}
    if url.hostname not in hosts or url.port != PRODUCER_API_PORT or url.path != "/api/queues":
        fail(where, f"a metrics-api trigger must read http://syncfleet-producer.{ns}.svc:{PRODUCER_API_PORT}"
                    f"/api/queues (the ScaledObject's own namespace), found {meta.get('url')!r}")
    if meta.get("format", "json") != "json":
        fail(where, f"a metrics-api trigger reads /api/queues as json, found format {meta.get('format')!r}")
    m = re.fullmatch(r'#\(queue=="([a-z0-9_-]+)"\)\.runnable', meta.get("valueLocation", ""))
    if not m:
        fail(where, f"a metrics-api trigger must read one queue's `runnable` field: "
                    f"valueLocation '#(queue==\"Q\").runnable', found {meta.get('valueLocation')!r}")
    auth = t.get("authenticationRef", {}).get("name")
    if meta.get("authMode") != "bearer" or auth not in auths:
        fail(where, f"a metrics-api trigger needs authMode bearer and a rendered TriggerAuthentication, found "
                    f"{meta.get('authMode')!r} / {auth!r}")
    elif not any(r["parameter"] == "token" for r in auths[auth].get("spec", {}).get("secretTargetRef", [])):
        fail(where, f"TriggerAuthentication {auth} must give the `token` parameter from a Secret")
    return m.group(1) if m else None


def check_scaled_object(where: str, obj: dict, deployments: set, auths: dict) -> None:
    spec = obj["spec"]
    if spec["scaleTargetRef"]["name"] not in deployments:
        fail(where, f"scaleTargetRef {spec['scaleTargetRef']['name']} is not a rendered Deployment")
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if lo > hi:
        fail(where, "minReplicaCount above maxReplicaCount")
    fallback = spec.get("fallback")
    if not fallback or not 1 <= fallback.get("replicas", 0) <= hi:
        fail(where, "a fallback (failureThreshold, replicas between 1 and maxReplicaCount) must hold workers "
                    "while the trigger cannot be read")
    queues = []
    for t in spec["triggers"]:
        if t.get("metricType", "AverageValue") != "AverageValue":
            fail(where, "triggers must be AverageValue (KEDA's fallback applies to those only)")
        if t["type"] == "prometheus":
            check_prometheus_trigger(where, obj, t)
        elif t["type"] == "metrics-api":
            queues.append(check_metrics_api_trigger(where, obj, t, auths))
        else:
            fail(where, f"unexpected trigger type {t['type']}: scale on the runnable depth only")
    if queues and set(queues) != QUEUES:
        fail(where, f"the metrics-api triggers must cover the production build's queues {sorted(QUEUES)}, "
                    f"found {sorted(q for q in queues if q)}")


def check_hpa(where: str, obj: dict) -> None:
    metrics = obj["spec"].get("metrics", [])
    names = [m.get("external", {}).get("metric", {}).get("name") for m in metrics]
    if names != [HPA_METRIC]:
        fail(where, f"must scale on the external metric {HPA_METRIC} only, found {names}")
    # The prometheus-adapter rule that serves it.
    path = "deploy/k8s/components/hpa-external/prometheus-adapter-rules.yaml"
    rules = yaml.safe_load((ROOT / path).read_text())["rules"]["external"]
    served = [r for r in rules if r.get("name", {}).get("as") == HPA_METRIC]
    if len(served) != 1:
        fail(path, f"one external rule must serve {HPA_METRIC}")
        return
    rule = served[0]
    for key, expr in (("seriesQuery", rule["seriesQuery"]), ("metricsQuery", rule["metricsQuery"])):
        expr = expr.replace("<<.LabelMatchers>>", 'namespace="x"')
        for sel in check_promql(f"{path} {key}", expr):
            if sel.name != "syncfleet_queue_depth" or matchers(sel).get("state") != ("MatchOp.Equal", "runnable"):
                fail(path, f'{key} must select syncfleet_queue_depth{{state="runnable"}} only: {expr}')
            if matchers(sel).get("namespace", ("", ""))[1] not in ("", "x"):
                fail(path, f"{key} must not name a namespace (the HPA's selects it): {expr}")


def check_rules(where: str, obj: dict) -> None:
    readme = (ROOT / "deploy/README.md").read_text()
    alerts = set()
    for group in obj["spec"]["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            alerts.add(name)
            check_promql(f"{where} rule {name}", str(rule["expr"]))
            if not rule.get("alert"):
                continue
            annotations = rule.get("annotations", {})
            if "runbook" in annotations:
                fail(f"{where} rule {name}", "use the `runbook_url` annotation, not `runbook`")
            url = urllib.parse.urlsplit(annotations.get("runbook_url", ""))
            if (
                url.scheme not in ("http", "https")
                or not url.netloc
                or not url.path.endswith("deploy/README.md")
                or url.fragment != name.lower()
                or f"\n### {name}\n" not in readme
            ):
                fail(f"{where} rule {name}", f"runbook_url {annotations.get('runbook_url')!r} must be the absolute URL "
                                             f"of the '### {name}' section of deploy/README.md (…/deploy/README.md#{name.lower()})")
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


def scaled(value, total: int) -> int:
    """A PDB's int-or-percent against `total` pods, rounded up as the disruption controller does."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * total / 100)
    return int(value)


def replica_counts(docs: list, deployment: dict) -> range:
    """The replica counts a Deployment runs at with at least one pod: its own, or its
    autoscaler's range."""
    name = deployment["metadata"]["name"]
    if "replicas" in deployment["spec"]:
        n = deployment["spec"]["replicas"]
        return range(n, n + 1)
    for d in docs:
        target = d.get("spec", {}).get("scaleTargetRef", {}).get("name")
        if d["kind"] == "ScaledObject" and target == name:
            return range(max(1, d["spec"].get("minReplicaCount", 0)), d["spec"].get("maxReplicaCount", 100) + 1)
        if d["kind"] == "HorizontalPodAutoscaler" and target == name:
            return range(max(1, d["spec"].get("minReplicas", 1)), d["spec"]["maxReplicas"] + 1)
    return range(1, 2)  # the Deployment default


def check_pdbs(overlay: str, docs: list) -> None:
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        where = f"{overlay}: PodDisruptionBudget/{pdb['metadata']['name']}"
        spec = pdb["spec"]
        selector = spec.get("selector", {}).get("matchLabels", {})
        targets = [
            d for d in docs
            if d["kind"] == "Deployment"
            and selector
            and selector.items() <= d["spec"]["template"]["metadata"].get("labels", {}).items()
        ]
        if not targets:
            fail(where, f"selects no rendered Deployment: {selector}")
        for deployment in targets:
            for n in replica_counts(docs, deployment):
                if "maxUnavailable" in spec:
                    allowed = min(n, scaled(spec["maxUnavailable"], n))
                else:
                    allowed = n - scaled(spec.get("minAvailable", 0), n)
                if allowed < 1:
                    budget = {k: spec[k] for k in ("minAvailable", "maxUnavailable") if k in spec}
                    fail(where, f"blocks every node drain at {n} replica(s) of {deployment['metadata']['name']} "
                                f"({budget} allows {max(allowed, 0)} disruptions): use maxUnavailable")
                    break


def check_monitor_labels(overlay: str, docs: list) -> None:
    kinds = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
    releases = {}
    for d in docs:
        if d["kind"] in kinds:
            where = f"{overlay}: {d['kind']}/{d['metadata']['name']}"
            release = d["metadata"].get("labels", {}).get("release")
            if not release or release == SET_BY_OVERLAY:
                fail(where, "needs the `release` label a kube-prometheus-stack selects on (the overlay's prometheus-release)")
            releases[where] = release
    if len(set(releases.values())) > 1:
        fail(overlay, f"monitors and rules must carry one `release` label: {releases}")


def check_docs(overlay: str, docs: list) -> None:
    if not docs:
        fail(overlay, "renders nothing")
        return
    config = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
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
        if SET_BY_OVERLAY in json.dumps(d) or re.search(rf"\b{NAMESPACE_PLACEHOLDER}\b", json.dumps(d)):
            fail(where, "a placeholder was not replaced: the overlay lacks its Namespace or syncfleet-cluster ConfigMap")
        if kind == "Secret":
            fail(where, "Secrets must not be in the repository: reference them")
        if kind == "Job":
            fail(where, "migrations run in the producer's `migrate` init container, not in a Job "
                        "(a Job's template is immutable: every upgrade would need it deleted)")
        if kind == "Deployment":
            check_workload(where, d, config)
        if kind == "Deployment" and name == "syncfleet-producer":
            want = 1 if overlay == "dev" else 2
            if d["spec"].get("replicas") != want:
                fail(where, f"replicas must be {want}")
        if kind == "ScaledObject":
            autoscalers.append(where)
            check_scaled_object(where, d, deployments, auths)
        if kind == "HorizontalPodAutoscaler":
            autoscalers.append(where)
            check_hpa(where, d)
        if kind == "PrometheusRule":
            check_rules(where, d)
        if kind == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            check_dashboard(where, d)
    if len(autoscalers) != 1:
        fail(overlay, f"exactly one autoscaler must own the workers, found {autoscalers}")
    check_pdbs(overlay, docs)
    check_monitor_labels(overlay, docs)


def check_sources() -> None:
    """No namespace or Prometheus address written in the base or the components: they say
    NAMESPACE and set-by-the-overlay, and the overlays fill them in."""
    for path in sorted((ROOT / "deploy/k8s/base").rglob("*.yaml")) + sorted((ROOT / "deploy/k8s/components").rglob("*.yaml")):
        check_source(path.relative_to(ROOT), path.read_text())


def check_source(rel, text: str) -> None:
    for ns in re.findall(r'namespace\s*=~?\s*"([^"]*)"', text):
        if ns != NAMESPACE_PLACEHOLDER:
            fail(str(rel), f'PromQL names namespace "{ns}": write namespace="{NAMESPACE_PLACEHOLDER}" and let the '
                           "overlay's Namespace fill it in")
    for host in re.findall(r"https?://([a-z0-9.-]+)", text):
        parts = host.split(".")
        if "svc" in parts and parts[parts.index("svc") - 1] != NAMESPACE_PLACEHOLDER:
            fail(str(rel), f"address {host} names a namespace: use the overlay's replacements")
    for m in re.finditer(r"^[ \t]*(serverAddress|namespace):[ \t]*(\S+)", text, re.M):
        if m.group(2) not in (SET_BY_OVERLAY, NAMESPACE_PLACEHOLDER):
            fail(str(rel), f"{m.group(1)}: {m.group(2)} is written in the source: the overlay sets it")


def check_image() -> None:
    """The production image: the profile, the binaries and features it builds, its labels, and
    the compose health checks."""
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    prod = cargo.get("profile", {}).get("production", {})
    want = {"inherits": "release", "codegen-units": 1, "strip": True}
    if any(prod.get(k) != v for k, v in want.items()) or prod.get("lto") not in ("fat", "thin", True):
        fail("Cargo.toml", f"[profile.production] must inherit release with lto, codegen-units = 1, strip = true: {prod}")
    if "panic" in prod:
        fail("Cargo.toml", "[profile.production] keeps release's panic strategy")
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)
    runtime = [s for s in stages if re.match(r"\S+ AS runtime\b", s)]
    if not runtime or stages[-1] is not runtime[0]:
        fail("Dockerfile", "the last stage (the default target) must be `runtime`")
    builder = "".join(s for s in stages if re.match(r"\S+ AS builder\b", s))
    build = " ".join(re.findall(r"cargo build[^&]*", builder.replace("\\\n", " ")))
    for flag in ("--profile production", "--no-default-features", "--locked"):
        if flag not in build:
            fail("Dockerfile", f"the builder's cargo build needs {flag}: {build}")
    if "sandbox" in build:
        fail("Dockerfile", "the builder of the production binaries must not build the sandbox")
    if runtime and "sandbox" in runtime[0]:
        fail("Dockerfile", "the runtime stage must not contain the sandbox")
    for label in ("title", "description", "version", "revision", "source", "licenses", "created"):
        if f"org.opencontainers.image.{label}=" not in dockerfile:
            fail("Dockerfile", f"OCI label org.opencontainers.image.{label} missing")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in ("producer", "worker"):
        test = compose["services"][service].get("healthcheck", {}).get("test", [])
        if test[:3] != ["CMD", "syncfleet", "healthcheck"]:
            fail(f"docker-compose.yml {service}", f'healthcheck must run ["CMD", "syncfleet", "healthcheck", …], found {test}')


def mutated(docs: list, kind: str, name: str, change) -> list:
    out = copy.deepcopy(docs)
    for d in out:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            change(d)
    return out


def self_test() -> int:
    """Shows the checks are not vacuous: each broken copy of a render must be refused."""
    rendered = {
        o: [d for d in yaml.safe_load_all((ROOT / f"target/deploy/{o}.yaml").read_text()) if d]
        for o in ("prod", "dev", "prod-hpa")
    }
    docs, dev = rendered["prod"], rendered["dev"]
    trigger = lambda d: d["spec"]["triggers"][0]["metadata"]  # noqa: E731
    worker = lambda d: d["spec"]["template"]["spec"]  # noqa: E731
    rules = lambda d: d["spec"]["groups"][0]["rules"]  # noqa: E731

    def drop(key):
        return lambda d: d["spec"].pop(key)

    cases = {
        "scaling on scheduled jobs": ("prod", mutated(docs, "ScaledObject", "syncfleet-worker", lambda d: trigger(d).update(
            query='sum(max by (queue) (syncfleet_queue_depth{namespace="syncfleet",state=~"ready|scheduled"}))'))),
        "scaling on ready (lease-blocked) jobs": ("prod", mutated(docs, "ScaledObject", "syncfleet-worker", lambda d: trigger(
            d).update(query='sum(max by (queue) (syncfleet_queue_depth{namespace="syncfleet",state="ready"}))'))),
        "another namespace in the trigger": ("prod", mutated(docs, "ScaledObject", "syncfleet-worker", lambda d: trigger(
            d).update(query='sum(max by (queue) (syncfleet_queue_depth{namespace="other",state="runnable"}))'))),
        "null values read as 0": ("prod", mutated(docs, "ScaledObject", "syncfleet-worker",
                                                   lambda d: trigger(d).update(ignoreNullValues="true"))),
        "no fallback": ("prod", mutated(docs, "ScaledObject", "syncfleet-worker", drop("fallback"))),
        "an unknown ScaledObject field": ("prod", mutated(docs, "ScaledObject", "syncfleet-worker",
                                                          lambda d: d["spec"].update(maxReplicas=3))),
        "a threshold that is not a string": ("prod", mutated(docs, "ScaledObject", "syncfleet-worker",
                                                             lambda d: trigger(d).update(threshold=8))),
        "a metrics-api trigger on ready": ("dev", mutated(dev, "ScaledObject", "syncfleet-worker", lambda d: trigger(
            d).update(valueLocation='#(queue=="sync").ready'))),
        "a metrics-api trigger without its token": ("dev", mutated(dev, "ScaledObject", "syncfleet-worker",
                                                                   lambda d: d["spec"]["triggers"][0].pop("authenticationRef"))),
        "a metrics-api trigger on another namespace's producer": ("dev", mutated(dev, "ScaledObject", "syncfleet-worker",
            lambda d: trigger(d).update(url="http://syncfleet-producer.syncfleet.svc:8080/api/queues"))),
        "a queue without a trigger": ("dev", mutated(dev, "ScaledObject", "syncfleet-worker",
                                                     lambda d: d["spec"]["triggers"].pop())),
        "minAvailable 1 on the one dev producer": ("dev", mutated(dev, "PodDisruptionBudget", "syncfleet-producer",
            lambda d: (d["spec"].pop("maxUnavailable"), d["spec"].update(minAvailable=1)))),
        "minAvailable 1 on workers scaled down to 1": ("dev", mutated(dev, "PodDisruptionBudget", "syncfleet-worker",
            lambda d: (d["spec"].pop("maxUnavailable"), d["spec"].update(minAvailable=1)))),
        "minAvailable 100% on the HPA's workers": ("prod-hpa", mutated(rendered["prod-hpa"], "PodDisruptionBudget",
            "syncfleet-worker", lambda d: (d["spec"].pop("maxUnavailable"), d["spec"].update(minAvailable="100%")))),
        "an HPA on ready depth": ("prod-hpa", mutated(rendered["prod-hpa"], "HorizontalPodAutoscaler", "syncfleet-worker",
            lambda d: d["spec"]["metrics"][0]["external"]["metric"].update(name="syncfleet_queue_ready"))),
        "a grace period below the drain bound": ("prod", mutated(docs, "Deployment", "syncfleet-worker",
                                                                 lambda d: worker(d).update(terminationGracePeriodSeconds=30))),
        "worker replicas in the manifest": ("prod", mutated(docs, "Deployment", "syncfleet-worker",
                                                            lambda d: d["spec"].update(replicas=3))),
        "an alert on a metric nobody exports": ("prod", mutated(docs, "PrometheusRule", "syncfleet", lambda d: rules(d)[0].update(
            expr="increase(syncfleet_runs_failed_total[5m]) > 0"))),
        "an alert that does not parse": ("prod", mutated(docs, "PrometheusRule", "syncfleet", lambda d: rules(d)[0].update(
            expr="sum(rate(syncfleet_runs_total[5m])"))),
        "a runbook instead of a runbook_url": ("prod", mutated(docs, "PrometheusRule", "syncfleet", lambda d: rules(d)[0].update(
            annotations={"runbook": "deploy/README.md#syncfleetrunfailed"}))),
        "a runbook_url to another section": ("prod", mutated(docs, "PrometheusRule", "syncfleet", lambda d: rules(d)[0][
            "annotations"].update(runbook_url="https://example.com/deploy/README.md#syncfleetqueuedepthhigh"))),
        "a monitor without the release label": ("prod", mutated(docs, "ServiceMonitor", "syncfleet-producer",
                                                                lambda d: d["metadata"]["labels"].pop("release"))),
        "a writable root filesystem": ("prod", mutated(docs, "Deployment", "syncfleet-producer", lambda d: worker(d)[
            "containers"][0]["securityContext"].update(readOnlyRootFilesystem=False))),
        "the owner role's URL on a worker": ("prod", mutated(docs, "Deployment", "syncfleet-worker", lambda d: worker(d)[
            "containers"][0]["env"].append({"name": "SYNCFLEET__DATABASE__OWNER_URL", "valueFrom": {
                "secretKeyRef": {"name": "syncfleet-secrets", "key": "database-owner-url"}}}))),
        "a producer without its migrate init container": ("prod", mutated(docs, "Deployment", "syncfleet-producer",
                                                                          lambda d: worker(d).pop("initContainers"))),
        "a migration Job": ("prod", docs + [{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "syncfleet-migrate"},
                                             "spec": {"template": {"spec": {"containers": []}}}}]),
    }
    failed = 0
    for what, (overlay, case) in cases.items():
        errors.clear()
        check_docs(overlay, case)
        if not errors:
            print(f"SELF-TEST FAILED: {what} was not refused")
            failed += 1
    keda = "deploy/k8s/components/keda/scaledobject.yaml"
    api = "deploy/k8s/components/keda-producer-api/scaledobject.yaml"
    sources = {
        "a namespace written in the trigger's PromQL": (keda, lambda t: t.replace(
            f'namespace="{NAMESPACE_PLACEHOLDER}"', 'namespace="syncfleet"')),
        "a Prometheus address written in the component": (keda, lambda t: t.replace(
            f"serverAddress: {SET_BY_OVERLAY}", "serverAddress: http://prometheus-operated.monitoring.svc:9090")),
        "a namespace written in the producer's address": (api, lambda t: t.replace(
            f"syncfleet-producer.{NAMESPACE_PLACEHOLDER}.svc", "syncfleet-producer.syncfleet-dev.svc")),
    }
    for what, (rel, change) in sources.items():
        errors.clear()
        text = (ROOT / rel).read_text()
        check_source(rel, change(text))
        if not errors or change(text) == text:
            print(f"SELF-TEST FAILED: {what} was not refused")
            failed += 1
    cases.update(sources)
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
        check_docs(path.stem, [d for d in yaml.safe_load_all(path.read_text()) if d])
    check_sources()
    check_image()
    for e in errors:
        print(f"ERROR {e}")
    if errors:
        return 1
    print(f"manifests ok: {', '.join(p.stem for p in paths)}; sources and image ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
