"""Start real processes (``fmhl-ops`` by default, or any program) for end-to-end tests and stop
them by PID. Every process runs in its own process group; a group still alive when the
interpreter exits (an interrupted teardown, a second Ctrl-C) is killed by an atexit net."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

FMHL_OPS = str(Path(sys.executable).parent / "fmhl-ops")

_LIVE_GROUPS: set[int] = set()


def track(pgid: int) -> None:
    """Remember a process group (started with ``start_new_session``) for the atexit net."""
    _LIVE_GROUPS.add(pgid)


def untrack(pgid: int) -> None:
    _LIVE_GROUPS.discard(pgid)


@atexit.register
def _kill_leftovers() -> None:
    """Last resort (interpreter exit after an interrupted teardown): kill what is still running."""
    for pgid in list(_LIVE_GROUPS):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


def base_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update({"LOG_LEVEL": "INFO", "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    env.update(overrides)
    return env


@dataclass
class Proc:
    """``executable`` (``fmhl-ops`` unless given) with ``args``; ``env`` None inherits ours."""

    args: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = field(default=None, repr=False)
    executable: str = FMHL_OPS

    def start(self) -> Proc:
        self._out = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [self.executable, *self.args],
            env=dict(self.env) if self.env is not None else None,
            cwd=self.cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        track(self.process.pid)
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def output(self) -> str:
        assert self._out is not None
        self._out.seek(0)
        return self._out.read().decode("utf-8", errors="replace")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL the whole process group if it does not exit in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait()
        untrack(self.pid)
        return self.process.returncode


def program(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None
) -> Proc:
    """Any program (Prometheus, Alertmanager, make ...) as a ``Proc``."""
    return Proc(list(argv[1:]), env, cwd, executable=argv[0])


def wait_tcp(port: int, *, timeout: float, proc: Proc | None = None) -> None:
    """Until something accepts a TCP connection on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.process is not None and proc.process.poll() is not None:
            raise AssertionError(f"process exited {proc.process.returncode}:\n{proc.output()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    detail = proc.output()[-3000:] if proc is not None else ""
    raise AssertionError(f"nothing listened on port {port} within {timeout}s:\n{detail}")


def wait_http(
    url: str, *, timeout: float, status: int | None = 200, proc: Proc | None = None
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.process is not None and proc.process.poll() is not None:
            raise AssertionError(f"process exited {proc.process.returncode}:\n{proc.output()[-3000:]}")
        try:
            response = httpx.get(url, timeout=2)
            if status is None or response.status_code == status:
                return response
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    detail = proc.output()[-3000:] if proc is not None else ""
    raise AssertionError(f"{url} did not answer {status} within {timeout}s ({last}):\n{detail}")


async def wait_until(
    predicate: Callable[[], Awaitable[object]],
    timeout: float,
    what: str,
    *procs: Proc,
    interval: float = 0.1,
) -> None:
    """Poll ``predicate`` until it is truthy; after ``timeout`` s fail with ``what`` and the tail of
    each of ``procs``' output (the processes whose logs say why)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    output = "\n".join(proc.output()[-3000:] for proc in procs)
    raise AssertionError(f"timed out waiting for {what}\n{output}")
