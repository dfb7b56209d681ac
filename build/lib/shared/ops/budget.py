"""The connection budget of the design, for Postgres and for Redis.

    Σ webui replicas × (DATABASE_POOL_SIZE + DATABASE_POOL_MAX_OVERFLOW)
  + Σ worker replicas × WORKER_DB_POOL_SIZE
  + reserved (superuser_reserved_connections + migrations + monitoring)
  ≤ max_connections

and likewise every process's Redis pools (the webui has a sync and an async
one; RQ's scheduler opens its own) against Redis `maxclients`. Shared by `sluice doctor` (checking a
deployment) and `sluice capacity` (sizing one). Pure functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Reserved Postgres connections besides Sluice's pools: the server's superuser
# slots (its default), the migration job, and monitoring (postgres_exporter + a psql).
SUPERUSER_RESERVED = 3
MIGRATIONS = 1
MONITORING = 2
# Redis clients besides the pools: RQ's scheduler runs in a child of one worker with
# a pool of the same size; operators' redis-cli / an exporter are the reserve.
REDIS_RESERVED = 10
POSTGRES_DEFAULT_MAX = 100
REDIS_DEFAULT_MAXCLIENTS = 10_000


@dataclass(frozen=True)
class Group:
    """Processes of one kind: `replicas` pods, each with these per-process limits."""

    name: str  # webui | worker
    replicas: int
    db_per_process: int | None  # None = unbounded (NullPool)
    redis_per_process: int  # REDIS_MAX_CONNECTIONS
    redis_async: int = 0  # REDIS_ASYNC_MAX_CONNECTIONS (webui: events and rate limits)


@dataclass(frozen=True)
class Budget:
    needed: int | None  # None = unbounded
    limit: int
    terms: list[str]

    @property
    def fits(self) -> bool:
        return self.needed is not None and self.needed <= self.limit

    @property
    def share(self) -> float:
        return float("inf") if self.needed is None else self.needed / max(self.limit, 1)

    def explain(self) -> str:
        needed = "unbounded" if self.needed is None else str(self.needed)
        op = "≤" if self.fits else ">"
        return f"{' + '.join(self.terms)} = {needed} {op} {self.limit}"


def postgres_budget(
    groups: list[Group], max_connections: int, superuser_reserved: int = SUPERUSER_RESERVED
) -> Budget:
    terms, total = [], 0
    unbounded = False
    for g in groups:
        if g.db_per_process is None:
            unbounded = True
            terms.append(f"{g.replicas} {g.name} × NullPool (unbounded)")
            continue
        total += g.replicas * g.db_per_process
        terms.append(f"{g.replicas} {g.name} × {g.db_per_process}")
    reserved = superuser_reserved + MIGRATIONS + MONITORING
    terms.append(f"reserved {reserved} (superuser {superuser_reserved} + migrations {MIGRATIONS} "
                 f"+ monitoring {MONITORING})")
    return Budget(None if unbounded else total + reserved, max_connections, terms)


def redis_budget(groups: list[Group], maxclients: int) -> Budget:
    terms, total = [], 0
    for g in groups:
        total += g.replicas * (g.redis_per_process + g.redis_async)
        extra = f" + {g.redis_async} async" if g.redis_async else ""
        terms.append(f"{g.replicas} {g.name} × ({g.redis_per_process}{extra})")
    workers = [g for g in groups if g.name == "worker" and g.replicas > 0]
    if workers:
        scheduler = max(g.redis_per_process for g in workers)
        total += scheduler
        terms.append(f"RQ scheduler {scheduler}")
    total += REDIS_RESERVED
    terms.append(f"reserved {REDIS_RESERVED}")
    return Budget(total, maxclients, terms)


def max_connections_for(groups: list[Group], headroom: float = 0.2) -> int:
    """A max_connections that fits these groups with `headroom` to spare (rounded up to 10)."""
    needed = postgres_budget(groups, 0).needed
    if needed is None:
        raise ValueError("NullPool is unbounded: size the external pooler instead")
    return math.ceil(needed * (1 + headroom) / 10) * 10
