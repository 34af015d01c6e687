"""``python bench/probe_cost.py ROOT N [bare]``: CPU per ``/health/live`` request of the app alone.

Calls the service's ASGI app (``create_app`` wrapped as ``fmhl-ops serve`` wraps it) ``N`` times
directly, no server and no socket, with the code under ``ROOT`` first on ``sys.path`` (this
checkout, or another such as main's, for an A/B in fresh interpreters); ``bare`` calls
``bench.bare_app`` instead. Prints the best of 7 runs in microseconds of process CPU time per
request: on a machine shared with other work, wall-clock throughput (``wrk``) swings by 2-3x
between rounds, CPU time per request far less. What it leaves out (uvicorn, h11, the socket) is
the same for every side but ``MainPortProtocol``'s head-deadline timer.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

RUNS = 7
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/health/live",
    "raw_path": b"/health/live",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    if message["type"] == "http.response.start" and message["status"] != 200:
        raise RuntimeError(f"/health/live answered {message['status']}")


def app_under_test(bare: bool) -> Any:
    if bare:
        from bench.bare_app import app

        return app
    from service.app import create_app
    from service.server import close_connections_while_draining
    from shared.infra.config import Settings

    os.environ.setdefault("MFA_ENCRYPTION_KEY", "probe-cost-" + "0" * 32)
    app = create_app(Settings(database_url=None, redis_url="redis://127.0.0.1:1/0"))
    return close_connections_while_draining(app, app.state.ops)


async def per_request_us(app: Any, n: int) -> float:
    for _ in range(1000):  # warm-up
        await app({**SCOPE, "state": {}}, receive, send)
    best = float("inf")
    for _ in range(RUNS):
        started = time.process_time()
        for _ in range(n):
            await app({**SCOPE, "state": {}}, receive, send)
        best = min(best, (time.process_time() - started) / n * 1e6)
    return best


def main(argv: list[str]) -> None:
    sys.path.insert(0, argv[1])
    bare = len(argv) > 3 and argv[3] == "bare"
    print(f"{asyncio.run(per_request_us(app_under_test(bare), int(argv[2]))):.1f} us/request")


if __name__ == "__main__":
    main(sys.argv)
