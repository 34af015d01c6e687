"""``fmhl-ops queue pause|resume|status``: incident controls for operators without the console.

* ``queue pause QUEUE --reason R`` — every worker of QUEUE stops starting jobs within about a
  second (running jobs finish; enqueueing keeps working). Audited with actor ``cli:<user>``.
* ``queue resume QUEUE [--reason R]`` — workers start jobs again.
* ``queue status`` — each job queue's pause state, one line each.

An unknown queue, ``scheduler`` (never paused: cron and the DLQ spool drain run there), pausing a
paused queue or resuming a running one: one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cli.errors import CliError
from cli.use_case import run_use_case
from shared.controls.pause import check_pausable, pause_queue, resume_queue
from shared.infra.config import Settings
from shared.infra.errors import DomainError
from shared.jobs.pause_state import PauseState, read_pauses
from shared.jobs.queues import JOB_QUEUES

T = TypeVar("T")


def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        user = "unknown"
    return f"cli:{user}"


def _run(settings: Settings, use_case: Callable[[Any, Any], Awaitable[T]], *, needs_db: bool = True) -> T:
    """Run ``use_case(conn, redis)`` with short-lived clients; expected failures become one line."""
    return run_use_case(settings, use_case, application_name="fmhl-ops-queue", needs_db=needs_db)


def _checked(queue: str) -> str:
    try:
        check_pausable(queue)
    except DomainError as exc:  # before any connection: a typo answers at once
        raise CliError(exc.message) from exc
    return queue


def _change(
    args: argparse.Namespace, settings: Settings, change: Callable[..., Awaitable[PauseState]]
) -> tuple[str, PauseState]:
    """Pause or resume ``args.queue`` (checked before any connection) as ``cli:<user>``."""
    queue = _checked(args.queue)
    settings.require_database_url()
    state = _run(
        settings, lambda conn, redis: change(conn, redis, queue=queue, actor=cli_actor(), reason=args.reason)
    )
    return queue, state


def cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    queue, state = _change(args, settings, pause_queue)
    print(f"paused {queue} at {state.since.isoformat()} by {state.by}: {state.reason}")
    return 0


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    queue, ended = _change(args, settings, resume_queue)
    print(f"resumed {queue} (paused since {ended.since.isoformat()} by {ended.by})")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    pauses = _run(settings, lambda conn, redis: read_pauses(redis, JOB_QUEUES), needs_db=False)
    for queue, state in pauses.items():
        if state is None:
            print(f"{queue}\trunning")
        else:
            print(f"{queue}\tpaused since {state.since.isoformat()} by {state.by}: {state.reason}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = sub.add_parser("queue", help="pause or resume a job queue (incident controls)")
    commands = queue.add_subparsers(dest="queue_command", required=True)

    p = commands.add_parser("pause", help="stop starting jobs of QUEUE (running jobs finish)")
    p.add_argument("queue", metavar="QUEUE", help=", ".join(JOB_QUEUES))
    p.add_argument("--reason", required=True, help="why (shown to everyone, audited)")
    p.set_defaults(handler=cmd_pause)

    p = commands.add_parser("resume", help="start jobs of QUEUE again")
    p.add_argument("queue", metavar="QUEUE", help=", ".join(JOB_QUEUES))
    p.add_argument("--reason", default=None, help="optional note for the audit log")
    p.set_defaults(handler=cmd_resume)

    p = commands.add_parser("status", help="each job queue: running, or paused by whom, why, since when")
    p.set_defaults(handler=cmd_status)
