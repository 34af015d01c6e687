"""Grafana dashboard: structure, and that its queries and the code's metrics agree both ways."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from shared.infra.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboards" / "fmhl-ops.json"
RULES_FILE = REPO / "alerts" / "prometheus-rules.yml"
SCHEMA_VERSION = 39
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Series that exist without our code defining them. Keep this short and explain every entry.
EXTERNAL_METRICS = {
    # Written by Prometheus itself.
    "up",
    # oliver006/redis_exporter, deployed next to Redis: the Redis USE row. fmhl-ops exports no
    # Redis metrics of its own (queues, heartbeats and the DLQ spool are shown from ours).
    "redis_memory_used_bytes",
    "redis_memory_max_bytes",
    "redis_connected_clients",
    "redis_commands_processed_total",
    "redis_rejected_connections_total",
    "redis_evicted_keys_total",
    "redis_up",
}
# Code metrics that deliberately have no panel, with the reason. Empty today: every metric is shown.
NOT_ON_DASHBOARD: dict[str, str] = {}

REQUIRED_ROWS = (
    "SLOs",
    "HTTP (RED)",
    "Jobs (RED)",
    "Queues (USE)",
    "Database pool (USE)",
    "Redis (USE",
    "Dead-letter queue",
    "Cron",
    "Domain",
)

# PromQL words that are not metric names when they are not followed by "(".
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME_MATCHER = re.compile(r'__name__\s*=~?\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"[A-Za-z0-9_.:]+(?=\s*(\(?))")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (enough PromQL for our dashboards and rules)."""
    names = {name for alternation in _NAME_MATCHER.findall(expr) for name in alternation.split("|")}
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = _GROUPING.sub(" ", text)
    for match in _WORD.finditer(text):
        word, call = match.group(0), match.group(1)
        if call or word[0].isdigit() or word[0] == "." or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels of collapsed rows
    return panels


def graph_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in all_panels(dashboard) if panel["type"] != "row"]


def panel_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"]) for panel in graph_panels(dashboard) for target in panel["targets"]
    ]


def code_metrics() -> tuple[set[str], set[str]]:
    """(base names, histogram base names) from shared.infra.metrics."""
    metrics = Metrics()
    names = set(metrics.names())
    histograms = {name for name in names if type(metrics.registry.collectors[name]).__name__ == "Histogram"}
    return names, histograms


def recording_rules() -> set[str]:
    rules = yaml.safe_load(RULES_FILE.read_text())
    return {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}


def test_metric_name_parser() -> None:
    expr = (
        'sum by (queue) (rate(fmhl_a_total{queue=~"$queue",x="y z"}[$__rate_interval])) / '
        'sum by (queue) (rate({__name__=~"fmhl_b_total|fmhl_c_total"}[5m])) > 0.05 and on (queue) '
        "fmhl:rule:ratio_rate5m offset 1h * 60 > bool 2 or vector(1) unless time() - up"
    )
    assert metric_names(expr) == {
        "fmhl_a_total",
        "fmhl_b_total",
        "fmhl_c_total",
        "fmhl:rule:ratio_rate5m",
        "up",
    }


def test_dashboard_identity_and_schema() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "fmhl-ops"
    assert dashboard["schemaVersion"] == SCHEMA_VERSION
    assert dashboard.get("id") is None, "exported dashboards must not carry a database id"
    assert dashboard["title"]


def test_datasource_is_a_template_variable_used_everywhere() -> None:
    dashboard = load_dashboard()
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == expected, var["name"]
    for panel in graph_panels(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = all_panels(load_dashboard())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_required_rows_exist() -> None:
    rows = [panel["title"] for panel in load_dashboard()["panels"] if panel["type"] == "row"]
    for required in REQUIRED_ROWS:
        assert any(row.startswith(required) for row in rows), f"missing row {required!r} in {rows}"


def test_every_panel_metric_exists() -> None:
    names, histograms = code_metrics()
    allowed = names | {h + s for h in histograms for s in HISTOGRAM_SUFFIXES} | recording_rules()
    allowed |= EXTERNAL_METRICS
    for title, expr in panel_exprs(load_dashboard()):
        unknown = metric_names(expr) - allowed
        assert not unknown, f"panel {title!r} uses metrics nobody defines: {sorted(unknown)}"


def test_every_code_metric_is_on_the_dashboard() -> None:
    names, histograms = code_metrics()
    used = set().union(*(metric_names(expr) for _, expr in panel_exprs(load_dashboard())))
    shown = {
        name
        for name in names
        if name in used or (name in histograms and {name + s for s in HISTOGRAM_SUFFIXES} & used)
    }
    missing = names - shown - set(NOT_ON_DASHBOARD)
    assert not missing, f"metrics without a panel (add one or allowlist with a reason): {sorted(missing)}"
    assert not set(NOT_ON_DASHBOARD) - names, "allowlist names metrics the code no longer defines"


def test_external_allowlist_is_not_stale() -> None:
    used = set().union(*(metric_names(expr) for _, expr in panel_exprs(load_dashboard())))
    assert EXTERNAL_METRICS <= used, f"unused allowlist entries: {sorted(EXTERNAL_METRICS - used)}"


def test_slo_panels_use_the_recording_rules() -> None:
    used = set().union(*(metric_names(expr) for _, expr in panel_exprs(load_dashboard())))
    assert {"fmhl:admin_api_request_errors:ratio_rate1h", "fmhl:job_final_failures:ratio_rate1h"} <= used


def test_panel_queries_are_valid_promql(tmp_path: Path) -> None:
    """Wrap every query (template variables substituted) in a recording rule for promtool."""
    grafana_vars = {"$__rate_interval": "5m", "$namespace": ".*", "$queue": ".*"}
    rules = []
    for index, (_, expr) in enumerate(panel_exprs(load_dashboard())):
        for var, value in grafana_vars.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown template variable in {expr}"
        rules.append({"record": f"dashboard:query:{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(promtool).exists(), "promtool not found: run `make tools`"
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
