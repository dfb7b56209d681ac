"""`sluice doctor` on the command line: gather the inputs, run the checks, print them."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from shared.metrics_queue import heartbeat_stale_after, read_queue
from shared.ops.doctor import Inputs, Target, exit_code, render, run_checks
from shared.ops.doctor_sources import (
    RawConfig,
    Workload,
    parse_manifests,
    read_postgres,
    read_redis,
    render_overlay,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--manifests", metavar="FILE", help="rendered manifests (multi-document YAML)")
    src.add_argument("--overlay", metavar="DIR", help="a kustomize overlay (runs `kubectl kustomize DIR`)")
    p.add_argument("--webui-replicas", type=int, help="without manifests: webui replicas (default 1)")
    p.add_argument("--worker-replicas", type=int,
                   help="without manifests: worker replicas (default: live workers, or 1)")
    p.add_argument("--max-connections", type=int, help="Postgres max_connections, if not reachable")
    p.add_argument("--maxclients", type=int, help="Redis maxclients, if not reachable")
    p.add_argument("--network-idle-timeout", type=float, metavar="SECONDS",
                   help="idle timeout of a load balancer / NAT / pooler between Sluice and Postgres")
    p.add_argument("--no-live", action="store_true", help="do not connect to Postgres or Redis")


def _targets(workloads: list[Workload]) -> list[Target]:
    return [
        Target(w.role, w.name, w.max_replicas, RawConfig(w.env), w.grace_s, w.limits, w.notes)
        for w in workloads if w.role in ("webui", "worker")
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _live(inputs: Inputs, env: Mapping[str, str]) -> None:
    """Fill in what the live servers say; a server that cannot be reached is a SKIP."""
    cfg = RawConfig(env)
    url = cfg.get_str("database_url")
    if not url:
        inputs.postgres_error = "DATABASE_URL not set"
    else:
        try:
            inputs.postgres = read_postgres(url)
        except Exception as err:
            inputs.postgres_error = f"Postgres not reachable: {type(err).__name__}: {err}"
    rurl = cfg.get_str("redis_url")
    if not rurl:
        inputs.redis_error = "REDIS_URL not set"
        return
    from redis import Redis
    from rq import Queue

    from shared.queue import interactive_queue_name
    from worker.main import FACTS_KEY

    redis = Redis.from_url(rurl, socket_connect_timeout=5, socket_timeout=5)
    try:
        inputs.redis = read_redis(redis)
        stale = heartbeat_stale_after(cfg.get_int("worker_maintenance_interval"),
                                      cfg.get_int("job_monitoring_interval"),
                                      cfg.get_int("worker_heartbeat_grace"))
        name = cfg.get_str("queue_name")
        inputs.queue = read_queue(redis, Queue(name, connection=redis), stale)
        inputs.interactive = read_queue(
            redis, Queue(interactive_queue_name(name), connection=redis), stale)
        for key in redis.scan_iter(match=FACTS_KEY.format(name="*"), count=100):
            facts = {_text(k): _text(v) for k, v in redis.hgetall(key).items()}
            facts["name"] = _text(key).rsplit(":", 1)[-1]
            inputs.worker_facts.append(facts)
    except Exception as err:
        inputs.redis_error = f"Redis not reachable: {type(err).__name__}: {err}"
        inputs.redis = inputs.queue = inputs.interactive = None
    finally:
        redis.close()


def gather(args: argparse.Namespace, env: Mapping[str, str]) -> Inputs:
    max_connections, maxclients, declared_by = args.max_connections, args.maxclients, "given"
    if args.manifests or args.overlay:
        text = Path(args.manifests).read_text() if args.manifests else render_overlay(args.overlay)
        manifests = parse_manifests(text)
        targets = _targets(manifests.workloads)
        if not targets:
            raise SystemExit("sluice doctor: no webui or worker Deployment in the manifests")
        if not max_connections and manifests.declared_int("postgres-max-connections"):
            declared_by = "declared by the overlay"
        max_connections = max_connections or manifests.declared_int("postgres-max-connections")
        maxclients = maxclients or manifests.declared_int("redis-maxclients")
    else:
        config = RawConfig(env)
        targets = [Target("webui", "webui", args.webui_replicas or 1, config),
                   Target("worker", "worker", args.worker_replicas or 1, config)]
    inputs = Inputs(targets, max_connections=max_connections, maxclients=maxclients,
                    network_idle_timeout_s=args.network_idle_timeout, declared_by=declared_by)
    if args.no_live:
        inputs.postgres_error = inputs.redis_error = "skipped (--no-live)"
    else:
        _live(inputs, env)
    if not (args.manifests or args.overlay) and args.worker_replicas is None and inputs.queue:
        targets[1].replicas = max(inputs.queue.workers, 1)
    return inputs


def main(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    checks = run_checks(gather(args, os.environ if env is None else env))
    print(render(checks))
    return exit_code(checks)
