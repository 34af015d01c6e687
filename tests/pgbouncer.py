"""A real PgBouncer (Debian's ``pgbouncer``) in front of a test Postgres, in transaction mode.

Each ``PgBouncer`` writes its own ini and userlist into a temp directory, listens on a free port
of 127.0.0.1, trusts the user ``postgres`` (as the test Postgres does) and is stopped by PID.
PgBouncer refuses to run as root: as root it runs as ``nobody``, which owns the temp directory.

``TEST_VIA_PGBOUNCER=1`` makes the session fixtures hand the application side (``database_url``,
the processes the tests start) a PgBouncer URL, while DDL and migrations use the direct URL
(``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cli.embedded import free_port
from tests.procs import Proc, program, wait_tcp

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

INI = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {root}/userlist.txt
admin_users = postgres
pool_mode = transaction
max_client_conn = {max_client_conn}
default_pool_size = {default_pool_size}
reserve_pool_size = 0
server_lifetime = 3600
;; After a failed server login (Postgres restarting) retry in 1 s, not PgBouncer's default 15 s.
server_login_retry = 1
log_connections = 0
log_disconnections = 0
"""


def available() -> bool:
    return Path(PGBOUNCER).is_file() and os.access(PGBOUNCER, os.X_OK)


def version() -> str:
    out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].split()[-1]


@dataclass
class PgBouncer:
    """``upstream_dsn``: the Postgres to pool (any database of it; ``url_for`` keeps the path)."""

    upstream_dsn: str
    default_pool_size: int = 20
    max_client_conn: int = 1000
    port: int = field(default_factory=free_port)
    root: Path | None = None
    _proc: Proc | None = None

    def start(self) -> PgBouncer:
        upstream = urlsplit(self.upstream_dsn)
        self.root = Path(tempfile.mkdtemp(prefix="fmhl-pgbouncer-"))
        (self.root / "userlist.txt").write_text('"postgres" ""\n')
        ini = self.root / "pgbouncer.ini"
        ini.write_text(
            INI.format(
                host=upstream.hostname,
                port=upstream.port or 5432,
                listen_port=self.port,
                root=self.root,
                max_client_conn=self.max_client_conn,
                default_pool_size=self.default_pool_size,
            )
        )
        argv = [PGBOUNCER, str(ini)]
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            argv = [PGBOUNCER, "-u", "nobody", str(ini)]
        proc = program(argv, cwd=self.root).start()
        self._proc = proc
        wait_tcp(self.port, timeout=15, proc=proc)
        return self

    def url_for(self, dsn: str) -> str:
        """``dsn`` (of the upstream server) with host and port of this PgBouncer."""
        parts = urlsplit(dsn)
        netloc = f"{parts.username or 'postgres'}@127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def output(self) -> str:
        return self._proc.output() if self._proc is not None else ""

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(timeout=10)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running(upstream_dsn: str, *, default_pool_size: int = 20) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(upstream_dsn, default_pool_size=default_pool_size).start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
