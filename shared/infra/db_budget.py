"""The connection budget: how many Postgres connections each fmhl-ops process may open, and why,
and what that sums to at the Kubernetes manifests' maximum scale.

Per process: every long-running process (``serve``, ``worker <queue>``, ``worker scheduler``)
opens exactly one asyncpg pool of at most ``DB_POOL_MAX_SIZE`` connections, which every use in
the process shares (requests, readiness checks, jobs, failure capture, spool drain, cron); the
pooler check of ``DB_STATEMENT_CACHE_SIZE`` auto runs on the pool's first connection, not on one
of its own. ``migrate`` opens one connection and exits; in
Kubernetes it is the init container, done before the pod's process starts. A pod therefore holds
at most ``max(DB_POOL_MAX_SIZE, 1)`` connections. One-shot CLI commands (``admin``, ``cron run``,
``demo``) are run by hand, within the operators' headroom.

At scale (tests/ops/test_ops_db_budget.py computes it from the rendered manifests): per
Deployment, pods = maximum replicas (HPA ``maxReplicas``, KEDA ``maxReplicaCount``, else
``replicas``) plus the rolling update's ``maxSurge`` (Kubernetes' default 25 %, rounded up);
connections = pods x per-pod connections. Without PgBouncer that sum must fit in
``APP_CONNECTIONS``; with the PgBouncer component (``k8s/components/pgbouncer``) Postgres sees only
PgBouncer's server connections, replicas x ``max_db_connections``, and the pods' pools are
PgBouncer's clients (``max_client_conn``).

Not covered: pods still terminating after a rollout replaced them hold their pools until they
exit (Kubernetes does not count them against ``maxSurge``). Without PgBouncer a full-scale
rollout can exceed the budget for up to the workers' grace period; PgBouncer bounds it (clients
wait in PgBouncer, Postgres never sees more than its pool).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# The Postgres the manifests are sized for: its default max_connections, of which
# superuser_reserved_connections (default 3) only superusers may use, and a headroom we never give
# to fmhl-ops: psql sessions, backups, a metrics exporter, `fmhl-ops admin`/`cron run` by hand.
POSTGRES_MAX_CONNECTIONS = 100
SUPERUSER_RESERVED_CONNECTIONS = 3
OPERATOR_HEADROOM = 5
APP_CONNECTIONS = POSTGRES_MAX_CONNECTIONS - SUPERUSER_RESERVED_CONNECTIONS - OPERATOR_HEADROOM

# DB_POOL_MAX_SIZE in k8s/ (base ConfigMap). 2 per pod: the workers' jobs spend most of their time
# outside Postgres (Redis, SMTP, backoff) and hold a connection for one short transaction at a
# time; a pod that needs more shows it in fmhl_db_pool_wait_seconds (alert DBPoolWaitHigh).
K8S_POOL_MAX_SIZE = 2
# Behind PgBouncer the pools are PgBouncer's clients, which cost Postgres nothing while idle.
K8S_POOL_MAX_SIZE_BEHIND_PGBOUNCER = 10
# k8s/components/pgbouncer: replicas x max_db_connections is all Postgres sees.
PGBOUNCER_REPLICAS = 2
PGBOUNCER_MAX_DB_CONNECTIONS = 40
PGBOUNCER_MAX_CLIENT_CONN = 1000
MIGRATE_CONNECTIONS = 1


@dataclass(frozen=True, slots=True)
class ProcessBudget:
    """Connections one process may hold, and why."""

    command: str
    connections: str
    why: str


PROCESSES: tuple[ProcessBudget, ...] = (
    ProcessBudget(
        "fmhl-ops serve",
        "DB_POOL_MAX_SIZE",
        "one pool: API and console requests, readiness checks, gauges refreshed at scrape",
    ),
    ProcessBudget(
        "fmhl-ops worker <queue>",
        "DB_POOL_MAX_SIZE",
        "one pool: jobs (one transaction at a time each), DLQ capture, spool drain at start",
    ),
    ProcessBudget(
        "fmhl-ops worker scheduler",
        "DB_POOL_MAX_SIZE",
        "one pool: cron jobs (reconcile, reactivation, DLQ cleanup, spool drain)",
    ),
    ProcessBudget(
        "fmhl-ops migrate",
        str(MIGRATE_CONNECTIONS),
        "one connection, closed on exit (the init container, before the pod's process starts)",
    ),
)


@dataclass(frozen=True, slots=True)
class DeploymentScale:
    """One Deployment at its maximum: ``max_replicas`` plus ``max_surge`` pods during a rollout."""

    name: str
    max_replicas: int
    max_surge: int
    pool_max_size: int

    @property
    def pods(self) -> int:
        return self.max_replicas + self.max_surge

    @property
    def connections(self) -> int:
        return self.pods * per_pod_connections(self.pool_max_size)


def per_pod_connections(pool_max_size: int) -> int:
    """The init container's migrate connection is gone before the pool opens."""
    return max(pool_max_size, MIGRATE_CONNECTIONS)


def surge_pods(max_surge: int | str | None, replicas: int) -> int:
    """A rolling update's ``maxSurge`` in pods: Kubernetes rounds a percentage up (default 25 %)."""
    if max_surge is None:
        max_surge = "25%"
    if isinstance(max_surge, str) and max_surge.endswith("%"):
        return math.ceil(replicas * int(max_surge[:-1]) / 100)
    return int(max_surge)


def total_connections(deployments: Iterable[DeploymentScale]) -> int:
    return sum(d.connections for d in deployments)


def pgbouncer_server_connections(replicas: int, max_db_connections: int) -> int:
    """What Postgres sees behind the PgBouncer component, however many pods there are."""
    return replicas * max_db_connections
