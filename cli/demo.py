"""``fmhl-ops demo`` (and ``fmhl-ops dev --demo``): something living to look at in the console.

Seeds providers (each with an opening ledger row, so reconciliation agrees) and leads, then
enqueues a realistic mix through the ordinary enqueuer: lead distributions (which charge
providers, deactivate the ones that run dry and send e-mails), report exports, and jobs that
fail for good in several distinct ways, so the failure-groups page has real groups to show:

| job | why it fails | reason |
| --- | --- | --- |
| ``distribute_lead`` for a lead that was never inserted | ``NotFound`` | permanent |
| ``distribute_lead("lead-0042")`` (a CRM id, not a UUID) | ``Invalid`` | permanent |
| ``send_email`` with template ``welcome_v2`` | ``UnknownTemplate`` | permanent |
| ``send_email`` to ``"ops team <ops@…>"`` | ``Invalid`` (``invalid_recipient``) | permanent |
| ``export_report`` of an export that does not exist | ``NotFound`` | permanent |
| ``refund_bad_lead`` of an unknown assignment | ``NotFound`` | permanent |
| ``sync_crm`` (no such function) | ``function_not_found`` | silent path |

The data is demo data: rows are marked (``demo-`` names, ``demo`` lead source) and running it
again adds more. Needs ``DATABASE_URL`` and ``REDIS_URL`` and workers to run the jobs
(``fmhl-ops dev --demo`` has both). Dev tooling: its SQL lives here, not in a repository module.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from arq.connections import ArqRedis

from shared.infra.config import Settings
from shared.infra.db import create_pool
from shared.infra.redis import create_redis
from shared.jobs.enqueue import enqueue
from shared.jobs.queues import EMAIL_SEND

INSERT_PROVIDER = """
INSERT INTO providers (name, email, balance, lead_price) VALUES ($1, $2, $3, $4) RETURNING id
"""
INSERT_OPENING_BALANCE = """
INSERT INTO ledger_entries (provider_id, kind, amount, note) VALUES ($1, 'topup', $2, 'demo opening balance')
"""
INSERT_LEAD = "INSERT INTO leads (source, payload) VALUES ('demo', $1) RETURNING id"
INSERT_EXPORT = "INSERT INTO report_exports (provider_id) VALUES ($1) RETURNING id"

COMPANIES = (
    "Acme Roofing", "Blue Sky Solar", "Cedar Plumbing", "Delta HVAC", "Evergreen Lawn", "Fast Movers",
    "Granite Kitchens", "Harbor Windows", "Ironclad Fencing", "Juniper Pools", "Keystone Electric",
    "Lakeside Painting", "Maple Insulation", "Northstar Garage Doors",
)  # fmt: skip
CITIES = ("Austin", "Boston", "Denver", "Miami", "Portland", "Seattle", "Chicago", "Phoenix")


@dataclass(frozen=True, slots=True)
class DemoSummary:
    providers: int
    leads: int
    jobs: int
    failing_jobs: int


async def _seed_rows(
    pool: Any, rng: random.Random, providers: int, leads: int
) -> tuple[list[Any], list[Any]]:
    provider_ids, lead_ids = [], []
    async with pool.acquire() as conn, conn.transaction():
        for index in range(providers):
            name = COMPANIES[index % len(COMPANIES)] + (
                f" {index // len(COMPANIES) + 1}" if index >= len(COMPANIES) else ""
            )
            price = Decimal(rng.choice(("5.00", "8.50", "12.00", "15.00", "20.00")))
            # A few start short of a handful of leads, so distribution deactivates them.
            balance = price * rng.choice((1, 2, 3, 10, 25, 40))
            slug = name.lower().replace(" ", "-")
            provider_id = await conn.fetchval(
                INSERT_PROVIDER, f"demo-{name}", f"{slug}-{uuid.uuid4().hex[:4]}@demo.test", balance, price
            )
            await conn.execute(INSERT_OPENING_BALANCE, provider_id, balance)
            provider_ids.append(provider_id)
        for index in range(leads):
            payload = {
                "name": f"Customer {index + 1}",
                "city": rng.choice(CITIES),
                "service": rng.choice(("roof repair", "solar quote", "new windows", "pool cleaning")),
            }
            lead_ids.append(await conn.fetchval(INSERT_LEAD, payload))
    return provider_ids, lead_ids


async def _failing_jobs(pool: Any, redis: ArqRedis, rng: random.Random) -> int:
    enqueued = 0

    async def put(function: str, **kwargs: Any) -> None:
        nonlocal enqueued
        if await enqueue(redis, function, correlation_id=f"demo-{uuid.uuid4().hex[:12]}", **kwargs):
            enqueued += 1

    for _ in range(rng.randint(4, 7)):
        await put("distribute_lead", lead_id=str(uuid.uuid4()))
    for n in rng.sample(range(1, 999), 3):
        await put("distribute_lead", lead_id=f"lead-{n:04d}")
    for n in range(rng.randint(5, 9)):
        await put(
            "send_email",
            to=f"customer{n}@demo.test",
            template="welcome_v2",
            context={"name": f"Customer {n}"},
            idempotency_key=f"demo-welcome-{uuid.uuid4().hex[:8]}",
        )
    for _ in range(2):
        await put(
            "send_email",
            to="ops team <ops@demo.test>",
            template="low_balance",
            context={"provider_name": "Acme Roofing", "balance": "3.00", "lead_price": "10.00"},
            idempotency_key=f"demo-low-{uuid.uuid4().hex[:8]}",
        )
    for _ in range(3):
        await put("export_report", export_id=str(uuid.uuid4()))
    for _ in range(2):
        await put("refund_bad_lead", assignment_id=str(uuid.uuid4()), reason="duplicate lead")
    for n in range(2):  # a function no worker knows: captured on the silent path
        job = await redis.enqueue_job("sync_crm", f"account-{n}", _queue_name=EMAIL_SEND)
        enqueued += job is not None
    return enqueued


async def seed_demo(
    pool: Any, redis: ArqRedis, *, providers: int = 12, leads: int = 40, seed: int | None = None
) -> DemoSummary:
    """Insert the demo rows and enqueue the jobs; returns what it did."""
    rng = random.Random(seed)
    provider_ids, lead_ids = await _seed_rows(pool, rng, providers, leads)
    jobs = 0
    for lead_id in lead_ids:
        jobs += await enqueue(redis, "distribute_lead", lead_id=str(lead_id)) is not None
    async with pool.acquire() as conn:
        export_ids = [await conn.fetchval(INSERT_EXPORT, pid) for pid in rng.sample(provider_ids, 3)]
    for export_id in export_ids:
        jobs += await enqueue(redis, "export_report", export_id=str(export_id)) is not None
    failing = await _failing_jobs(pool, redis, rng)
    return DemoSummary(
        providers=len(provider_ids), leads=len(lead_ids), jobs=jobs + failing, failing_jobs=failing
    )


async def run_demo(settings: Settings, *, providers: int, leads: int, seed: int | None) -> DemoSummary:
    pool = await create_pool(settings, application_name="fmhl-ops-demo")
    redis = create_redis(settings.require_redis_url())
    try:
        return await seed_demo(pool, redis, providers=providers, leads=leads, seed=seed)
    finally:
        await redis.aclose()
        await pool.close()


def describe(summary: DemoSummary) -> str:
    return (
        f"demo: {summary.providers} providers, {summary.leads} leads; enqueued {summary.jobs} jobs, "
        f"{summary.failing_jobs} of them built to fail (see /console/groups once workers ran them)"
    )


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_database_url()
    settings.require_redis_url()
    summary = asyncio.run(run_demo(settings, providers=args.providers, leads=args.leads, seed=args.seed))
    print(describe(summary))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="seed demo providers and leads, enqueue a mix of jobs (some fail)")
    p.add_argument("--providers", type=int, default=12)
    p.add_argument("--leads", type=int, default=40)
    p.add_argument("--seed", type=int, default=None, help="random seed (repeatable data)")
    p.set_defaults(handler=cmd_demo)
