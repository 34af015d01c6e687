"""The alert reaches a human: real processes, real Prometheus, real Alertmanager, end to end.

One stack for the module, every part a separate OS process on a free loopback port: our own
embedded Postgres and Redis, ``fmhl-ops migrate`` and ``fmhl-ops admin create``, ``fmhl-ops
serve``, the three queue workers and the scheduler, redis_exporter (the dashboard's Redis
panels), Prometheus scraping every target and evaluating a rendered copy of
``alerts/prometheus-rules.yml`` every second, and Alertmanager with a rendered copy of
``alerts/alertmanager.yml`` notifying a webhook this test runs.

Rendered copies, not edits of the shipped files: the rules keep every expression and threshold,
only ``for:`` becomes ``FOR_IN_TEST`` (no threshold had to change: 150 failures exceed
DLQSizeHigh's 100, a killed worker is ``up == 0`` at once). The Alertmanager copy keeps the
route tree, grouping and inhibitions; each receiver becomes a webhook whose path is the
receiver's name, and group/repeat intervals are seconds instead of minutes and hours.

Scenarios run in file order on the one stack (fixtures make each test's prerequisites happen
first even when run alone). Everything is stopped by PID at the end of the module, also when a
test fails or the run is interrupted (an atexit net kills what an interrupted teardown left).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import orjson
import pyotp
import pytest
import yaml
from cryptography.fernet import Fernet

from cli.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from shared.infra.db import init_connection
from shared.infra.redis import create_redis
from shared.jobs.enqueue import enqueue
from shared.jobs.queues import ALL_QUEUES, EMAIL_SEND, REPORT_EXPORT
from tests.e2e.alerting_support import (
    Webhook,
    group_labels,
    names_in_dashboard,
    names_in_rules,
    render_alertmanager,
    render_rules,
    routes_for,
    wait_until,
)
from tests.factories import create_lead, create_provider, create_report_export
from tests.procs import FMHL_OPS, Proc, base_env, program, track, untrack, wait_http
from worker.cron import CRON_NAMES

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "prometheus-rules.yml"
ALERTMANAGER_CONFIG = ROOT / "alerts" / "alertmanager.yml"
DASHBOARD = ROOT / "dashboards" / "fmhl-ops.json"
PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
REDIS_EXPORTER = "/usr/bin/prometheus-redis-exporter"

FOR_IN_TEST = "2s"
AM_INTERVALS = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "3s"}
WATCHDOG_MAX_GAP_SECONDS = 3 + 1 + 4  # repeat + group interval + slack for two shared CPUs
DLQ_STORM = 150
ADMIN_EMAIL = "oncall@example.test"
ADMIN_PASSWORD = "e2e-alerting-password"

pytestmark = [
    # serial: ten processes on 1 s scrape and evaluation, Watchdog gaps <= 8 s and alerts within
    # bounds; under parallel load the billing-failure metric once never appeared (job/cron ordering)
    pytest.mark.serial,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not all(os.access(p, os.X_OK) for p in (PROMETHEUS, ALERTMANAGER, REDIS_EXPORTER)),
        reason="needs Debian prometheus, prometheus-alertmanager, prometheus-redis-exporter (make tools)",
    ),
]


def worker_job(queue: str) -> str:
    """The scrape job of a queue's workers, as the PodMonitor relabels it (rules file header)."""
    return "fmhl-ops-worker-" + queue.replace("_", "-")


@dataclass
class Stack:
    base: Path
    database_url: str
    redis_url: str
    env: dict[str, str]
    service_port: int
    worker_ports: dict[str, int]
    prometheus_url: str
    alertmanager_url: str
    webhook: Webhook
    am_config: dict[str, Any]
    totp_uri: str = field(default="", repr=False)
    procs: dict[str, Proc] = field(default_factory=dict)
    binaries: dict[str, Proc] = field(default_factory=dict)

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.service_port}"

    def prom(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.prometheus_url}{path}", params=params, timeout=5)
        response.raise_for_status()
        return response.json()["data"]

    def start_worker(self, queue: str) -> Proc:
        if queue in self.procs:  # a replacement: the old one is stopped (killed) already
            self.procs[queue].stop()
            untrack(self.procs[queue].pid)
        env = {**self.env, "WORKER_METRICS_PORT": str(self.worker_ports[queue])}
        proc = Proc(["worker", queue], env).start()
        track(proc.pid)
        self.procs[queue] = proc
        return proc

    def outputs(self) -> str:
        parts = [f"--- {name} ---\n{p.output()[-1500:]}" for name, p in self.procs.items()]
        parts += [f"--- {name} ---\n{b.output()[-1500:]}" for name, b in self.binaries.items()]
        return "\n".join(parts)

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        alerts = self.prom("/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def _run_cli(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [FMHL_OPS, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"fmhl-ops {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def _prometheus_config(stack_ports: dict[str, int], alertmanager_port: int, rules: Path) -> dict[str, Any]:
    scrape = [
        {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        for job, port in stack_ports.items()
    ]
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": scrape,
    }


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if not ALERTMANAGER_CONFIG.exists():
        pytest.fail(f"{ALERTMANAGER_CONFIG.relative_to(ROOT)} is missing: the routing under test")
    base = Path(tempfile.mkdtemp(prefix="fmhl-e2e-alerting-"))
    started = time.monotonic()
    pg = EmbeddedPostgres(base / "postgres")
    redis = EmbeddedRedis(base / "redis")
    webhook = Webhook()
    current: Stack | None = None

    def teardown() -> None:
        """Stop everything by PID and delete the data; idempotent. Also run at interpreter exit,
        in case an interrupt (a second Ctrl-C) cut the fixture's own teardown short."""
        if current is not None:
            for binary in reversed(current.binaries.values()):
                binary.stop()
            for proc in current.procs.values():
                proc.stop(timeout=20)
                untrack(proc.pid)
        webhook.stop()
        for server in (redis, pg):
            if server.process is not None:
                untrack(server.process.pid)
        redis.stop()
        pg.destroy()
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(teardown)
    try:
        pg.start()
        assert pg.process is not None
        track(pg.process.pid)
        redis.start()
        assert redis.process is not None
        track(redis.process.pid)
        webhook.start()
        database_url, redis_url = pg.dsn, redis.url
        env = base_env(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            MFA_ENCRYPTION_KEY=Fernet.generate_key().decode(),
            CRON_SCHEDULES=orjson.dumps({name: {"second": "*"} for name in CRON_NAMES}).decode(),
            HEALTH_CHECK_TIMEOUT_SECONDS="2",
        )
        _run_cli(["migrate"], env)
        enrolment = _run_cli(
            ["admin", "create", "--email", ADMIN_EMAIL, "--role", "admin"], env, ADMIN_PASSWORD + "\n"
        )
        totp_uri = next(line for line in enrolment.stdout.splitlines() if line.startswith("otpauth://"))

        rules = base / "rules.yml"
        original_for = render_rules(RULES, rules, for_=FOR_IN_TEST)
        print(f"rules rendered with for: {FOR_IN_TEST} (shipped: {sorted(set(original_for.values()))})")
        am_config = render_alertmanager(
            ALERTMANAGER_CONFIG, base / "alertmanager.yml", webhook=webhook, intervals=AM_INTERVALS
        )
        check = subprocess.run(
            ["amtool", "check-config", str(base / "alertmanager.yml")], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr

        ports = {
            "service": free_port(),
            "alertmanager": free_port(),
            "prometheus": free_port(),
            "exporter": free_port(),
        }
        worker_ports = {queue: free_port() for queue in ALL_QUEUES}
        current = Stack(
            base=base,
            database_url=database_url,
            redis_url=redis_url,
            env=env,
            service_port=ports["service"],
            worker_ports=worker_ports,
            prometheus_url=f"http://127.0.0.1:{ports['prometheus']}",
            alertmanager_url=f"http://127.0.0.1:{ports['alertmanager']}",
            webhook=webhook,
            am_config=am_config,
            totp_uri=totp_uri,
        )
        serve = Proc(
            ["serve", "--host", "127.0.0.1", "--port", str(ports["service"]), "--drain-seconds", "0.5"], env
        ).start()
        track(serve.pid)
        current.procs["serve"] = serve
        for queue in ALL_QUEUES:
            current.start_worker(queue)
        binaries = {
            "redis_exporter": [
                REDIS_EXPORTER,
                f"-redis.addr=redis://127.0.0.1:{redis.port}",
                f"-web.listen-address=127.0.0.1:{ports['exporter']}",
            ],
            "alertmanager": [
                ALERTMANAGER,
                f"--config.file={base / 'alertmanager.yml'}",
                f"--storage.path={base / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
                "--cluster.listen-address=",
            ],
        }
        scrape_targets = {"fmhl-ops": ports["service"], "redis": ports["exporter"]}
        scrape_targets |= {worker_job(queue): port for queue, port in worker_ports.items()}
        (base / "prometheus.yml").write_text(
            yaml.safe_dump(_prometheus_config(scrape_targets, ports["alertmanager"], rules), sort_keys=False)
        )
        binaries["prometheus"] = [
            PROMETHEUS,
            f"--config.file={base / 'prometheus.yml'}",
            f"--storage.tsdb.path={base / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            "--rules.alert.resend-delay=1s",
        ]
        for name, argv in binaries.items():
            current.binaries[name] = program(argv).start()

        wait_http(f"{current.service_url}/health/ready", timeout=60, proc=serve)
        for queue in ALL_QUEUES:
            wait_http(
                f"http://127.0.0.1:{worker_ports[queue]}/health/live", timeout=60, proc=current.procs[queue]
            )
        wait_until(
            lambda: httpx.get(f"{current.alertmanager_url}/-/ready").status_code == 200,
            timeout=30,
            what="Alertmanager ready",
            detail=current.outputs,
        )
        wait_until(
            lambda: httpx.get(f"{current.prometheus_url}/-/ready").status_code == 200,
            timeout=30,
            what="Prometheus ready",
            detail=current.outputs,
        )
        print(
            f"stack up in {time.monotonic() - started:.1f}s: "
            f"{len(current.procs)} fmhl-ops processes, {len(current.binaries)} others"
        )
        yield current
    finally:
        teardown()
        atexit.unregister(teardown)
        print(f"stack stopped; module took {time.monotonic() - started:.1f}s")


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    secret = parse_qs(urlsplit(stack.totp_uri).query)["secret"][0]
    totp = pyotp.TOTP(secret)
    with httpx.Client(base_url=stack.service_url, timeout=10) as client:
        login = client.post(
            "/api/v1/auth/login",
            json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "totp_code": totp.now()},
        )
        assert login.status_code == 200, login.text
        client.headers["Authorization"] = f"Bearer {login.json()['token']}"
        yield client


async def _with_db(stack: Stack, work: Any) -> Any:
    conn = await asyncpg.connect(stack.database_url)
    await init_connection(conn)  # JSON codecs, as the application's pool has
    redis = create_redis(stack.redis_url)
    try:
        return await work(conn, redis)
    finally:
        await redis.aclose()
        await conn.close()


def _db(stack: Stack, work: Any) -> Any:
    return asyncio.run(_with_db(stack, work))


def _fetchval(stack: Stack, query: str, *args: Any) -> Any:
    return _db(stack, lambda conn, _redis: conn.fetchval(query, *args))


@pytest.fixture(scope="module")
def domain_traffic(stack: Stack) -> dict[str, Any]:
    """Every job and cron path once, so every metric the rules and the dashboard read exists.

    Distribution (assignments, billing), a refund, a report export (inbox query), a billing
    failure (a stale assignment row makes billing that provider a duplicate), a provider whose
    balance no longer matches its ledger by more than RECONCILE_AUTO_CORRECT_MAX (alerted by the
    scheduler's reconcile_balances), and an inactive provider that can pay again (reactivated).
    """

    async def setup(conn: Any, redis: Any) -> dict[str, Any]:
        providers = [await create_provider(conn, balance=Decimal("100.00")) for _ in range(2)]
        # Not eligible for leads (its price is above its balance): with it, four providers could
        # compete for a lead's three places once the dormant one is reactivated, and the first
        # provider (whose stale assignment makes the billing failure) was sometimes not picked.
        corrupted = await create_provider(conn, balance=Decimal("100.00"), lead_price=Decimal("1000.00"))
        await conn.execute("UPDATE providers SET balance = balance + 50 WHERE id = $1", corrupted)
        dormant = await create_provider(
            conn, status="inactive", inactive_reason="insufficient_balance", balance=Decimal("100.00")
        )
        first, second = await create_lead(conn), await create_lead(conn)
        # Stale assignment of ``second`` to the first provider: billing it again is a duplicate.
        await conn.execute(
            "INSERT INTO lead_assignments (lead_id, provider_id, price) VALUES ($1, $2, 10.00)",
            second,
            providers[0],
        )
        export = await create_report_export(conn, providers[1])
        for lead in (first, second):
            await enqueue(redis, "distribute_lead", lead_id=str(lead), correlation_id=f"e2e-lead-{lead}")
        await enqueue(redis, "export_report", export_id=str(export))
        return {
            "first": first,
            "second": second,
            "export": export,
            "dormant": dormant,
            "corrupted": corrupted,
        }

    ids: dict[str, Any] = _db(stack, setup)

    def distributed() -> bool:
        statuses = _db(
            stack,
            lambda conn, _r: conn.fetch(
                "SELECT status FROM leads WHERE id = ANY($1::uuid[])", [ids["first"], ids["second"]]
            ),
        )
        return all(row["status"] != "new" for row in statuses)

    wait_until(
        distributed, timeout=60, what="both leads distributed by the worker process", detail=stack.outputs
    )
    assignment = _fetchval(
        stack, "SELECT id FROM lead_assignments WHERE lead_id = $1 ORDER BY id LIMIT 1", ids["first"]
    )
    _db(
        stack,
        lambda _c, redis: enqueue(redis, "refund_bad_lead", assignment_id=str(assignment), reason="spam"),
    )
    wait_until(
        lambda: _fetchval(stack, "SELECT status FROM lead_assignments WHERE id = $1", assignment) == "bad",
        timeout=60,
        what="the refund",
        detail=stack.outputs,
    )
    wait_until(
        lambda: _fetchval(stack, "SELECT status FROM report_exports WHERE id = $1", ids["export"]) == "done",
        timeout=60,
        what="the report export",
        detail=stack.outputs,
    )
    wait_until(
        lambda: _fetchval(stack, "SELECT status FROM providers WHERE id = $1", ids["dormant"]) == "active",
        timeout=30,
        what="the scheduler reactivating the dormant provider",
        detail=stack.outputs,
    )
    wait_until(
        lambda: _fetchval(
            stack,
            "SELECT count(*) FROM audit_log WHERE action = 'balance.discrepancy_alert' AND target_id = $1",
            str(ids["corrupted"]),
        ),
        timeout=30,
        what="reconcile_balances alerting the corrupted balance",
        detail=stack.outputs,
    )
    return ids


@pytest.fixture(scope="module")
def dlq_storm(stack: Stack) -> list[str]:
    """150 send_email jobs with an unknown template, captured into the DLQ by the worker process."""
    started = time.monotonic()

    async def storm(conn: Any, redis: Any) -> None:
        for n in range(DLQ_STORM):
            await enqueue(
                redis,
                "send_email",
                to=f"p{n}@example.test",
                template="no_such_template",
                context={},
                idempotency_key=f"e2e-storm-{n}",
                correlation_id=f"e2e-storm-{n}",
            )

    _db(stack, storm)
    query = "SELECT count(*) FROM dead_letter_queue WHERE queue_name = $1 AND error_type = 'UnknownTemplate'"
    wait_until(
        lambda: _fetchval(stack, query, EMAIL_SEND) >= DLQ_STORM,
        timeout=60,
        what="150 DLQ captures",
        detail=stack.outputs,
    )
    print(f"{DLQ_STORM} failing jobs captured by the email worker in {time.monotonic() - started:.1f}s")
    rows = _db(
        stack,
        lambda conn, _r: conn.fetch("SELECT id FROM dead_letter_queue WHERE queue_name = $1", EMAIL_SEND),
    )
    return [str(r["id"]) for r in rows]


def _routed_one(stack: Stack, labels: dict[str, str]) -> Any:
    """Where the route tree sends ``labels``; amtool must agree on the receiver(s)."""
    routed = routes_for(stack.am_config, labels)
    assert routed, labels
    pairs = [f"{k}={v}" for k, v in labels.items()]
    amtool = subprocess.run(
        ["amtool", "config", "routes", "test", f"--config.file={stack.base / 'alertmanager.yml'}", *pairs],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert amtool.stdout.split(",") and [r.strip() for r in amtool.stdout.split(",")] == [
        r.receiver for r in routed
    ], amtool.stdout + amtool.stderr
    return routed[0]


def _wait_notification(
    stack: Stack, alertname: str, status: str, *, timeout: float, since: float = 0.0, **labels: str
) -> Any:
    def found() -> Any:
        for note in stack.webhook.matching(alertname, status):
            if note.received < since:
                continue
            alerts = [a for a in note.body["alerts"] if a["labels"].get("alertname") == alertname]
            if all(any(a["labels"].get(k) == v for a in alerts) for k, v in labels.items()):
                return note
        return None

    def detail() -> str:
        seen = [
            (round(n.received - since, 1), n.receiver_path, n.body.get("status"), sorted(n.alertnames))
            for n in stack.webhook.received()
        ]
        return f"webhook saw: {seen[-30:]}\nPrometheus alerts: {stack.prom('/api/v1/alerts')['alerts']}"

    return wait_until(
        found, timeout=timeout, what=f"{alertname} {status} {labels} at the webhook", detail=detail
    )


# --- scenarios ---------------------------------------------------------------------------------------


def test_every_target_is_up_and_every_rule_evaluates(stack: Stack) -> None:
    expected_jobs = {"fmhl-ops", "redis", *(worker_job(q) for q in ALL_QUEUES)}

    def all_up() -> list[dict[str, Any]] | None:
        targets: list[dict[str, Any]] = stack.prom("/api/v1/targets")["activeTargets"]
        if {t["labels"]["job"] for t in targets} == expected_jobs and all(
            t["health"] == "up" for t in targets
        ):
            return targets
        return None

    targets = wait_until(
        all_up, timeout=30, what="every scrape target up", detail=lambda: str(stack.prom("/api/v1/targets"))
    )
    print(f"{len(targets)} scrape targets up: {sorted(t['labels']['job'] for t in targets)}")

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in stack.prom("/api/v1/rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = wait_until(evaluated, timeout=30, what="every rule evaluated once")
    broken = [
        (r["name"], r["health"], r.get("lastError"))
        for r in rules
        if r["health"] != "ok" or r.get("lastError")
    ]
    assert broken == []
    shipped = yaml.safe_load(RULES.read_text())
    assert len(rules) == sum(len(g["rules"]) for g in shipped["groups"])
    print(f"{len(rules)} rules evaluate without error")


def test_watchdog_arrives(stack: Stack) -> None:
    routed = _routed_one(stack, {"alertname": "Watchdog", "severity": "none"})
    first = _wait_notification(stack, "Watchdog", "firing", timeout=30)
    assert first.receiver_path == routed.receiver == first.body["receiver"]
    wait_until(
        lambda: len(stack.webhook.matching("Watchdog", "firing")) >= 3,
        timeout=20,
        what="three Watchdog notifications",
    )


def test_dlq_storm_fires_dlq_size_high_through_alertmanager(stack: Stack, dlq_storm: list[str]) -> None:
    assert len(dlq_storm) >= DLQ_STORM
    started = time.monotonic()
    wait_until(
        lambda: stack.firing("DLQSizeHigh"),
        timeout=60,
        what="DLQSizeHigh firing in Prometheus",
        detail=lambda: str(stack.prom("/api/v1/alerts")),
    )
    in_prometheus = time.monotonic() - started
    note = _wait_notification(stack, "DLQSizeHigh", "firing", timeout=30, queue=EMAIL_SEND)
    delivered = time.monotonic() - started
    alert = next(a for a in note.body["alerts"] if a["labels"]["alertname"] == "DLQSizeHigh")
    print(
        f"DLQSizeHigh firing in Prometheus {in_prometheus:.1f}s, "
        f"at the webhook {delivered:.1f}s after the captures"
    )
    assert alert["annotations"]["runbook_url"].endswith("alerts/runbooks/DLQSizeHigh.md")
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["queue"] == EMAIL_SEND
    routed = _routed_one(stack, alert["labels"])
    assert note.receiver_path == routed.receiver == note.body["receiver"]
    assert note.body["groupLabels"] == group_labels(routed, alert["labels"])
    if "alertname" in routed.group_by:
        assert note.alertnames == {"DLQSizeHigh"}, "grouped by alert name: no other alert in this group"


def test_retry_of_one_entry_from_the_api_runs_again_in_the_worker(
    stack: Stack, admin: httpx.Client, dlq_storm: list[str]
) -> None:
    entry = dlq_storm[0]
    worker = stack.procs[EMAIL_SEND]
    response = admin.post(f"/api/v1/admin/queues/dlq/{entry}/retry", json={})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    # The template is still unknown: the worker runs the job again and captures it again,
    # pointing back to the entry it was retried from.
    again = wait_until(
        lambda: _db(
            stack,
            lambda conn, _r: conn.fetchrow(
                "SELECT id, job_id, attempts FROM dead_letter_queue WHERE retry_of = $1::uuid", entry
            ),
        ),
        timeout=30,
        what="the retried job to run and fail again in the worker",
        detail=lambda: worker.output()[-3000:],
    )
    assert again["job_id"] == job_id
    assert job_id in worker.output(), "the email worker process ran the retried job"
    original = admin.get(f"/api/v1/admin/queues/dlq/{entry}").json()
    assert original["resolution"] == "retried" and original["retry_job_id"] == job_id
    print(f"retry of {entry}: job {job_id} ran in worker pid {worker.pid}, captured again as {again['id']}")


def test_resolving_the_entries_resolves_dlq_size_high(
    stack: Stack, admin: httpx.Client, dlq_storm: list[str]
) -> None:
    _wait_notification(stack, "DLQSizeHigh", "firing", timeout=60, queue=EMAIL_SEND)
    resolved = 0
    started = time.monotonic()  # before: the alert may resolve while the last ones are resolved
    while True:
        page = admin.get("/api/v1/admin/queues/dlq", params={"resolved": "false", "limit": "100"})
        assert page.status_code == 200, page.text
        items = page.json()["items"]
        if not items:
            break
        for item in items:
            answer = admin.post(
                f"/api/v1/admin/queues/dlq/{item['id']}/resolve", json={"note": "e2e: template fixed"}
            )
            assert answer.status_code == 200, answer.text
            resolved += 1
    note = _wait_notification(stack, "DLQSizeHigh", "resolved", timeout=60, since=started, queue=EMAIL_SEND)
    print(
        f"resolved {resolved} entries; "
        f"DLQSizeHigh resolved at the webhook after {time.monotonic() - started:.1f}s"
    )
    assert all(a["status"] == "resolved" for a in note.body["alerts"])
    assert not stack.firing("DLQSizeHigh")


def test_a_killed_worker_raises_its_heartbeat_alert_and_readiness_warns(
    stack: Stack, domain_traffic: dict[str, Any]
) -> None:
    worker = stack.procs[REPORT_EXPORT]
    job = worker_job(REPORT_EXPORT)
    killed_at = time.monotonic()
    worker.signal(signal.SIGKILL)
    worker.wait(timeout=10)
    note = _wait_notification(stack, "WorkerHeartbeatMissing", "firing", timeout=45, since=killed_at, job=job)
    alert = next(a for a in note.body["alerts"] if a["labels"].get("job") == job)
    routed = _routed_one(stack, alert["labels"])
    assert note.receiver_path == routed.receiver
    assert alert["annotations"]["runbook_url"].endswith("alerts/runbooks/WorkerHeartbeatMissing.md")
    print(
        f"WorkerHeartbeatMissing for {job} at the webhook {time.monotonic() - killed_at:.1f}s after SIGKILL"
    )

    def warns() -> httpx.Response | None:
        response = httpx.get(f"{stack.service_url}/health/ready", timeout=5)
        checks = {c["componentId"]: c["status"] for c in response.json()["checks"]["workers:heartbeat"]}
        return response if response.json()["status"] == "warn" and checks[REPORT_EXPORT] == "warn" else None

    ready = wait_until(warns, timeout=40, what="readiness to warn about the dead worker")
    assert ready.status_code == 200
    others = {c["componentId"]: c["status"] for c in ready.json()["checks"]["workers:heartbeat"]}
    assert {q: s for q, s in others.items() if q != REPORT_EXPORT} == {
        q: "pass" for q in ALL_QUEUES if q != REPORT_EXPORT
    }
    print(f"readiness {ready.status_code} warn {time.monotonic() - killed_at:.1f}s after SIGKILL")

    restarted_at = time.monotonic()
    stack.start_worker(REPORT_EXPORT)
    _wait_notification(stack, "WorkerHeartbeatMissing", "resolved", timeout=45, since=restarted_at, job=job)
    print(f"a new worker resolved it after {time.monotonic() - restarted_at:.1f}s")


def test_watchdog_arrived_continuously(stack: Stack) -> None:
    times = [n.received for n in stack.webhook.matching("Watchdog", "firing")]
    assert len(times) >= 5, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    span = times[-1] - times[0]
    print(f"Watchdog: {len(times)} notifications over {span:.0f}s, max gap {max(gaps):.1f}s")
    assert max(gaps) <= WATCHDOG_MAX_GAP_SECONDS
    assert time.monotonic() - times[-1] <= WATCHDOG_MAX_GAP_SECONDS


def test_every_metric_in_the_rules_and_the_dashboard_exists(
    stack: Stack, domain_traffic: dict[str, Any], dlq_storm: list[str]
) -> None:
    wanted = names_in_rules(RULES) | names_in_dashboard(DASHBOARD)

    def missing() -> set[str]:
        return wanted - set(stack.prom("/api/v1/label/__name__/values"))

    with contextlib.suppress(AssertionError):
        wait_until(lambda: not missing(), timeout=30, what="every metric name")
    assert missing() == set()
    print(f"{len(wanted)} metric names from the rules and the dashboard all exist as series")
    rules = [r for g in stack.prom("/api/v1/rules")["groups"] for r in g["rules"]]
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok" or r.get("lastError")]
    assert broken == [], "after the scenarios too, every rule evaluates without error"
    firing = sorted({a["labels"]["alertname"] for a in stack.prom("/api/v1/alerts")["alerts"]})
    print(f"alerts active at the end: {firing}")
