"""CLI subcommands owned by the worker side: ``worker QUEUE`` and ``cron run NAME``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from shared.infra.config import Settings
from shared.infra.db import Database
from shared.infra.metrics import Metrics
from shared.infra.redis import create_redis
from shared.jobs.queues import ALL_QUEUES


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.process import run_worker

    settings.require_database_url()
    settings.require_redis_url()
    asyncio.run(run_worker(args.queue, settings))
    return 0


async def run_cron_now(name: str, settings: Settings) -> dict[str, Any]:
    """Run one cron job now through the same runner the scheduler uses (tick = now)."""
    from worker.cron import cron_runner, definition

    metrics = Metrics()
    db = Database(settings, application_name=f"fmhl-ops-cron-{name}", metrics=metrics)
    redis = create_redis(settings.require_redis_url())
    db.start()
    try:
        await asyncio.wait_for(db.connected.wait(), timeout=30)
        ctx: dict[str, Any] = {"db": db, "redis": redis, "metrics": metrics, "settings": settings}
        return await cron_runner(definition(name))(ctx)
    finally:
        await db.close()
        await redis.aclose()


def cmd_cron_run(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_database_url()
    counts = asyncio.run(run_cron_now(args.name, settings))
    sys.stdout.write(orjson.dumps({"job": args.name, **counts}).decode() + "\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from worker.cron import CRON_NAMES

    p = sub.add_parser("worker", help="run the arq worker for one queue (metrics on WORKER_METRICS_PORT)")
    p.add_argument("queue", choices=ALL_QUEUES)
    p.set_defaults(handler=cmd_worker)

    cron = sub.add_parser("cron", help="cron jobs")
    cron_sub = cron.add_subparsers(dest="cron_command", required=True)
    p = cron_sub.add_parser("run", help="run one cron job now, through the scheduler's code path")
    p.add_argument("name", choices=CRON_NAMES)
    p.set_defaults(handler=cmd_cron_run)
