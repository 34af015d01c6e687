"""Pieces of the end-to-end alerting stack (tests/e2e/test_alerting_e2e.py).

* processes: ``tests.procs.program`` starts any program (Prometheus, Alertmanager, redis_exporter) in its
  own session, output in a temp file, stopped by PID (process group) like ``tests.procs.Proc``.
* ``Webhook``: the receiver Alertmanager notifies; records every POST (path, time, JSON body).
* ``render_rules`` / ``render_alertmanager``: test copies of the shipped files. Rules keep their
  expressions and thresholds; only ``for:`` is shortened. The Alertmanager copy keeps the route
  tree, grouping and inhibitions; every receiver becomes a webhook to ``Webhook`` (path = receiver
  name) and group/repeat intervals are shortened.
* ``routes_for``: which receiver(s) and ``group_by`` the route tree gives a label set (the
  Alertmanager matching rules: depth first, first matching child unless ``continue``).
* ``metric_names``: every metric name a PromQL expression of ours reads.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml


@dataclass(frozen=True)
class Notification:
    received: float  # time.monotonic()
    receiver_path: str
    body: dict[str, Any]

    @property
    def alertnames(self) -> set[str]:
        return {a["labels"].get("alertname", "") for a in self.body.get("alerts", [])}


class Webhook:
    """An HTTP server on a free loopback port recording every POST body (JSON)."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsable": raw.decode(errors="replace")}
                with webhook._lock:
                    webhook.notifications.append(Notification(time.monotonic(), self.path.strip("/"), body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1})
        self._thread.daemon = True

    def start(self) -> Webhook:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Idempotent; safe also when never started (``shutdown()`` alone would then block)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def url(self, receiver: str) -> str:
        return f"http://127.0.0.1:{self.port}/{receiver}"

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self.notifications)

    def matching(self, alertname: str, status: str | None = None) -> list[Notification]:
        """Notifications carrying ``alertname`` (in the given group status, if any)."""
        return [
            n
            for n in self.received()
            if alertname in n.alertnames and (status is None or n.body.get("status") == status)
        ]


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, detail: Callable[[], str] | None = None
) -> Any:
    """Poll ``predicate`` every 0.25 s until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        time.sleep(0.25)
    extra = detail() if detail is not None else ""
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})\n{extra}"
    )


# --- rendering -------------------------------------------------------------------------------------


def render_rules(source: Path, target: Path, *, for_: str) -> dict[str, str]:
    """Copy the rule file with every ``for:`` replaced by ``for_``; returns {alert: original for}."""
    doc = yaml.safe_load(source.read_text())
    original = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and "for" in rule:
                original[rule["alert"]] = str(rule["for"])
                rule["for"] = for_
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return original


INTERVAL_KEYS = ("group_wait", "group_interval", "repeat_interval")


def _send_resolved(receiver: Mapping[str, Any]) -> bool:
    """The receiver's own send_resolved (first integration that states it), else true."""
    for key, configs in receiver.items():
        if key.endswith("_configs"):
            for config in configs or []:
                if "send_resolved" in config:
                    return bool(config["send_resolved"])
    return True


def render_alertmanager(
    source: Path, target: Path, *, webhook: Webhook, intervals: Mapping[str, str]
) -> dict[str, Any]:
    """Copy the Alertmanager config: every receiver → ``webhook`` at /<receiver name>, shorter
    intervals wherever the shipped tree sets one (and at the root). Returns the rendered config."""
    doc: dict[str, Any] = yaml.safe_load(source.read_text())
    doc["receivers"] = [
        {
            "name": r["name"],
            "webhook_configs": [{"url": webhook.url(r["name"]), "send_resolved": _send_resolved(r)}],
        }
        for r in doc["receivers"]
    ]
    doc.pop("templates", None)  # notification templates only shape Slack/PagerDuty text

    def shorten(route: dict[str, Any], root: bool) -> None:
        for key in INTERVAL_KEYS:
            if root or key in route:
                route[key] = intervals[key]
        for child in route.get("routes", []) or []:
            shorten(child, False)

    shorten(doc["route"], True)
    global_section = doc.setdefault("global", {})
    for key in list(global_section):
        if key.endswith("_file"):
            global_section.pop(key)  # secrets in files that only exist in the cluster
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc


# --- routing ---------------------------------------------------------------------------------------

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


def _matcher(text: str) -> Callable[[Mapping[str, str]], bool]:
    found = _MATCHER.match(text)
    assert found is not None, f"unsupported matcher {text!r}"
    name, op, raw = found.groups()
    value = json.loads(raw) if raw.startswith('"') else raw

    def check(labels: Mapping[str, str]) -> bool:
        actual = labels.get(name, "")
        if op == "=":
            return actual == value
        if op == "!=":
            return actual != value
        hit = re.fullmatch(value, actual) is not None
        return hit if op == "=~" else not hit

    return check


def _route_matches(route: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    checks = [_matcher(m) for m in route.get("matchers", []) or []]
    checks += [_matcher(f"{k}={json.dumps(str(v))}") for k, v in (route.get("match") or {}).items()]
    checks += [_matcher(f"{k}=~{json.dumps(str(v))}") for k, v in (route.get("match_re") or {}).items()]
    return all(check(labels) for check in checks)


@dataclass(frozen=True)
class Routed:
    receiver: str
    group_by: tuple[str, ...]


def routes_for(config: Mapping[str, Any], labels: Mapping[str, str]) -> list[Routed]:
    """The receivers (with their group_by) Alertmanager's route tree sends ``labels`` to."""

    def walk(route: Mapping[str, Any], inherited: Routed) -> list[Routed]:
        here = Routed(
            route.get("receiver", inherited.receiver), tuple(route.get("group_by", inherited.group_by))
        )
        found: list[Routed] = []
        for child in route.get("routes", []) or []:
            if _route_matches(child, labels):
                found += walk(child, here)
                if not child.get("continue", False):
                    break
        return found or [here]

    return walk(config["route"], Routed("", ()))


def group_labels(routed: Routed, labels: Mapping[str, str]) -> dict[str, str]:
    if "..." in routed.group_by:
        return dict(labels)
    return {k: labels[k] for k in routed.group_by if k in labels}


# --- metric names ----------------------------------------------------------------------------------

_NAME = re.compile(r"(?<![A-Za-z0-9_:])((?:fmhl|redis)[_:][A-Za-z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names of our families (fmhl_*, fmhl:* recordings, redis_*) read by ``expr``."""
    return {name for name in _NAME.findall(expr) if not name.endswith(":")}


def _strings(node: Any, keys: Iterable[str]) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield value
            elif key in keys and isinstance(value, dict) and isinstance(value.get("query"), str):
                yield value["query"]
            else:
                yield from _strings(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, keys)


def names_in_rules(rules_file: Path) -> set[str]:
    doc = yaml.safe_load(rules_file.read_text())
    return {n for g in doc["groups"] for r in g["rules"] for n in metric_names(r["expr"])}


def names_in_dashboard(dashboard_file: Path) -> set[str]:
    doc = json.loads(dashboard_file.read_text())
    return {n for text in _strings(doc, ("expr", "query", "definition")) for n in metric_names(text)}
