"""`sluice doctor`: check a configuration (and, where reachable, the live servers)
against the failure modes of the system Sluice replaces.

Prints one line per check (OK / WARN / CRITICAL / SKIP) and exits 1 if any
check is CRITICAL. The checks are pure functions of `Inputs`; `doctor_cli`
gathers the inputs from the environment, manifests and servers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import ValidationError

from shared.metrics_queue import QueueSnapshot
from shared.ops.budget import (
    POSTGRES_DEFAULT_MAX,
    REDIS_DEFAULT_MAXCLIENTS,
    SUPERUSER_RESERVED,
    Group,
    postgres_budget,
    redis_budget,
)
from shared.ops.doctor_sources import PostgresFacts, RawConfig, RedisFacts
from shared.settings import Settings

Verdict = Literal["OK", "WARN", "CRITICAL", "SKIP"]
GRACE_MARGIN_S = 30


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str


@dataclass
class Target:
    """One kind of process as deployed: its replica ceiling and its configuration."""

    role: str  # webui | worker
    name: str
    replicas: int
    config: RawConfig
    grace_s: int | None = None  # terminationGracePeriodSeconds, when manifests say
    limits: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Inputs:
    targets: list[Target]
    postgres: PostgresFacts | None = None
    postgres_error: str = "not checked"
    redis: RedisFacts | None = None
    redis_error: str = "not checked"
    queue: QueueSnapshot | None = None
    interactive: QueueSnapshot | None = None  # Open WebUI's jobs (shared/queue.py)
    worker_facts: list[dict[str, str]] = field(default_factory=list)
    max_connections: int | None = None  # given on the command line or declared by the overlay
    maxclients: int | None = None
    declared_by: str = "given"
    network_idle_timeout_s: float | None = None  # LB / NAT / pooler idle timeout


def _groups(inputs: Inputs) -> list[Group]:
    return [
        Group(t.role, t.replicas, t.config.db_per_process(t.role),
              t.config.get_int("redis_max_connections"),
              t.config.get_int("redis_async_max_connections") if t.role == "webui" else 0)
        for t in inputs.targets
    ]


def check_config(inputs: Inputs) -> list[Check]:
    checks = []
    for t in inputs.targets:
        cfg = t.config
        values = {k: v for k, v in cfg.env.items() if k in Settings.model_fields}
        problems: list[str] = []  # pydantic names every bad field (RawConfig fell back to defaults)
        try:
            Settings.model_validate(values)  # these values only: model_validate skips the env
        except ValidationError as err:
            problems += [f"{'_'.join(map(str, e['loc'])).upper() or 'settings'}: {e['msg']}"
                         for e in err.errors() if "DATABASE_POOL_SIZE=0" not in e["msg"]]
        checks.append(Check(f"config.valid[{t.name}]", "CRITICAL" if problems else "OK",
                            "; ".join(problems) or "every setting parses and is consistent"))
        if cfg.get_int("database_pool_size") == 0:
            if cfg.get_bool("database_external_pooler"):
                checks.append(Check(f"config.null_pool[{t.name}]", "WARN",
                                    "NullPool behind a declared external pooler: every checkout is a "
                                    "pooler connection; size the pooler's pool against max_connections"))
            else:
                checks.append(Check(f"config.null_pool[{t.name}]", "CRITICAL",
                                    "DATABASE_POOL_SIZE=0 is NullPool: a new Postgres connection per "
                                    "request/job (what exhausted the seed system); set a pool size or "
                                    "DATABASE_EXTERNAL_POOLER=true with PgBouncer in front"))
        if cfg.get_bool("bench_reload_model_per_job"):
            checks.append(Check(f"config.bench[{t.name}]", "CRITICAL",
                                "BENCH_RELOAD_MODEL_PER_JOB=true reloads the model for every job"))
    return checks


def check_postgres_budget(inputs: Inputs) -> list[Check]:
    pg = inputs.postgres
    limit = pg.max_connections if pg else inputs.max_connections or POSTGRES_DEFAULT_MAX
    source = "live" if pg else (inputs.declared_by if inputs.max_connections
                                else "assumed Postgres default")
    reserved = pg.superuser_reserved if pg else SUPERUSER_RESERVED
    budget = postgres_budget(_groups(inputs), limit, reserved)
    if budget.needed is None:
        pooled = all(t.config.get_bool("database_external_pooler") for t in inputs.targets
                     if t.config.db_per_process(t.role) is None)
        verdict: Verdict = "WARN" if pooled else "CRITICAL"
    else:
        verdict = "CRITICAL" if not budget.fits else "WARN" if budget.share > 0.8 else "OK"
    return [Check("postgres.connection_budget", verdict,
                  f"{budget.explain()} (max_connections, {source})")]


def check_postgres_live(inputs: Inputs) -> list[Check]:
    pg = inputs.postgres
    if pg is None:
        return [Check("postgres.live", "SKIP", inputs.postgres_error)]
    used = sum(pg.by_application.values())
    apps = ", ".join(f"{a}={n}" for a, n in sorted(pg.by_application.items()))
    verdict: Verdict = "WARN" if used > 0.8 * pg.max_connections else "OK"
    return [Check("postgres.connections_in_use", verdict,
                  f"{used} of max_connections {pg.max_connections} ({apps or 'none'})")]


def check_recycle(inputs: Inputs) -> list[Check]:
    timeouts = []
    if inputs.postgres and inputs.postgres.idle_session_timeout_s > 0:
        timeouts.append(("Postgres idle_session_timeout", inputs.postgres.idle_session_timeout_s))
    if inputs.network_idle_timeout_s:
        timeouts.append(("network idle timeout", inputs.network_idle_timeout_s))
    checks = []
    for t in inputs.targets:
        recycle = t.config.get_int("database_pool_recycle")
        pre_ping = t.config.get_bool("database_pool_pre_ping")
        short = [(what, s) for what, s in timeouts if recycle < 0 or recycle >= s]
        if not short:
            known = ", ".join(f"{w} {s:.0f} s" for w, s in timeouts) or "no idle timeout known"
            checks.append(Check(f"postgres.pool_recycle[{t.name}]", "OK",
                                f"DATABASE_POOL_RECYCLE={recycle} s ({known})"))
            continue
        what, seconds = min(short, key=lambda x: x[1])
        checks.append(Check(
            f"postgres.pool_recycle[{t.name}]", "WARN" if pre_ping else "CRITICAL",
            f"DATABASE_POOL_RECYCLE={recycle} s is not below the {what} ({seconds:.0f} s): idle pooled "
            f"connections get closed under the pool; " + (
                "pre-ping hides it at a round trip per checkout" if pre_ping
                else "with pre-ping off the next query fails"),
        ))
    return checks


def check_redis(inputs: Inputs) -> list[Check]:
    rd = inputs.redis
    limit = (rd.maxclients if rd and rd.maxclients else None) or inputs.maxclients \
        or REDIS_DEFAULT_MAXCLIENTS
    source = "live" if rd and rd.maxclients else (inputs.declared_by if inputs.maxclients
                                                  else "assumed Redis default")
    budget = redis_budget(_groups(inputs), limit)
    verdict: Verdict = "CRITICAL" if not budget.fits else "WARN" if budget.share > 0.8 else "OK"
    checks = [Check("redis.client_budget", verdict, f"{budget.explain()} (maxclients, {source})")]
    if rd is None:
        return [*checks, Check("redis.live", "SKIP", inputs.redis_error)]
    in_use: Verdict = "WARN" if rd.maxclients and rd.connected_clients > 0.8 * rd.maxclients else "OK"
    checks.append(Check("redis.clients_in_use", in_use,
                        f"{rd.connected_clients} connected of maxclients {rd.maxclients or '?'}"))
    if rd.config_error:
        checks.append(Check("redis.config", "WARN", f"CONFIG GET refused ({rd.config_error}): "
                            "check maxmemory-policy=noeviction and persistence by hand"))
        return checks
    policy = rd.maxmemory_policy or "?"
    checks.append(Check("redis.eviction_policy", "OK" if policy == "noeviction" else "CRITICAL",
                        f"maxmemory-policy={policy}" + (
                            "" if policy == "noeviction" else ": Redis may evict queued jobs and locks; "
                            "set noeviction")))
    if rd.appendonly == "yes":
        checks.append(Check("redis.persistence", "OK", "appendonly yes"))
    else:
        snap = f"RDB snapshots ({rd.save})" if rd.save else "no persistence"
        checks.append(Check("redis.persistence", "WARN", f"{snap}: a Redis restart loses queued jobs; "
                            "the reconciler re-enqueues them from Postgres after RECONCILE_QUEUED_GRACE"))
    return checks


def check_workers(inputs: Inputs) -> list[Check]:
    checks: list[Check] = []
    for t in inputs.targets:
        if t.role == "worker" and t.grace_s is not None:
            need = t.config.get_int("job_timeout") + GRACE_MARGIN_S
            checks.append(Check(
                f"worker.grace_period[{t.name}]", "OK" if t.grace_s >= need else "WARN",
                f"terminationGracePeriodSeconds={t.grace_s}, JOB_TIMEOUT+{GRACE_MARGIN_S}={need}" + (
                    "" if t.grace_s >= need else ": a job cut short at shutdown is retried, its work lost")))
        if t.role == "worker" and "memory" not in t.limits and t.grace_s is not None:
            checks.append(Check(f"worker.resources[{t.name}]", "WARN",
                                "no memory limit: a hostile document can take the node's memory"))
        if t.role == "webui" and t.grace_s is not None and t.replicas < 2:
            checks.append(Check(f"webui.replicas[{t.name}]", "WARN",
                                f"{t.replicas} replica: a single point of failure"))
        checks += [Check(f"autoscaling[{t.name}]", "WARN", note) for note in t.notes]
    q = inputs.queue
    if q is None:
        return [*checks, Check("queue.live", "SKIP", inputs.redis_error)]
    if q.workers == 0:
        checks.append(Check("queue.workers", "CRITICAL" if q.depth else "WARN",
                            f"no live worker listens on '{q.queue}' ({q.depth} jobs waiting)"))
    else:
        checks.append(Check("queue.workers", "OK", f"{q.workers} live on '{q.queue}', {q.depth} waiting, "
                            f"oldest {q.oldest_age_s:.0f} s"))
    checks += _interactive_checks(q, inputs.interactive)
    # Sluice schedules its retries in Postgres; a job scheduled in RQ came from elsewhere
    # and needs RQ's scheduler, which Sluice's workers do not run.
    if q.registries["scheduled"] and not q.scheduler_running:
        checks.append(Check("queue.scheduler", "CRITICAL",
                            f"{q.registries['scheduled']} jobs scheduled in RQ on '{q.queue}' but no "
                            "RQ scheduler runs them (Sluice's retries are scheduled in Postgres)"))
    else:
        checks.append(Check("queue.scheduler", "OK", "retries are scheduled in Postgres"))
    for facts in inputs.worker_facts:
        name = facts.get("name", "?")
        loads = (facts.get("model_loads", "0"), facts.get("config_loads", "0"))
        ok = bool(facts.get("model")) and loads == ("1", "1")
        checks.append(Check(
            f"worker.boot[{name}]", "OK" if ok else "CRITICAL",
            f"model={facts.get('model') or 'none'} model_loads={loads[0]} config_loads={loads[1]}" + (
                "" if ok else ": the model and config must be loaded exactly once, at boot")))
    return checks


def run_checks(inputs: Inputs) -> list[Check]:
    return [
        *check_config(inputs), *check_postgres_budget(inputs), *check_postgres_live(inputs),
        *check_recycle(inputs), *check_redis(inputs), *check_workers(inputs),
    ]


def render(checks: list[Check]) -> str:
    width = max((len(c.name) for c in checks), default=10)
    lines = [f"{'check':<{width}}  verdict   detail", f"{'-' * width}  --------  ------"]
    lines += [f"{c.name:<{width}}  {c.verdict:<8}  {c.detail}" for c in checks]
    critical = sum(c.verdict == "CRITICAL" for c in checks)
    warn = sum(c.verdict == "WARN" for c in checks)
    lines.append(f"\n{critical} critical, {warn} warnings, {len(checks)} checks")
    return "\n".join(lines)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.verdict == "CRITICAL" for c in checks) else 0


def _interactive_checks(ingest: QueueSnapshot, q: QueueSnapshot | None) -> list[Check]:
    """Workers listen on both queues; one that works the ingest queue only (an older
    release) would leave Open WebUI's requests unanswered."""
    if q is None:
        return []
    if q.workers < ingest.workers:
        return [Check("queue.interactive", "CRITICAL" if not q.workers else "WARN",
                      f"{q.workers} of {ingest.workers} live workers listen on '{q.queue}': "
                      "Open WebUI's /v1/embeddings and /process wait on the others in vain "
                      "(workers of an older release?)")]
    return [Check("queue.interactive", "OK", f"{q.workers} live on '{q.queue}', {q.depth} "
                  f"waiting, oldest {q.oldest_age_s:.0f} s")]
