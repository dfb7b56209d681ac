"""`sluice doctor`: budgets from manifests, NullPool, and live checks on the real servers."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis

from shared.metrics_queue import QueueSnapshot
from shared.ops.doctor import Check, Inputs, Target, exit_code, run_checks
from shared.ops.doctor_cli import add_arguments, gather
from shared.ops.doctor_cli import main as doctor_main
from shared.ops.doctor_sources import RawConfig, parse_manifests
from tests.support.stack import Stack

FIXTURES = Path(__file__).parent / "fixtures"


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def offline(*argv: str, env: dict[str, str] | None = None) -> dict[str, Check]:
    return by_name(run_checks(gather(args(*argv, "--no-live"), env or {})))


def test_seed_recommendation_overruns_the_connection_budget() -> None:
    seed = str(FIXTURES / "seed-recommended.yaml")
    checks = offline("--manifests", seed)
    budget = checks["postgres.connection_budget"]
    assert budget.verdict == "CRITICAL"
    # 3 webui × (30 + 20) + 20 workers (KEDA max) × 2 + 6 reserved = 196 > 100
    assert "3 webui × 50" in budget.detail and "20 worker × 2" in budget.detail
    assert "= 196 > 100" in budget.detail
    assert checks["worker.grace_period[sluice-worker]"].verdict == "WARN"  # 30 s vs JOB_TIMEOUT 3600
    assert doctor_main(args("--manifests", seed, "--no-live"), {}) == 1


def test_the_cli_exits_non_zero_on_a_critical_check() -> None:
    seed = str(FIXTURES / "seed-recommended.yaml")
    done = subprocess.run([sys.executable, "-m", "shared.cli", "doctor", "--manifests", seed, "--no-live"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "CRITICAL" in done.stdout and "postgres.connection_budget" in done.stdout


def test_manifests_replicas_come_from_the_autoscalers() -> None:
    manifests = parse_manifests((FIXTURES / "healthy.yaml").read_text())
    workloads = {w.role: w for w in manifests.workloads}
    assert (workloads["webui"].replicas, workloads["webui"].max_replicas) == (2, 3)
    assert (workloads["worker"].replicas, workloads["worker"].max_replicas) == (2, 10)
    assert workloads["worker"].grace_s == 660
    assert workloads["worker"].env["DATABASE_POOL_SIZE"] == "10"  # from the ConfigMap
    assert manifests.declared_int("postgres-max-connections") == 100
    no_max = parse_manifests("""
kind: Deployment
metadata: {name: w}
spec: {template: {spec: {containers: [{name: c, args: [worker]}]}}}
---
kind: ScaledObject
metadata: {name: w}
spec: {scaleTargetRef: {name: w}}
""")
    assert no_max.workloads[0].max_replicas == 100 and no_max.workloads[0].notes  # KEDA's default


def test_a_healthy_deployment_passes() -> None:
    checks = offline("--manifests", str(FIXTURES / "healthy.yaml"))
    assert {c.verdict for c in checks.values()} <= {"OK", "SKIP"}, [
        c for c in checks.values() if c.verdict not in ("OK", "SKIP")]
    assert exit_code(list(checks.values())) == 0


def test_null_pool_is_reported_not_refused() -> None:
    checks = offline(env={"DATABASE_POOL_SIZE": "0"})
    assert checks["config.null_pool[webui]"].verdict == "CRITICAL"
    assert checks["postgres.connection_budget"].verdict == "CRITICAL"
    assert "NullPool (unbounded)" in checks["postgres.connection_budget"].detail
    pooled = offline(env={"DATABASE_POOL_SIZE": "0", "DATABASE_EXTERNAL_POOLER": "true"})
    assert pooled["config.null_pool[webui]"].verdict == "WARN"
    assert pooled["postgres.connection_budget"].verdict == "WARN"
    assert exit_code(list(pooled.values())) == 0


def test_invalid_settings_and_short_recycle_are_flagged() -> None:
    checks = offline("--network-idle-timeout", "900",
                     env={"JOB_TIMEOUT": "soon", "DATABASE_POOL_PRE_PING": "false"})
    valid = checks["config.valid[webui]"]
    assert valid.verdict == "CRITICAL" and valid.detail.startswith("JOB_TIMEOUT:")
    overlap = offline(env={"CHUNK_OVERLAP": "300"})["config.valid[worker]"]
    assert overlap.verdict == "CRITICAL" and "CHUNK_OVERLAP (300)" in overlap.detail
    recycle = checks["postgres.pool_recycle[webui]"]
    assert recycle.verdict == "CRITICAL" and "network idle timeout (900 s)" in recycle.detail


def test_queue_and_worker_facts_verdicts() -> None:
    config = RawConfig({"JOB_MAX_RETRIES": "3"})
    queue = QueueSnapshot("ingest", depth=4, registries={"started": 0, "failed": 0, "deferred": 0,
                          "scheduled": 2}, oldest_age_s=30, workers=0, scheduler_running=False)
    inputs = Inputs([Target("worker", "worker", 1, config)], queue=queue,
                    worker_facts=[{"name": "w1", "model": "m", "model_loads": "3", "config_loads": "1"},
                                  {"name": "w2", "model": "", "model_loads": "0", "config_loads": "0"}])
    checks = by_name(run_checks(inputs))
    assert checks["queue.workers"].verdict == "CRITICAL"
    assert checks["queue.scheduler"].verdict == "CRITICAL"
    assert checks["worker.boot[w1]"].verdict == "CRITICAL"  # reloaded: the seed's per-job load
    assert checks["worker.boot[w2]"].verdict == "CRITICAL"  # never loaded


def _snapshot(name: str, workers: int) -> QueueSnapshot:
    return QueueSnapshot(name, depth=1, registries={"started": 0, "failed": 0, "deferred": 0,
                         "scheduled": 0}, oldest_age_s=2, workers=workers, scheduler_running=False)


@pytest.mark.parametrize(("listening", "verdict"), [(2, "OK"), (1, "WARN"), (0, "CRITICAL")])
def test_workers_not_on_the_interactive_queue(listening: int, verdict: str) -> None:
    inputs = Inputs([], queue=_snapshot("ingest", 2),
                    interactive=_snapshot("ingest-interactive", listening))
    check = by_name(run_checks(inputs))["queue.interactive"]
    assert check.verdict == verdict, check
    assert f"{listening}" in check.detail and "ingest-interactive" in check.detail


def test_live_checks_against_the_embedded_servers(
    stack: Stack, env: dict[str, str], redis_client: Redis
) -> None:
    checks = by_name(run_checks(gather(args(), env)))
    for name in ("postgres.connection_budget", "postgres.connections_in_use", "redis.client_budget",
                 "redis.clients_in_use", "redis.eviction_policy", "redis.persistence", "queue.workers",
                 "queue.interactive", "queue.scheduler"):
        assert checks[name].verdict == "OK", checks[name]
    assert "sluice-webui=" in checks["postgres.connections_in_use"].detail
    assert "live" in checks["postgres.connection_budget"].detail
    boots = [c for n, c in checks.items() if n.startswith("worker.boot[")]
    assert boots and all(c.verdict == "OK" for c in boots), boots
    assert exit_code(list(checks.values())) == 0

    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        checks = by_name(run_checks(gather(args(), env)))
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
    assert checks["redis.eviction_policy"].verdict == "CRITICAL"


def test_unreachable_servers_are_skipped_not_fatal() -> None:
    env = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "REDIS_URL": "redis://127.0.0.1:1/0"}
    checks = by_name(run_checks(gather(args(), env)))
    assert checks["postgres.live"].verdict == "SKIP" and "not reachable" in checks["postgres.live"].detail
    assert checks["redis.live"].verdict == "SKIP" and "not reachable" in checks["redis.live"].detail


def test_the_prod_overlay_renders_and_fits(tmp_path: Path) -> None:
    # The overlay renders once its cluster.env names an RWX storage class (deploy/README.md).
    shutil.copytree(Path(__file__).resolve().parents[2] / "deploy" / "kustomize", tmp_path / "k")
    prod = tmp_path / "k" / "overlays" / "prod"
    with open(prod / "cluster.env", "a") as env:
        env.write("RWX_STORAGE_CLASS=test-rwx\n")
    checks = offline("--overlay", str(prod))
    budget = checks["postgres.connection_budget"]
    assert budget.verdict in ("OK", "WARN") and "declared by the overlay" in budget.detail, budget
    assert exit_code(list(checks.values())) == 0, [c for c in checks.values() if c.verdict == "CRITICAL"]
