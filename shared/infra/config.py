"""Settings: built once from the environment at an entrypoint and passed down (12-factor).

A bad value raises ``ConfigError`` naming the variable and what it expects; the CLI prints that
one line and exits non-zero, with no traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from cryptography.fernet import Fernet

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""


# A storm of failures drains at the pace of max_jobs / poll delay: arq's defaults (10 jobs, 0.5 s)
# cap a worker near 200 jobs/s whatever the CPU. Chosen by ``make bench`` (README "Performance").
DEFAULT_WORKER_MAX_JOBS = 50
DEFAULT_WORKER_POLL_DELAY_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None
    redis_url: str | None
    log_level: str = "INFO"
    log_format: str = "json"
    mfa_encryption_key: str | None = None
    session_ttl_seconds: int = 28800
    dlq_retention_days: int = 30
    reconcile_auto_correct_max: Decimal = Decimal("1.00")
    health_check_timeout_seconds: float = 1.0
    slow_query_ms: int = 500
    worker_metrics_port: int | None = None
    metrics_port: int | None = None
    db_pool_min_size: int = 1
    db_pool_max_size: int = 10
    # asyncpg's prepared-statement cache per connection; None = auto: 100 (asyncpg's default) on a
    # direct connection, 0 behind a pooler such as PgBouncer in transaction mode (shared/infra/db.py).
    db_statement_cache_size: int | None = None
    # A direct (not pooled) URL for `fmhl-ops migrate`; DATABASE_URL when unset (README, PgBouncer).
    database_direct_url: str | None = None
    db_command_timeout_seconds: float = 30.0
    email_backend: str = "log"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_from: str = "noreply@fmhl.example"
    release_id: str = "0.1.0"
    # Cron schedule overrides, e.g. {"reactivate_subscriptions": {"second": "*"}} (tests, ops).
    cron_schedules: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Per-function retry policy overrides, e.g. {"send_email": {"max_tries": 8, "timeout_seconds": 60}}.
    job_policies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Worker concurrency for every queue (defaults measured by ``make bench``: see README
    # "Performance") and per-queue overrides, e.g. {"report_export": {"max_jobs": 4}}.
    worker_max_jobs: int = DEFAULT_WORKER_MAX_JOBS
    worker_poll_delay_seconds: float = DEFAULT_WORKER_POLL_DELAY_SECONDS
    worker_queues: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The console's session cookie drops ``Secure`` only when this is set AND a request arrives over
    # plain HTTP on a loopback host (``fmhl-ops dev`` sets it; see service/console/security.py).
    console_insecure_cookies: bool = False
    # A console session unused this long is revoked (sign in again); SESSION_TTL_SECONDS stays
    # the absolute limit. The overview's 5 s auto-refresh does not count as use.
    console_idle_timeout_seconds: int = 1800
    # A job whose tries vanished with their worker (SIGKILL, OOM, segfault) this many times is
    # quarantined at its next pickup (DLQ reason ``poison``) instead of run again (worker/poison.py).
    poison_after_lost_tries: int = 2
    # The console's entry page links a DLQ row's trace id here, e.g. Grafana Tempo's
    # "https://grafana.example/explore?...{trace_id}..." or Jaeger's "https://jaeger.example/trace/{trace_id}".
    trace_url_template: str | None = None

    def trace_url(self, trace_id: str | None) -> str | None:
        if not trace_id or not self.trace_url_template:
            return None
        return self.trace_url_template.replace("{trace_id}", trace_id)

    def max_jobs_for(self, queue: str) -> int:
        return int(self.worker_queues.get(queue, {}).get("max_jobs", self.worker_max_jobs))

    def poll_delay_for(self, queue: str) -> float:
        overrides = self.worker_queues.get(queue, {})
        return float(overrides.get("poll_delay_seconds", self.worker_poll_delay_seconds))

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("DATABASE_URL is required (postgresql://user:pass@host:5432/db)")
        return self.database_url

    def migration_database_url(self) -> str:
        """``DATABASE_DIRECT_URL`` if set, else ``DATABASE_URL`` (migrations work through either)."""
        return self.database_direct_url or self.require_database_url()

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError("REDIS_URL is required (redis://host:6379/0)")
        return self.redis_url


def _parse(env: Mapping[str, str], name: str, parse: Callable[[str], T], expects: str, default: T) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except (ValueError, InvalidOperation) as exc:
        raise ConfigError(f"{name}={raw!r} is invalid: expected {expects}") from exc


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def _trace_url_template(raw: str) -> str:
    if "{trace_id}" not in raw or urlsplit(raw).scheme not in ("http", "https") or not urlsplit(raw).netloc:
        raise ValueError(raw)
    return raw


def _lost_tries(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 100:
        raise ValueError(raw)
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 65535:
        raise ValueError(raw)
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(raw)
    return value


def _money(raw: str) -> Decimal:
    value = Decimal(raw)
    if not value.is_finite() or value < 0:
        raise ValueError(raw)
    return value.quantize(Decimal("0.01"))


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.lower() if raw.lower() in choices else raw.upper()
        if value not in choices:
            raise ValueError(raw)
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes:
            raise ValueError(raw)
        if not parts.hostname and "host=" not in (parts.query or ""):
            raise ValueError(raw)
        return raw

    return parse


def _mfa_encryption_key(env: Mapping[str, str]) -> str | None:
    """A Fernet key or None; a bad one fails without echoing it (it is a secret)."""
    raw = (env.get("MFA_ENCRYPTION_KEY") or "").strip()
    if not raw:
        return None
    try:
        Fernet(raw.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise ConfigError(
            f"MFA_ENCRYPTION_KEY=<{len(raw)} characters, not shown> is invalid: expected a Fernet key "
            "(32 url-safe base64-encoded bytes, e.g. from cryptography's Fernet.generate_key())"
        ) from exc
    return raw


CRON_FIELDS = ("month", "day", "weekday", "hour", "minute", "second")


def _cron_schedules(raw: str) -> dict[str, dict[str, Any]]:
    """JSON: {"job": {"minute": [0, 30], "second": 0}}; "*" means every value of that field."""
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(raw)
    schedules: dict[str, dict[str, Any]] = {}
    for job, fields in data.items():
        if not isinstance(fields, dict) or not set(fields) <= set(CRON_FIELDS):
            raise ValueError(raw)
        for value in fields.values():
            ok = (
                value == "*"
                or isinstance(value, int)
                or (isinstance(value, list) and all(isinstance(v, int) for v in value))
            )
            if not ok:
                raise ValueError(raw)
        schedules[str(job)] = dict(fields)
    return schedules


POLICY_FIELDS = (
    "max_tries",
    "timeout_seconds",
    "backoff_base_seconds",
    "backoff_max_seconds",
    "jitter_ratio",
)


def _job_policies(raw: str) -> dict[str, dict[str, Any]]:
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(raw)
    policies: dict[str, dict[str, Any]] = {}
    for function, fields in data.items():
        if not isinstance(fields, dict) or not set(fields) <= set(POLICY_FIELDS):
            raise ValueError(raw)
        for value in fields.values():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(raw)
        if "max_tries" in fields and (not isinstance(fields["max_tries"], int) or fields["max_tries"] < 1):
            raise ValueError(raw)
        policies[str(function)] = dict(fields)
    return policies


WORKER_QUEUE_FIELDS = ("max_jobs", "poll_delay_seconds")


def _worker_queues(raw: str) -> dict[str, dict[str, Any]]:
    """JSON: {"report_export": {"max_jobs": 4, "poll_delay_seconds": 1.0}} per queue.

    Queue names are checked by the worker at start (``worker.fmhl_worker.build_worker``): infra
    does not know the job layer's names.
    """
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(raw)
    queues: dict[str, dict[str, Any]] = {}
    for queue, fields in data.items():
        if not isinstance(fields, dict) or not set(fields) <= set(WORKER_QUEUE_FIELDS):
            raise ValueError(raw)
        max_jobs = fields.get("max_jobs", 1)
        delay = fields.get("poll_delay_seconds", 0)
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise ValueError(raw)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 60:
            raise ValueError(raw)
        queues[str(queue)] = dict(fields)
    return queues


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered not in ("1", "0", "true", "false", "yes", "no"):
        raise ValueError(raw)
    return lowered in ("1", "true", "yes")


def _poll_delay(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 60:
        raise ValueError(raw)
    return value


_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every variable; raise ``ConfigError`` on the first bad one."""
    e = os.environ if env is None else env
    pg = ("postgres", "postgresql")
    return Settings(
        database_url=_parse(e, "DATABASE_URL", _url(*pg), "a postgresql:// URL with a host", None),
        redis_url=_parse(e, "REDIS_URL", _url("redis", "rediss", "unix"), "a redis:// URL with a host", None),
        log_level=_parse(e, "LOG_LEVEL", _choice(*_LEVELS), "one of " + ", ".join(_LEVELS), "INFO"),
        log_format=_parse(e, "LOG_FORMAT", _choice("json", "console"), "json or console", "json"),
        mfa_encryption_key=_mfa_encryption_key(e),
        session_ttl_seconds=_parse(e, "SESSION_TTL_SECONDS", _positive_int, "a positive integer", 28800),
        dlq_retention_days=_parse(e, "DLQ_RETENTION_DAYS", _positive_int, "a positive integer of days", 30),
        reconcile_auto_correct_max=_parse(
            e, "RECONCILE_AUTO_CORRECT_MAX", _money, "a non-negative decimal amount", Decimal("1.00")
        ),
        health_check_timeout_seconds=_parse(
            e, "HEALTH_CHECK_TIMEOUT_SECONDS", _positive_float, "a positive number of seconds", 1.0
        ),
        slow_query_ms=_parse(e, "SLOW_QUERY_MS", _positive_int, "a positive integer of milliseconds", 500),
        worker_metrics_port=_parse(e, "WORKER_METRICS_PORT", _port, "a TCP port 1-65535", None),
        metrics_port=_parse(e, "METRICS_PORT", _port, "a TCP port 1-65535", None),
        db_pool_min_size=_parse(e, "DB_POOL_MIN_SIZE", _positive_int, "a positive integer", 1),
        db_pool_max_size=_parse(e, "DB_POOL_MAX_SIZE", _positive_int, "a positive integer", 10),
        db_statement_cache_size=_parse(
            e, "DB_STATEMENT_CACHE_SIZE", _non_negative_int, "a non-negative integer (0 disables it)", None
        ),
        database_direct_url=_parse(
            e, "DATABASE_DIRECT_URL", _url(*pg), "a postgresql:// URL with a host", None
        ),
        db_command_timeout_seconds=_parse(
            e, "DB_COMMAND_TIMEOUT_SECONDS", _positive_float, "a positive number of seconds", 30.0
        ),
        email_backend=_parse(e, "EMAIL_BACKEND", _choice("log", "smtp"), "log or smtp", "log"),
        smtp_host=e.get("SMTP_HOST") or "127.0.0.1",
        smtp_port=_parse(e, "SMTP_PORT", _port, "a TCP port 1-65535", 25),
        smtp_from=e.get("SMTP_FROM") or "noreply@fmhl.example",
        job_policies=_parse(
            e, "JOB_POLICIES", _job_policies, 'JSON like {"send_email": {"max_tries": 8}}', {}
        ),
        worker_max_jobs=_parse(
            e, "WORKER_MAX_JOBS", _positive_int, "a positive integer", DEFAULT_WORKER_MAX_JOBS
        ),
        worker_poll_delay_seconds=_parse(
            e,
            "WORKER_POLL_DELAY_SECONDS",
            _poll_delay,
            "a number of seconds from 0 to 60",
            DEFAULT_WORKER_POLL_DELAY_SECONDS,
        ),
        worker_queues=_parse(
            e,
            "WORKER_QUEUES",
            _worker_queues,
            'JSON like {"report_export": {"max_jobs": 4, "poll_delay_seconds": 1}}',
            {},
        ),
        console_insecure_cookies=_parse(
            e, "CONSOLE_INSECURE_COOKIES", _flag, "1 or 0 (true/false, yes/no)", False
        ),
        console_idle_timeout_seconds=_parse(
            e, "CONSOLE_IDLE_TIMEOUT_SECONDS", _positive_int, "a positive integer of seconds", 1800
        ),
        trace_url_template=_parse(
            e, "TRACE_URL_TEMPLATE", _trace_url_template, "an http(s) URL containing {trace_id}", None
        ),
        poison_after_lost_tries=_parse(
            e, "POISON_AFTER_LOST_TRIES", _lost_tries, "an integer from 1 to 100", 2
        ),
        cron_schedules=_parse(
            e, "CRON_SCHEDULES", _cron_schedules, 'JSON like {"cleanup_dlq": {"hour": 1, "minute": 0}}', {}
        ),
    )
