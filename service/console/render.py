"""Jinja2 rendering for the console: one environment, autoescaped, compiled once per process."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from service.console.security import CONSOLE_CSP, ConsoleUser, secure_headers
from shared import __version__
from shared.infra.correlation import current_correlation_id

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
STATIC_URL = "/console/static"


def _ts(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat() if moment is not None else ""


def _span(seconds: float | None) -> str:
    """``4.2 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``: how long, for a human."""
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return _span(time.time() - moment.timestamp()) + " ago"


def _until(moment: datetime | None) -> str:
    """``in 3 min 5 s`` for a future moment, ``now`` once it has passed."""
    if moment is None:
        return "—"
    seconds = moment.timestamp() - time.time()
    return "in " + _span(seconds) if seconds >= 1 else "now"


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _number(value: int) -> str:
    return f"{value:,}"


def build_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ts=_ts, iso=_iso, span=_span, ago=_ago, until=_until, pretty=_pretty, number=_number)
    env.globals.update(static=STATIC_URL, version=__version__)
    return env


ENVIRONMENT = build_environment()


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    user: ConsoleUser | None = None,
    status: int = 200,
    csp: str = CONSOLE_CSP,
) -> Response:
    body = ENVIRONMENT.get_template(template).render(
        {
            "user": user,
            "path": request.url.path,
            "request_id": current_correlation_id(),
            **(context or {}),
        }
    )
    return secure_headers(HTMLResponse(body, status_code=status), csp=csp)


def redirect(url: str) -> Response:
    """303 See Other: after a POST the browser GETs the next page (no resubmission on reload)."""
    return secure_headers(RedirectResponse(url, status_code=303))
