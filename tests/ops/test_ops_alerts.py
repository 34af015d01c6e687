"""Alert rules: promtool checks and unit tests, runbooks, coverage of the rule tests, and mutations.

promtool comes from Debian's ``prometheus`` package (``make tools`` installs it; ``make test``
depends on it), so a missing promtool is a failure here, not a skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.infra.metrics import DISTRIBUTION_BUCKETS, INBOX_BUCKETS, Metrics

REPO = Path(__file__).resolve().parents[2]
ALERTS_DIR = REPO / "alerts"
RULES_FILE = ALERTS_DIR / "prometheus-rules.yml"
RULE_TESTS_DIR = ALERTS_DIR / "tests"
RUNBOOKS_DIR = ALERTS_DIR / "runbooks"
RUNBOOK_BASE_URL = "https://github.com/fmhl/fmhl-ops/blob/main/alerts/runbooks/"
RUNBOOK_SECTIONS = ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation")
SEVERITIES = {"critical", "warning", "none"}
REQUIRED_ANNOTATIONS = {"summary", "description", "runbook_url"}
# Alerts that by design never stay quiet.
ALWAYS_FIRING = {"Watchdog"}
# Metric names in PromQL: ours all start with fmhl_ (metrics) or fmhl: (recording rules).
METRIC_TOKEN = re.compile(r"\bfmhl[_:][A-Za-z0-9_:]*")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    assert path, "promtool not found: run `make tools` (Debian package prometheus)"
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def load_rules(path: Path = RULES_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def alert_rules(rules: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rules = rules if rules is not None else load_rules()
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def recording_rule_names() -> set[str]:
    return {rule["record"] for group in load_rules()["groups"] for rule in group["rules"] if "record" in rule}


def rule_test_files() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.yml"))


def known_metric_names() -> set[str]:
    """Series names PromQL may use: code metrics (+ histogram series) and recording rules."""
    metrics = Metrics()
    names = set(metrics.names())
    histograms = {name for name in names if type(metrics.registry.collectors[name]).__name__ == "Histogram"}
    names |= {name + suffix for name in histograms for suffix in HISTOGRAM_SUFFIXES}
    return names | recording_rule_names()


def test_promtool_is_installed() -> None:
    result = run_promtool("--version")
    assert result.returncode == 0, result.stderr


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.serial  # CPU-bound: promtool runs every rule test file, within 60 s
def test_promtool_test_rules() -> None:
    files = rule_test_files()
    assert files, "no rule tests in alerts/tests"
    result = run_promtool("test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_test_files_load_the_rules_file() -> None:
    for path in rule_test_files():
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../prometheus-rules.yml"], path.name


def test_every_alert_has_severity_and_annotations() -> None:
    alerts = alert_rules()
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)), "alert names must be unique (one runbook each)"
    for rule in alerts:
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        assert REQUIRED_ANNOTATIONS <= set(rule.get("annotations", {})), rule["alert"]
        assert all(rule["annotations"][key].strip() for key in REQUIRED_ANNOTATIONS), rule["alert"]
        if rule["labels"]["severity"] == "none":
            assert rule["alert"] in ALWAYS_FIRING, rule["alert"]


def test_design_alerts_are_all_defined() -> None:
    design = {
        "DistributionDurationHigh",
        "BillingFailuresHigh",
        "QueueBacklogHigh",
        "DLQSizeHigh",
        "InboxQuerySlow",
        "JobFailureRateHigh",
        "HealthCheckFailing",
        "CronJobMissed",
        "BalanceDiscrepancyLarge",
        "DLQSpoolGrowing",
        "WorkerHeartbeatMissing",
        "Watchdog",
    }
    assert design <= {rule["alert"] for rule in alert_rules()}


def test_every_alert_has_a_runbook_with_the_standard_sections() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_BASE_URL}{name}.md", f"{name}: runbook_url {url}"
        path = REPO / url.removeprefix("https://github.com/fmhl/fmhl-ops/blob/main/")
        assert path.is_file(), f"{name}: missing {path.relative_to(REPO)}"
        text = path.read_text()
        assert text.startswith(f"# {name}\n"), f"{path.name}: first line must be '# {name}'"
        positions = [text.find(f"\n{section}\n") for section in RUNBOOK_SECTIONS]
        assert all(p >= 0 for p in positions), f"{path.name}: needs sections {RUNBOOK_SECTIONS}"
        assert positions == sorted(positions), f"{path.name}: sections out of order"
        diagnosis = text[positions[2] : positions[3]]
        assert "`" in diagnosis, f"{path.name}: Diagnosis needs the exact calls / PromQL to run"


def test_no_orphan_runbooks() -> None:
    alerts = {rule["alert"] for rule in alert_rules()}
    pages = {path.stem for path in RUNBOOKS_DIR.glob("*.md") if path.name != "README.md"}
    assert pages == alerts


API_CALL = re.compile(r"(?:http://fmhl-ops:8000|\b(?:GET|POST) )(/[A-Za-z0-9_./<>{}-]*)")
CLI_CRON_RUN = re.compile(r"fmhl-ops cron run ([a-z_]+)\b")


def service_route_patterns() -> list[re.Pattern[str]]:
    """The real app's route templates as regexes (a {param} matches one path segment)."""
    from starlette.routing import Mount

    from service.app import create_app
    from shared.infra.config import load_settings

    app = create_app(load_settings({"DATABASE_URL": "postgresql://u@db/x", "REDIS_URL": "redis://r/0"}))

    def walk(routes: list[Any], prefix: str = "") -> list[str]:
        paths: list[str] = []
        for route in routes:
            paths += (
                walk(route.routes, prefix + route.path) if isinstance(route, Mount) else [prefix + route.path]
            )
        return paths

    return [re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path.replace(".", r"\."))) for path in walk(app.routes)]


def test_runbook_api_calls_and_commands_exist() -> None:
    """The calls a runbook tells an operator to make are real routes and real cron jobs."""
    from worker.cron import CRON_NAMES

    patterns = service_route_patterns()
    for page in sorted(RUNBOOKS_DIR.glob("*.md")):
        text = page.read_text()
        for path in filter(None, API_CALL.findall(text)):
            concrete = re.sub(r"<[^>]+>|\{[^}]+\}", "x", path)
            assert any(p.fullmatch(concrete) for p in patterns), f"{page.name}: no route for {path}"
        for name in CLI_CRON_RUN.findall(text):
            assert name in CRON_NAMES, f"{page.name}: no cron job {name}"


def test_cron_job_missed_watches_every_cron_job() -> None:
    from worker.cron import CRON_NAMES

    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "CronJobMissed"]
    assert set(re.findall(r'cron_job="([a-z_]+)"', rule["expr"])) == set(CRON_NAMES)


def _rule_test_cases() -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(file, alertname, exp_alerts) for every alert_rule_test in alerts/tests."""
    cases = []
    for path in rule_test_files():
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                cases.append((path.name, case["alertname"], case.get("exp_alerts") or []))
    return cases


def test_every_alert_has_firing_and_quiet_cases() -> None:
    alerts = {rule["alert"] for rule in alert_rules()}
    cases = _rule_test_cases()
    assert {name for _, name, _ in cases} <= alerts, "rule tests name alerts that do not exist"
    firing = {name for _, name, exp in cases if exp}
    quiet = {name for _, name, exp in cases if not exp}
    assert alerts - firing == set(), f"alerts without a firing case: {sorted(alerts - firing)}"
    missing_quiet = alerts - quiet - ALWAYS_FIRING
    assert missing_quiet == set(), f"alerts without a quiet case: {sorted(missing_quiet)}"


def test_firing_cases_check_labels_and_annotations() -> None:
    for file, name, expected in _rule_test_cases():
        for alert in expected:
            assert "severity" in alert.get("exp_labels", {}), f"{file}: {name} exp_labels lacks severity"
            annotations = set(alert.get("exp_annotations", {}))
            assert annotations >= REQUIRED_ANNOTATIONS, f"{file}: {name} exp_annotations incomplete"


def _promql_texts(rule: dict[str, Any]) -> list[str]:
    return [rule["expr"], *rule.get("annotations", {}).values()]


def test_rules_only_use_metrics_the_code_defines() -> None:
    known = known_metric_names()
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            used = {token for text in _promql_texts(rule) for token in METRIC_TOKEN.findall(str(text))}
            unknown = used - known
            assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {unknown}"


@pytest.mark.parametrize(
    ("alert", "histogram", "buckets"),
    [
        ("DistributionDurationHigh", "fmhl_distribution_duration_seconds_bucket", DISTRIBUTION_BUCKETS),
        ("InboxQuerySlow", "fmhl_inbox_query_duration_seconds_bucket", INBOX_BUCKETS),
    ],
)
def test_latency_thresholds_are_bucket_boundaries(
    alert: str, histogram: str, buckets: tuple[float, ...]
) -> None:
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == alert]
    expr = " ".join(rule["expr"].split())
    assert expr.startswith(f"histogram_quantile(0.95, sum by (le) (rate({histogram}[5m])))"), expr
    match = re.fullmatch(r".*\)\s*>\s*([0-9.]+)", expr)
    assert match, f"{alert}: expected '<quantile> > <seconds>', got {expr}"
    threshold = float(match.group(1))
    assert threshold in buckets, f"{alert}: {threshold} is not a bucket boundary of {buckets}"


# --- Mutations: the rule tests must notice a broken rule ---------------------------------------


@dataclass(frozen=True)
class Mutation:
    name: str
    alert: str
    apply: Callable[[dict[str, Any]], None]


def _replace_in_expr(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def apply(rule: dict[str, Any]) -> None:
        assert old in rule["expr"], f"mutation target {old!r} not in {rule['alert']}"
        rule["expr"] = rule["expr"].replace(old, new)

    return apply


def _set_for(duration: str) -> Callable[[dict[str, Any]], None]:
    def apply(rule: dict[str, Any]) -> None:
        assert "for" in rule
        rule["for"] = duration

    return apply


def _drop(section: str, key: str) -> Callable[[dict[str, Any]], None]:
    def apply(rule: dict[str, Any]) -> None:
        del rule[section][key]

    return apply


MUTATIONS = [
    Mutation("severity label removed", "DLQSizeHigh", _drop("labels", "severity")),
    Mutation("runbook_url removed", "Watchdog", _drop("annotations", "runbook_url")),
    Mutation("p95 threshold 2 s -> 2.5 s", "DistributionDurationHigh", _replace_in_expr("> 2\n", "> 2.5\n")),
    Mutation(
        "failures per second, not per minute", "BillingFailuresHigh", _replace_in_expr(" * 60 > 1", " > 1")
    ),
    Mutation("depth threshold 100 -> 101", "QueueBacklogHigh", _replace_in_expr("> 100", "> 101")),
    Mutation("oldest-age threshold 5m -> 50m", "QueueBacklogHigh", _replace_in_expr("> 300", "> 3000")),
    Mutation("> 5 % became >= 5 %", "JobFailureRateHigh", _replace_in_expr("> 0.05", ">= 0.05")),
    Mutation("for 2m -> 1m", "HealthCheckFailing", _set_for("1m")),
    Mutation("reconcile threshold 26h -> 24h", "CronJobMissed", _replace_in_expr("> 93600", "> 86400")),
    Mutation(
        "page burn rate 14.4x -> 16x", "AdminAPIErrorBudgetBurnFast", _replace_in_expr("14.4 *", "16 *")
    ),
    Mutation(
        "ticket burn rate 1x -> 1.2x",
        "JobErrorBudgetBurnSlow",
        _replace_in_expr("(1 * 0.01)", "(1.2 * 0.01)"),
    ),
    Mutation("stuck spool ignored", "DLQSpoolGrowing", _replace_in_expr(">= 0", "> 0")),
    Mutation(
        "absent scheduler ignored",
        "WorkerHeartbeatMissing",
        _replace_in_expr('\nor absent(up{job="fmhl-ops-worker-scheduler"})', ""),
    ),
    Mutation("for 5m -> 4m", "InboxQuerySlow", _set_for("4m")),
    Mutation(
        "first-increment window 26h -> 1h",
        "BalanceDiscrepancyLarge",
        _replace_in_expr("offset 26h", "offset 1h"),
    ),
]


TEST_ITEM = re.compile(r"^  - ", re.MULTILINE)


def _tests_mentioning(text: str, alert: str) -> str:
    """The rule-test file ``text`` with only the test items (``tests:`` entries) that mention
    ``alert``, each item's text (and the comments above it) kept byte for byte.

    Why: promtool evaluates every rule over each item's whole time range, so running a file's
    other items costs seconds per mutant and can prove nothing about ``alert``: only an item with
    an ``alertname: <alert>`` check can fail with that name, which is what the mutation test asks.
    The cut is textual (no re-serialisation that could change a test); that it kept exactly the
    items the YAML holds is checked against the parsed file.
    """
    head, marker, body = text.partition("\ntests:\n")
    assert marker, "a rule-test file has a top-level tests: list"
    starts = [match.start() for match in TEST_ITEM.finditer(body)]
    chunks = [body[: starts[0]]] + [body[a:b] for a, b in zip(starts, [*starts[1:], len(body)], strict=True)]
    # a comment block above an item belongs to that item: move trailing comment lines forward
    items: list[str] = []
    carried = chunks[0]
    for chunk in chunks[1:]:
        lines = chunk.splitlines(keepends=True)
        cut = len(lines)
        while cut > 1 and lines[cut - 1].lstrip().startswith("#"):
            cut -= 1
        items.append(carried + "".join(lines[:cut]))
        carried = "".join(lines[cut:])
    kept = [
        item
        for item in items
        if alert
        in "".join(line for line in item.splitlines(keepends=True) if not line.lstrip().startswith("#"))
    ]
    filtered = head + marker + "".join(kept)
    parsed = yaml.safe_load(text)
    assert yaml.safe_load(filtered) == {
        **parsed,
        "tests": [item for item in parsed["tests"] if alert in yaml.safe_dump(item, width=1000)],
    }, "the textual cut kept other items than the parsed file holds"
    return filtered


def _write_mutant(root: Path, mutation: Mutation | None) -> list[Path]:
    """Copy the rules (mutated) and the rule tests that exercise the alert into ``root`` (for a
    mutation, only the test items that mention its alert: ``_tests_mentioning``)."""
    rules = load_rules()
    if mutation is not None:
        (rule,) = [rule for rule in alert_rules(rules) if rule["alert"] == mutation.alert]
        mutation.apply(rule)
    (root / "tests").mkdir(parents=True)
    (root / "prometheus-rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False, width=1000))
    copied = []
    for path in rule_test_files():
        text = path.read_text()
        if mutation is None:
            copied.append(root / "tests" / path.name)
            copied[-1].write_text(text)
        elif f"alertname: {mutation.alert}\n" in text:
            copied.append(root / "tests" / path.name)
            copied[-1].write_text(_tests_mentioning(text, mutation.alert))
    return copied


def test_rewritten_rules_are_unchanged(tmp_path: Path) -> None:
    """Control for the mutation test: re-serialising the rules alone changes nothing."""
    _write_mutant(tmp_path, None)
    assert yaml.safe_load((tmp_path / "prometheus-rules.yml").read_text()) == load_rules()


@pytest.mark.serial  # CPU-bound: promtool over every mutant, 4 at a time, each call within 60 s
def test_rule_tests_catch_mutated_rules(tmp_path: Path) -> None:
    """Each mutation keeps the rules valid (promtool check rules) but must fail promtool test rules."""

    def outcome(index: int, mutation: Mutation) -> str | None:
        root = tmp_path / f"m{index}"
        files = _write_mutant(root, mutation)
        assert files, f"no rule test exercises {mutation.alert}"
        check = run_promtool("check", "rules", root / "prometheus-rules.yml")
        if check.returncode != 0:
            return f"{mutation.alert} ({mutation.name}): mutant is not a valid rule file: {check.stdout}"
        result = run_promtool("test", "rules", *files)
        output = result.stdout + result.stderr
        if result.returncode == 0:
            return f"{mutation.alert} ({mutation.name}): rule tests still pass"
        if f"alertname: {mutation.alert}," not in output:
            return f"{mutation.alert} ({mutation.name}): failed for another reason: {output[-500:]}"
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        problems = [p for p in pool.map(outcome, range(len(MUTATIONS)), MUTATIONS) if p]
    assert not problems, "\n".join(problems)
