"""The connection budget holds in the rendered manifests: the worst case at the prod overlay's
maximum scale (HPA/KEDA maxima plus the rolling update's surge, times each pod's pool) fits the
stated ``max_connections``, with and without ``k8s/components/pgbouncer``; the README's table
shows the same numbers (shared/infra/db_budget.py says where each comes from)."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.infra import db_budget
from shared.infra.db_budget import DeploymentScale, surge_pods, total_connections
from tests.ops.test_ops_k8s import K8S, REPO, kustomize, parse, rendered

APP_COMPONENTS = {"service", "worker"}


def _env(container: dict[str, Any], config: dict[str, str]) -> dict[str, str]:
    """What the container sees: the ConfigMap (envFrom), overridden by its own ``env``."""
    values = dict(config)
    values.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return values


def deployment_scales(docs: list[dict[str, Any]]) -> list[DeploymentScale]:
    config = next(
        d["data"]
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("fmhl-ops-config")
    )
    maxima: dict[str, int] = {}
    for doc in docs:
        if doc["kind"] == "HorizontalPodAutoscaler":
            maxima[doc["spec"]["scaleTargetRef"]["name"]] = doc["spec"]["maxReplicas"]
        if doc["kind"] == "ScaledObject":
            maxima[doc["spec"]["scaleTargetRef"]["name"]] = doc["spec"]["maxReplicaCount"]
    scales = []
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        if doc["kind"] != "Deployment" or labels.get("app.kubernetes.io/component") not in APP_COMPONENTS:
            continue
        name = doc["metadata"]["name"]
        replicas = maxima.get(name, doc["spec"].get("replicas", 1))
        strategy = doc["spec"].get("strategy", {})
        assert strategy.get("type", "RollingUpdate") == "RollingUpdate", name
        surge = surge_pods(strategy.get("rollingUpdate", {}).get("maxSurge"), replicas)
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        pool = int(_env(container, config).get("DB_POOL_MAX_SIZE", "10"))  # 10: the code's default
        scales.append(DeploymentScale(name, replicas, surge, pool))
    return scales


def pgbouncer_overlay(tmp_path: Path) -> list[dict[str, Any]]:
    """The prod overlay with the pgbouncer component, as an operator would compose them."""
    overlay = tmp_path / "prod-pgbouncer"
    overlay.mkdir()
    relative = Path(os.path.relpath(K8S, overlay))
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: fmhl-ops\n"
        f"resources:\n  - {relative / 'overlays' / 'prod'}\n"
        f"components:\n  - {relative / 'components' / 'pgbouncer'}\n"
    )
    return parse(kustomize(overlay))


def pgbouncer_ini(docs: list[dict[str, Any]]) -> configparser.SectionProxy:
    config = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("fmhl-ops-pgbouncer")
    )
    text = "\n".join(
        line for line in config["data"]["pgbouncer.ini"].splitlines() if not line.startswith("%include")
    )
    parser = configparser.ConfigParser(comment_prefixes=(";",), inline_comment_prefixes=None)
    parser.read_string(text)
    return parser["pgbouncer"]


def test_prod_at_full_scale_fits_max_connections_without_pgbouncer() -> None:
    scales = deployment_scales(rendered("prod"))
    assert {s.name for s in scales} == {
        "fmhl-ops",
        "fmhl-ops-worker-distribute-lead",
        "fmhl-ops-worker-email-send",
        "fmhl-ops-worker-report-export",
        "fmhl-ops-worker-scheduler",
    }
    assert {s.pool_max_size for s in scales} == {db_budget.K8S_POOL_MAX_SIZE}
    by_name = {s.name: s for s in scales}
    # The manifests' maxima the issue names: service 10 (HPA), workers 10 + 10 + 4 (KEDA), scheduler 1.
    assert [by_name[n].max_replicas for n in sorted(by_name)] == [10, 10, 10, 4, 1]
    total = total_connections(scales)
    assert total <= db_budget.APP_CONNECTIONS, (
        f"{total} connections at full scale-out > {db_budget.APP_CONNECTIONS} budgeted for the app"
    )


def test_dev_fits_too() -> None:
    assert total_connections(deployment_scales(rendered("dev"))) <= db_budget.APP_CONNECTIONS


def test_pgbouncer_component_bounds_what_postgres_sees(tmp_path: Path) -> None:
    docs = pgbouncer_overlay(tmp_path)
    ini = pgbouncer_ini(docs)
    assert ini["pool_mode"] == "transaction"
    bouncer = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "fmhl-ops-pgbouncer"
    )
    replicas = bouncer["spec"]["replicas"]
    surge = surge_pods(bouncer["spec"]["strategy"]["rollingUpdate"]["maxSurge"], replicas)
    assert surge == 0, "a surge replica would bring its own server pool"
    assert (replicas, int(ini["max_db_connections"]), int(ini["max_client_conn"])) == (
        db_budget.PGBOUNCER_REPLICAS,
        db_budget.PGBOUNCER_MAX_DB_CONNECTIONS,
        db_budget.PGBOUNCER_MAX_CLIENT_CONN,
    )
    server = db_budget.pgbouncer_server_connections(replicas, int(ini["max_db_connections"]))
    assert server <= db_budget.APP_CONNECTIONS
    scales = deployment_scales(docs)
    assert {s.pool_max_size for s in scales} == {db_budget.K8S_POOL_MAX_SIZE_BEHIND_PGBOUNCER}
    # Clients: every pod's pool at full scale-out, even if the Service sent all to one replica.
    assert total_connections(scales) <= int(ini["max_client_conn"])
    config = next(d["data"] for d in docs if d["metadata"]["name"].startswith("fmhl-ops-config"))
    assert config["DB_STATEMENT_CACHE_SIZE"] == "0"
    service = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "fmhl-ops-pgbouncer"
    )
    assert service["spec"]["ports"][0]["port"] == int(ini["listen_port"])
    assert all(d["metadata"].get("namespace") == "fmhl-ops" for d in docs if d["kind"] != "Namespace")


def test_pgbouncer_component_validates_strictly(tmp_path: Path) -> None:
    docs = [d for d in pgbouncer_overlay(tmp_path) if "pgbouncer" in d["metadata"]["name"]]
    assert {d["kind"] for d in docs} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    import yaml

    manifest = tmp_path / "pgbouncer.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.33.0", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_table_shows_the_computed_budget(tmp_path: Path) -> None:
    """The README's budget table carries the totals this module computes (no stale numbers)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Connection budget") :]
    without = total_connections(deployment_scales(rendered("prod")))
    behind = total_connections(deployment_scales(pgbouncer_overlay(tmp_path)))
    server = db_budget.pgbouncer_server_connections(
        db_budget.PGBOUNCER_REPLICAS, db_budget.PGBOUNCER_MAX_DB_CONNECTIONS
    )
    row = re.search(r"^\| \*\*total\*\* \|.*$", section, re.MULTILINE)
    assert row, "README: the budget table's total row"
    cells = [c.strip().strip("*") for c in row.group(0).strip("|").split("|")]
    assert str(without) in cells and str(behind) in cells, (row.group(0), without, behind)
    assert f"{server} server connections" in section
    assert f"max_connections = {db_budget.POSTGRES_MAX_CONNECTIONS}" in section


@pytest.mark.parametrize(
    "pods, surge, expected", [(10, None, 3), (4, None, 1), (1, None, 1), (10, 1, 1), (10, "50%", 5)]
)
def test_surge_rounds_up_like_kubernetes(pods: int, surge: int | str | None, expected: int) -> None:
    assert surge_pods(surge, pods) == expected
