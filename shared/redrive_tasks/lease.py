"""Exactly one executor drives a task at a time, across any number of processes: a lease row.

``claim`` takes an unleased (or expired) task in one ``UPDATE`` over ``FOR UPDATE SKIP LOCKED``
(two racing executors never take the same task) and bumps ``lease_epoch``. Every later write of
the holder is fenced by ``lease_owner`` + ``lease_epoch`` + ``lease_until > now()``: a holder that
stalled past its lease (GC pause, network partition) finds zero rows and stops, so it cannot
write over the new holder. A killed holder's lease expires after ``lease_seconds``; another
executor then takes over where the items say it stopped (``pending`` items are sent next).

Tasks worth claiming: ``pending``/``running`` ones, and paused/tripped/cancelled ones that still
have jobs in flight (their outcomes are still counted; nothing more is sent).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared.infra.db import Conn, execute, fetchrow

DEFAULT_LEASE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Lease:
    task_id: uuid.UUID
    owner: str
    epoch: int
    seconds: float


CLAIM = """
UPDATE redrive_tasks AS t
SET lease_owner = $1, lease_until = now() + make_interval(secs => $2), lease_epoch = t.lease_epoch + 1,
    state = CASE WHEN t.state = 'pending' THEN 'running' ELSE t.state END,
    started_at = CASE WHEN t.state = 'pending' THEN now() ELSE t.started_at END,
    updated_at = now()
WHERE t.id = (
    SELECT id FROM redrive_tasks
    WHERE (state IN ('pending', 'running')
           OR (state IN ('paused', 'tripped', 'cancelled') AND sent > succeeded + failed_again))
      AND (lease_until IS NULL OR lease_until < now())
      AND NOT (id = ANY($3::uuid[]))
    ORDER BY created_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING t.id, t.lease_epoch
"""


async def claim(conn: Conn, owner: str, seconds: float, holding: list[uuid.UUID]) -> Lease | None:
    row = await fetchrow(conn, "redrive_claim", CLAIM, owner, seconds, holding)
    return None if row is None else Lease(row["id"], owner, int(row["lease_epoch"]), seconds)


# The fence every holder's write carries (parameters $1 task id, $2 owner, $3 epoch).
FENCE = "id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND lease_until > now()"

RELEASE = f"UPDATE redrive_tasks SET lease_owner = NULL, lease_until = NULL WHERE {FENCE}"


async def release(conn: Conn, lease: Lease) -> None:
    await execute(conn, "redrive_release", RELEASE, lease.task_id, lease.owner, lease.epoch)


def fence_args(lease: Lease) -> tuple[Any, ...]:
    return (lease.task_id, lease.owner, lease.epoch)
