"""``fmhl-ops redrive create|list|show|pause|resume|cancel``: redrive tasks from a shell.

* ``redrive create --name N (--filter JSON | --ids ID,ID…) [--rate R] [--max-in-flight M]
  [--reason R] [--dry-run]`` — creates a task (default 10 jobs/s, 20 in flight) or, with
  ``--dry-run``, prints the count and a sample. The filter's fields: queue, fingerprint, function,
  error_type, failed_from, failed_to (ISO 8601 with a zone); an unknown field is refused.
* ``redrive list`` — newest tasks, one line each; ``redrive show ID`` — one task's progress.
* ``redrive pause|resume|cancel ID`` — as the API (409 → one line, exit 1).

Audited with actor ``cli:<user>``. The executor runs in ``fmhl-ops worker scheduler``.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import orjson

from cli.errors import CliError
from cli.queue_commands import _run, cli_actor
from shared.dlq.redrive import Actor
from shared.infra.config import Settings
from shared.infra.errors import DomainError
from shared.redrive_tasks.control import change_state, get_task, list_tasks
from shared.redrive_tasks.model import DEFAULT_MAX_IN_FLIGHT, DEFAULT_RATE_PER_SECOND, RedriveTask
from shared.redrive_tasks.selection import SelectionFilter, TaskSpec, create_task, dry_run


def _uuid(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise CliError(f"not a task id: {raw!r}") from exc


def _spec(args: argparse.Namespace) -> TaskSpec:
    flt = ids = None
    try:
        if args.filter is not None:
            data = orjson.loads(args.filter)
            if not isinstance(data, dict):
                raise CliError("--filter must be a JSON object")
            flt = SelectionFilter.from_mapping(data)
        if args.ids is not None:
            ids = [_uuid(part.strip()) for part in args.ids.split(",") if part.strip()]
    except orjson.JSONDecodeError as exc:
        raise CliError(f"--filter is not JSON: {exc}") from exc
    except (DomainError, TypeError) as exc:
        raise CliError(str(exc)) from exc
    return TaskSpec(
        name=args.name, reason=args.reason or "", ids=ids, filter=flt, rate_per_second=args.rate,
        max_in_flight=args.max_in_flight,
    )  # fmt: skip


def describe(task: RedriveTask) -> str:
    rate = f"{task.achieved_rate}/s" if task.achieved_rate else "-"
    reason = f" ({task.state_reason})" if task.state_reason else ""
    return (
        f"{task.id}\t{task.state}{reason}\t{task.name}\tsent {task.sent}/{task.total}\t"
        f"succeeded {task.succeeded}\tfailed again {task.failed_again}\tin flight {task.in_flight}\t"
        f"remaining {task.remaining}\trate {rate} of {task.rate_per_second:g}/s"
    )


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    spec = _spec(args)
    settings.require_database_url()
    if args.dry_run:

        async def count(conn: Any, redis: Any) -> Any:
            return await dry_run(conn, spec)

        result = _run(settings, count)
        print(f"{result.count} entries would be redriven")
        for entry in result.sample:
            failed_at = entry.failed_at.isoformat()
            print(f"  {entry.id}\t{entry.queue}\t{entry.function}\t{entry.error_type}\t{failed_at}")
        return 0

    async def create(conn: Any, redis: Any) -> RedriveTask:
        return await create_task(_Pool(conn), spec, Actor(cli_actor()))

    print(describe(_run(settings, create)))
    return 0


class _Pool:
    """One connection posing as a pool (the use case acquires; the CLI holds one connection)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def acquire(self) -> Any:
        conn = self.conn

        class _Held:
            async def __aenter__(self) -> Any:
                return conn

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _Held()


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    page = _run(settings, lambda conn, redis: list_tasks(conn, limit=args.limit, cursor=None))
    for task in page.items:
        print(describe(task))
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    task_id = _uuid(args.task_id)
    print(describe(_run(settings, lambda conn, redis: get_task(conn, task_id))))
    return 0


def cmd_action(args: argparse.Namespace, settings: Settings) -> int:
    task_id = _uuid(args.task_id)
    action = args.redrive_command
    task = _run(settings, lambda conn, redis: change_state(_Pool(conn), task_id, action, Actor(cli_actor())))
    print(describe(task))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    redrive = sub.add_parser("redrive", help="redrive DLQ entries as a tracked, throttled task")
    commands = redrive.add_subparsers(dest="redrive_command", required=True)

    p = commands.add_parser("create", help="create a redrive task (or --dry-run: count and sample)")
    p.add_argument("--name", required=True)
    selection = p.add_mutually_exclusive_group(required=True)
    selection.add_argument("--filter", help='JSON, e.g. {"queue": "email_send", "fingerprint": "…"}')
    selection.add_argument("--ids", help="comma-separated DLQ entry ids")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE_PER_SECOND, help="jobs per second (default 10)")
    p.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT, help="default 20")
    p.add_argument("--reason", help="why (audited)")
    p.add_argument("--dry-run", action="store_true", help="count and sample; create nothing")
    p.set_defaults(handler=cmd_create)

    p = commands.add_parser("list", help="newest redrive tasks")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(handler=cmd_list)

    p = commands.add_parser("show", help="one task's progress")
    p.add_argument("task_id", metavar="ID")
    p.set_defaults(handler=cmd_show)

    for action in ("pause", "resume", "cancel"):
        p = commands.add_parser(action, help=f"{action} a redrive task")
        p.add_argument("task_id", metavar="ID")
        p.set_defaults(handler=cmd_action)
