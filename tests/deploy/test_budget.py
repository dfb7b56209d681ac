"""Postgres connection budget of each overlay, computed from what it renders.

    W x (DATABASE_POOL_SIZE + DATABASE_POOL_MAX_OVERFLOW) + K x WORKER_DB_POOL_SIZE
      + reserved <= max_connections - headroom

W and K are the most pods that can hold a pool at once: the autoscalers'
maxima (and KEDA's fallback), else the replica counts, plus the transient
pods of a rollout or a node drain (a pod being replaced keeps its pool while
it drains, its replacement opens one). max_connections, reserved and headroom
are the overlay's own declarations (annotations on sluice-config).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from .manifests import (
    KUSTOMIZE,
    Doc,
    autoscaled_max,
    component_config,
    config_map,
    deployment,
    of_kind,
    render,
    temp_overlay,
)


def _count(value: int | str, of: int) -> int:
    """A rollingUpdate/PDB value: an int, or a percentage of `of` (rounded up, as for maxSurge)."""
    if isinstance(value, str) and value.endswith("%"):
        return -(-int(value[:-1]) * of // 100)
    return int(value)


def transient_pods(docs: list[Doc], dep: Doc, most: int) -> int:
    """Pods beyond `most` that may hold a pool: during a rollout, the surge pods plus the
    old pods still draining (maxUnavailable: they keep their pool until they exit); during
    a node drain, the pods the PDB lets go, draining while their replacements start."""
    strategy = dep["spec"].get("strategy", {"type": "RollingUpdate"})
    rollout = 0
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.get("rollingUpdate", {})
        surge, unavailable = rolling.get("maxSurge", "25%"), rolling.get("maxUnavailable", "25%")
        rollout = _count(surge, most) + _count(unavailable, most)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pdbs = [p for p in of_kind(docs, "PodDisruptionBudget")
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    # No PDB: a drain may take every pod at once.
    drain = max((_count(p["spec"].get("maxUnavailable", 0), most) for p in pdbs), default=most)
    return max(rollout, drain)


@dataclass(frozen=True)
class Budget:
    webui_pods: int
    webui_per_pod: int
    worker_pods: int
    worker_per_pod: int
    reserved: int
    max_connections: int
    headroom: int

    @property
    def total(self) -> int:
        return (self.webui_pods * self.webui_per_pod + self.worker_pods * self.worker_per_pod
                + self.reserved)

    @property
    def fits(self) -> bool:
        return self.total <= self.max_connections - self.headroom


def budget(docs: list[Doc]) -> Budget:
    web, worker = component_config(docs, "webui"), component_config(docs, "worker")
    notes = config_map(docs)["metadata"].get("annotations", {})
    assert "sluice/postgres-max-connections" in notes, "the overlay must declare max_connections"
    pods = {}
    for component in ("webui", "worker"):
        dep = deployment(docs, component)
        most = autoscaled_max(docs, dep)
        pods[component] = most + transient_pods(docs, dep, most)
    return Budget(
        webui_pods=pods["webui"],
        webui_per_pod=int(web["DATABASE_POOL_SIZE"]) + int(web["DATABASE_POOL_MAX_OVERFLOW"]),
        worker_pods=pods["worker"],
        worker_per_pod=int(worker["WORKER_DB_POOL_SIZE"]),
        reserved=int(notes["sluice/postgres-reserved-connections"]),
        max_connections=int(notes["sluice/postgres-max-connections"]),
        headroom=int(notes["sluice/postgres-headroom-connections"]),
    )


def test_the_fleet_fits_max_connections(docs: list[Doc]) -> None:
    b = budget(docs)
    assert b.fits, (
        f"{b.webui_pods} x {b.webui_per_pod} + {b.worker_pods} x {b.worker_per_pod} + {b.reserved} = "
        f"{b.total} > {b.max_connections} - {b.headroom}"
    )
    assert b.headroom >= 10
    # Under the 80 % where `sluice doctor` warns and SluicePostgresConnectionsNearMax fires.
    assert b.total <= 0.8 * b.max_connections
    # superuser_reserved_connections (3) + migration (1) + monitoring (2)
    assert b.reserved >= 6


def test_prod_numbers_are_the_ones_in_its_comment(rendered: dict[str, list[Doc]]) -> None:
    """The arithmetic written in overlays/prod matches what it renders."""
    b = budget(rendered["prod"])
    assert (b.webui_pods, b.worker_pods) == (4 + 1, 20 + 1)
    assert b.max_connections == 100
    text = (KUSTOMIZE / "overlays" / "prod" / "kustomization.yaml").read_text()
    written = re.search(r"^#\s+total at full scale\s+=\s+(\d+)$", text, flags=re.M)
    assert written, "the budget comment in overlays/prod is gone"
    assert int(written.group(1)) == b.total
    webui_line = re.search(r"HPA max (\d+) \+ (\d+) transient = (\d+) pods x \(DATABASE_POOL_SIZE (\d+) \+ "
                           r"DATABASE_POOL_MAX_OVERFLOW (\d+)\)", text)
    assert webui_line
    most, extra, pods, size, overflow = map(int, webui_line.groups())
    assert (most + extra, pods, size + overflow) == (b.webui_pods, b.webui_pods, b.webui_per_pod)
    worker_line = re.search(
        r"KEDA max (\d+) \+ (\d+) transient = (\d+) pods x WORKER_DB_POOL_SIZE (\d+)", text)
    assert worker_line
    most, extra, pods, size = map(int, worker_line.groups())
    assert (most + extra, pods, size) == (b.worker_pods, b.worker_pods, b.worker_per_pod)


def test_the_seed_numbers_do_not_fit(tmp_path: Path) -> None:
    """The check is not vacuous: prod with the seed's 30 + 20 per webui fails it."""
    docs = render(temp_overlay(tmp_path, """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {kustomize}/overlays/prod
patches:
  - target:
      kind: ConfigMap
      name: sluice-webui-config.*
    patch: |-
      - op: replace
        path: /data/DATABASE_POOL_SIZE
        value: "30"
      - op: replace
        path: /data/DATABASE_POOL_MAX_OVERFLOW
        value: "20"
"""))
    b = budget(docs)
    assert b.webui_per_pod == 50
    assert not b.fits
    with pytest.raises(AssertionError, match="> 100 - 20"):
        test_the_fleet_fits_max_connections(docs)


def test_rollouts_and_drains_are_counted(rendered: dict[str, list[Doc]]) -> None:
    """The transient pods follow the strategies: a surging webui rollout costs more."""
    docs = rendered["prod"]
    web = deployment(docs, "webui")
    assert transient_pods(docs, web, 4) == 1
    surging = {**web, "spec": {**web["spec"], "strategy": {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}}}}
    assert transient_pods(docs, surging, 4) == 2
    # Recreate: no rollout overlap, but a node drain still replaces one worker at a time.
    assert transient_pods(docs, deployment(docs, "worker"), 20) == 1
