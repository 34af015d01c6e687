"""Issue 21 §3, the image built and run: the Dockerfile built with buildah on a Debian 12 base
(Python 3.11.2: the universal lock must carry ``async-timeout``, which redis needs below 3.11.3),
then, from the built image's rootfs, as uid 10001 on a read-only root with only /tmp writable
(``tests/image.py``): ``migrate`` on an empty database, ``serve`` (probes answer, console assets
served) and ``worker email_send`` capturing a failure into the DLQ.

Skipped with its reason without buildah (or root, or debootstrap for the stand-in base). Slow the
first time (debootstrap + a full dependency install); cached runs reuse the base and the
dependency layer (figures in the README).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from cli.embedded import free_port
from shared.jobs.enqueue import enqueue
from tests import image
from tests.infra import Backends, database_dsn
from tests.procs import Proc, wait_http

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/fmhl-ops:test"

# The first run makes the base (debootstrap) and installs every dependency: minutes, not 120 s.
pytestmark = [
    pytest.mark.skipif(image.missing_tools() is not None, reason=str(image.missing_tools())),
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def built() -> Iterator[tuple[Path, image.ImageConfig]]:
    started = time.monotonic()
    base = image.stand_in_base()
    based = time.monotonic()
    seconds = image.build(REPO, base, TAG)
    print(f"\nstand-in base ready in {based - started:.1f}s; image built in {seconds:.1f}s")
    with image.mounted(TAG) as rootfs:
        yield rootfs, image.image_config(TAG)


@pytest.fixture
async def empty_database(test_backends: Backends) -> AsyncIterator[str]:
    """A database no migration has touched: ``migrate`` from the image creates the schema."""
    name = f"fmhl_image_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(test_backends.postgres_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield database_dsn(test_backends.postgres_admin_dsn, name)
    admin = await asyncpg.connect(test_backends.postgres_admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _root_mount_options(pid: int) -> list[str]:
    """Mount options of ``/`` as the process sees it (its root is the image's rootfs)."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no / in the mountinfo of {pid}")


def _assert_confined(proc: Proc) -> None:
    status = _status(proc.pid)
    assert status["Uid"].split() == [str(image.UID)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(image.UID)] * 4, status["Gid"]
    assert status["Groups"] == "", status["Groups"]
    assert "ro" in _root_mount_options(proc.pid)
    assert Path(f"/proc/{proc.pid}/root").resolve() != Path("/")


async def test_the_image_migrates_serves_and_captures_a_failure_as_10001_on_a_read_only_root(
    built: tuple[Path, image.ImageConfig], empty_database: str, redis_url: str, redis: Any, tmp_path: Path
) -> None:
    rootfs, config = built
    assert config.user == f"{image.UID}:{image.UID}" and config.entrypoint == ["fmhl-ops"]
    python = sorted(p.name for p in (rootfs / "opt/venv/lib").iterdir())
    installed = sorted(p.name for p in (rootfs / "opt/venv/lib" / python[0] / "site-packages").iterdir())
    print(f"image Python {python}, async-timeout installed: {any('async_timeout' in n for n in installed)}")
    env = {"DATABASE_URL": empty_database, "REDIS_URL": redis_url, "LOG_LEVEL": "INFO"}
    run = iter(range(100))

    def start(*args: str, **extra: str) -> Proc:
        return image.from_image(rootfs, tmp_path / f"root{next(run)}", config, args, {**env, **extra}).start()

    migrate = start("migrate")
    assert migrate.wait(timeout=120) == 0, migrate.output()[-3000:]
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('dead_letter_queue') IS NOT NULL")
        port, metrics_port = free_port(), free_port()
        serve = start("serve", "--host", "127.0.0.1", "--port", str(port), METRICS_PORT=str(metrics_port))
        worker_port = free_port()
        worker = start("worker", "email_send", WORKER_METRICS_PORT=str(worker_port), EMAIL_BACKEND="log")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/health/ready", timeout=90, proc=serve)
            assert httpx.get(f"{base}/health/live").status_code == 200
            for asset in ("console.css", "favicon.svg"):
                served = httpx.get(f"{base}/console/static/{asset}")
                assert served.status_code == 200 and served.content, asset
            assert httpx.get(f"{base}/console/sign-in").status_code == 200  # templates shipped too
            assert "fmhl_http_requests_total" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            wait_http(f"http://127.0.0.1:{worker_port}/health/live", timeout=90, proc=worker)
            _assert_confined(serve)
            _assert_confined(worker)
            await enqueue(
                redis, "send_email", to="p@example.test", template="no_such_template", context={},
                idempotency_key="image-1",
            )  # fmt: skip
            deadline = time.monotonic() + 60
            row = None
            while row is None and time.monotonic() < deadline:
                row = await conn.fetchrow("SELECT queue_name, function, error_type FROM dead_letter_queue")
                await asyncio.sleep(0.2)
            assert row is not None, worker.output()[-3000:]
            assert tuple(row) == ("email_send", "send_email", "UnknownTemplate")
        finally:
            codes = [serve.stop(), worker.stop()]
        assert codes == [0, 0], serve.output()[-3000:] + worker.output()[-3000:]
    finally:
        await conn.close()
    for proc in (migrate, serve, worker):
        assert "Traceback" not in proc.output(), proc.output()[-3000:]
        assert "Read-only file system" not in proc.output()
