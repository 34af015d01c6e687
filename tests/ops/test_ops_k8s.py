"""Kubernetes manifests: both overlays render, validate offline for two Kubernetes versions, and
the pieces fit together (selectors, ports, probes, autoscaling targets, monitoring, config).

kubernetes-validate has no schemas for CRDs; the kinds it may skip are listed in CRD_KINDS and
checked by the tests below instead. Any other skipped kind fails the test.
"""

from __future__ import annotations

import asyncio
import functools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.infra.config import load_settings
from shared.infra.metrics import Metrics
from shared.jobs.queues import ALL_QUEUES, JOB_QUEUES

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
RULES_FILE = REPO / "alerts" / "prometheus-rules.yml"
OVERLAYS = {"dev": "fmhl-ops-dev", "prod": "fmhl-ops"}  # overlay -> namespace
# Two minor versions, both shipped offline with kubernetes-validate (`--help` lists the default).
K8S_VERSIONS = ("1.30.0", "1.33.0")
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject"}
WORKLOAD_KINDS = {"Deployment", "Job"}
SERVICE_NAME = "fmhl-ops"
IMAGE = "fmhl-ops"
UID = 10001
MONITORING_PEER = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
CONFIG_KEYS = {
    "LOG_LEVEL",
    "LOG_FORMAT",
    "DLQ_RETENTION_DAYS",
    "RECONCILE_AUTO_CORRECT_MAX",
    "HEALTH_CHECK_TIMEOUT_SECONDS",
    "SESSION_TTL_SECONDS",
}
SECRET_KEYS = {"DATABASE_URL", "REDIS_URL", "MFA_ENCRYPTION_KEY"}


def k8s_name(queue: str) -> str:
    return queue.replace("_", "-")


def worker_deployment(queue: str) -> str:
    return f"fmhl-ops-worker-{k8s_name(queue)}"


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def rendered_text(overlay: str) -> str:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@functools.cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    """Parsed documents, cached per session: tests must not mutate them."""
    return [doc for doc in yaml.load_all(rendered_text(overlay), Loader=_LOADER) if doc]


def of_kind(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in rendered(overlay) if doc["kind"] == kind]


def by_name(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in of_kind(overlay, kind)}


def workloads(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in rendered(overlay) if doc["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used (and understood here)"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def container_ports(workload: dict[str, Any]) -> dict[str, int]:
    return {
        p["name"]: p["containerPort"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])
    }


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def load_rules() -> dict[str, Any]:
    return yaml.safe_load(RULES_FILE.read_text())


def alert_expr(name: str) -> str:
    (rule,) = [r for g in load_rules()["groups"] for r in g["rules"] if r.get("alert") == name]
    return rule["expr"]


@functools.cache
def service_route_paths() -> frozenset[str]:
    """Route paths of the real Starlette app (nothing is dialled at construction)."""
    from starlette.routing import Mount

    from service.app import create_app

    settings = load_settings(
        {"DATABASE_URL": "postgresql://u@localhost/db", "REDIS_URL": "redis://localhost/0"}
    )
    app = create_app(settings)

    def walk(routes: list[Any], prefix: str = "") -> set[str]:
        paths: set[str] = set()
        for route in routes:
            if isinstance(route, Mount):
                paths |= walk(route.routes, prefix + route.path)
            else:
                paths.add(prefix + route.path)
        return paths

    return frozenset(walk(app.routes))


@functools.cache
def worker_facts() -> dict[str, tuple[int, frozenset[str]]]:
    """queue -> (job_completion_wait, probe paths) from the real worker objects.

    FmhlWorker derives job_completion_wait from its longest job timeout; the probe server is what
    ``fmhl-ops worker`` serves on WORKER_METRICS_PORT. Building them dials nothing.
    """
    from worker.fmhl_worker import build_worker
    from worker.process import probe_app_for

    async def build() -> dict[str, tuple[int, frozenset[str]]]:
        facts = {}
        for queue in ALL_QUEUES:
            worker = build_worker(queue, load_settings({}), redis=object(), handle_signals=False)
            probe = probe_app_for(worker)
            paths = frozenset(getattr(route, "path", "") for route in probe.routes)
            facts[queue] = (int(worker._job_completion_wait), paths)
        return facts

    return asyncio.run(build())


# --- Rendering and schema validation ------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_into_its_namespace(overlay: str) -> None:
    docs = rendered(overlay)
    assert docs
    namespace = OVERLAYS[overlay]
    for doc in docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace
            assert doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']}/{doc['metadata']['name']}"


_SKIPPED = re.compile(r"^WARN .*Couldn't find schema for kind (\S+) with api version")
_PASSED = re.compile(r"^INFO .* passed for resource (\S+) against version (\S+)$")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered_text(overlay))
    versions = [arg for version in K8S_VERSIONS for arg in ("-k", version)]
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *versions, str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    # Only the lines that are not "passed" are worth showing on failure.
    report = "\n".join(line for line in lines if not _PASSED.match(line))
    assert result.returncode == 0, report
    assert not [line for line in lines if line.startswith(("ERROR", "FATAL"))], report
    skipped = {m.group(1) for line in lines if (m := _SKIPPED.match(line))}
    assert skipped <= CRD_KINDS, f"kinds skipped without a schema: {sorted(skipped - CRD_KINDS)}"
    unexplained = [line for line in lines if not _SKIPPED.match(line) and not _PASSED.match(line)]
    assert not unexplained, report
    passed = [m.groups() for line in lines if (m := _PASSED.match(line))]
    checked = [doc for doc in rendered(overlay) if doc["kind"] not in CRD_KINDS]
    assert len(passed) == len(checked) * len(K8S_VERSIONS), report
    assert {version for _, version in passed} == {v.rsplit(".", 1)[0] for v in K8S_VERSIONS}


# --- Pods ------------------------------------------------------------------------------------------


def _assert_restricted_container(where: str, container: dict[str, Any]) -> None:
    ctx = container.get("securityContext", {})
    assert ctx.get("allowPrivilegeEscalation") is False, where
    assert ctx.get("readOnlyRootFilesystem") is True, where
    assert ctx.get("runAsNonRoot") is True, where
    assert ctx.get("privileged", False) is False, where
    assert ctx.get("capabilities") == {"drop": ["ALL"]}, where
    assert ctx.get("seccompProfile", {"type": "RuntimeDefault"}) == {"type": "RuntimeDefault"}, where
    assert {"mountPath": "/tmp", "name": "tmp"} in container.get("volumeMounts", []), f"{where}: /tmp"
    resources = container.get("resources", {})
    assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{where}: requests"
    assert "memory" in resources.get("limits", {}), f"{where}: memory limit"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_restricted_pod_security_standard(overlay: str) -> None:
    for workload in workloads(overlay):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == UID and ctx["runAsGroup"] == UID, where
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), where
        assert spec["automountServiceAccountToken"] is False, where
        tmp = [v for v in spec["volumes"] if v["name"] == "tmp"]
        assert tmp and "emptyDir" in tmp[0], f"{where}: /tmp must be an emptyDir"
        for volume in spec["volumes"]:
            assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret", "projected"}, where
        for container in spec.get("initContainers", []) + spec["containers"]:
            _assert_restricted_container(f"{where}/{container['name']}", container)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_image_for_every_process(overlay: str) -> None:
    images = {c["image"] for w in workloads(overlay) for c in pod_spec(w)["containers"]}
    assert len(images) == 1, images
    (image,) = images
    repository, _, tag = image.rpartition(":")
    assert repository.rsplit("/", 1)[-1] == IMAGE, image
    if overlay == "prod":
        assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"prod must pin a release tag, not {tag!r}"


def _probe(container: dict[str, Any], kind: str) -> tuple[str, str]:
    http = container[kind]["httpGet"]
    return http["path"], http["port"]


def _assert_sane_probe(where: str, probe: dict[str, Any]) -> None:
    assert 1 <= probe["timeoutSeconds"] <= probe["periodSeconds"], where
    assert probe["failureThreshold"] >= 2, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_deployment(overlay: str) -> None:
    deployment = by_name(overlay, "Deployment")[SERVICE_NAME]
    (container,) = pod_spec(deployment)["containers"]
    assert container["args"][0] == "serve"
    assert container_ports(deployment) == {"http": 8000, "metrics": 9090}
    assert env_of(container)["METRICS_PORT"] == "9090"
    assert _probe(container, "livenessProbe") == ("/health/live", "http")
    assert _probe(container, "readinessProbe") == ("/health/ready", "http")
    assert _probe(container, "startupProbe") == ("/health/live", "http")
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        _assert_sane_probe(kind, container[kind])
    # Readiness runs its dependency checks with HEALTH_CHECK_TIMEOUT_SECONDS each, concurrently.
    (config,) = of_kind(overlay, "ConfigMap")
    assert container["readinessProbe"]["timeoutSeconds"] > float(
        config["data"]["HEALTH_CHECK_TIMEOUT_SECONDS"]
    )
    pre_stop = container["lifecycle"]["preStop"]
    sleep = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else int(pre_stop["exec"]["command"][-1])
    assert pre_stop.get("exec", {}).get("command", ["sleep"])[0] == "sleep"
    assert 0 < sleep < pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert "replicas" not in deployment["spec"], "the HPA owns the service's replica count"


def test_probe_paths_exist_in_the_code() -> None:
    routes = service_route_paths()
    assert {"/health/live", "/health/ready", "/metrics", "/openapi.json"} <= routes
    facts = worker_facts()
    for overlay in OVERLAYS:
        for workload in workloads(overlay):
            for container in pod_spec(workload)["containers"]:
                paths = {container[k]["httpGet"]["path"] for k in container if k.endswith("Probe")}
                if workload["metadata"]["name"] == SERVICE_NAME:
                    assert paths <= routes, paths - routes
                elif paths:
                    queue = container["args"][1]
                    assert paths <= facts[queue][1], f"{queue}: {paths - facts[queue][1]}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_deployments(overlay: str) -> None:
    deployments = by_name(overlay, "Deployment")
    facts = worker_facts()
    expected = {worker_deployment(queue) for queue in ALL_QUEUES}
    assert expected <= set(deployments), expected - set(deployments)
    assert set(deployments) == expected | {SERVICE_NAME}
    for queue in ALL_QUEUES:
        deployment = deployments[worker_deployment(queue)]
        (container,) = pod_spec(deployment)["containers"]
        assert container["args"] == ["worker", queue]
        assert env_of(container)["WORKER_METRICS_PORT"] == "9100"
        assert container_ports(deployment) == {"metrics": 9100}
        assert _probe(container, "livenessProbe") == ("/health/live", "metrics")
        _assert_sane_probe(queue, container["livenessProbe"])
        assert pod_labels(deployment)["fmhl.io/worker"] == k8s_name(queue)
        grace, wait = pod_spec(deployment)["terminationGracePeriodSeconds"], facts[queue][0]
        assert grace > wait, f"{queue}: grace {grace}s must exceed job_completion_wait {wait}s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migration_job(overlay: str) -> None:
    (job,) = of_kind(overlay, "Job")
    (container,) = pod_spec(job)["containers"]
    assert container["args"] == ["migrate"]
    assert pod_spec(job)["restartPolicy"] in {"Never", "OnFailure"}
    assert job["spec"]["backoffLimit"] >= 1


# --- Configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_secret(overlay: str) -> None:
    (config,) = of_kind(overlay, "ConfigMap")
    assert set(config["data"]) == CONFIG_KEYS
    assert config["data"]["LOG_FORMAT"] == "json"
    secrets = by_name(overlay, "Secret")
    if overlay == "dev":
        assert set(secrets["fmhl-ops-secrets"]["stringData"]) == SECRET_KEYS
        secret = secrets["fmhl-ops-secrets"]["stringData"]
    else:
        assert not secrets, "prod secrets are managed out of band, never rendered"
        secret = {"DATABASE_URL": "postgresql://u@db/fmhl", "REDIS_URL": "redis://redis/0"}
        secret["MFA_ENCRYPTION_KEY"] = "Zm1obC1kZXYtb25seS1OT1QtQS1TRUNSRVQta2V5ISE="
    for workload in workloads(overlay):
        for container in pod_spec(workload)["containers"]:
            refs = container["envFrom"]
            assert {"configMapRef": {"name": config["metadata"]["name"]}} in refs
            assert {"secretRef": {"name": "fmhl-ops-secrets"}} in refs
            # What the process would see parses with the real settings loader.
            load_settings({**config["data"], **secret, **env_of(container)})


# --- Service, disruption budgets, autoscaling -------------------------------------------------


def _pods_selected(overlay: str, selector: dict[str, Any]) -> list[str]:
    return [w["metadata"]["name"] for w in workloads(overlay) if selects(selector, pod_labels(w))]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_selects_the_service_pods_and_ports(overlay: str) -> None:
    service = by_name(overlay, "Service")[SERVICE_NAME]
    assert _pods_selected(overlay, {"matchLabels": service["spec"]["selector"]}) == [SERVICE_NAME]
    ports = container_ports(by_name(overlay, "Deployment")[SERVICE_NAME])
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "http": (8000, "http"),
        "metrics": (9090, "metrics"),
    }
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_disruption_budgets(overlay: str) -> None:
    covered = []
    for pdb in of_kind(overlay, "PodDisruptionBudget"):
        selected = _pods_selected(overlay, pdb["spec"]["selector"])
        assert len(selected) == 1, f"{pdb['metadata']['name']} selects {selected}"
        assert pdb["spec"].get("maxUnavailable") == 1
        covered += selected
    assert set(covered) == {SERVICE_NAME} | {worker_deployment(q) for q in JOB_QUEUES}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_targets_the_service(overlay: str) -> None:
    (hpa,) = of_kind(overlay, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", SERVICE_NAME)
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_keda_scaled_objects_target_the_queue_workers() -> None:
    deployments = by_name("prod", "Deployment")
    known = set(Metrics().names())
    scaled = by_name("prod", "ScaledObject")
    assert set(scaled) == {worker_deployment(q) for q in JOB_QUEUES}, "one ScaledObject per job queue"
    for queue in JOB_QUEUES:
        spec = scaled[worker_deployment(queue)]["spec"]
        target = spec["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment" and target["name"] in deployments
        assert "replicas" not in deployments[target["name"]]["spec"], "KEDA owns the replica count"
        # A queue with no worker has no heartbeat (WorkerHeartbeatMissing): never scale to zero.
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        metrics_used = set()
        for trigger in spec["triggers"]:
            assert trigger["type"] == "prometheus"
            query, threshold = trigger["metadata"]["query"], trigger["metadata"]["threshold"]
            assert float(threshold) > 0
            assert f'queue="{queue}"' in query and f'namespace="{OVERLAYS["prod"]}"' in query, query
            metrics_used |= set(re.findall(r"fmhl_[a-z_]+", query))
        assert metrics_used == {"fmhl_queue_oldest_job_age_seconds", "fmhl_queue_depth"}
        assert metrics_used <= known
    assert not of_kind("dev", "ScaledObject")


# --- Network and monitoring ---------------------------------------------------------------------


def _rule_reaches_metrics(rule: dict[str, Any], ports: dict[str, int]) -> bool:
    if "ports" not in rule:
        return True
    return any(p["port"] == "metrics" or p["port"] == ports.get("metrics") for p in rule["ports"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_monitoring_reaches_the_metrics_ports(overlay: str) -> None:
    policies = of_kind(overlay, "NetworkPolicy")
    for workload in workloads(overlay):
        ports = container_ports(workload)
        labels = pod_labels(workload)
        mine = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert mine and all("Ingress" in p["spec"]["policyTypes"] for p in mine), workload["metadata"]["name"]
        for policy in mine:
            for rule in policy["spec"].get("ingress", []):
                for port in rule.get("ports", []):
                    assert port["port"] in ports, f"{policy['metadata']['name']}: no port {port['port']}"
                if "metrics" in ports and _rule_reaches_metrics(rule, ports):
                    assert rule.get("from") == MONITORING_PEER, policy["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor(overlay: str) -> None:
    (monitor,) = of_kind(overlay, "ServiceMonitor")
    service = by_name(overlay, "Service")[SERVICE_NAME]
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    others = [s for s in of_kind(overlay, "Service") if s["metadata"]["name"] != SERVICE_NAME]
    assert not [s for s in others if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] == "metrics" and endpoint["port"] in service_ports
        assert endpoint["path"] in service_route_paths()
    # Targets are labelled job=<Service name>: the job HealthCheckFailing watches.
    assert f'up{{job="{service["metadata"]["name"]}"}}' in alert_expr("HealthCheckFailing")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_monitor(overlay: str) -> None:
    (monitor,) = of_kind(overlay, "PodMonitor")
    selected = _pods_selected(overlay, monitor["spec"]["selector"])
    assert set(selected) == {worker_deployment(q) for q in ALL_QUEUES}
    deployments = by_name(overlay, "Deployment")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for name in selected:
        assert endpoint["port"] in container_ports(deployments[name])
    (job_rule,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
    assert job_rule["sourceLabels"] == ["__meta_kubernetes_pod_label_fmhl_io_worker"]
    jobs = {
        job_rule["replacement"].replace("$1", pod_labels(deployments[n])["fmhl.io/worker"]) for n in selected
    }
    # WorkerHeartbeatMissing names each worker's job in absent(): they must be the scrape jobs.
    expr = alert_expr("WorkerHeartbeatMissing")
    assert set(re.findall(r'absent\(up\{job="([^"]+)"\}\)', expr)) == jobs
    assert all(re.fullmatch(r"fmhl-ops-worker-.*", job) for job in jobs)


def test_prometheus_rule_is_the_rules_file() -> None:
    generated = yaml.safe_load((K8S / "base" / "prometheus-rule.yaml").read_text())
    assert generated["spec"]["groups"] == load_rules()["groups"], (
        "k8s/base/prometheus-rule.yaml is stale: run .venv/bin/python k8s/render_prometheus_rule.py"
    )
    check = subprocess.run(
        [sys.executable, str(K8S / "render_prometheus_rule.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for overlay in OVERLAYS:
        (rule,) = of_kind(overlay, "PrometheusRule")
        assert rule["spec"]["groups"] == load_rules()["groups"]
