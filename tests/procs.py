"""Start real ``fmhl-ops`` processes for end-to-end tests and stop them by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

FMHL_OPS = str(Path(sys.executable).parent / "fmhl-ops")


def base_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update({"LOG_LEVEL": "INFO", "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    env.update(overrides)
    return env


@dataclass
class Proc:
    args: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None = None
    process: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Proc:
        self._out = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [FMHL_OPS, *self.args],
            env=dict(self.env),
            cwd=self.cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

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
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


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
