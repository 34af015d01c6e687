"""Kubernetes manifests: both overlays render, validate offline for two Kubernetes versions, and
the pieces fit together (selectors, ports, probes, autoscaling targets, monitoring, config).

Layout: ``k8s/base`` holds built-in kinds only, so it applies to a plain cluster; custom resources
(prometheus-operator, KEDA, AlertmanagerConfig) and the Grafana dashboard are kustomize components
in ``k8s/components`` that overlays opt into. Rendering uses the real kustomize inside ``kubectl``
(``kubectl kustomize``; kustomize v5 on this machine kind), a missing kubectl fails the tests.

kubernetes-validate has no schemas for CRDs; the kinds it may skip are listed in CRD_KINDS and
checked by the tests below instead. Any other skipped kind fails the test.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.infra.config import load_settings
from shared.infra.metrics import Metrics
from shared.jobs.queues import ALL_QUEUES, JOB_QUEUES

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
COMPONENTS_DIR = K8S / "components"
RULES_FILE = REPO / "alerts" / "prometheus-rules.yml"
DASHBOARD_FILE = REPO / "dashboards" / "fmhl-ops.json"
OVERLAYS = {"dev": "fmhl-ops-dev", "prod": "fmhl-ops"}  # overlay -> namespace
# Two minor versions, both shipped offline with kubernetes-validate (`--help` lists the default).
K8S_VERSIONS = ("1.30.0", "1.33.0")
# component -> the kinds it adds; the custom resources live in components only.
COMPONENT_KINDS = {
    "prometheus-operator": {"ServiceMonitor", "PodMonitor", "PrometheusRule"},
    "alertmanager-config": {"AlertmanagerConfig"},
    "keda": {"ScaledObject"},
    "grafana-dashboard": {"ConfigMap"},
    # Built-in kinds only; no overlay opts in (it needs an out-of-band Secret; README "PgBouncer").
    "pgbouncer": {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"},
}
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject", "AlertmanagerConfig"}
# overlay -> the components it opts into (dev: none that needs a CRD, so it applies to a plain cluster)
OVERLAY_COMPONENTS = {"dev": {"grafana-dashboard"}, "prod": set(COMPONENT_KINDS) - {"pgbouncer"}}
WORKLOAD_KINDS = {"Deployment"}
SERVICE_NAME = "fmhl-ops"
IMAGE = "fmhl-ops"
UID = 10001
MONITORING_PEER = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
CONFIG_KEYS = {
    "DB_POOL_MAX_SIZE",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "DLQ_RETENTION_DAYS",
    "RECONCILE_AUTO_CORRECT_MAX",
    "HEALTH_CHECK_TIMEOUT_SECONDS",
    "SESSION_TTL_SECONDS",
    "CONSOLE_IDLE_TIMEOUT_SECONDS",
    "FORWARDED_ALLOW_IPS",
}
SECRET_KEYS = {"DATABASE_URL", "REDIS_URL", "MFA_ENCRYPTION_KEY"}


def k8s_name(queue: str) -> str:
    return queue.replace("_", "-")


def worker_deployment(queue: str) -> str:
    return f"fmhl-ops-worker-{k8s_name(queue)}"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML 1.2 reads a bare ``=`` (kustomize's ``matchType: =``) as a string; PyYAML's 1.1
    "value" tag would refuse it."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))
_LOADER = _Loader


def kustomize(directory: Path) -> str:
    """``kubectl kustomize`` with the default load restrictor, exactly what ``kubectl apply -k`` reads."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not found: the k8s tests render with `kubectl kustomize` (kustomize v5)"
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return result.stdout


def parse(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc]


@functools.cache
def rendered_text(overlay: str) -> str:
    return kustomize(K8S / "overlays" / overlay)


@functools.cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    """Parsed documents, cached per session: tests must not mutate them."""
    return parse(rendered_text(overlay))


@functools.cache
def rendered_base() -> list[dict[str, Any]]:
    return parse(kustomize(K8S / "base"))


def kustomization(directory: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return doc


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


def all_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    containers: list[dict[str, Any]] = spec.get("initContainers", []) + spec["containers"]
    return containers


def app_config(overlay: str) -> dict[str, Any]:
    """The settings ConfigMap (the other ConfigMap is the dashboard)."""
    (config,) = [
        c for c in of_kind(overlay, "ConfigMap") if c["metadata"]["name"].startswith("fmhl-ops-config")
    ]
    return config


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
    # Only the opted-in components bring custom resources; dev has none, so it applies to a cluster
    # without any CRD installed.
    opted_in = {kind for component in OVERLAY_COMPONENTS[overlay] for kind in COMPONENT_KINDS[component]}
    assert skipped == opted_in & CRD_KINDS, report
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
    images = {c["image"] for w in workloads(overlay) for c in all_containers(w)}
    assert len(images) == 1, images
    (image,) = images
    repository, _, tag = image.rpartition(":")
    assert repository.rsplit("/", 1)[-1] == IMAGE, image
    if overlay == "prod":
        assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"prod must pin a release tag, not {tag!r}"
        assert tag == project_version(), f"prod runs {tag}, the package is {project_version()}"


def project_version() -> str:
    version: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


def _image_problem(image: str) -> str | None:
    """Why an image reference is not pinned (None if it is): a tag other than latest, or a digest."""
    if "@sha256:" in image:
        return None
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag at all ("registry:5000/x" has a colon but no tag)
        return f"{image}: untagged (means latest)"
    if tag == "latest":
        return f"{image}: latest"
    return None


def test_no_latest_or_untagged_images_anywhere() -> None:
    """A re-apply must not change what runs: base, every overlay, every container, init included."""
    sources = {"base": rendered_base(), **{overlay: rendered(overlay) for overlay in OVERLAYS}}
    for where, docs in sources.items():
        for workload in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
            for container in all_containers(workload):
                problem = _image_problem(container["image"])
                assert problem is None, (
                    f"{where} {workload['metadata']['name']}/{container['name']}: {problem}"
                )
    base_tags = {
        c["image"].rpartition(":")[2]
        for w in rendered_base()
        if w["kind"] in WORKLOAD_KINDS
        for c in all_containers(w)
    }
    assert base_tags == {project_version()}, f"the base pins the package version, not {base_tags}"
    for path in sorted(K8S.rglob("kustomization.yaml")):
        for entry in kustomization(path.parent).get("images", []):
            assert entry.get("newTag") != "latest" and (entry.get("newTag") or entry.get("digest")), (
                f"{path.relative_to(REPO)}: images entry {entry} must pin a tag or a digest"
            )


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
    config = app_config(overlay)
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
def test_every_pod_migrates_first(overlay: str) -> None:
    """No Job (its pod template is immutable: a re-apply of a changed Job fails). Every pod runs
    `fmhl-ops migrate` as its only init container, with its own image and configuration; the
    migrator is idempotent and advisory-locked, so concurrent pods take turns."""
    assert not [d for d in rendered(overlay) if d["kind"] in {"Job", "CronJob"}]
    assert {d["kind"] for d in rendered(overlay)} >= {"Deployment"}
    for workload in workloads(overlay):
        where = workload["metadata"]["name"]
        (init,) = pod_spec(workload)["initContainers"]
        (main,) = pod_spec(workload)["containers"]
        assert init["args"] == ["migrate"], where
        assert "command" not in init, f"{where}: the image's entrypoint is the fmhl-ops CLI"
        assert init["image"] == main["image"], where
        assert init["envFrom"] == main["envFrom"], f"{where}: migrate needs the same DATABASE_URL"
        assert not any(k.endswith("Probe") for k in init), where


def test_migrate_is_a_cli_command() -> None:
    cli = Path(sys.executable).with_name("fmhl-ops")
    result = subprocess.run([str(cli), "migrate", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_secret(overlay: str) -> None:
    config = app_config(overlay)
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
        for container in all_containers(workload):
            refs = container["envFrom"]
            assert {"configMapRef": {"name": config["metadata"]["name"]}} in refs
            assert {"secretRef": {"name": "fmhl-ops-secrets"}} in refs
            # What the process would see parses with the real settings loader.
            load_settings({**config["data"], **secret, **env_of(container)})


def _base_literal(name: str) -> str:
    """The value of ``name`` in the base settings ConfigMap's literals (the one place it is set)."""
    (generator,) = [
        g for g in kustomization(K8S / "base")["configMapGenerator"] if g["name"] == "fmhl-ops-config"
    ]
    (value,) = [item.split("=", 1)[1] for item in generator["literals"] if item.startswith(name + "=")]
    return str(value)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_http_pod_trusts_the_ingress_for_forwarded_headers(overlay: str) -> None:
    """Without FORWARDED_ALLOW_IPS uvicorn trusts only 127.0.0.1, so behind an ingress every client
    has the ingress's address and shares its per-IP login limit (issue 16 §2)."""
    import ipaddress

    from shared.infra.http_server import build_uvicorn, probe_app

    documented = _base_literal("FORWARDED_ALLOW_IPS")
    for item in documented.split(","):
        ipaddress.ip_network(item.strip())  # IPs or CIDRs only: never "*"
    readme = (REPO / "README.md").read_text()
    assert f"FORWARDED_ALLOW_IPS={documented}" in readme or f"`{documented}`" in readme
    assert rendered_text(overlay).count("FORWARDED_ALLOW_IPS") == 1, "set once, in the settings ConfigMap"
    config = app_config(overlay)
    serving = 0
    for workload in workloads(overlay):
        for container in pod_spec(workload)["containers"]:
            if not container.get("ports"):
                continue
            serving += 1
            refs = [r["configMapRef"]["name"] for r in container.get("envFrom", []) if "configMapRef" in r]
            assert config["metadata"]["name"] in refs, workload["metadata"]["name"]
            environment = {**config["data"], **env_of(container)}
            assert environment.get("FORWARDED_ALLOW_IPS") == documented, workload["metadata"]["name"]
            # and uvicorn, started with that environment, trusts exactly those addresses
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("FORWARDED_ALLOW_IPS", environment["FORWARDED_ALLOW_IPS"])
                server = build_uvicorn(probe_app(_no_metrics), "127.0.0.1", 0, lifespan="off")
            assert server.config.forwarded_allow_ips == documented and server.config.proxy_headers
    assert serving >= 1 + len(ALL_QUEUES)


async def _no_metrics() -> Any:
    raise AssertionError("not called")


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
    assert deployments[worker_deployment("scheduler")]["spec"]["replicas"] == 1, "one scheduler, not scaled"
    # Without the keda component nothing else sets the workers' replica count: the base keeps it.
    assert not of_kind("dev", "ScaledObject")
    for name, deployment in by_name("dev", "Deployment").items():
        if name != SERVICE_NAME:
            assert deployment["spec"]["replicas"] >= 1, name


def test_keda_queries_follow_the_overlay_namespace(tmp_path: Path) -> None:
    """The keda component takes the namespace of its PromQL from the overlay's Namespace."""
    docs = parse(kustomize(write_overlay(tmp_path, "fmhl-staging", ["keda"])))
    queries = [
        t["metadata"]["query"] for d in docs if d["kind"] == "ScaledObject" for t in d["spec"]["triggers"]
    ]
    assert len(queries) == 2 * len(JOB_QUEUES)
    assert all('{namespace="fmhl-staging",queue="' in query for query in queries), queries


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


MONITORED = [overlay for overlay in OVERLAYS if "prometheus-operator" in OVERLAY_COMPONENTS[overlay]]


@pytest.mark.parametrize("overlay", MONITORED)
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


@pytest.mark.parametrize("overlay", MONITORED)
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
    generated = yaml.safe_load((COMPONENTS_DIR / "prometheus-operator" / "prometheus-rule.yaml").read_text())
    assert generated["spec"]["groups"] == load_rules()["groups"], (
        "the PrometheusRule is stale: run .venv/bin/python k8s/render.py"
    )
    for overlay in MONITORED:
        (rule,) = of_kind(overlay, "PrometheusRule")
        assert rule["spec"]["groups"] == load_rules()["groups"]


def test_generated_component_files_are_current() -> None:
    """PrometheusRule, AlertmanagerConfig and the dashboard copy match their sources."""
    check = subprocess.run(
        [sys.executable, str(K8S / "render.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


# --- Layout: base, components, overlays --------------------------------------------------------

BUILTIN_API_VERSIONS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}


def test_base_has_only_built_in_kinds_and_no_job() -> None:
    docs = rendered_base()
    kinds = {d["kind"] for d in docs}
    assert not kinds & CRD_KINDS, f"custom resources belong in components: {kinds & CRD_KINDS}"
    assert {d["apiVersion"] for d in docs} <= BUILTIN_API_VERSIONS, {d["apiVersion"] for d in docs}
    assert "Job" not in kinds and "CronJob" not in kinds
    assert kustomization(K8S / "base").get("components") is None, "the base opts into nothing"


def test_components_are_kustomize_components_holding_the_custom_resources() -> None:
    found = {path.name for path in COMPONENTS_DIR.iterdir() if path.is_dir()}
    assert found == set(COMPONENT_KINDS), found
    for name in COMPONENT_KINDS:
        doc = kustomization(COMPONENTS_DIR / name)
        assert (doc["apiVersion"], doc["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component"), name
        for resource in doc.get("resources", []):
            path = COMPONENTS_DIR / name / resource
            assert path.is_file(), f"{name}: {resource} (components hold their own files)"
            for item in yaml.safe_load_all(path.read_text()):
                if item:
                    assert item["kind"] in COMPONENT_KINDS[name], f"{name}: {item['kind']}"
    every_crd = {kind for kinds in COMPONENT_KINDS.values() for kind in kinds} & CRD_KINDS
    assert every_crd == CRD_KINDS, "every custom resource kind lives in a component"


def write_overlay(root: Path, namespace: str, components: list[str]) -> Path:
    """A throwaway overlay: a Namespace, the base and the given components."""
    root.mkdir(parents=True, exist_ok=True)
    namespace_doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    (root / "namespace.yaml").write_text(yaml.safe_dump(namespace_doc))
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        # kustomize wants relative paths; directories outside the root are allowed.
        "resources": ["namespace.yaml", os.path.relpath(K8S / "base", root)],
        "components": [os.path.relpath(COMPONENTS_DIR / name, root) for name in components],
    }
    (root / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return root


@pytest.mark.parametrize("component", sorted(COMPONENT_KINDS))
def test_each_component_builds_on_the_base_alone(component: str, tmp_path: Path) -> None:
    """A component composes with the base by itself: an overlay may pick any subset."""
    docs = parse(kustomize(write_overlay(tmp_path, "fmhl-ops", [component])))
    base = {(d["kind"], d["metadata"]["name"]) for d in rendered_base()}
    added = {(d["kind"], d["metadata"]["name"]) for d in docs} - base - {("Namespace", "fmhl-ops")}
    assert added, f"{component} adds nothing"
    assert {kind for kind, _ in added} <= COMPONENT_KINDS[component], added


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_opt_into_components(overlay: str) -> None:
    doc = kustomization(K8S / "overlays" / overlay)
    listed = {Path(path).name for path in doc.get("components", [])}
    assert listed == OVERLAY_COMPONENTS[overlay]
    for path in doc.get("components", []):
        assert (K8S / "overlays" / overlay / path).resolve().parent == COMPONENTS_DIR.resolve(), path
    kinds = {d["kind"] for d in rendered(overlay)}
    for component in COMPONENT_KINDS:
        crds = COMPONENT_KINDS[component] & CRD_KINDS
        if component in OVERLAY_COMPONENTS[overlay]:
            assert crds <= kinds, f"{overlay} opts into {component} but renders no {crds}"
        else:
            assert not crds & kinds, f"{overlay} renders {crds & kinds} without opting into {component}"


# Client-side `kubectl apply` keeps the whole object in the last-applied-configuration
# annotation, and all annotations of an object together may hold 256 KiB.
ANNOTATION_LIMIT = 256 * 1024


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_fits_a_client_side_apply(overlay: str) -> None:
    for doc in rendered(overlay):
        size = len(json.dumps(doc, separators=(",", ":")).encode())
        assert size < ANNOTATION_LIMIT // 2, f"{doc['kind']}/{doc['metadata']['name']}: {size} bytes"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grafana_dashboard_config_map(overlay: str) -> None:
    """A ConfigMap for Grafana's sidecar (label grafana_dashboard="1"), with the dashboard file
    byte for byte, under a fixed name (a hash suffix would leave duplicates of the same uid)."""
    (dashboard,) = [c for c in of_kind(overlay, "ConfigMap") if c["metadata"]["name"] == "fmhl-ops-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboard["data"]) == {"fmhl-ops.json"}
    assert dashboard["data"]["fmhl-ops.json"] == DASHBOARD_FILE.read_text()
    copy = COMPONENTS_DIR / "grafana-dashboard" / "fmhl-ops.json"
    assert copy.read_bytes() == DASHBOARD_FILE.read_bytes(), "stale copy: run .venv/bin/python k8s/render.py"
