"""Write the generated files of the kustomize components from their sources of truth.

kustomize (with the default load restrictor, as in plain ``kubectl apply -k``) cannot read a file
outside a kustomization's directory, so these copies are generated and committed; tests/ops
checks they are current (``--check``).

    source                          generated
    alerts/prometheus-rules.yml  -> k8s/components/prometheus-operator/prometheus-rule.yaml
    alerts/alertmanager.yml      -> k8s/components/alertmanager-config/alertmanager-config.yaml
    dashboards/fmhl-ops.json     -> k8s/components/grafana-dashboard/fmhl-ops.json (byte copy)

Run: ``.venv/bin/python k8s/render.py`` (or ``--check`` to only compare).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = REPO / "k8s" / "components"
RULES = REPO / "alerts" / "prometheus-rules.yml"
ALERTMANAGER = REPO / "alerts" / "alertmanager.yml"
DASHBOARD = REPO / "dashboards" / "fmhl-ops.json"
PROMETHEUS_RULE = COMPONENTS / "prometheus-operator" / "prometheus-rule.yaml"
ALERTMANAGER_CONFIG = COMPONENTS / "alertmanager-config" / "alertmanager-config.yaml"
DASHBOARD_COPY = COMPONENTS / "grafana-dashboard" / "fmhl-ops.json"

# Secrets: alertmanager.yml reads each from SECRETS_DIR/<key>; the AlertmanagerConfig reads the
# same <key> of the Secret SECRET_NAME (created out of band, in the AlertmanagerConfig's namespace).
SECRETS_DIR = PurePosixPath("/etc/alertmanager/secrets")
SECRET_NAME = "fmhl-ops-alertmanager"

RULE_HEADER = """\
# GENERATED from alerts/prometheus-rules.yml by k8s/render.py: do not edit.
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

ALERTMANAGER_HEADER = f"""\
# GENERATED from alerts/alertmanager.yml by k8s/render.py: do not edit.
# The same routes, receivers and inhibitions as prometheus-operator AlertmanagerConfig
# (monitoring.coreos.com/v1alpha1). The operator scopes it to this namespace: it adds
# namespace="<this namespace>" to the top route and to every inhibition, so the alerts must carry
# a namespace label (set enforcedNamespaceLabel: namespace on the Prometheus resource).
# Secrets are references only. Create the Secret once per namespace, out of band:
#   kubectl -n <namespace> create secret generic {SECRET_NAME} \\
#     --from-literal=pagerduty-routing-key=... --from-literal=slack-webhook-url=... \\
#     --from-literal=heartbeat-api-key=...
"""

_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"\\]*)"\s*$')


# --- PrometheusRule ------------------------------------------------------------------------------


def render_prometheus_rule(rules_text: str) -> str:
    """The rules file from its ``groups:`` line on, indented two spaces under ``spec:``."""
    lines = rules_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "\n".join(f"  {line}" if line.strip() else "" for line in lines[start:])
    return RULE_HEADER + body + "\n"


# --- AlertmanagerConfig --------------------------------------------------------------------------


def matcher(text: str) -> dict[str, str]:
    """``alertname="X"`` -> ``{"name": "alertname", "value": "X", "matchType": "="}``."""
    found = _MATCHER.match(text)
    if not found:
        raise ValueError(f'matcher {text!r}: expected name<op>"value" without escapes')
    name, op, value = found.groups()
    return {"name": name, "value": value, "matchType": op}


def secret_ref(path: str) -> dict[str, str]:
    file = PurePosixPath(path)
    if file.parent != SECRETS_DIR:
        raise ValueError(f"secret file {path} must be in {SECRETS_DIR}")
    return {"name": SECRET_NAME, "key": file.name}


def _convert(obj: dict[str, Any], fields: dict[str, tuple[str, Callable[[Any], Any]]], where: str) -> Any:
    unknown = set(obj) - set(fields)
    if unknown:
        raise ValueError(f"{where}: no AlertmanagerConfig mapping for {sorted(unknown)} (extend render.py)")
    return {fields[key][0]: fields[key][1](value) for key, value in obj.items()}


def _same(value: Any) -> Any:
    return value


def _route(route: dict[str, Any]) -> dict[str, Any]:
    fields = {
        "receiver": ("receiver", _same),
        "group_by": ("groupBy", _same),
        "group_wait": ("groupWait", _same),
        "group_interval": ("groupInterval", _same),
        "repeat_interval": ("repeatInterval", _same),
        "continue": ("continue", _same),
        "matchers": ("matchers", lambda ms: [matcher(m) for m in ms]),
        "routes": ("routes", lambda rs: [_route(r) for r in rs]),
    }
    converted: dict[str, Any] = _convert(route, fields, "route")
    return converted


def _authorization(auth: dict[str, Any]) -> dict[str, Any]:
    fields = {"type": ("type", _same), "credentials_file": ("credentials", secret_ref)}
    converted: dict[str, Any] = _convert(auth, fields, "authorization")
    return converted


def _http_config(config: dict[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = _convert(
        config, {"authorization": ("authorization", _authorization)}, "http_config"
    )
    return converted


RECEIVER_FIELDS: dict[str, tuple[str, dict[str, tuple[str, Callable[[Any], Any]]]]] = {
    "pagerduty_configs": (
        "pagerdutyConfigs",
        {
            "routing_key_file": ("routingKey", secret_ref),
            "send_resolved": ("sendResolved", _same),
            "severity": ("severity", _same),
            "description": ("description", _same),
            "details": ("details", lambda d: [{"key": k, "value": v} for k, v in d.items()]),
            "links": (
                "pagerDutyLinkConfigs",
                lambda links: [{"href": link["href"], "alt": link["text"]} for link in links],
            ),
        },
    ),
    "slack_configs": (
        "slackConfigs",
        {
            "api_url_file": ("apiURL", secret_ref),
            "channel": ("channel", _same),
            "send_resolved": ("sendResolved", _same),
            "title": ("title", _same),
            "title_link": ("titleLink", _same),
            "text": ("text", _same),
        },
    ),
    "webhook_configs": (
        "webhookConfigs",
        {
            "url": ("url", _same),
            "send_resolved": ("sendResolved", _same),
            "http_config": ("httpConfig", _http_config),
        },
    ),
}


def _receiver(receiver: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"name": receiver["name"]}
    for key, integrations in receiver.items():
        if key == "name":
            continue
        if key not in RECEIVER_FIELDS:
            raise ValueError(f"receiver {receiver['name']}: no mapping for {key} (extend k8s/render.py)")
        name, fields = RECEIVER_FIELDS[key]
        result[name] = [_convert(i, fields, f"{receiver['name']}.{key}") for i in integrations]
    return result


def _inhibit_rule(rule: dict[str, Any]) -> dict[str, Any]:
    fields = {
        "source_matchers": ("sourceMatch", lambda ms: [matcher(m) for m in ms]),
        "target_matchers": ("targetMatch", lambda ms: [matcher(m) for m in ms]),
        "equal": ("equal", _same),
    }
    converted: dict[str, Any] = _convert(rule, fields, "inhibit_rules")
    return converted


def alertmanager_config(config: dict[str, Any]) -> dict[str, Any]:
    """The AlertmanagerConfig resource equivalent to an alertmanager.yml document."""
    unknown = set(config) - {"global", "route", "receivers", "inhibit_rules"}
    if unknown:
        raise ValueError(f"alertmanager.yml: no AlertmanagerConfig mapping for {sorted(unknown)}")
    # global belongs to the Alertmanager that loads the config, not to one AlertmanagerConfig.
    if set(config.get("global", {})) - {"resolve_timeout"}:
        raise ValueError("alertmanager.yml: only global.resolve_timeout is allowed (it is the server's)")
    return {
        "apiVersion": "monitoring.coreos.com/v1alpha1",
        "kind": "AlertmanagerConfig",
        "metadata": {
            "name": "fmhl-ops",
            "labels": {"app.kubernetes.io/name": "fmhl-ops", "app.kubernetes.io/component": "alerting"},
        },
        "spec": {
            "route": _route(config["route"]),
            "inhibitRules": [_inhibit_rule(rule) for rule in config.get("inhibit_rules", [])],
            "receivers": [_receiver(receiver) for receiver in config["receivers"]],
        },
    }


def render_alertmanager_config(alertmanager_text: str) -> str:
    resource = alertmanager_config(yaml.safe_load(alertmanager_text))
    return ALERTMANAGER_HEADER + yaml.safe_dump(resource, sort_keys=False, width=1000)


# --- all of them ---------------------------------------------------------------------------------


def outputs() -> dict[Path, bytes]:
    return {
        PROMETHEUS_RULE: render_prometheus_rule(RULES.read_text()).encode(),
        ALERTMANAGER_CONFIG: render_alertmanager_config(ALERTMANAGER.read_text()).encode(),
        DASHBOARD_COPY: DASHBOARD.read_bytes(),
    }


def main(argv: list[str]) -> int:
    stale = []
    for target, content in outputs().items():
        if "--check" in argv:
            if not target.exists() or target.read_bytes() != content:
                stale.append(str(target.relative_to(REPO)))
        else:
            target.write_bytes(content)
    if stale:
        print(f"stale: {', '.join(stale)}; run python k8s/render.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
