"""``fmhl-ops``: the one entrypoint for operators, Kubernetes and tests.

Subcommands: ``migrate``, ``serve``, ``dev`` (and ``worker``, ``admin``, ``cron`` from their own
modules). Exit 0 on success; on a configuration or operational error, one line on stderr and a
non-zero exit (2 for configuration, 1 otherwise), never a traceback.

The ``cli`` package is the only one that imports both ``service`` and ``worker``; nothing imports
``cli`` (a layering test checks).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from cli.errors import CliError
from shared import __version__
from shared.infra.config import ConfigError, Settings, load_settings
from shared.infra.logs import configure_logging
from shared.infra.migrations import MigrationError, migrate
from shared.infra.tracing import configure_tracing

Command = Callable[[argparse.Namespace, Settings], int]


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    applied = asyncio.run(migrate(settings.migration_database_url()))
    print(
        f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else " (up to date)")
    )
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from service.app import create_app
    from service.server import serve

    settings.require_database_url()
    app = create_app(settings)
    asyncio.run(serve(app, args.host, args.port, drain_seconds=args.drain_seconds))
    return 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from cli.dev import run_dev

    return run_dev(settings, host=args.host, port=args.port, demo=args.demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmhl-ops", description="fmhl-ops operations plane")
    parser.add_argument("--version", action="version", version=f"fmhl-ops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "migrate",
        help="apply pending SQL migrations (idempotent, advisory-locked); DATABASE_DIRECT_URL if set",
    )
    p.set_defaults(handler=cmd_migrate)

    p = sub.add_parser("serve", help="run the HTTP service under uvicorn")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--drain-seconds", type=float, default=3.0, help="answer 503 on /health/ready this long after SIGTERM"
    )
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("dev", help="embedded Postgres/Redis if unset, migrate, serve on :8000 with workers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--demo", action="store_true", help="also seed demo data and jobs (see `fmhl-ops demo`)")
    p.set_defaults(handler=cmd_dev)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    """Subcommands owned by other modules (worker, admin, cron) register themselves here."""
    from cli.admin import register as register_admin
    from cli.demo import register as register_demo
    from cli.queue_commands import register as register_queue
    from cli.redrive_commands import register as register_redrive
    from cli.worker_commands import register as register_worker

    return [register_worker, register_admin, register_demo, register_queue, register_redrive]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        queue = getattr(args, "queue", None)
        configure_tracing(f"fmhl-ops-worker-{queue}" if args.handler.__name__ == "cmd_worker" else "fmhl-ops")
        handler: Command = args.handler
        return handler(args, settings)
    except ConfigError as exc:
        print(f"fmhl-ops: configuration error: {exc}", file=sys.stderr)
        return 2
    except (MigrationError, CliError) as exc:  # CliError includes EmbeddedServerError
        print(f"fmhl-ops: {exc}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as exc:
        print(f"fmhl-ops: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
