"""The newcomer path as root with the checkout inside a directory only root can enter.

``/root/fmhl-ops`` is the typical case: ``/root`` is 0700, so the unprivileged ``pgserver`` user
that runs the embedded Postgres can reach neither the binaries in ``.venv`` nor ``.run/``. Here
a 0700 directory under a temp dir stands in for ``/root``; the repository is cloned into it and
the clone's own Makefile builds its ``.venv`` (``make .venv/.embedded``, what ``make run`` does
first, from pip's cache or index). Then: ``make run`` itself to a ready ``/health/ready`` and
back down with Ctrl-C; the embedded Postgres in process; the test suite's own embedded backends
(pytest from the clone, its site-packages first on ``PYTHONPATH``). Nothing may chmod the 0700
directory.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from cli import embedded
from cli.embedded import EmbeddedPostgres, EmbeddedServerError, free_port
from shared.infra.migrations import migrate
from tests.e2e.alerting_support import wait_until
from tests.infra import docker_engine_available
from tests.procs import Proc, base_env, program

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("git") is None or shutil.which("make") is None,
        reason="the root-only checkout case needs root, git and make",
    ),
    pytest.mark.timeout(300),  # the first test also builds the clone's .venv
]


@dataclass
class Checkout:
    locked: Path  # mode 0700, owned by root: stands in for /root
    clone: Path
    site: Path  # the clone's .venv site-packages, holding pgserver

    @property
    def bin_dir(self) -> Path:
        return self.site / "pgserver" / "pginstall" / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        env = base_env(PYTHONPATH=f"{self.site}{os.pathsep}{self.clone}", **extra)
        for name in ("TEST_DATABASE_URL", "TEST_REDIS_URL", "VIRTUAL_ENV"):
            env.pop(name, None)  # the embedded servers are what this is about
        return env


def _base_python() -> str:
    """The interpreter this venv was made from: the clone's venv must match it (compiled wheels)."""
    candidate = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(candidate) if candidate.exists() else sys.executable


@pytest.fixture(scope="module")
def checkout() -> Iterator[Checkout]:
    base = Path(tempfile.mkdtemp(prefix="fmhl-root-only-"))  # 0700, root-owned
    try:
        locked = base / "root"
        locked.mkdir(mode=0o700)
        clone = locked / "fmhl-ops"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, capture_output=True)
        started = time.monotonic()
        env = {k: v for k, v in base_env().items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        code, output = _run_group(
            ["make", ".venv/.embedded", f"PYTHON={_base_python()}"], cwd=clone, env=env, timeout=280
        )
        assert code == 0, output[-4000:]
        print(f"make .venv/.embedded in the root-only clone: {time.monotonic() - started:.1f}s")
        site = next(clone.glob(".venv/lib/python*/site-packages"))
        assert (site / "pgserver" / "pginstall" / "bin" / "postgres").exists()
        yield Checkout(locked=locked, clone=clone, site=site)
        assert stat.S_IMODE(locked.stat().st_mode) == 0o700, "nothing may open up the root-only directory"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_group(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` in its own process group; on Ctrl-C or timeout the whole group gets SIGINT
    (then SIGKILL), so neither make's pip nor an inner pytest's servers outlive the test."""
    child = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = child.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGINT)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        raise
    return child.returncode, output


def _pgserver_user() -> pwd.struct_passwd:
    return pwd.getpwnam("pgserver")


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _processes_mentioning(*needles: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace").replace("\0", " ")
        except OSError:
            continue
        if any(needle in text for needle in needles):
            found.append(f"{cmdline.parent.name}: {text}")
    return found


def test_the_unprivileged_user_cannot_run_the_clones_binaries(checkout: Checkout) -> None:
    """The premise: run in place, as before the fix, Postgres could not even be executed."""
    user = embedded._run_as()
    assert user is not None
    assert not embedded._user_succeeds(user, [str(checkout.bin_dir / "postgres"), "--version"])
    assert embedded._postgres_bin_for(None) == embedded._postgres_bin()  # not root: used in place


async def test_embedded_postgres_runs_from_a_root_only_tree_via_a_shared_copy(
    checkout: Checkout, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = Path(tempfile.mkdtemp(prefix="fmhl-shared-", dir="/tmp"))
    shared.chmod(0o755)  # like /var/tmp: reachable by everyone
    monkeypatch.setattr(embedded, "SHARED_ROOT", shared)
    monkeypatch.setattr(embedded, "PGDATA_ROOT", shared / "fmhl-ops-pgdata")
    monkeypatch.setattr(embedded, "_postgres_bin", lambda: checkout.bin_dir)
    data_dir = checkout.clone / ".run-inprocess" / "postgres"
    pg = EmbeddedPostgres(data_dir)
    try:
        started = time.monotonic()
        pg.start()
        took = time.monotonic() - started
        assert pg.process is not None
        exe = os.readlink(f"/proc/{pg.process.pid}/exe")
        copies = list(shared.glob("fmhl-ops-pgserver-*"))
        print(
            f"first start from the root-only tree (copy + initdb + start): {took:.2f}s; postgres runs {exe}"
        )
        assert len(copies) == 1 and exe.startswith(str(copies[0]))
        assert copies[0].stat().st_uid == 0 and stat.S_IMODE(copies[0].stat().st_mode) == 0o755
        assert _uid_of(pg.process.pid) == _pgserver_user().pw_uid
        assert data_dir.is_symlink() and (data_dir / "PG_VERSION").exists()
        pgdata = data_dir.resolve()
        assert pgdata.is_relative_to(shared / "fmhl-ops-pgdata")
        assert (
            pgdata.stat().st_uid == _pgserver_user().pw_uid and stat.S_IMODE(pgdata.stat().st_mode) == 0o700
        )
        applied = await migrate(pg.dsn)
        assert applied, "every migration applies on the embedded server"
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(applied)
        finally:
            await conn.close()
        pg.stop()
        pg = EmbeddedPostgres(data_dir).start()  # a restart keeps the data
        assert await migrate(pg.dsn) == []
    finally:
        pg.destroy()
        shutil.rmtree(shared, ignore_errors=True)
    assert not data_dir.exists() and not data_dir.is_symlink()
    assert not pgdata.exists(), "destroy removes the shadow data directory"


def test_a_shared_copy_someone_else_could_write_is_refused(
    checkout: Checkout, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shared = Path(tempfile.mkdtemp(prefix="fmhl-shared-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        monkeypatch.setattr(embedded, "SHARED_ROOT", shared)
        monkeypatch.setattr(embedded, "_postgres_bin", lambda: checkout.bin_dir)
        planted = shared / f"fmhl-ops-pgserver-{importlib.metadata.version('pgserver')}"
        planted.mkdir()
        planted.chmod(0o777)  # anyone could have put their own "postgres" in it
        with pytest.raises(EmbeddedServerError, match="only root can write"):
            EmbeddedPostgres(tmp_path / "pg").start()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_make_run_from_the_root_only_checkout(checkout: Checkout) -> None:
    """``make run`` in the clone: ready, runs Postgres from the shared copy, Ctrl-C stops it all."""
    port = free_port()
    data_dir = checkout.clone / ".run" / "postgres"
    env = {k: v for k, v in base_env().items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    make = program(["make", "run", f"RUN_ARGS=--host 127.0.0.1 --port {port}"], env=env, cwd=checkout.clone)
    make.start()
    pgdata: Path | None = None
    try:
        started = time.monotonic()
        ready = wait_until(
            lambda: _ready(port, make),
            timeout=120,
            what="make run to answer /health/ready",
            detail=lambda: make.output()[-4000:],
        )
        print(f"make run from a root-only checkout: ready in {time.monotonic() - started:.1f}s")
        assert ready["checks"]["postgres:responseTime"][0]["status"] == "pass"
        pgdata = data_dir.resolve()
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        assert _uid_of(postmaster) == _pgserver_user().pw_uid
        exe = os.readlink(f"/proc/{postmaster}/exe")
        assert exe.startswith(str(embedded.SHARED_ROOT / "fmhl-ops-pgserver-")), exe
        assert f"serving on http://127.0.0.1:{port}" in make.output()
    finally:
        if make.running():
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
            with contextlib.suppress(subprocess.TimeoutExpired):
                assert make.process is not None
                make.process.wait(timeout=40)
        make.stop(timeout=10)
        orphan = _stop_postmaster(data_dir)  # only if dev died before stopping it (test interrupted)
        EmbeddedPostgres(data_dir).destroy()  # the dev data lives outside the clone: remove it too
    assert orphan is None, f"make run left its Postgres (pid {orphan}) running:\n{make.output()[-3000:]}"
    assert pgdata is not None and _processes_mentioning(str(pgdata), str(checkout.clone)) == []


def _ready(port: int, make: Proc) -> dict[str, Any] | None:
    if not make.running():
        raise AssertionError(
            f"make run exited {make.process and make.process.returncode}:\n{make.output()[-4000:]}"
        )
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
    except httpx.HTTPError:
        return None
    body: dict[str, Any] = response.json()
    return body if response.status_code == 200 else None


def _stop_postmaster(data_dir: Path) -> int | None:
    """Fast-shutdown a Postgres still running on ``data_dir``; returns its pid if there was one."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGINT)
    except (OSError, ValueError, IndexError):
        return None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    return pid


def test_make_test_from_the_root_only_checkout(checkout: Checkout) -> None:
    """The test suite's own backends from the clone: embedded servers when no URL and no Docker."""
    started = time.monotonic()
    inner_args = [
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/integration/test_migrations.py",
        "-k",
        "fresh_database",
    ]
    code, output = _run_group(
        [sys.executable, "-m", "pytest", *inner_args], cwd=checkout.clone, env=checkout.env(), timeout=200
    )
    took = time.monotonic() - started
    source = "testcontainers" if docker_engine_available() else "embedded"
    print(f"pytest in the root-only clone ({source} backends): rc {code} in {took:.1f}s")
    assert code == 0, output[-4000:]
    assert "1 passed" in output
