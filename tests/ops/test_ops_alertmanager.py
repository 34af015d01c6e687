"""Alert routing: alerts/alertmanager.yml checked by amtool, every alert of the rules file routed to
its receiver, inhibition rules that name real alerts, notification templates that render, no
secret in the repository, and the AlertmanagerConfig (k8s/components/alertmanager-config) saying
the same as the file.

amtool comes from Debian's ``prometheus-alertmanager`` (``make tools`` installs it), so a missing
amtool is a failure here, not a skip.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILE = REPO / "alerts" / "alertmanager.yml"
RULES_FILE = REPO / "alerts" / "prometheus-rules.yml"
ALERTMANAGER_CONFIG = REPO / "k8s" / "components" / "alertmanager-config" / "alertmanager-config.yaml"
SECRETS_DIR = PurePosixPath("/etc/alertmanager/secrets")
SECRET_NAME = "fmhl-ops-alertmanager"
# severity -> receiver; Watchdog goes to the dead man's switch whatever its severity.
RECEIVER_FOR_SEVERITY = {"critical": "pager", "warning": "chat"}
WATCHDOG_RECEIVER = "deadmansswitch"
DEFAULT_RECEIVER = "chat"  # an alert with an unknown or missing severity is never dropped
SEVERITY_RANK = {"none": 0, "warning": 1, "critical": 2}
# Integration fields that would hold a secret inline, and the *_file field to use instead.
INLINE_SECRETS = {
    "api_url": "api_url_file",
    "routing_key": "routing_key_file",
    "service_key": "service_key_file",
    "api_key": "api_key_file",
    "credentials": "credentials_file",
    "password": "password_file",
    "bearer_token": "credentials_file",
}
EXAMPLE_QUEUE = "distribute_lead"


def amtool() -> str:
    path = shutil.which("amtool")
    assert path, "amtool not found: run `make tools` (Debian package prometheus-alertmanager)"
    return path


def run_amtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [amtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def load_config(path: Path = CONFIG_FILE) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES_FILE.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def alert_labels(rule: dict[str, Any]) -> dict[str, str]:
    """The labels a firing instance of ``rule`` carries that routing can see: its rule labels, the
    alert name and, where the expression keeps it, a queue."""
    labels = {"alertname": rule["alert"], **rule.get("labels", {})}
    if re.search(r"\bby \(([^)]*\b)?queue\b", rule["expr"]):
        labels["queue"] = EXAMPLE_QUEUE
    return labels


def expected_receiver(labels: dict[str, str]) -> str:
    if labels["alertname"] == "Watchdog":
        return WATCHDOG_RECEIVER
    return RECEIVER_FOR_SEVERITY.get(labels.get("severity", ""), DEFAULT_RECEIVER)


def routed_receivers(config: Path, labels: dict[str, str]) -> list[str]:
    pairs = [f"{key}={value}" for key, value in sorted(labels.items())]
    result = run_amtool("config", "routes", "test", f"--config.file={config}", *pairs)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def webhook_copy(config: dict[str, Any], base_url: str) -> dict[str, Any]:
    """What an end-to-end test runs: every receiver keeps its name and posts to a local webhook."""
    result = copy.deepcopy(config)
    result["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": f"{base_url}/{r['name']}", "send_resolved": True}]}
        for r in config["receivers"]
    ]
    return result


def all_routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [route, *(r for child in route.get("routes", []) for r in all_routes(child))]


_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> int:
    parts = _DURATION.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(int(n) * _UNIT[u] for n, u in parts)


def effective(route_path: list[dict[str, Any]], key: str) -> Any:
    """A route setting as Alertmanager sees it: the nearest route on the path that sets it."""
    return next(route[key] for route in reversed(route_path) if key in route)


def route_for(config: dict[str, Any], receiver: str) -> list[dict[str, Any]]:
    """The path root -> first child route that sends to ``receiver``."""
    root = config["route"]
    return [root, next(r for r in root["routes"] if r["receiver"] == receiver)]


# --- amtool -------------------------------------------------------------------------------------


def test_amtool_check_config() -> None:
    result = run_amtool("check-config", CONFIG_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


ALERTS = alert_rules()


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
def test_every_alert_routes_to_its_receiver(rule: dict[str, Any]) -> None:
    labels = alert_labels(rule)
    expected = expected_receiver(labels)
    assert routed_receivers(CONFIG_FILE, labels) == [expected], labels
    # amtool's own verification, as an operator would run it.
    pairs = [f"{key}={value}" for key, value in sorted(labels.items())]
    verify = run_amtool(
        "config", "routes", "test", f"--config.file={CONFIG_FILE}", f"--verify.receivers={expected}", *pairs
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_routing_test_covers_every_severity_and_the_queue_label() -> None:
    """Control: the parametrized cases above exercise each receiver and the queue grouping label."""
    labelled = [alert_labels(rule) for rule in ALERTS]
    assert {expected_receiver(labels) for labels in labelled} == {"pager", "chat", WATCHDOG_RECEIVER}
    assert {rule["labels"]["severity"] for rule in ALERTS} <= set(SEVERITY_RANK)
    with_queue = {labels["alertname"] for labels in labelled if "queue" in labels}
    assert {"QueueBacklogHigh", "DLQSizeHigh", "JobFailureRateHigh"} <= with_queue


@pytest.mark.parametrize(
    "labels",
    [
        {"alertname": "SomethingNew"},
        {"alertname": "SomethingNew", "severity": "info"},
        {"alertname": "Watchdog", "severity": "critical"},
    ],
)
def test_unknown_severities_are_not_dropped_and_watchdog_never_pages(labels: dict[str, str]) -> None:
    assert routed_receivers(CONFIG_FILE, labels) == [expected_receiver(labels)]


def test_a_webhook_copy_routes_the_same(tmp_path: Path) -> None:
    """An end-to-end test swaps every integration for a local webhook (receiver names kept, no
    secret file needed) and gets the same routing, grouping and inhibitions."""
    config = load_config()
    assert not [key for key in config.get("global", {}) if key.endswith("_file")], "secrets live in receivers"
    copy_file = tmp_path / "alertmanager.yml"
    copy_file.write_text(yaml.safe_dump(webhook_copy(config, "http://127.0.0.1:9"), sort_keys=False))
    check = run_amtool("check-config", copy_file)
    assert check.returncode == 0, check.stdout + check.stderr

    def both(rule: dict[str, Any]) -> tuple[list[str], list[str]]:
        labels = alert_labels(rule)
        return routed_receivers(CONFIG_FILE, labels), routed_receivers(copy_file, labels)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for original, copied in pool.map(both, ALERTS):
            assert original == copied


# --- Route tree ---------------------------------------------------------------------------------


def test_grouping_and_intervals() -> None:
    config = load_config()
    root = config["route"]
    assert root["group_by"] == ["alertname", "queue"]
    for route in all_routes(root)[1:]:
        assert "group_by" not in route, "every route groups like the root"
        assert not route.get("continue", False), "one notification per alert, not two"
    assert seconds(root["group_wait"]) <= 60
    assert 60 <= seconds(root["group_interval"]) <= 15 * 60
    pager = route_for(config, "pager")
    chat = [config["route"], *[r for r in root["routes"] if r["receiver"] == "chat"]]
    watchdog = route_for(config, WATCHDOG_RECEIVER)
    pager_repeat = seconds(effective(pager, "repeat_interval"))
    assert 30 * 60 <= pager_repeat <= 4 * 3600, "a page that stays firing is repeated within hours"
    assert seconds(effective(chat, "repeat_interval")) >= pager_repeat, "chat repeats no more than pages"
    assert seconds(effective(pager, "group_wait")) <= seconds(root["group_wait"]), "pages do not wait longer"
    # The dead man's switch expects a ping every few minutes while everything works.
    assert 60 <= seconds(effective(watchdog, "repeat_interval")) <= 5 * 60
    assert seconds(effective(watchdog, "group_interval")) <= seconds(effective(watchdog, "repeat_interval"))
    assert seconds(effective(watchdog, "group_wait")) <= 30
    assert root["routes"][0]["receiver"] == WATCHDOG_RECEIVER, "Watchdog first, before severity routes"


def test_every_receiver_is_used_and_defined_once() -> None:
    config = load_config()
    names = [receiver["name"] for receiver in config["receivers"]]
    assert len(names) == len(set(names))
    used = {route["receiver"] for route in all_routes(config["route"])}
    assert used == set(names) == {"pager", "chat", WATCHDOG_RECEIVER}
    kinds = {r["name"]: {k for k in r if k.endswith("_configs")} for r in config["receivers"]}
    assert kinds == {
        "pager": {"pagerduty_configs"},
        "chat": {"slack_configs"},
        WATCHDOG_RECEIVER: {"webhook_configs"},
    }
    (heartbeat,) = next(r for r in config["receivers"] if r["name"] == WATCHDOG_RECEIVER)["webhook_configs"]
    assert heartbeat["send_resolved"] is False, "a heartbeat has nothing to resolve"


# --- Inhibition ---------------------------------------------------------------------------------

_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*$')


def parse_matcher(matcher: str) -> tuple[str, str, str]:
    found = _MATCHER.match(matcher)
    assert found, f"unsupported matcher {matcher!r}"
    name, op, value = found.groups()
    return name, op, value


def matches(matcher: str, labels: dict[str, str]) -> bool:
    name, op, value = parse_matcher(matcher)
    actual = labels.get(name, "")
    if op in {"=", "!="}:
        return (actual == value) == (op == "=")
    return (re.fullmatch(value, actual) is not None) == (op == "=~")


def alerts_matching(matchers: list[str]) -> list[dict[str, Any]]:
    """Alerts of the rules file that can match: alertname/severity/rule labels decide; a matcher on
    a series label (e.g. job) is taken to be satisfiable when the expression selects that value."""
    found = []
    for rule in ALERTS:
        labels = alert_labels(rule)
        static = [m for m in matchers if parse_matcher(m)[0] in labels]
        series = [parse_matcher(m)[2] for m in matchers if m not in static]
        if all(matches(m, labels) for m in static) and all(value in rule["expr"] for value in series):
            found.append(rule)
    return found


def test_inhibition_rules_name_existing_alerts() -> None:
    rules = load_config()["inhibit_rules"]
    assert rules, "inhibitions are part of the design (HealthCheckFailing explains its symptoms)"
    for index, rule in enumerate(rules):
        assert set(rule) == {"source_matchers", "target_matchers", "equal"}, "no deprecated match/match_re"
        for side in ("source_matchers", "target_matchers"):
            names = [m for m in rule[side] if m.strip().startswith("alertname")]
            assert names, f"inhibit rule {index}: {side} must name the alerts it means"
            for matcher in names:
                for name in parse_matcher(matcher)[2].split("|"):
                    assert name in {r["alert"] for r in ALERTS}, f"inhibit rule {index}: no alert {name}"
        sources = alerts_matching(rule["source_matchers"])
        targets = alerts_matching(rule["target_matchers"])
        assert sources and targets, f"inhibit rule {index} matches no alert on one side"
        source_names = {r["alert"] for r in sources}
        target_names = {r["alert"] for r in targets}
        assert not source_names & target_names, f"inhibit rule {index}: an alert would silence itself"
        assert "Watchdog" not in source_names | target_names, "the heartbeat is never inhibited"
        # A cause never hides something more urgent than itself.
        weakest_source = min(SEVERITY_RANK[r["labels"]["severity"]] for r in sources)
        strongest_target = max(SEVERITY_RANK[r["labels"]["severity"]] for r in targets)
        assert weakest_source >= strongest_target, f"inhibit rule {index}: a warning silences a page"
        # equal: namespace (from the targets / operator), or a label both sides' rules set.
        for label in rule["equal"]:
            if label != "namespace":
                assert all(label in r["labels"] for r in sources + targets), f"rule {index}: {label}"
    explained = {
        r["alert"]
        for rule in rules
        if "HealthCheckFailing" in str(rule["source_matchers"])
        for r in alerts_matching(rule["target_matchers"])
    }
    assert explained, "HealthCheckFailing silences the alerts it explains"


# --- Templates ----------------------------------------------------------------------------------


def template_fields(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, template) for every string field of every integration that uses a template."""
    found: list[tuple[str, str]] = []

    def walk(where: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{where}.{key}", item)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(f"{where}[{i}]", item)
        elif isinstance(value, str) and "{{" in value:
            found.append((where, value))

    for receiver in config["receivers"]:
        walk(receiver["name"], {k: v for k, v in receiver.items() if k != "name"})
    return found


def notification_data(rule: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager's template data for one firing alert of ``rule``."""
    labels = alert_labels(rule)
    annotations = {key: str(value) for key, value in rule["annotations"].items()}
    group = {key: labels[key] for key in ("alertname", "queue") if key in labels}
    return {
        "receiver": expected_receiver(labels),
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": "2024-05-01T12:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": "0123456789abcdef",
            }
        ],
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://alertmanager:9093",
    }


def test_notification_templates_render_for_every_alert(tmp_path: Path) -> None:
    config = load_config()
    fields = template_fields(config)
    assert {where.split(".")[0] for where, _ in fields} >= {"pager", "chat"}
    empty = tmp_path / "none.tmpl"
    empty.write_text("")
    jobs = []
    for rule in ALERTS:
        data = tmp_path / f"{rule['alert']}.json"
        data.write_text(json.dumps(notification_data(rule)))
        jobs += [(rule, where, text, data) for where, text in fields]

    def render(job: tuple[dict[str, Any], str, str, Path]) -> tuple[dict[str, Any], str, str]:
        rule, where, text, data = job
        result = run_amtool(
            "template",
            "render",
            f"--template.glob={empty}",
            f"--template.text={text}",
            f"--template.data={data}",
        )
        assert result.returncode == 0, f"{where} for {rule['alert']}: {result.stderr}"
        return rule, where, result.stdout

    with ThreadPoolExecutor(max_workers=4) as pool:
        for rule, where, output in pool.map(render, jobs):
            assert output.strip(), f"{where} renders empty for {rule['alert']}"
            if re.search(r"\]\.(title|description)$", where):
                assert rule["alert"] in output, f"{where} for {rule['alert']}: {output!r}"
            if "queue" in alert_labels(rule) and where.endswith(".title"):
                assert EXAMPLE_QUEUE in output, output
            if where.endswith((".href", ".title_link", ".runbook")):
                assert output.strip() == rule["annotations"]["runbook_url"], output


# --- Secrets ------------------------------------------------------------------------------------


def _integrations(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{receiver['name']}.{kind}", integration)
        for receiver in config["receivers"]
        for kind, integrations in receiver.items()
        if kind.endswith("_configs")
        for integration in integrations
    ]


def _file_fields(value: Any, where: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in _file_fields(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [pair for item in value for pair in _file_fields(item, where)]
    return [(where, value)] if where.endswith("_file") else []


def _inline_secrets(value: Any, where: str = "") -> list[str]:
    if isinstance(value, dict):
        found = [f"{where}.{key}" for key in value if key in INLINE_SECRETS]
        return found + [hit for key, item in value.items() for hit in _inline_secrets(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [hit for item in value for hit in _inline_secrets(item, where)]
    return []


def secret_keys() -> set[str]:
    return {PurePosixPath(path).name for _, path in _file_fields(load_config())}


def test_no_secret_is_committed() -> None:
    config = load_config()
    assert not _inline_secrets(config), f"inline secrets: {_inline_secrets(config)} (use the *_file fields)"
    files = _file_fields(config)
    assert {where.rsplit(".", 1)[1] for where, _ in files} >= {"routing_key_file", "api_url_file"}
    for where, path in files:
        assert PurePosixPath(path).parent == SECRETS_DIR, f"{where}: {path} outside {SECRETS_DIR}"
    for where, integration in _integrations(config):
        url = integration.get("url")
        if url is not None:
            assert url.startswith("https://") and "?" not in url and "@" not in url, f"{where}: {url}"
    header = CONFIG_FILE.read_text().split("\nglobal:")[0]
    for key in secret_keys():
        assert key in header, f"the header of alertmanager.yml must document the secret file {key}"


# --- AlertmanagerConfig (prometheus-operator) --------------------------------------------------

# Field names of monitoring.coreos.com/v1alpha1 that this config may use, per object.
CRD_FIELDS = {
    "route": {
        "receiver",
        "groupBy",
        "groupWait",
        "groupInterval",
        "repeatInterval",
        "matchers",
        "continue",
        "routes",
    },
    "matcher": {"name", "value", "matchType"},
    "inhibitRule": {"sourceMatch", "targetMatch", "equal"},
    "receiver": {"name", "pagerdutyConfigs", "slackConfigs", "webhookConfigs"},
    "pagerdutyConfigs": {
        "routingKey",
        "sendResolved",
        "severity",
        "description",
        "details",
        "pagerDutyLinkConfigs",
    },
    "slackConfigs": {"apiURL", "channel", "sendResolved", "title", "titleLink", "text"},
    "webhookConfigs": {"url", "sendResolved", "httpConfig"},
}
_SNAKE = {
    "groupBy": "group_by",
    "groupWait": "group_wait",
    "groupInterval": "group_interval",
    "repeatInterval": "repeat_interval",
    "sendResolved": "send_resolved",
    "titleLink": "title_link",
}


def _secret_file(ref: dict[str, str]) -> str:
    assert ref.keys() == {"name", "key"} and ref["name"] == SECRET_NAME, ref
    return str(SECRETS_DIR / ref["key"])


def _route_from_crd(route: dict[str, Any]) -> dict[str, Any]:
    assert set(route) <= CRD_FIELDS["route"], set(route) - CRD_FIELDS["route"]
    result: dict[str, Any] = {}
    for key, value in route.items():
        if key == "matchers":
            assert all(set(m) == CRD_FIELDS["matcher"] for m in value)
            result[key] = [f'{m["name"]}{m["matchType"]}"{m["value"]}"' for m in value]
        elif key == "routes":
            result[key] = [_route_from_crd(child) for child in value]
        else:
            result[_SNAKE.get(key, key)] = value
    return result


def _integration_from_crd(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    assert set(item) <= CRD_FIELDS[kind], set(item) - CRD_FIELDS[kind]
    result: dict[str, Any] = {}
    for key, value in item.items():
        if key == "routingKey":
            result["routing_key_file"] = _secret_file(value)
        elif key == "apiURL":
            result["api_url_file"] = _secret_file(value)
        elif key == "details":
            result["details"] = {entry["key"]: entry["value"] for entry in value}
        elif key == "pagerDutyLinkConfigs":
            result["links"] = [{"href": link["href"], "text": link["alt"]} for link in value]
        elif key == "httpConfig":
            auth = value["authorization"]
            assert set(value) == {"authorization"} and set(auth) == {"type", "credentials"}
            result["http_config"] = {
                "authorization": {"type": auth["type"], "credentials_file": _secret_file(auth["credentials"])}
            }
        else:
            result[_SNAKE.get(key, key)] = value
    return result


def config_from_crd(resource: dict[str, Any]) -> dict[str, Any]:
    """The alertmanager.yml an AlertmanagerConfig stands for (secret keys read as secret files)."""
    spec = resource["spec"]
    receivers = []
    for receiver in spec["receivers"]:
        assert set(receiver) <= CRD_FIELDS["receiver"]
        converted: dict[str, Any] = {"name": receiver["name"]}
        for kind, snake in (
            ("pagerdutyConfigs", "pagerduty_configs"),
            ("slackConfigs", "slack_configs"),
            ("webhookConfigs", "webhook_configs"),
        ):
            if kind in receiver:
                converted[snake] = [_integration_from_crd(kind, item) for item in receiver[kind]]
        receivers.append(converted)
    inhibit = []
    for rule in spec.get("inhibitRules", []):
        assert set(rule) <= CRD_FIELDS["inhibitRule"]
        inhibit.append(
            {
                "source_matchers": _route_from_crd({"matchers": rule["sourceMatch"]})["matchers"],
                "target_matchers": _route_from_crd({"matchers": rule["targetMatch"]})["matchers"],
                "equal": rule["equal"],
            }
        )
    return {"route": _route_from_crd(spec["route"]), "inhibit_rules": inhibit, "receivers": receivers}


def _normalised(config: dict[str, Any]) -> dict[str, Any]:
    """Matchers without optional spaces, so `a = "b"` and `a="b"` compare equal."""
    text = json.dumps({k: v for k, v in config.items() if k != "global"})
    normalised: dict[str, Any] = json.loads(re.sub(r'\s*(=~|!~|!=|=)\s*\\"', r'\1\\"', text))
    return normalised


def test_alertmanager_config_says_what_the_file_says(tmp_path: Path) -> None:
    resource = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    assert (resource["apiVersion"], resource["kind"]) == (
        "monitoring.coreos.com/v1alpha1",
        "AlertmanagerConfig",
    )
    assert set(resource["spec"]) <= {"route", "receivers", "inhibitRules"}
    translated = config_from_crd(resource)
    assert _normalised(translated) == _normalised(load_config())
    # And amtool agrees it is a valid config with the same routing.
    as_file = tmp_path / "from-crd.yml"
    as_file.write_text(yaml.safe_dump(translated, sort_keys=False))
    check = run_amtool("check-config", as_file)
    assert check.returncode == 0, check.stdout + check.stderr
    for rule in ALERTS:
        assert routed_receivers(as_file, alert_labels(rule)) == [expected_receiver(alert_labels(rule))]


def test_alertmanager_config_references_secrets_only() -> None:
    text = ALERTMANAGER_CONFIG.read_text()
    resource = yaml.safe_load(text)
    refs: list[dict[str, str]] = []
    for receiver in resource["spec"]["receivers"]:
        for item in receiver.get("pagerdutyConfigs", []):
            assert isinstance(item["routingKey"], dict)
            refs.append(item["routingKey"])
        for item in receiver.get("slackConfigs", []):
            assert isinstance(item["apiURL"], dict)
            refs.append(item["apiURL"])
        for item in receiver.get("webhookConfigs", []):
            if "httpConfig" in item:
                refs.append(item["httpConfig"]["authorization"]["credentials"])
    assert {ref["name"] for ref in refs} == {SECRET_NAME}
    assert {ref["key"] for ref in refs} == secret_keys()
    for key in secret_keys():
        assert f"--from-literal={key}=" in text, f"the header must show how to create the Secret key {key}"
