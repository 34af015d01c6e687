"""No-I/O checks of the console's pieces: cron names agree with the scheduler, CSRF tokens,
the sign-in redirect guard, the cookie's Secure rule, and the vendored assets' licences."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.requests import Request

from service.console.render import STATIC, _span
from service.console.security import cookie_secure, csrf_key, csrf_matches, csrf_token
from service.console.signin import _safe_next
from shared.infra.config import ConfigError, load_settings
from shared.jobs.cron_runs import CRON_JOB_NAMES, manual_run_job_id
from worker.cron import CRON_NAMES, tick_of


def test_console_cron_names_are_the_schedulers() -> None:
    assert CRON_JOB_NAMES == CRON_NAMES


def test_a_manual_run_claims_its_own_tick() -> None:
    job_id = manual_run_job_id("cleanup_dlq", at=1_700_000_000.123)
    assert job_id == "manual:cleanup_dlq:1700000000123"
    assert tick_of({"job_id": job_id}).timestamp() == 1_700_000_000.123


def test_csrf_token_is_bound_to_the_session_and_the_key() -> None:
    key = csrf_key("k1")
    token = csrf_token("a" * 43, key)
    assert csrf_matches(token, token)
    assert not csrf_matches(token, csrf_token("b" * 43, key))
    assert not csrf_matches(token, csrf_token("a" * 43, csrf_key("k2")))
    assert not csrf_matches(token, None) and not csrf_matches(token, "")


def test_next_only_stays_inside_the_console() -> None:
    assert _safe_next("/console/dlq?queue=email_send") == "/console/dlq?queue=email_send"
    for hostile in ("https://evil.test/console", "//evil.test", "/console//evil.test", "/\\evil", None, 3):
        assert _safe_next(hostile) == "/console"


def _request(url: str) -> Request:
    scheme, rest = url.split("://")
    host = rest.split("/")[0]
    return Request(
        {
            "type": "http",
            "scheme": scheme,
            "server": (host, 80),
            "path": "/console",
            "headers": [(b"host", host.encode())],
            "query_string": b"",
        }
    )


def test_the_cookie_drops_secure_only_when_allowed_and_plain_http_on_loopback() -> None:
    for url in ("http://127.0.0.1:8000/console", "http://localhost:8000/console", "http://[::1]:8000/c"):
        assert not cookie_secure(_request(url), allow_insecure=True), url
        assert cookie_secure(_request(url), allow_insecure=False), url  # not without the setting
    assert cookie_secure(_request("https://127.0.0.1/console"), allow_insecure=True)
    assert cookie_secure(_request("http://ops.example.test/console"), allow_insecure=True)


def test_console_insecure_cookies_is_an_explicit_flag() -> None:
    assert load_settings({}).console_insecure_cookies is False
    assert load_settings({"CONSOLE_INSECURE_COOKIES": "1"}).console_insecure_cookies is True
    with pytest.raises(ConfigError, match="CONSOLE_INSECURE_COOKIES"):
        load_settings({"CONSOLE_INSECURE_COOKIES": "maybe"})


def test_spans_read_like_a_human_wrote_them() -> None:
    assert [_span(s) for s in (0.25, 42, 185, 7_500, 400_000)] == [
        "0.2 s",
        "42 s",
        "3 min 5 s",
        "2 h 5 min",
        "4 d 15 h",
    ]


def test_vendored_assets_carry_version_and_licence() -> None:
    vendor = Path(STATIC) / "vendor"
    for name in ("htmx-2.0.11", "swagger-ui-5.35.0"):
        assert (vendor / name / "LICENSE").stat().st_size > 100
        assert name.split("-")[-1] in (vendor / name / "VERSION").read_text()


def test_the_console_ships_in_the_wheel_with_every_template_and_asset() -> None:
    """A namespace directory (no ``__init__``) or a file outside package-data would be missing
    from the image, which installs the wheel, not the checkout."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    console = root / "service" / "console"
    assert (console / "__init__.py").is_file()
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "service.console"
    ]
    shipped = [p.relative_to(console).as_posix() for p in console.rglob("*") if p.is_file()]
    data = [f for f in shipped if not f.endswith((".py", ".pyc")) and "__pycache__" not in f]
    assert len(data) > 20
    missing = [f for f in data if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]
    assert not missing, missing
