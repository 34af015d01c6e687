"""Write k8s/base/prometheus-rule.yaml from alerts/prometheus-rules.yml (the source of truth).

kustomize cannot embed a file from outside its directory into a resource's spec, so the
PrometheusRule is generated and committed; tests/ops checks that it matches the rules file.
Run: ``.venv/bin/python k8s/render_prometheus_rule.py`` (or ``--check`` to only compare).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "alerts" / "prometheus-rules.yml"
TARGET = REPO / "k8s" / "base" / "prometheus-rule.yaml"

HEADER = """\
# GENERATED from alerts/prometheus-rules.yml by k8s/render_prometheus_rule.py: do not edit.
# spec.groups is the rules file verbatim; comments are kept, indented under spec.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: fmhl-ops
  labels:
    app.kubernetes.io/name: fmhl-ops
    app.kubernetes.io/component: alerting
spec:
"""


def render(rules_text: str) -> str:
    """The rules file from its ``groups:`` line on, indented two spaces under ``spec:``."""
    lines = rules_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "\n".join(f"  {line}" if line.strip() else "" for line in lines[start:])
    return HEADER + body + "\n"


def main(argv: list[str]) -> int:
    expected = render(RULES.read_text())
    if "--check" in argv:
        if TARGET.read_text() != expected:
            print(f"{TARGET.relative_to(REPO)} is stale: run python k8s/render_prometheus_rule.py")
            return 1
        return 0
    TARGET.write_text(expected)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
