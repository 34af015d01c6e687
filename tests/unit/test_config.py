from __future__ import annotations

from decimal import Decimal

import pytest

from shared.infra.config import ConfigError, load_settings


def test_defaults_match_the_contract() -> None:
    settings = load_settings({})
    assert settings.session_ttl_seconds == 28800
    assert settings.dlq_retention_days == 30
    assert settings.reconcile_auto_correct_max == Decimal("1.00")
    assert settings.health_check_timeout_seconds == 1.0
    assert settings.slow_query_ms == 500
    assert settings.log_format == "json"


def test_values_are_parsed() -> None:
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://u:p@db:5432/x",
            "REDIS_URL": "redis://r:6379/1",
            "DLQ_RETENTION_DAYS": "7",
            "RECONCILE_AUTO_CORRECT_MAX": "2.5",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "console",
            "WORKER_METRICS_PORT": "9101",
        }
    )
    assert settings.dlq_retention_days == 7
    assert settings.reconcile_auto_correct_max == Decimal("2.50")
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "console"
    assert settings.worker_metrics_port == 9101


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x/y"),
        ("DATABASE_URL", "not a url"),
        ("REDIS_URL", "http://r"),
        ("DLQ_RETENTION_DAYS", "thirty"),
        ("DLQ_RETENTION_DAYS", "-1"),
        ("RECONCILE_AUTO_CORRECT_MAX", "NaN"),
        ("HEALTH_CHECK_TIMEOUT_SECONDS", "0"),
        ("WORKER_METRICS_PORT", "70000"),
        ("LOG_FORMAT", "xml"),
        ("SESSION_TTL_SECONDS", "1.5"),
        ("WORKER_MAX_JOBS", "0"),
        ("WORKER_POLL_DELAY_SECONDS", "-0.1"),
        ("WORKER_POLL_DELAY_SECONDS", "soon"),
        ("WORKER_QUEUES", '{"email_send": {"max_jobs": 0}}'),
        ("WORKER_QUEUES", '{"email_send": {"concurrency": 4}}'),
        ("WORKER_QUEUES", '["email_send"]'),
        ("DATABASE_DIRECT_URL", "mysql://x/y"),
        ("DB_STATEMENT_CACHE_SIZE", "-1"),
        ("DB_STATEMENT_CACHE_SIZE", "off"),
        ("POISON_AFTER_LOST_TRIES", "0"),
        ("POISON_AFTER_LOST_TRIES", "101"),
        ("POISON_AFTER_LOST_TRIES", "two"),
        ("TRACE_URL_TEMPLATE", "https://tempo.example/trace/"),
        ("TRACE_URL_TEMPLATE", "javascript:alert({trace_id})"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({name: value})
    assert str(info.value).startswith(f"{name}=")
    assert "expected" in str(info.value)
    assert "\n" not in str(info.value)


def test_worker_concurrency_defaults_and_per_queue_overrides() -> None:
    defaults = load_settings({})
    assert defaults.max_jobs_for("email_send") == 50
    assert defaults.poll_delay_for("email_send") == 0.05
    settings = load_settings(
        {
            "WORKER_MAX_JOBS": "20",
            "WORKER_POLL_DELAY_SECONDS": "0",
            "WORKER_QUEUES": '{"report_export": {"max_jobs": 2, "poll_delay_seconds": 1.5}}',
        }
    )
    assert (settings.max_jobs_for("email_send"), settings.poll_delay_for("email_send")) == (20, 0.0)
    assert (settings.max_jobs_for("report_export"), settings.poll_delay_for("report_export")) == (2, 1.5)


async def test_worker_refuses_an_unknown_queue_override() -> None:
    from worker.fmhl_worker import build_worker

    settings = load_settings({"WORKER_QUEUES": '{"emails": {"max_jobs": 2}}'})
    with pytest.raises(ConfigError, match="WORKER_QUEUES names unknown queue"):
        build_worker("email_send", settings, redis=object())


async def test_worker_takes_its_queue_concurrency() -> None:
    from worker.fmhl_worker import build_worker

    settings = load_settings({"WORKER_QUEUES": '{"email_send": {"max_jobs": 7, "poll_delay_seconds": 0.2}}'})
    worker = build_worker("email_send", settings, redis=object(), handle_signals=False)
    assert worker.max_jobs == 7 and worker.poll_delay_s == 0.2


def test_migrations_use_the_direct_url_when_given() -> None:
    pooled = "postgresql://u@pgbouncer:6432/fmhl"
    direct = "postgresql://u@postgres:5432/fmhl"
    assert load_settings({"DATABASE_URL": pooled}).migration_database_url() == pooled
    both = load_settings({"DATABASE_URL": pooled, "DATABASE_DIRECT_URL": direct})
    assert both.migration_database_url() == direct
    assert load_settings({}).db_statement_cache_size is None  # auto
    assert load_settings({"DB_STATEMENT_CACHE_SIZE": "0"}).db_statement_cache_size == 0


def test_poison_after_lost_tries_defaults_to_two() -> None:
    assert load_settings({}).poison_after_lost_tries == 2
    assert load_settings({"POISON_AFTER_LOST_TRIES": "3"}).poison_after_lost_tries == 3


def test_trace_url_template_links_a_trace_id() -> None:
    settings = load_settings({"TRACE_URL_TEMPLATE": "https://jaeger.example/trace/{trace_id}"})
    assert settings.trace_url("0af7651916cd43dd8448eb211c80319c") == (
        "https://jaeger.example/trace/0af7651916cd43dd8448eb211c80319c"
    )
    assert settings.trace_url(None) is None and load_settings({}).trace_url("ab" * 16) is None
