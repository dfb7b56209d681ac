"""Postgres connection budget of each overlay, computed from what it renders.

    W x (DATABASE_POOL_SIZE + DATABASE_POOL_MAX_OVERFLOW) + K x WORKER_DB_POOL_SIZE
      + reserved <= max_connections - headroom

W and K are the most pods that can run: the autoscalers' maxima (and KEDA's
fallback), else the replica counts. max_connections, reserved and headroom are
the overlay's own declarations (annotations on sluice-config).
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
    render,
    temp_overlay,
)


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
    return Budget(
        webui_pods=autoscaled_max(docs, deployment(docs, "webui")),
        webui_per_pod=int(web["DATABASE_POOL_SIZE"]) + int(web["DATABASE_POOL_MAX_OVERFLOW"]),
        worker_pods=autoscaled_max(docs, deployment(docs, "worker")),
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
    assert (b.webui_pods, b.worker_pods) == (4, 20)
    assert b.max_connections == 100
    text = (KUSTOMIZE / "overlays" / "prod" / "kustomization.yaml").read_text()
    written = re.search(r"^#\s+total at full scale\s+=\s+(\d+)$", text, flags=re.M)
    assert written, "the budget comment in overlays/prod is gone"
    assert int(written.group(1)) == b.total
    webui_line = re.search(r"HPA max (\d+) pods x \(DATABASE_POOL_SIZE (\d+) \+ "
                           r"DATABASE_POOL_MAX_OVERFLOW (\d+)\)", text)
    assert webui_line
    pods, size, overflow = map(int, webui_line.groups())
    assert (pods, size + overflow) == (b.webui_pods, b.webui_per_pod)


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
